"""Chat agreement: how often a variant answers a chat request the way its base would.

1. The base answers each prompt greedily: its tokenizer's chat template with the generation
   prompt, at most `max_new_tokens`, stopping at EOS (kept as the answer's last token, so
   stopping at the same place counts). Answers are cached in the store per base.
2. The variant reads prompt + base answer teacher-forced; the base's logits come from the same
   input. At each answer position: top-1 agreement (the variant's argmax is the base's answer
   token) and KL(base || variant), both averaged over all answer tokens.
3. Exact match: the variant answers greedily itself; a prompt matches when its first N tokens
   equal the base's first N. A base answer shorter than N (it stopped at EOS) is compared on
   the tokens it has, its EOS included, so the variant must stop there too.

Intervals: percentile bootstrap over prompts (seeded), each resample recomputing the
token-weighted means, so long answers weigh as they do in the point estimate.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch
from torch import nn

from compress.chat_prompts import ChatOptions, Prompt, digest
from compress.device import pick_device

Tick = Callable[[], None] | None  # called once per prompt done, for progress


@dataclass
class Answer:
    id: str
    prompt_tokens: list[int]
    answer_tokens: list[int]  # the base's greedy answer, EOS included when it stopped


@dataclass
class ChatScore:
    split: str
    prompts: int
    answer_tokens: int
    max_new_tokens: int
    top1_agreement: float
    kl_to_base: float
    exact_match_tokens: int
    exact_match: float
    ci95: dict[str, list[float]]

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(self).items()}


# -- prompts to token ids --------------------------------------------------------------------
def render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids, ending where the assistant's answer begins.

    A tokenizer without a chat template (the tests' tiny model) gets a plain one:
    "role: content" lines, then "assistant:". A template that refuses a system role (Gemma 2,
    older Mistral) gets the system message folded into the first user turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError:
        if messages[0]["role"] != "system" or len(messages) < 2:
            raise
        system, first, *rest = messages
        folded = [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *rest]
        text = tokenizer.apply_chat_template(folded, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def cut_at_eos(tokens: list[int], eos: list[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


# -- greedy answers ----------------------------------------------------------------------------
@torch.no_grad()
def greedy(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos: list[int],
    device: str,
    batch_size: int = 16,
    tick: Tick = None,
) -> list[list[int]]:
    """Greedy answers (cut after the first EOS), batched with left padding.

    Prompts are batched by length (less padding); the answers come back in input order.
    """
    pad = eos[0] if eos else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in rows])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos or None,
            pad_token_id=pad,
        )
        for row, i in enumerate(rows):
            out[i] = cut_at_eos(generated[row, width:].tolist(), eos)
            if tick is not None:
                tick()
    return out


def cache_path(
    folder: Path, prompts: list[Prompt], max_new_tokens: int, split: str, key: str = ""
) -> Path:
    """`<folder>/chat-answers-<split>-t<max tokens>-<tag>.json`, folder = `<store>/<base fp>`.

    The tag covers the selected prompts and `key` (the build passes the chat template and the
    reference's fingerprint: the store's fingerprint covers config and weights, not the
    tokenizer files).
    """
    tag = hashlib.sha256((digest(prompts) + key).encode()).hexdigest()[:16]
    return folder / f"chat-answers-{split}-t{max_new_tokens}-{tag}.json"


def _read_cache(path: Path, prompts: list[Prompt], max_new_tokens: int) -> list[Answer] | None:
    try:
        data = json.loads(path.read_text())
        answers = [
            Answer(a["id"], list(a["prompt_tokens"]), list(a["answer_tokens"]))
            for a in data["answers"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: answer again and overwrite
    if data.get("max_new_tokens") != max_new_tokens or [a.id for a in answers] != [
        p.id for p in prompts
    ]:
        return None
    return answers


def _write_cache(path: Path, record: dict) -> None:
    # Temp file + os.replace, as everything in the store: readers see all or nothing.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def base_answers(
    base,
    tokenizer,
    prompts: list[Prompt],
    max_new_tokens: int = 64,
    device: str | None = None,
    cache: Path | None = None,
    tick: Tick = None,
) -> tuple[list[Answer], bool]:
    """The base's greedy answers, read from `cache` when it holds them. Returns (answers,
    cached). A fresh result is written to `cache` (when given) for the next build."""
    if cache is not None and (found := _read_cache(cache, prompts, max_new_tokens)) is not None:
        return found, True
    device = device or pick_device()
    base.to(device).eval()
    ids = [render(tokenizer, p.messages) for p in prompts]
    eos = eos_ids(base, tokenizer)
    out = greedy(base, ids, max_new_tokens, eos, device, tick=tick)
    answers = [Answer(p.id, i, a) for p, i, a in zip(prompts, ids, out, strict=True)]
    if cache is not None:
        record = {
            "max_new_tokens": max_new_tokens,
            "prompt_set": digest(prompts),
            "eos": eos,
            "answers": [
                {**vars(a), "text": tokenizer.decode(a.answer_tokens, skip_special_tokens=True)}
                for a in answers
            ],
        }
        _write_cache(cache, record)
    return answers, False


# -- scoring -----------------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced(model, base, answer: Answer, device: str) -> tuple[int, float, int]:
    """(top-1 hits, summed KL(base || variant), answer tokens) over one prompt's answer."""
    ids = answer.prompt_tokens + answer.answer_tokens
    x = torch.tensor([ids[:-1]], device=device)
    n = len(answer.answer_tokens)  # the last n positions predict the answer
    logits = model(x, use_cache=False, logits_to_keep=n).logits[0]
    base_logits = base(x, use_cache=False, logits_to_keep=n).logits[0]
    logp = nn.functional.log_softmax(logits.float(), -1)
    base_logp = nn.functional.log_softmax(base_logits.float(), -1)
    target = torch.tensor(answer.answer_tokens, device=device)
    hits = (logp.argmax(-1) == target).sum().item()
    kl = (base_logp.exp() * (base_logp - logp)).sum().item()
    return int(hits), float(kl), n


