"""What a request may carry to vLLM (issue 12, item 7 and 9): an allow-list of fields, bounded
lists, features behind settings, short relayed engine errors, bounded logging. Fast: the app's
only engine is an unreachable remote URL, so a request that passes validation gets a 503."""

from __future__ import annotations

import json
import logging

import pytest

from server.inference.service import upstream_error
from tests.server.test_auth_limits import BASE, CHAT, make_client

CHAT_PATH = "/v1/chat/completions"
PROMPT = {"model": BASE, "prompt": "hi", "max_tokens": 2}


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chat_template", "{{ raise_exception('x') }}"),
        ("chat_template_kwargs", {"enable_thinking": True}),
        ("kv_transfer_params", {"do_remote_prefill": True}),
        ("priority", -1000),
        ("vllm_xargs", {"a": 1}),
        ("request_id", "not-yours"),
        ("some_sdk_field", 1),
    ],
)
def test_fields_outside_the_allow_list_are_refused_by_name(client, field, value):
    r = client.post(CHAT_PATH, json={**CHAT, field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and error["code"] == "unknown_field"
    assert field in error["message"]


def test_prompt_embeds_are_refused_on_completions(client):
    r = client.post("/v1/completions", json={**PROMPT, "prompt_embeds": "AAAA"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_embeds"


@pytest.mark.parametrize(
    "extra",
    [
        {"top_k": 5},
        {"min_p": 0.1},
        {"ignore_eos": True},
        {"repetition_penalty": 1.1},
        {"min_tokens": 1},
        {"skip_special_tokens": False},
        {"spaces_between_special_tokens": True},
        {"include_stop_str_in_output": True},
        {"stop_token_ids": [2]},
        {"logit_bias": {"42": -100, "7": 100}},
        {"allowed_token_ids": [1, 2, 3]},
        {"stop": ["\n", ".", "!", "?"]},
        {"response_format": {"type": "text"}},
        {"stream_options": {"include_usage": True}, "stream": True},
    ],
)
def test_supported_extensions_pass(client, extra):
    r = client.post(CHAT_PATH, json={**CHAT, **extra})
    assert r.status_code == 503, r.text  # validated; the unreachable engine answers nothing


def test_messages_may_carry_the_fields_an_sdk_sends_back(client):
    # openai SDK users append a reply's message as it came: refusal, tool_calls, annotations...
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "refusal": None, "annotations": []},
        {"role": "user", "content": "again"},
    ]
    assert client.post(CHAT_PATH, json={**CHAT, "messages": messages}).status_code == 503


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", "x" * 257),
        ("stop", ["x" * 257]),
        ("logit_bias", {str(i): 1 for i in range(301)}),
        ("logit_bias", {"42": 101}),
        ("logit_bias", {"not-a-token": 1}),
        ("allowed_token_ids", list(range(1025))),
        ("stop_token_ids", list(range(65))),
        ("top_k", -5),
        ("leanserve_policy", "x" * 1000),
    ],
)
def test_bounded_fields(client, field, value):
    r = client.post(CHAT_PATH, json={**CHAT, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == field


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT_PATH, {**CHAT, "response_format": {"type": "json_schema", "json_schema": {}}}),
        (CHAT_PATH, {**CHAT, "response_format": {"type": "json_object"}}),
        (CHAT_PATH, {**CHAT, "structured_outputs": {"regex": "(a|b)*"}}),
        ("/v1/completions", {**PROMPT, "structured_outputs": {"choice": ["a", "b"]}}),
        (CHAT_PATH, {**CHAT, "guided_json": {"type": "object"}}),
    ],
)
def test_structured_outputs_need_the_setting(tmp_path, route, body):
    with make_client(tmp_path) as client:
        off = client.post(route, json=body)
    assert off.status_code == 400, off.text
    assert "limits.allow_structured_outputs" in off.json()["error"]["message"]
    if "guided_json" in body:
        return  # an old vLLM field: refused either way (vLLM now takes structured_outputs)
    with make_client(tmp_path, limits={"allow_structured_outputs": True}) as client:
        assert client.post(route, json=body).status_code == 503


def test_prompt_logprobs_need_the_setting(tmp_path):
    body = {**PROMPT, "prompt_logprobs": 1}
    with make_client(tmp_path) as client:
        off = client.post("/v1/completions", json=body)
    assert off.status_code == 400 and off.json()["error"]["param"] == "prompt_logprobs"
    assert "limits.allow_prompt_logprobs" in off.json()["error"]["message"]
    with make_client(tmp_path, limits={"allow_prompt_logprobs": True}) as client:
        assert client.post("/v1/completions", json=body).status_code == 503
        too_many = client.post("/v1/completions", json={**body, "prompt_logprobs": -1})
        assert too_many.status_code == 400  # -1 would be the whole vocabulary per token


def test_relayed_engine_errors_are_cut_short():
    long = json.dumps({"error": {"message": "x" * 100_000, "param": "p" * 10_000}}).encode()
    for status in (400, 500):
        error = upstream_error(status, long)
        assert len(error.message) <= 600
        assert error.param is None or len(error.param) <= 64
    assert len(upstream_error(500, b"y" * 100_000).message) <= 600


def test_unknown_message_fields_are_logged_briefly_at_debug(client, caplog):
    fields = {f"field_{i}_" + "n" * 500: i for i in range(200)}
    messages = [{"role": "user", "content": "hi", **fields}]
    with caplog.at_level(logging.DEBUG, logger="leanserve.protocol"):
        assert client.post(CHAT_PATH, json={**CHAT, "messages": messages}).status_code == 503
    records = [r for r in caplog.records if r.name == "leanserve.protocol"]
    assert records and all(r.levelno == logging.DEBUG for r in records)
    assert all(len(r.getMessage()) < 400 for r in records)
