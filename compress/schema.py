"""The contract between compress and the server: card.json and the `--progress-json` lines.

This is the one module of compress/ that the server imports. It needs only pydantic (both
environments have it) and imports nothing else from compress/, so the gateway reads cards and
progress lines through the same models compress writes them with, without loading torch or
llm-compressor. tests/server/test_schema_boundary.py checks that.

Cards. A card is written by compress/build.py and read by compress/report.py, the server's
variant manager, router, /v1/models and metrics. Every field may be absent: readers have
always tolerated partial cards (an absent section reads as an empty one, an absent number as
None), and a card from an older or newer compress must still be readable, so unknown keys are
kept (extra="allow") and ignored by readers. compress writes every field below
(tests/compress checks it). `schema_version` is absent in cards written before it existed,
which are version 1. `dump()` writes exactly the fields that were set, in this order, so a
stored card read and dumped again is the same JSON.

Progress lines. One JSON object per line, `event` naming its kind; readers ignore kinds and
keys they do not know. `parse_event` returns None for an unknown kind.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1


class _Part(BaseModel):
    """Unknown keys are kept (so dumping a card loses nothing) and ignored by readers."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _sections_may_be_null(cls, data: Any) -> Any:
        # Readers have always read `"speed": null` like an absent section.
        if isinstance(data, dict) and any(v is None for v in data.values()):
            sections = {k for k, f in cls.model_fields.items() if _is_part(f.annotation)}
            return {k: v for k, v in data.items() if not (k in sections and v is None)}
        return data

    def dump(self) -> dict[str, Any]:
        """The JSON form: the fields that were set (given or read), nothing filled in."""
        return self.model_dump(mode="json", exclude_unset=True)


def _is_part(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Part)


# -- card.json -----------------------------------------------------------------------------------
class ModelRef(_Part):
    """`base`: the model every ratio, KL and speed-up is measured against."""

    name: str | None = None
    path: str | None = None  # absolute, on the machine that built the variant
    fingerprint: str | None = None  # sha256 (16 hex) over config.json and the weight files
    parameters: int | None = None
    size_bytes: int | None = None


class BuiltFrom(_Part):
    """`built_from`: the checkpoint the recipe ran on (differs from `base` with --reference)."""

    path: str | None = None
    fingerprint: str | None = None
    parameters: int | None = None


class RecipeInfo(_Part):
    name: str | None = None  # as requested: a name, an a+b chain, or a recipe file's name
    hash: str | None = None  # the store folder's name: steps + calibration text digest
    steps: list[dict[str, Any]] = Field(default_factory=list)  # resolved steps (recipes.py)


class DataFile(_Part):
    path: str | None = None
    sha256_16: str | None = None


class DataInfo(_Part):
    calibration: DataFile = Field(default_factory=DataFile)
    eval: DataFile = Field(default_factory=DataFile)


class ChatQuality(_Part):
    """`quality.chat`: agreement with the base on chat answers, the card's headline figure.

    The base answers each prompt of the shipped chat prompt set greedily; the variant reads
    those answers teacher-forced (compress/chat_agreement.py). The router's quality is
    `top1_agreement` here when present (the base is 1.0).
    """

    split: str | None = None  # "validation" or "test": which half of the prompt set
    prompts: int | None = None
    answer_tokens: int | None = None  # scored positions, all answers together
    max_new_tokens: int | None = None  # length cap of the base's greedy answers
    top1_agreement: float | None = None  # variant argmax == the base's answer token
    kl_to_base: float | None = None  # KL(base || variant), mean nats per answer token
    exact_match_tokens: int | None = None  # N in exact_match
    exact_match: float | None = None  # share of prompts whose own greedy first N tokens match
    ci95: dict[str, list[float]] = Field(default_factory=dict)  # bootstrap over prompts


class Quality(_Part):
    """Measured in transformers on held-out text, variant and base on the same windows."""

    perplexity: float | None = None
    base_perplexity: float | None = None
    kl_to_base: float | None = None  # KL(base || variant), mean nats per token
    top1_agreement: float | None = None  # fraction of positions where the argmax tokens agree
    last_word_accuracy: float | None = None  # LAMBADA-style, greedy, exact word
    base_last_word_accuracy: float | None = None
    tokens: int | None = None  # scored positions
    passages: int | None = None  # last-word passages
    perplexity_change: float | None = None  # perplexity / base_perplexity - 1
    split: str | None = None  # "validation" or "test": which half of the held-out text
    windows: int | None = None  # evaluation windows (tokens / window length)
    # Bootstrap 95 % intervals over windows, [low, high], for perplexity, perplexity_change,
    # kl_to_base and top1_agreement (variant and base resampled together: paired).
    ci95: dict[str, list[float]] = Field(default_factory=dict)
    chat: ChatQuality = Field(default_factory=ChatQuality)


class Size(_Part):
    bytes: int | None = None  # weight files on disk
    parameters: int | None = None
    size_ratio: float | None = None  # bytes / base bytes
    parameter_ratio: float | None = None
    weight_sparsity: float | None = None  # only for sparsify steps, else null


