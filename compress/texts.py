"""Text in, token windows out: calibration samples, evaluation windows, last-word passages."""

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


def calibration_windows(tokenizer, path: Path, samples: int, seq_len: int, seed: int = 0):
    ids = token_ids(tokenizer, read_text(path))
    chosen = windows(ids, seq_len, samples, seed)
    if not chosen:
        raise CompressError(f"{path} is shorter than one window of {seq_len} tokens")
    return chosen


@dataclass(frozen=True)
class Passage:
    context: str  # every word before the last, joined by single spaces
    word: str  # the last word, without its full stop


_SENTENCE_END = re.compile(r"^([A-Za-z]{3,})[.!?]$")


def last_word_passages(text: str, count: int, min_words: int = 40) -> list[Passage]:
    """Prose paragraphs whose final word is to be predicted (LAMBADA-style).

    Paragraphs that look like code or grammar (no sentence end, few letters) are skipped,
    so the task measures language modelling rather than guessing syntax.
    """
    out: list[Passage] = []
    if count <= 0:
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
