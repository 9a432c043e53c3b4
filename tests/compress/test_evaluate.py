from __future__ import annotations

import pytest
import torch

from compress import checkpoint, evaluate
from compress.texts import HELDOUT_TEXT, Passage, last_word_passages, read_text, windows


def test_window_stats_of_a_model_against_itself():
    logits = torch.randn(1, 6, 9)
    targets = torch.randint(0, 9, (1, 6))
    stats = evaluate.window_stats(logits, logits, targets)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats["agree"] == 6 and stats["count"] == 6
    assert stats["nll"] == pytest.approx(stats["base_nll"])


def test_window_stats_kl_is_base_to_variant():
    base = torch.tensor([[[2.0, 0.0, 0.0]]])
    variant = torch.tensor([[[0.0, 2.0, 0.0]]])
    stats = evaluate.window_stats(variant, base, torch.tensor([[0]]))
    p = torch.softmax(base[0, 0], -1)
    q = torch.softmax(variant[0, 0], -1)
    assert stats["kl"] == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert stats["agree"] == 0


def test_windows_do_not_overlap():
    ids = list(range(100))
    ws = windows(ids, 30)
    assert ws == [ids[0:30], ids[30:60], ids[60:90]]
    assert len(windows(ids, 30, count=2, seed=1)) == 2


def test_last_word_passages_split_off_the_final_word():
    text = ("word " * 45) + "and then the final answer is elephant.\n\nshort one."
    [p] = last_word_passages(text, 5)
    context = " ".join(["word"] * 45 + ["and", "then", "the", "final", "answer", "is"])
    assert p == Passage(context=context, word="elephant")


def test_base_against_itself(tiny_base):
    model = checkpoint.load_model(tiny_base)
    tokenizer = checkpoint.load_tokenizer(tiny_base)
    q = evaluate.evaluate(
        model, model, tokenizer, read_text(HELDOUT_TEXT), seq_len=64, max_windows=3, max_passages=4
    )
    assert q.kl_to_base == pytest.approx(0.0, abs=1e-6)
    assert q.top1_agreement == 1.0
    assert q.perplexity == pytest.approx(q.base_perplexity)
    assert q.tokens == 3 * 64 and q.passages == 4
    assert q.last_word_accuracy == q.base_last_word_accuracy