class Streams(_Part):
    """One load level: `concurrency` streams at once, 128 generated tokens each."""

    concurrency: int | None = None
    requests: int | None = None
    tokens_per_s: float | None = None  # generated tokens per second, all streams together
    ttft_s_mean: float | None = None
    ttft_s_p50: float | None = None


class ModelSpeed(_Part):
    streams_1: Streams = Field(default_factory=Streams)
    streams_32: Streams = Field(default_factory=Streams)
    sample_completion: str | None = None
    benchmark_s: float | None = None  # engine start to last request


class Speed(_Part):
    """Measured in vLLM with --speed, base then variant in the same run."""

    status: str | None = None  # "measured", "skipped: ..." or "failed: ..."
    engine: str | None = None  # vLLM version
    max_tokens: int | None = None
    base: ModelSpeed = Field(default_factory=ModelSpeed)
    variant: ModelSpeed = Field(default_factory=ModelSpeed)
    speedup_1: float | None = None  # variant / base tokens per second, 1 stream
    speedup_32: float | None = None  # the same at 32 streams
    ttft_ratio_1: float | None = None  # variant / base mean TTFT, 1 stream


class Serving(_Part):
    vllm_cpu: str | None = None  # "ok", "refused", "base failed" or "not checked"
    sample_completion: str | None = None  # when served
    error: str | None = None  # when refused
    notes: list[str] = Field(default_factory=list)  # e.g. no sparse kernels, FP8 needs a GPU


class Card(_Part):
    """card.json: what a variant is and what it measurably costs and loses.

    Numbers are measured on the run that built the variant, never assumed.
    """

    schema_version: int = SCHEMA_VERSION
    variant: str | None = None  # "<base name>-<recipe tag>", e.g. smollm2-135m-instruct-w8a8
    created: str | None = None  # ISO 8601, UTC
    base: ModelRef = Field(default_factory=ModelRef)
    built_from: BuiltFrom = Field(default_factory=BuiltFrom)
    recipe: RecipeInfo = Field(default_factory=RecipeInfo)
    data: DataInfo = Field(default_factory=DataInfo)
    quality: Quality = Field(default_factory=Quality)
    size: Size = Field(default_factory=Size)
    speed: Speed = Field(default_factory=Speed)
    serving: Serving = Field(default_factory=Serving)
    transformers_sample: str | None = None  # greedy continuation of a fixed prompt
    # What steps report: pruned_layers, layer_scores, distill{steps, tokens, loss, ...}.
    notes: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)  # python and libraries
    timings_s: dict[str, float] = Field(default_factory=dict)  # per stage


# -- progress lines ------------------------------------------------------------------------------
class Event(_Part):
    kind: ClassVar[str] = ""
    event: str

    def dump(self) -> dict[str, Any]:
        # Every field: a line says all it knows (null where unknown, e.g. eta_s).
        return self.model_dump(mode="json")


class StartEvent(Event):
    kind: ClassVar[str] = "start"
    event: Literal["start"] = "start"
    variant: str | None = None
    recipe: str | None = None
    recipe_hash: str | None = None
    base_fingerprint: str | None = None
    stages: list[str] = Field(default_factory=list)


class StageEvent(Event):
    kind: ClassVar[str] = "stage"
    event: Literal["stage"] = "stage"
    stage: str | None = None
    index: int | None = None  # 1-based
    stages: int | None = None  # how many in all


class ProgressEvent(Event):
    """`percent` within the stage; `overall_percent` counts each stage as an equal share."""

    kind: ClassVar[str] = "progress"
    event: Literal["progress"] = "progress"
    stage: str | None = None
    percent: float | None = None
    eta_s: float | None = None  # null while unknown
    overall_percent: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class LogEvent(Event):
    kind: ClassVar[str] = "log"
    event: Literal["log"] = "log"
    message: str | None = None


class DoneEvent(Event):
    kind: ClassVar[str] = "done"
    event: Literal["done"] = "done"
    variant: str | None = None
    path: str  # the variant's folder in the store
    card: Card | None = None
    skipped: bool = False  # found complete in the store: nothing was built

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        if self.card is not None:
            out["card"] = self.card.dump()  # exactly the card.json on disk
        return out


class ErrorEvent(Event):
    kind: ClassVar[str] = "error"
    event: Literal["error"] = "error"
    message: str | None = None


EVENTS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (StartEvent, StageEvent, ProgressEvent, LogEvent, DoneEvent, ErrorEvent)
}


def parse_event(data: Any) -> Event | None:
    """A progress line's object as its model; None for an unknown kind or a non-object.

    Raises pydantic.ValidationError when a known kind has fields of the wrong type.
    """
    if not isinstance(data, dict):
        return None
    cls = EVENTS.get(data.get("event"))  # type: ignore[arg-type]
    return cls.model_validate(data) if cls is not None else None


def problems(exc: ValidationError, limit: int = 3) -> str:
    """A ValidationError on one line: where and what, for logs and error messages."""
    errors = exc.errors()
    text = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in errors[:limit]
    )
    return text + (f" (and {len(errors) - limit} more)" if len(errors) > limit else "")
