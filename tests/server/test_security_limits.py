"""Limits an attacker would try to get around (issue 12): who the rate limit counts, what a full
limiter forgets, failed authentication and the write endpoints, max_tokens through either field
or none, and prompts x n. Fast: the app's only engine is an unreachable remote URL, so a request
that passes every check gets a 503, one that does not gets its 4xx."""

from __future__ import annotations

import pytest

from server.errors import APIError
from server.inference.protocol import ChatCompletionRequest, CompletionRequest
from server.inference.service import engine_body
from server.limits import RateLimiter
from tests.server.test_auth_limits import BASE, CHAT, keyed_client, make_client

CHAT_PATH = "/v1/chat/completions"


# -- item 1: the rate limit ---------------------------------------------------------------------


def test_one_key_is_one_bucket_however_its_header_is_spelled(tmp_path):
    with keyed_client(tmp_path, limits={"requests_per_minute": 2}) as client:
        codes = [
            client.post(CHAT_PATH, json=CHAT, headers={"Authorization": header}).status_code
            for header in ("bearer k-1", "BEARER k-1", "Bearer  k-1")
        ]
    assert codes == [503, 503, 429]


def test_with_keys_off_junk_authorization_values_share_the_address_bucket(tmp_path):
    with make_client(tmp_path, limits={"requests_per_minute": 2}) as client:
        codes = [
            client.post(CHAT_PATH, json=CHAT, headers={"Authorization": f"junk-{i}"}).status_code
            for i in range(3)
        ]
    assert codes == [503, 503, 429]


def test_a_full_limiter_evicts_only_the_least_recently_used_bucket():
    limiter = RateLimiter(per_minute=1, max_keys=2)
    limiter.check("victim")  # its only token
    limiter.check("other")
    with pytest.raises(APIError):
        limiter.check("victim")  # limited, and now the most recently used
    limiter.check("newcomer")  # the limiter is full: "other" goes, not every bucket
    with pytest.raises(APIError) as refused:
        limiter.check("victim")
    assert refused.value.status == 429
    assert len(limiter.buckets) == 2


def test_failed_authentication_is_limited_per_address_and_valid_keys_still_pass(tmp_path):
    with keyed_client(tmp_path, limits={"failed_auth_per_minute": 3}) as client:
        codes = [
            client.post(
                CHAT_PATH, json=CHAT, headers={"Authorization": f"Bearer guess-{i}"}
            ).status_code
            for i in range(4)
        ]
        valid = client.post(CHAT_PATH, json=CHAT, headers={"Authorization": "Bearer k-1"})
    assert codes == [401, 401, 401, 429]
    assert valid.status_code == 503


def test_failed_admin_authentication_counts_too(tmp_path):
    with keyed_client(tmp_path, limits={"failed_auth_per_minute": 2}) as client:
        codes = [
            client.post(
                "/v1/variants", json={"recipe": "w8a8"}, headers={"Authorization": "Bearer k-1"}
            ).status_code
            for _ in range(3)
        ]
    assert codes == [403, 403, 429]


def test_feedback_is_rate_limited(tmp_path):
    with make_client(tmp_path, limits={"requests_per_minute": 2}) as client:
        codes = [
            client.post("/v1/feedback", json={"request_id": f"r{i}", "score": 1}).status_code
            for i in range(3)
        ]
    assert codes == [200, 200, 429]


def test_admin_writes_are_rate_limited(tmp_path):
    admin = {"Authorization": "Bearer admin-secret"}
    with keyed_client(tmp_path, limits={"requests_per_minute": 2}) as client:
        codes = [
            client.post("/v1/variants", json={"recipe": "NO SUCH"}, headers=admin).status_code
            for _ in range(3)
        ]
        stop = client.post("/v1/experiments/x/stop", headers=admin)
    assert codes == [400, 400, 429]
    assert stop.status_code == 429


# -- item 2: max_tokens -------------------------------------------------------------------------


def test_the_cap_checks_the_larger_of_max_tokens_and_max_completion_tokens(tmp_path):
    with make_client(tmp_path, limits={"max_tokens": 16}) as client:
        r = client.post(CHAT_PATH, json={**CHAT, "max_tokens": 64, "max_completion_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_max_completion_tokens_is_refused_on_completions(tmp_path):
    body = {"model": BASE, "prompt": "hi", "max_completion_tokens": 1, "max_tokens": 4}
    with make_client(tmp_path) as client:
        r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"


class _Backend:
    name = "engine-name"


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({}, 8),  # nothing asked: the cap, not the rest of the context window
        ({"max_tokens": 4}, 4),
        ({"max_completion_tokens": 3}, 3),
        ({"max_tokens": 5, "max_completion_tokens": 2}, 2),  # vLLM's own precedence
    ],
)
def test_the_body_sent_to_the_engine_carries_the_cap(fields, sent):
    request = ChatCompletionRequest.model_validate(
        {"model": BASE, "messages": [{"role": "user", "content": "hi"}], **fields}
    )
    body = engine_body(request, _Backend(), max_tokens_cap=8)
    assert body["max_tokens"] == sent and "max_completion_tokens" not in body
    assert body["model"] == "engine-name"


def test_without_a_cap_the_body_is_what_was_asked():
    request = CompletionRequest.model_validate({"model": BASE, "prompt": "hi"})
    assert "max_tokens" not in engine_body(request, _Backend(), max_tokens_cap=None)


# -- item 3: prompts x n ------------------------------------------------------------------------


def test_the_prompt_list_is_capped(tmp_path):
    body = {"model": BASE, "prompt": ["hi"] * 64, "n": 2, "max_tokens": 1}
    with make_client(tmp_path, limits={"max_prompts": 16}) as client:
        r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("prompt", "n", "status"),
    [
        (["a", "b", "c", "d"], 3, 400),  # 12 sequences > max_n 8
        (["a", "b", "c", "d"], 2, 503),  # 8: allowed
        ([[1, 2], [3, 4], [5, 6]], 3, 400),  # token-id prompts count the same
        ([1, 2, 3, 4, 5, 6, 7, 8, 9], 8, 503),  # one prompt as token ids
    ],
)
def test_prompts_times_n_is_capped_by_max_n(tmp_path, prompt, n, status):
    body = {"model": BASE, "prompt": prompt, "n": n, "max_tokens": 1}
    with make_client(tmp_path) as client:
        r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["param"] == "n"


# -- item 8: the policy field -------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, ["x"], {"a": 1}, True])
def test_a_policy_that_is_not_a_string_is_a_400(tmp_path, value):
    with make_client(tmp_path) as client:
        r = client.post(CHAT_PATH, json={**CHAT, "leanserve_policy": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "leanserve_policy"


def test_a_string_policy_still_routes(tmp_path):
    with make_client(tmp_path) as client:
        r = client.post(CHAT_PATH, json={**CHAT, "leanserve_policy": "cost"})
    assert r.status_code == 503  # routed; the unreachable engine answers nothing
