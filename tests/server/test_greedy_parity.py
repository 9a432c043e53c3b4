"""Greedy decoding through the gateway and straight to the engine gives the same tokens."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.gateway import engine_headers

pytestmark = pytest.mark.slow


def _chat(url: str, model: str, headers: dict | None = None, **extra) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 32,
        "temperature": 0,
        "seed": 1234,
        "logprobs": True,
        **extra,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_same_tokens_through_gateway_and_direct(gateway, base_model):
    engine = gateway.engine(base_model)
    direct = _chat(engine["url"], base_model, engine_headers(engine))
    proxied = _chat(gateway.url, base_model)
    tokens = [t["token"] for t in proxied["choices"][0]["logprobs"]["content"]]
    assert tokens == [t["token"] for t in direct["choices"][0]["logprobs"]["content"]]
    assert proxied["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert proxied["usage"] == direct["usage"]


def test_stream_gives_the_same_text_as_non_stream(gateway, base_model):
    whole = _chat(gateway.url, base_model)["choices"][0]["message"]["content"]
    text = []
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": base_model,
            "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
            "max_tokens": 32,
            "temperature": 0,
            "seed": 1234,
            "stream": True,
        },
        timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                text.append(chunk["choices"][0]["delta"].get("content") or "")
    assert "".join(text) == whole
