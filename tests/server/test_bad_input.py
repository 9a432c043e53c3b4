"""Every kind of bad input gets OpenAI's error shape and the right 4xx, never a 5xx."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def _post(gateway, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", timeout=60, **kwargs)


def _assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    return error


def chat(**fields) -> dict:
    return {"model": BASE, "messages": OK_MESSAGES, **fields}


def test_malformed_json(gateway):
    response = _post(
        gateway,
        "/v1/chat/completions",
        content=b'{"model": "x", ',
        headers={"content-type": "application/json"},
    )
    error = _assert_error(response, 400)
    assert "JSON" in error["message"]


def test_body_not_an_object(gateway):
    _assert_error(_post(gateway, "/v1/chat/completions", json=["not", "an", "object"]), 400)


def test_missing_messages(gateway):
    _assert_error(_post(gateway, "/v1/chat/completions", json={"model": BASE}), 400, "messages")


def test_empty_messages(gateway):
    _assert_error(_post(gateway, "/v1/chat/completions", json=chat(messages=[])), 400, "messages")


def test_missing_model(gateway):
    _assert_error(
        _post(gateway, "/v1/chat/completions", json={"messages": OK_MESSAGES}), 400, "model"
    )


def test_unknown_model(gateway):
    response = _post(gateway, "/v1/chat/completions", json=chat(model="no-such-model"))
    error = _assert_error(response, 404, "model")
    assert error["code"] == "model_not_found"


def test_unknown_model_on_completions(gateway):
    response = _post(gateway, "/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert _assert_error(response, 404, "model")["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "ten"),
        ("max_tokens", 1.5),
        ("temperature", "hot"),
        ("stream", "yes"),
        ("messages", "hello"),
        ("n", True),
        ("stop", 5),
    ],
)
def test_wrong_types(gateway, field, value):
    _assert_error(_post(gateway, "/v1/chat/completions", json=chat(**{field: value})), 400, field)


@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_not_positive(gateway, value):
    _assert_error(
        _post(gateway, "/v1/chat/completions", json=chat(max_tokens=value)), 400, "max_tokens"
    )


def test_max_completion_tokens_not_positive(gateway):
    response = _post(gateway, "/v1/chat/completions", json=chat(max_completion_tokens=0))
    _assert_error(response, 400, "max_completion_tokens")


def test_prompt_plus_max_tokens_beyond_context(gateway):
    # The engine runs with a 2048-token window; a 31-token prompt plus 2040 does not fit.
    response = _post(gateway, "/v1/chat/completions", json=chat(max_tokens=2040))
    error = _assert_error(response, 400, "max_tokens")
    assert error["code"] == "context_length_exceeded"


def test_long_prompt_beyond_context_on_completions(gateway):
    prompt = "word " * 1500
    response = _post(
        gateway, "/v1/completions", json={"model": BASE, "prompt": prompt, "max_tokens": 1000}
    )
    assert _assert_error(response, 400, "max_tokens")["code"] == "context_length_exceeded"


def test_request_that_fits_the_context_is_served(gateway):
    response = _post(gateway, "/v1/chat/completions", json=chat(max_tokens=2000, stop=["."]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", [-0.1, 2.5])
def test_temperature_out_of_range(gateway, value):
    _assert_error(
        _post(gateway, "/v1/chat/completions", json=chat(temperature=value)), 400, "temperature"
    )


@pytest.mark.parametrize("value", [0, 1.5])
def test_top_p_out_of_range(gateway, value):
    _assert_error(_post(gateway, "/v1/chat/completions", json=chat(top_p=value)), 400, "top_p")


def test_n_above_limit(gateway):
    response = _post(gateway, "/v1/chat/completions", json=chat(n=1000))
    assert _assert_error(response, 400, "n")["code"] == "n_too_large"


def test_unknown_role(gateway):
    bad = [{"role": "wizard", "content": "hi"}]
    _assert_error(
        _post(gateway, "/v1/chat/completions", json=chat(messages=bad)), 400, "messages.0.role"
    )


def test_empty_prompt_on_completions(gateway):
    _assert_error(_post(gateway, "/v1/completions", json={"model": BASE, "prompt": ""}), 400)


def test_supported_extensions_reach_the_engine(gateway):
    extras = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2}
    extras |= {"ignore_eos": True, "logit_bias": {"42": -100}, "stop_token_ids": [2]}
    response = _post(gateway, "/v1/chat/completions", json=chat(max_tokens=2, **extras))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("field", ["some_sdk_field", "chat_template", "kv_transfer_params"])
def test_unknown_fields_are_refused_by_name(gateway, field):
    response = _post(gateway, "/v1/chat/completions", json=chat(max_tokens=2, **{field: {}}))
    assert _assert_error(response, 400, field)["code"] == "unknown_field"


def test_unknown_path_is_404_in_openai_shape(gateway):
    response = httpx.get(f"{gateway.url}/v1/nothing-here", timeout=10)
    assert response.status_code == 404
    assert "error" in response.json()
