"""Fixtures for compress tests: a tiny random Llama (fast tests) and the real base (slow).

Self-contained: nothing here depends on a top-level tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_tiny_llama(directory: Path, hidden: int = 64, layers: int = 4, vocab: int = 512) -> Path:
    """A random Llama with a BPE tokenizer trained on the shipped text, saved as a checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from compress.texts import CALIBRATION_TEXT

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = CALIBRATION_TEXT.read_text()[:200_000]
    bpe.train_from_iterator(text.split("\n\n"), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def tree(path: Path) -> list[str]:
    """Every path under `path`, relative: to check that a failed job left nothing behind."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def run_cli(*args: str, timeout: float = 2400) -> subprocess.CompletedProcess:
    """`python -m compress ...` in this interpreter (the compress venv), from the repo root."""
    return subprocess.run(
        [sys.executable, "-m", "compress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def real_base(tmp_path_factory) -> Path:
    """The default model as a checkpoint, prepared by the gateway's own module (subprocess)."""
    home = Path(os.environ.get("LEANSERVE_HOME") or tmp_path_factory.mktemp("home"))
    out = subprocess.run(
        [sys.executable, "-m", "server.basemodel", "--home", str(home)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        pytest.fail(f"server.basemodel failed: {out.stderr[-2000:]}")
    return Path(json.loads(out.stdout.strip().splitlines()[-1])["source"])
