"""Quality of a variant against its base on held-out text, in transformers.

Both models read the same windows; per window we get the variant's and the base's
negative log-likelihood, the KL divergence KL(base || variant) of the next-token
distributions, and whether their top-1 tokens agree. The task score is last-word
prediction (LAMBADA-style) on held-out paragraphs: the greedy continuation must spell the
paragraph's final word exactly.

Only one split of the text is read (compress/texts.py): "test" for cards, "validation" for
choosing recipes and settings. Per-window sums are kept, and each window-level figure gets a
bootstrap 95 % interval over windows: the same resampled windows for variant and base
(paired), 1000 resamples, a fixed seed, percentile bounds. Windows are the resampling unit
because positions inside a window are not independent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from compress import texts
from compress.device import pick_device
from compress.errors import CompressError

CI_RESAMPLES = 1000
CI_SEED = 0
CI_METRICS = ("perplexity", "perplexity_change", "kl_to_base", "top1_agreement")


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
    split: str = "test"
    windows: int = 0
    ci95: dict[str, list[float]] = field(default_factory=dict)  # name -> [low, high]

    def as_dict(self) -> dict:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["ci95"] = {k: [round(x, 6) for x in v] for k, v in self.ci95.items()}
        return out


STAT_KEYS = ("nll", "base_nll", "kl", "agree", "count")


def summarize(sums: torch.Tensor) -> dict[str, torch.Tensor]:
    """Window-level figures from summed stats (last axis in STAT_KEYS order)."""
    nll, base_nll, kl, agree, count = sums.double().unbind(-1)
    perplexity = (nll / count).exp()
    base_perplexity = (base_nll / count).exp()
    return {
        "perplexity": perplexity,
        "base_perplexity": base_perplexity,
        "perplexity_change": perplexity / base_perplexity - 1,
        "kl_to_base": kl / count,
        "top1_agreement": agree / count,
    }


def bootstrap_ci95(
    per_window: list[dict], resamples: int = CI_RESAMPLES, seed: int = CI_SEED
) -> dict[str, list[float]]:
    """Percentile 95 % intervals of CI_METRICS, resampling whole windows with replacement.

    Each resample sums the variant's and the base's stats over the same windows, so the
    interval of perplexity_change (and KL, agreement) is that of the paired difference.
    """
    stats = torch.tensor([[w[k] for k in STAT_KEYS] for w in per_window], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(per_window), (resamples, len(per_window)), generator=generator)
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)
    resampled = summarize(stats[picks].sum(1))
    return {
        name: [float(x) for x in torch.quantile(resampled[name], levels)] for name in CI_METRICS
    }


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
    prefix = texts.bos_prefix(tokenizer)
    context = prefix + texts.token_ids(tokenizer, passage.context)[-(max_context - len(prefix)) :]
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
    max_windows: int | None = None,
    max_passages: int | None = None,
    progress=None,
    device: str | None = None,
    split: str = "test",
) -> Quality:
    """Variant `model` against `base` on the `split` half of `text` (compress/texts.py).

    max_windows / max_passages: None reads all of the split; a smaller count reads that
    many, drawn with a fixed seed from the whole split; a larger one reads all of it (and says
    so on `progress`). Quality.windows and .passages record what was read. Both models are
    moved to `device` (default: CUDA when there is a GPU, else the CPU).
    """
    part = texts.split_text(text, split)
    available = texts.prefixed_windows(tokenizer, texts.token_ids(tokenizer, part), seq_len + 1)
    chosen = texts.spread(available, max_windows)
    all_passages = texts.last_word_passages(part)
    passages = texts.spread(all_passages, max_passages)
    if not chosen:
        raise CompressError(
            f"no evaluation window: the {split} split has {len(available)} windows of "
            f"{seq_len + 1} tokens and {max_windows} were asked for"
        )
    if progress is not None:
        for what, asked, have in (
            ("windows", max_windows, len(available)),
            ("passages", max_passages, len(all_passages)),
        ):
            if asked is not None and asked > have:
                progress.log(f"evaluate: the {split} split has {have} {what}; using all {have}")
        progress.stage("evaluate", total=len(chosen) + len(passages))
    device = device or pick_device()
    model.to(device).eval()
    base.to(device).eval()
    per_window = []
    for k, window in enumerate(chosen):
        x = torch.tensor([window[:-1]], device=device)
        y = torch.tensor([window[1:]], device=device)
        per_window.append(
            window_stats(model(x, use_cache=False).logits, base(x, use_cache=False).logits, y)
        )
        if progress is not None:
            progress.update(k + 1)
    hits = base_hits = 0
    for k, passage in enumerate(passages):
        hits += last_word_hit(model, tokenizer, passage)
        base_hits += last_word_hit(base, tokenizer, passage)
        if progress is not None:
            progress.update(len(chosen) + k + 1)
    totals = torch.tensor([sum(w[k] for w in per_window) for k in STAT_KEYS], dtype=torch.float64)
    point = {name: float(value) for name, value in summarize(totals).items()}
    return Quality(
        perplexity=point["perplexity"],
        base_perplexity=point["base_perplexity"],
        kl_to_base=point["kl_to_base"],
        top1_agreement=point["top1_agreement"],
        last_word_accuracy=hits / max(len(passages), 1),
        base_last_word_accuracy=base_hits / max(len(passages), 1),
        tokens=sum(w["count"] for w in per_window),
        passages=len(passages),
        split=split,
        windows=len(chosen),
        ci95=bootstrap_ci95(per_window),
    )
