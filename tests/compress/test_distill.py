from __future__ import annotations

import pytest
import torch

from compress import checkpoint, distill, prune
from compress.context import BuildContext
from compress.progress import Progress
from compress.recipes import DistillStep
from compress.texts import CALIBRATION_TEXT, HELDOUT_TEXT, read_text

from .helpers import build


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(2, 5, 11)
    assert distill.kl_divergence(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(2, 5, 11)
    assert distill.kl_divergence(a, b, "forward").item() > 0
    assert distill.kl_divergence(a, b, "reverse").item() > 0
    assert (
        distill.kl_divergence(a, b, "forward").item()
        != distill.kl_divergence(a, b, "reverse").item()
    )


def test_hard_label_loss_is_the_next_token_cross_entropy():
    tokens = torch.tensor([[1, 2, 3]])
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 0, 2] = logits[0, 1, 3] = 0.0  # certain of the right next tokens
    logp = torch.log_softmax(logits, -1)
    assert distill.hard_label_loss(logp, tokens).item() == pytest.approx(0.0, abs=1e-6)
    logits[0, 1] = 0.0  # uniform over 4 tokens at the second position
    logp = torch.log_softmax(logits, -1)
    assert distill.hard_label_loss(logp, tokens).item() == pytest.approx(
        torch.log(torch.tensor(4.0)).item() / 2
    )


def test_distill_loss_is_kl_plus_the_weighted_hard_label_term():
    student, teacher = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    tokens = torch.randint(0, 11, (2, 6))
    kl = distill.kl_divergence(student, teacher)
    ce = distill.hard_label_loss(torch.log_softmax(student, -1), tokens)
    pure = distill.distill_loss(student, teacher, tokens, DistillStep())
    mixed = distill.distill_loss(student, teacher, tokens, DistillStep(hard_label_weight=0.5))
    assert pure.item() == pytest.approx(kl.item())
    assert mixed.item() == pytest.approx(kl.item() + 0.5 * ce.item())


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [distill.learning_rate(1.0, s, 4, s / 10) for s in range(11)]
    assert lrs[0] == 0.25 and lrs[3] == 1.0
    assert lrs[4] > lrs[8] > lrs[10] == pytest.approx(0.0, abs=1e-9)


def test_distillation_moves_the_student_towards_the_teacher(tiny_base):
    from compress import evaluate

    teacher = checkpoint.load_model(tiny_base)
    tokenizer = checkpoint.load_tokenizer(tiny_base)
    student = prune.drop_layers(checkpoint.load_model(tiny_base), [1])
    text = read_text(HELDOUT_TEXT)

    def kl() -> float:
        return evaluate.evaluate(
            student, teacher, tokenizer, text, seq_len=64, max_windows=4, max_passages=1
        ).kl_to_base

    before = kl()
    ctx = BuildContext(tiny_base, CALIBRATION_TEXT, Progress(bars=False))
    ctx.progress.stage("distill")
    step = DistillStep(max_seconds=600, max_tokens=64 * 8 * 40, seq_len=64, lr=3e-3)
    distill.apply(step, student, tokenizer, ctx)
    assert ctx.notes["distill"]["steps"] == 40
    assert kl() < 0.8 * before


def test_prune_distill_quantize_chain_builds(tiny_base, store):
    card, path, events = build(tiny_base, "prune-0.25+distill+w8a8", store)
    assert card["variant"] == "tiny-llama-prune0.25-distill-w8a8"
    assert card["notes"]["distill"]["steps"] >= 1
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["load", "layer_prune", "distill", "quantize", "save", "evaluate", "chat"]
    assert (path / "recipe.yaml").read_text().count("kind:") == 3
