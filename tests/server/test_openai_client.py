"""The official openai client, unmodified, against the real vLLM-backed gateway."""

from __future__ import annotations

import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def client(gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)


def test_lists_models(client, base_model):
    ids = [m.id for m in client.models.list()]
    assert base_model in ids


def test_chat_completion(client, base_model):
    reply = client.chat.completions.create(model=base_model, messages=MESSAGES, max_tokens=16)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.model == base_model


def test_chat_stream_with_usage(client, base_model):
    stream = client.chat.completions.create(
        model=base_model,
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the iterator ends only when the server sends [DONE]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text.strip()
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert 0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 0


def test_chat_stream_without_usage_sends_none(client, base_model):
    stream = client.chat.completions.create(
        model=base_model, messages=MESSAGES, max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_completion(client, base_model):
    reply = client.completions.create(model=base_model, prompt="Once upon a time", max_tokens=8)
    assert reply.choices[0].text.strip()
    assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"


def test_n_choices(client, base_model):
    reply = client.chat.completions.create(
        model=base_model, messages=MESSAGES, max_tokens=4, n=2, temperature=1.0
    )
    assert [c.index for c in reply.choices] == [0, 1]
