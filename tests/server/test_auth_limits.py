"""API keys, admin key, body size, rate and stream limits, label cardinality: checks that run
before any engine is involved, so these use an app whose only engine is an unreachable remote
URL (nothing listens there) and need no vLLM."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import load_settings

BASE = "smollm2-135m-instruct"
CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def make_client(tmp_path, **overrides) -> TestClient:
    settings = load_settings(
        home=tmp_path,
        variants=[],
        remote_engines={BASE: "http://127.0.0.1:9"},  # discard port: nothing answers
        **overrides,
    )
    return TestClient(create_app(settings))


def keyed_client(tmp_path, **overrides) -> TestClient:
    """A gateway with the API key k-1 (from a file) and the admin key admin-secret."""
    keys = tmp_path / "keys"
    keys.write_text("k-1\n")
    auth = {"api_keys_file": str(keys), "admin_key": "admin-secret"}
    return make_client(tmp_path, auth=auth, **overrides)


@pytest.fixture
def keyed(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nkey-one\nkey-two\n")
    auth = {"api_keys_file": str(keys), "admin_key": "admin-secret", "metrics_key": "scrape"}
    with make_client(tmp_path, auth=auth) as client:
        yield client


def test_missing_key_is_401_in_openai_shape(keyed):
    r = keyed.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_key_is_401(keyed):
    r = keyed.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


@pytest.mark.parametrize("key", ["key-one", "key-two", "admin-secret"])
def test_valid_keys_pass(keyed, key):
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_api_key_is_not_an_admin_key(keyed):
    r = keyed.post(
        "/v1/variants", json={"recipe": "w8a8"}, headers={"Authorization": "Bearer key-one"}
    )
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_admin_writes_need_a_key(keyed):
    assert keyed.post("/v1/variants", json={"recipe": "w8a8"}).status_code == 401
    assert keyed.delete("/v1/variants/w8a8").status_code == 401
    assert keyed.post("/v1/experiments/x/stop").status_code == 401


def test_metrics_key(keyed):
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200


def test_health_needs_no_key(keyed):
    assert keyed.get("/health").status_code == 200


def test_no_admin_key_configured_disables_admin(tmp_path):
    with make_client(tmp_path) as client:
        r = client.post(
            "/v1/variants", json={"recipe": "w8a8"}, headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_body_too_large(tmp_path):
    with make_client(tmp_path, limits={"max_body_bytes": 2048}) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        r = client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_max_tokens_cap(tmp_path):
    with make_client(tmp_path, limits={"max_tokens": 16}) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 17})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_rate_limit_per_key(tmp_path):
    with make_client(tmp_path, limits={"requests_per_minute": 3}) as client:
        codes = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(4)]
        # The first three pass the limiter (and get 503: no engine answers); the fourth does not.
        assert codes[:3] == [503, 503, 503]
        assert codes[3] == 429
        r = client.post("/v1/chat/completions", json=CHAT)
        assert (
            int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error"
        )


def test_engine_down_is_503_with_retry_after(tmp_path):
    with make_client(tmp_path) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert client.get("/ready").status_code == 503


def test_unknown_models_create_no_series(tmp_path):
    with make_client(tmp_path) as client:
        for i in range(20):
            assert (
                client.post("/v1/chat/completions", json={**CHAT, "model": f"m{i}"}).status_code
                == 404
            )
        text = client.get("/metrics").text
        assert "m1" not in text and 'variant="m' not in text


def test_prompt_text_never_reaches_logs_or_metrics(tmp_path, caplog):
    secret = "my-secret-prompt-4242"
    with make_client(tmp_path) as client:
        client.post(
            "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": secret}]}
        )
        client.post("/v1/chat/completions", json={**CHAT, "odd_field": secret})
        assert secret not in client.get("/metrics").text
    assert secret not in caplog.text


def test_path_traversal_in_recipe_names(tmp_path):
    with make_client(tmp_path, auth={"admin_key": "a"}) as client:
        for bad in ["../../etc", "/etc/passwd", "w8a8/../../x", "a b", ".hidden"]:
            r = client.post(
                "/v1/variants", json={"recipe": bad}, headers={"Authorization": "Bearer a"}
            )
            assert r.status_code == 400, bad
        assert not (tmp_path / "variants").exists()
