"""Settings of quality on live traffic (`quality:` in the config); server/settings.py holds them
as Settings.quality."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QualitySettings(BaseModel):
    """Quality on live traffic: a sample of answers scored teacher-forced under the other
    model after the client has its answer (server/quality/)."""

    model_config = ConfigDict(extra="forbid")

    shadow_rate: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Share of answered requests scored afterwards under the other model(s): "
        "an answer of the base under each ready variant, a variant's under the base. 0: never.",
    )
    shadow_queue: int = Field(
        default=64,
        ge=1,
        description="Answers waiting to be scored; one more while it is full is dropped "
        "(counted in leanserve_live_quality_dropped_total).",
    )
    shadow_max_in_flight: int = Field(
        default=0,
        ge=0,
        description="Score on an engine only while it, and every engine sharing its cores or "
        "GPU, has at most this many client requests in flight: scoring uses idle time only "
        "by default (0). Even so, at shadow_rate 1.0 read-backs in idle gaps raised clients' "
        "p95 time to first token ~3.8x on a 2-core machine (BENCHMARKS.md); keep the rate low.",
    )
    shadow_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="How long an answer waits for an engine to have spare capacity; then it "
        "is dropped (counted).",
    )
    shadow_top_k: int = Field(
        default=20,
        ge=1,
        le=20,
        description="Log-probabilities per position asked of each engine (vLLM's "
        "prompt_logprobs, at most its max_logprobs, 20); the live KL is computed over these.",
    )
    use_live: bool = Field(
        default=True,
        description="Route by the lower end of a variant's live 95 % interval of top-1 "
        "agreement once it has live_min_samples scored requests, instead of its card's figure.",
    )
    live_min_samples: int = Field(
        default=50, ge=2, description="Scored requests before the live figure replaces the card's."
    )
