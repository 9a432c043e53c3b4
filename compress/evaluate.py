"""Quality of a variant against its base on held-out text, in transformers.

Both models read the same windows; per window we get the variant's and the base's
negative log-likelihood, the KL divergence KL(base || variant) of the next-token
distributions, and whether their top-1 tokens agree. The task score is last-word
prediction (LAMBADA-style) on held-out paragraphs: the greedy continuation must spell the
paragraph's final word exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from compress import texts
from compress.device import pick_device


@dataclass
class Quality:
    perplexity: float
    base_perplexity: float
    kl_to_base: float  # mean nats per token, KL(base || variant)
    top1_agreement: float  # fraction of positions where the argmax tokens agree
    last_word_accuracy: float
    base_last_word_accuracy: float
    tokens: int
    passages: int

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def window_stats(logits: torch.Tensor, base_logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Sums over one window's positions: NLL of both models, KL(base||variant), top-1 hits."""
    logp = nn.functional.log_softmax(logits.float(), dim=-1)
    base_logp = nn.functional.log_softmax(base_logits.float(), dim=-1)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    base_nll = -base_logp.gather(-1, targets[..., None]).squeeze(-1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    agree = logp.argmax(-1) == base_logp.argmax(-1)
    return {
        "nll": nll.sum().item(),
        "base_nll": base_nll.sum().item(),
        "kl": kl.sum().item(),
        "agree": agree.sum().item(),
        "count": targets.numel(),
    }


@torch.no_grad()
def last_word_hit(model, tokenizer, passage: texts.Passage, max_context: int = 256) -> bool:
    """True when greedy decoding after the context yields exactly the last word's tokens."""
    context = texts.token_ids(tokenizer, passage.context)[-max_context:]
    word = texts.token_ids(tokenizer, " " + passage.word)
    ids = torch.tensor([context + word[:-1]], device=next(model.parameters()).device)
    predicted = model(ids, use_cache=False).logits[0, len(context) - 1 :].argmax(-1)
    return predicted.tolist() == word


@torch.no_grad()
def evaluate(
    model,
    base,
    tokenizer,
    text: str,
    seq_len: int = 512,
    max_windows: int = 48,
    max_passages: int = 100,
    progress=None,
    device: str | None = None,
) -> Quality:
    """Both models are moved to `device` (default: CUDA when there is a GPU, else the CPU)."""
    device = device or pick_device()
    model.to(device).eval()
    base.to(device).eval()
    ids = texts.token_ids(tokenizer, text)
    chosen = texts.windows(ids, seq_len + 1, max_windows)
    passages = texts.last_word_passages(text, max_passages)
    if progress is not None:
        progress.stage("evaluate", total=len(chosen) + len(passages))
    totals = {"nll": 0.0, "base_nll": 0.0, "kl": 0.0, "agree": 0, "count": 0}
    for k, window in enumerate(chosen):
        x = torch.tensor([window[:-1]], device=device)
        y = torch.tensor([window[1:]], device=device)
        stats = window_stats(model(x, use_cache=False).logits, base(x, use_cache=False).logits, y)
        for key in totals:
            totals[key] += stats[key]
        if progress is not None:
            progress.update(k + 1)
    hits = base_hits = 0
    for k, passage in enumerate(passages):
        hits += last_word_hit(model, tokenizer, passage)
        base_hits += last_word_hit(base, tokenizer, passage)
        if progress is not None:
            progress.update(len(chosen) + k + 1)
    n = totals["count"]
    return Quality(
        perplexity=float(torch.tensor(totals["nll"] / n).exp()),
        base_perplexity=float(torch.tensor(totals["base_nll"] / n).exp()),
        kl_to_base=totals["kl"] / n,
        top1_agreement=totals["agree"] / n,
        last_word_accuracy=hits / max(len(passages), 1),
        base_last_word_accuracy=base_hits / max(len(passages), 1),
        tokens=n,
        passages=len(passages),
    )
