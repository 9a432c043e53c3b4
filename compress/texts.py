"""Text in, token windows out: calibration samples, evaluation windows, last-word passages.

Validation and test splits of the evaluation text. Recipes and hyperparameters are chosen on
the validation split (bench/distill_sweep.py); cards and BENCHMARKS report the test split,
which no choice has seen. The split is made on the text, before any windowing:

1. The text is cut into blocks of whole, consecutive paragraphs, each at least
   BLOCK_CHARS characters long (about one 512-token window; the last block may be shorter).
   A paragraph that repeats an earlier one word for word is left out, so the same text
   cannot land in both splits (heldout.txt has 59: whole sections, as some pydoc topics
   include others, and short lines such as "Note:").
2. Blocks are taken in pairs (0, 1), (2, 3), ...; a coin flip from random.Random(SPLIT_SEED)
   sends one block of each pair to validation and the other to test (a lone last block goes
   where its coin sends the first of a pair).
3. A split's text is its blocks, in text order, joined by a blank line. Its evaluation windows
   are the non-overlapping token windows of that text; its last-word passages are the
   qualifying paragraphs of that text.

So every paragraph, window and passage belongs to exactly one split (disjoint by
construction: a window never reaches into the other split's text), and each split has one
block of every pair, so both are spread evenly over the whole text and are about the same
size. The seed is fixed, not the build's --seed: every variant is measured on the same text.
On the shipped heldout.txt (51 blocks) and the default model's tokenizer that is 29
windows of 513 tokens (512 scored positions each) and 50 last-word passages in the test
split, 25 windows and 45 passages in validation (tests/compress/test_splits.py).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from compress.errors import CompressError

DATA_DIR = Path(__file__).parent / "data"
CALIBRATION_TEXT = DATA_DIR / "calibration.txt"
HELDOUT_TEXT = DATA_DIR / "heldout.txt"
SPLITS = ("validation", "test")
SPLIT_SEED = 0
BLOCK_CHARS = 2000


def read_text(path: Path) -> str:
    if not path.is_file():
        raise CompressError(f"text file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if len(text.split()) < 200:
        raise CompressError(f"text file {path} is too short (fewer than 200 words)")
    return text


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def windows(ids: list[int], seq_len: int, count: int | None = None, seed: int | None = None):
    """Non-overlapping windows of seq_len tokens; `count` of them, shuffled when seeded."""
    starts = list(range(0, len(ids) - seq_len + 1, seq_len))
    if seed is not None:
        random.Random(seed).shuffle(starts)
    if count is not None:
        starts = starts[:count]
    return [ids[s : s + seq_len] for s in starts]


def bos_prefix(tokenizer) -> list[int]:
    """[bos] for a tokenizer that starts every text with it (Gemma), else [] (SmolLM2).

    Windows cut from the middle of a text get it too: Gemma 3 270M reads a window without it
    as a different model would (perplexity 3-9x higher on the held-out text), while a model
    whose tokenizer adds none gets its windows exactly as before."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def prefixed_windows(
    tokenizer, ids: list[int], length: int, count: int | None = None, seed: int | None = None
) -> list[list[int]]:
    """`windows` of exactly `length` tokens each, the first of them the tokenizer's BOS where
    it uses one (bos_prefix)."""
    prefix = bos_prefix(tokenizer)
    return [prefix + w for w in windows(ids, length - len(prefix), count, seed)]


def calibration_windows(tokenizer, path: Path, samples: int, seq_len: int, seed: int = 0):
    ids = token_ids(tokenizer, read_text(path))
    chosen = prefixed_windows(tokenizer, ids, seq_len, samples, seed)
    if not chosen:
        raise CompressError(f"{path} is shorter than one window of {seq_len} tokens")
    return chosen


@dataclass(frozen=True)
class Passage:
    context: str  # every word before the last, joined by single spaces
    word: str  # the last word, without its full stop


_SENTENCE_END = re.compile(r"^([A-Za-z]{3,})[.!?]$")


def last_word_passages(text: str, count: int | None = None, min_words: int = 40) -> list[Passage]:
    """Prose paragraphs whose final word is to be predicted (LAMBADA-style); the first
    `count` of them, or all when count is None.

    Paragraphs that look like code or grammar (no sentence end, few letters) are skipped,
    so the task measures language modelling rather than guessing syntax.
    """
    out: list[Passage] = []
    if count is not None and count <= 0:
        return out
    for para in text.split("\n\n"):
        flat = " ".join(para.split())
        words = flat.split(" ")
        if len(words) < min_words or not (m := _SENTENCE_END.search(words[-1])):
            continue
        letters = sum(c.isalpha() or c == " " for c in flat) / len(flat)
        if letters < 0.85:
            continue
        out.append(Passage(context=" ".join(words[:-1]), word=m.group(1)))
        if len(out) == count:
            break
    return out


def blocks(text: str, block_chars: int = BLOCK_CHARS) -> list[str]:
    """Consecutive whole paragraphs grouped until a group has at least block_chars characters;
    a paragraph that repeats an earlier one (whitespace aside) is left out."""
    out: list[str] = []
    group: list[str] = []
    size = 0
    seen: set[str] = set()
    for para in text.split("\n\n"):
        key = " ".join(para.split())
        if key in seen:
            continue
        seen.add(key)
        group.append(para)
        size += len(para) + 2
        if size >= block_chars:
            out.append("\n\n".join(group))
            group, size = [], 0
    if group:
        out.append("\n\n".join(group))
    return out


def split_blocks(n: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Block indices of each split: one block of every consecutive pair each, by a coin flip."""
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    for first in range(0, n, 2):
        pair = [first, first + 1]
        if rng.random() < 0.5:
            pair.reverse()
        for name, index in zip(SPLITS, pair, strict=True):
            if index < n:
                chosen[name].append(index)
    return chosen


def split_text(text: str, split: str, seed: int = SPLIT_SEED) -> str:
    """The split's share of the text: its blocks in text order (module docstring)."""
    if split not in SPLITS:
        raise CompressError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    parts = blocks(text)
    return "\n\n".join(parts[i] for i in split_blocks(len(parts), seed)[split])


def read_split(path: Path, split: str) -> str:
    """The split's text of a file, checked to be long enough to evaluate on (200 words)."""
    text = split_text(read_text(path), split)
    if len(text.split()) < 200:
        raise CompressError(
            f"the {split} split of {path} is too short (fewer than 200 words): "
            "give a longer text with more paragraphs"
        )
    return text


def spread(items: list, count: int | None, seed: int = SPLIT_SEED) -> list:
    """`count` of the items drawn with a fixed seed, kept in order; all when count is None or
    at least len(items), so a subset still comes from the whole split, not its start."""
    if count is None or count >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), max(count, 0)))
    return [items[i] for i in keep]
