"""Knowledge distillation: train the current (pruned) model to match the base's logits.

The base is the teacher and stays frozen. The loss is the KL divergence between the two
next-token distributions at every position of windows of the calibration text, forward
KL(teacher || student) (mean-seeking, the usual choice for healing) or reverse
KL(student || teacher), plus, when the recipe gives it a weight, the cross-entropy on the
text's own next tokens (Hinton et al.'s soft + hard targets). Training stops at the first
exhausted budget: wall-clock seconds or tokens. The learning rate warms up, then follows a
cosine over the budget spent, so a short budget still ends on a small step.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress import texts
from compress.device import autocast_type, bf16_native, pick_device

if TYPE_CHECKING:
    from compress.context import BuildContext
    from compress.recipes import DistillStep


def _kl(s: torch.Tensor, t: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-token KL from student and teacher log-probabilities."""
    if direction == "forward":
        return (t.exp() * (t - s)).sum(-1)
    return (s.exp() * (s - t)).sum(-1)


def kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    direction: str = "forward",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean per-token KL between softened distributions, scaled by T^2 (Hinton et al.)."""
    s = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return _kl(s, t, direction).mean() * temperature**2


def hard_label_loss(student_logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each position's log-probabilities against the text's next token."""
    picked = student_logp[:, :-1].gather(-1, tokens[:, 1:, None])
    return -picked.mean()


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor, step
) -> torch.Tensor:
    """The step's KL term plus its weighted hard-label term. The student's log-softmax over the
    49k vocabulary is the costly part on a CPU, so both terms share it at temperature 1."""
    temp = step.temperature
    s = nn.functional.log_softmax(student_logits.float() / temp, dim=-1)
    t = nn.functional.log_softmax(teacher_logits.float() / temp, dim=-1)
    loss = _kl(s, t, step.direction).mean() * temp**2
    if step.hard_label_weight:
        logp = s if temp == 1 else nn.functional.log_softmax(student_logits.float(), dim=-1)
        loss = loss + step.hard_label_weight * hard_label_loss(logp, tokens)
    return loss


def learning_rate(base_lr: float, step: int, warmup: int, spent: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from base_lr to 0 as `spent` goes 0 -> 1."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(spent, 1.0)))


def trainable_parameters(model, train_embeddings: bool) -> list[nn.Parameter]:
    embed = model.get_input_embeddings().weight
    params = []
    for p in model.parameters():
        frozen = p is embed and not train_embeddings
        p.requires_grad_(not frozen)
        if not frozen:
            params.append(p)
    return params


# Logit elements one forward pass may hold: a few float32 copies of them live at once in the
# loss. SmolLM2's 49k vocabulary fits a whole batch (8 x 256 x 49,152 = 101M); Gemma 3's 262k
# does not (537M, over 2 GiB per copy), so its batches run in parts.
MAX_LOGIT_ELEMENTS = 2**27


def micro_batch_size(batch_size: int, seq_len: int, vocab_size: int) -> int:
    """Sequences per forward pass: the whole batch where its logits fit MAX_LOGIT_ELEMENTS."""
    return max(1, min(batch_size, MAX_LOGIT_ELEMENTS // (seq_len * vocab_size)))


def accumulate_gradients(student, teacher, batch, step, micro_batch: int, device: str) -> float:
    """The batch's loss, its gradient added to the student's, `micro_batch` sequences at a
    time: each part's mean loss weighted by its share of the batch sums to the batch's mean."""
    total = 0.0
    # bf16 autocast where the device computes bf16 in hardware (GPUs, CPUs with AVX512-BF16
    # or AMX), float32 elsewhere; logits are upcast inside the loss.
    bf16 = bf16_native(device)
    for part in batch.split(micro_batch):
        with torch.autocast(autocast_type(device), dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                teacher_logits = teacher(part, use_cache=False).logits
            student_logits = student(part, use_cache=False).logits
        loss = distill_loss(student_logits, teacher_logits, part, step) * (len(part) / len(batch))
        loss.backward()
        total += loss.item()
        del teacher_logits, student_logits, loss
    return total


def batches(windows: list[list[int]], batch_size: int, seed: int):
    """Endless shuffled batches: each epoch a new order."""
    rng = random.Random(seed)
    for _epoch in itertools.count():
        order = list(windows)
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield torch.tensor(order[i : i + batch_size])


# Where a model waits between steps: host memory (llm-compressor onloads layers from there).
HOST = torch.device("cpu")


def apply(step: DistillStep, student, tokenizer, ctx: BuildContext, device: str | None = None):
    """Train `student` towards the base on `device` (default: the build's, else CUDA when
    there is a GPU); the student comes back in host memory."""
    device = device or ctx.device or pick_device()
    ids = texts.token_ids(tokenizer, texts.read_text(ctx.calibration_file))
    windows = texts.prefixed_windows(tokenizer, ids, step.seq_len)
    if len(windows) < step.batch_size:
        raise ValueError(f"calibration text gives {len(windows)} windows, fewer than a batch")
    teacher = ctx.load_base().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.to(device)
    params = trainable_parameters(student, step.train_embeddings)
    optimizer = torch.optim.AdamW(params, lr=step.lr, weight_decay=0.0, betas=(0.9, 0.95))

    micro_batch = micro_batch_size(step.batch_size, step.seq_len, student.config.vocab_size)
    if micro_batch < step.batch_size:
        ctx.progress.log(f"distill: batches of {step.batch_size} in parts of {micro_batch}")
    student.train()
    start = time.monotonic()
    tokens = 0
    losses: list[float] = []
    stream = batches(windows, step.batch_size, ctx.seed)
    for n_step in itertools.count():
        spent = max((time.monotonic() - start) / step.max_seconds, tokens / step.max_tokens)
        if spent >= 1.0:
            break
        batch = next(stream).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step.lr, n_step, step.warmup_steps, spent)
        optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(student, teacher, batch, step, micro_batch, str(device))
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        tokens += batch.numel()
        losses.append(loss)
        ctx.progress.update(100 * spent, detail={"step": n_step, "loss": round(losses[-1], 4)})

    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)
    del teacher, optimizer
    student.to(HOST)
    ctx.notes["distill"] = {
        "device": str(device),
        "steps": len(losses),
        "tokens": tokens,
        "seconds": round(time.monotonic() - start, 1),
        "loss_first": round(sum(losses[:5]) / max(len(losses[:5]), 1), 4),
        "loss_last": round(sum(losses[-5:]) / max(len(losses[-5:]), 1), 4),
        "epochs": round(tokens / (len(windows) * step.seq_len), 2),
    }
    ctx.progress.log(f"distill: {ctx.notes['distill']}")
    return student
