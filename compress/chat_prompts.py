"""The shipped chat prompt set: load it, check it, and split it into validation and test halves.

`compress/data/chat_prompts.jsonl` holds one request per line:
`{"id": "...", "kind": "...", "messages": [{"role": ..., "content": ...}, ...]}`.

The split is fixed by each prompt's id alone: sha256(id) read as an integer, odd -> "test",
even -> "validation". Adding or removing a prompt never moves another one between halves.
Within a half, prompts are ordered by that same hash, so a cap (`--chat-prompts 32`) takes a
mix of kinds rather than the file's first kind. Cards use the test half; tuning uses validation.
No torch here: the build checks the set before it loads any weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from compress.errors import CompressError
from compress.texts import DATA_DIR

CHAT_PROMPTS = DATA_DIR / "chat_prompts.jsonl"
SPLITS = ("validation", "test")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    id: str
    kind: str
    messages: list[dict[str, str]]

    def record(self) -> dict:
        return {"id": self.id, "kind": self.kind, "messages": self.messages}


def _hash(prompt_id: str) -> int:
    return int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16)


def split_of(prompt_id: str) -> str:
    return "test" if _hash(prompt_id) % 2 else "validation"


def load(path: Path = CHAT_PROMPTS) -> list[Prompt]:
    """Every prompt of the file, in file order; a malformed line is a CompressError."""
    if not path.is_file():
        raise CompressError(f"chat prompt file {path} does not exist")
    prompts, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt = Prompt(str(obj["id"]), str(obj["kind"]), list(obj["messages"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CompressError(f"{path}:{n}: not a chat prompt ({exc})") from exc
        ok = prompt.messages and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in prompt.messages
        )
        if not ok or prompt.messages[-1]["role"] != "user":
            raise CompressError(f"{path}:{n}: messages must be role/content pairs ending in user")
        if prompt.id in seen:
            raise CompressError(f"{path}:{n}: duplicate id {prompt.id!r}")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise CompressError(f"chat prompt file {path} has no prompts")
    return prompts


def select(prompts: list[Prompt], split: str, limit: int | None = None) -> list[Prompt]:
    """The prompts of one half, in hash order, at most `limit` of them (None: all)."""
    if split not in SPLITS:
        raise CompressError(f"unknown chat split {split!r}: use one of {', '.join(SPLITS)}")
    if limit is not None and limit < 0:
        raise CompressError(f"--chat-prompts must be >= 0 (got {limit})")
    half = sorted((p for p in prompts if split_of(p.id) == split), key=lambda p: _hash(p.id))
    return half if limit is None else half[:limit]


def digest(prompts: list[Prompt]) -> str:
    """sha256 (16 hex) over the selected prompts' ids, kinds and messages, in order."""
    text = json.dumps([p.record() for p in prompts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ChatOptions:
    """The build's chat stage: `--chat-prompts`, `--chat-max-tokens`, `--chat-split`."""

    prompts: int | None = None  # a cap; None: the whole split; 0: no chat stage
    max_tokens: int = 64  # length cap of the base's greedy answers
    split: str = "test"  # "validation" when choosing recipes or settings
    exact_match_tokens: int = 16

    def selection(self, path: Path = CHAT_PROMPTS) -> list[Prompt]:
        """The prompts to score ([] when the cap is 0); a bad option is a CompressError."""
        if self.max_tokens < 1:
            raise CompressError(f"--chat-max-tokens must be >= 1 (got {self.max_tokens})")
        if self.prompts == 0:
            return []
        return select(load(path), self.split, self.prompts)
