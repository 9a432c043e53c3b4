"""A second model family end to end: `leanserve serve --model gemma3-270m` on a real vLLM engine.

The gateway prepares Gemma 3 270M from its PyPI packages (the GGUF's four chunks joined,
dequantized, with <bos>, the chat template and <end_of_turn> put back) and serves it.
"""

from __future__ import annotations

import json

import httpx
import pytest

from server import packaged_models
from tests.server.gateway import start_gateway

pytestmark = pytest.mark.slow

NAME = packaged_models.GEMMA3_270M.name


@pytest.fixture(scope="module")
def gemma_gateway(home, tmp_path_factory):
    try:
        packaged_models.part_paths(packaged_models.GEMMA3_270M)
    except FileNotFoundError as exc:
        pytest.skip(f"the Gemma 3 packages are not installed: {exc}")
    gw = start_gateway(
        home,
        tmp_path_factory.mktemp("gemma") / "gateway.log",
        extra_env={"LEANSERVE_VARIANTS": "[]"},
        args=["--model", "gemma3-270m"],
    )
    try:
        gw.wait_ready(timeout_s=900)  # the first start converts the GGUF (about 2 minutes)
        yield gw
    finally:
        gw.stop()


def tokenizer(home):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(home / "models" / NAME)


def test_the_checkpoint_has_what_the_gguf_lacked(gemma_gateway, home):
    manifest = json.loads((home / "models" / NAME / "leanserve-checksums.json").read_text())
    assert manifest["origin"]["restored"] == ["add_bos_token", "chat_template", "eos_token_id"]
    models = httpx.get(f"{gemma_gateway.url}/v1/models", timeout=10).json()
    assert NAME in [m["id"] for m in models["data"]]


def test_chat_completion_uses_gemmas_template(gemma_gateway, home):
    messages = [{"role": "user", "content": "Name three colors."}]
    response = httpx.post(
        f"{gemma_gateway.url}/v1/chat/completions",
        json={"model": NAME, "messages": messages, "max_tokens": 16, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Leanserve-Variant"] == NAME
    body = response.json()
    assert body["choices"][0]["message"]["content"].strip()
    # One <bos> (the template's), the turn markers as single tokens: the prompt vLLM read is
    # exactly Gemma's chat format.
    expected = tokenizer(home)(
        "<bos><start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n",
        add_special_tokens=False,
    )["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(expected)
    assert expected.count(2) == 1 and expected.count(106) == 1  # one <bos>, one <end_of_turn>


def test_completion_starts_with_bos_and_continues_sensibly(gemma_gateway, home):
    prompt = "The capital of France is"
    response = httpx.post(
        f"{gemma_gateway.url}/v1/completions",
        json={"model": NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ids = tokenizer(home)(prompt)["input_ids"]
    assert ids[0] == 2 and body["usage"]["prompt_tokens"] == len(ids)  # <bos> + 5 tokens
    # Greedy, the converted model continues about France (transformers gives "the capital of
    # the country of France"); a model read without <bos> or with broken weights does not.
    assert "France" in body["choices"][0]["text"] or "capital" in body["choices"][0]["text"]