def bootstrap(
    per_prompt: dict[str, torch.Tensor], resamples: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """95 % percentile intervals over prompts for top1_agreement, kl_to_base, exact_match."""
    n = len(per_prompt["count"])
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    count = per_prompt["count"][idx].sum(1)
    stats = {
        "top1_agreement": per_prompt["hits"][idx].sum(1) / count,
        "kl_to_base": per_prompt["kl"][idx].sum(1) / count,
        "exact_match": per_prompt["match"][idx].mean(1),
    }
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    return {k: [round(float(x), 6) for x in torch.quantile(v, q)] for k, v in stats.items()}


def score(
    variant,
    base,
    tokenizer,
    prompts: list[Prompt],
    answers: list[Answer],
    exact_match_tokens: int = 16,
    device: str | None = None,
    split: str = "test",
    max_new_tokens: int | None = None,
    tick: Tick = None,
) -> ChatScore:
    """Agreement of `variant` with `base` on the base's answers (see the module's doc)."""
    if [a.id for a in answers] != [p.id for p in prompts]:
        raise ValueError("answers do not belong to these prompts")
    device = device or pick_device()
    variant.to(device).eval()
    base.to(device).eval()
    eos = eos_ids(base, tokenizer)
    own = greedy(
        variant, [a.prompt_tokens for a in answers], exact_match_tokens, eos, device, tick=tick
    )
    hits, kls, counts, matches = [], [], [], []
    for a, mine in zip(answers, own, strict=True):
        h, kl, n = teacher_forced(variant, base, a, device)
        hits.append(h)
        kls.append(kl)
        counts.append(n)
        m = min(exact_match_tokens, len(a.answer_tokens))
        matches.append(float(mine[:m] == a.answer_tokens[:m]))
        if tick is not None:
            tick()
    per_prompt = {
        "hits": torch.tensor(hits, dtype=torch.float64),
        "kl": torch.tensor(kls, dtype=torch.float64),
        "count": torch.tensor(counts, dtype=torch.float64),
        "match": torch.tensor(matches, dtype=torch.float64),
    }
    total = sum(counts)
    return ChatScore(
        split=split,
        prompts=len(answers),
        answer_tokens=total,
        max_new_tokens=max_new_tokens or max(counts),
        top1_agreement=sum(hits) / total,
        kl_to_base=max(sum(kls) / total, 0.0),  # float noise can make a self-KL -1e-9
        exact_match_tokens=exact_match_tokens,
        exact_match=sum(matches) / len(matches),
        ci95=bootstrap(per_prompt),
    )


# -- the build's "chat" stage ------------------------------------------------------------------
def measure(
    variant,
    base,
    tokenizer,
    options: ChatOptions,
    cache_dir: Path,
    reference_fp: str,
    progress=None,
    device: str | None = None,
) -> dict:
    """The card's `quality.chat`. Base answers come from `cache_dir` (`<store>/<base fp>`)
    when a build of the same base made them; `reference_fp` names the model that answers.

    Progress: a tick per prompt for the base's answers (skipped when cached), the variant's
    own answers and teacher-forced scoring.
    """
    prompts = options.selection()
    template = getattr(tokenizer, "chat_template", None) or "plain"
    cache = cache_path(
        cache_dir, prompts, options.max_tokens, options.split, template + reference_fp
    )
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress.update(done, detail={"prompts": len(prompts)})

    if progress is not None:
        progress.stage("chat", total=3 * len(prompts))
    answers, cached = base_answers(
        base, tokenizer, prompts, options.max_tokens, device, cache, tick
    )
    if progress is not None and cached:
        progress.set_total(2 * len(prompts))
        progress.log(f"chat: base answers read from {cache}")
    result = score(
        variant,
        base,
        tokenizer,
        prompts,
        answers,
        min(options.exact_match_tokens, options.max_tokens),
        device,
        options.split,
        options.max_tokens,
        tick,
    )
    if progress is not None:
        progress.finish_stage()
    return result.as_dict()
