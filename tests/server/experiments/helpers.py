"""Experiments objects on a SQLite file, as gateway replicas sharing one store would hold them,
and synthetic outcome rows."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from server.experiments.service import Experiments
from server.metrics.registry import Metrics
from server.settings import ExperimentSettings

BASE = "smollm2-135m-instruct"
W8A8 = f"{BASE}:w8a8"
_ids = itertools.count()


def replica(
    db: Path,
    configured: list[ExperimentSettings] = (),
    refresh_s: float = 3600,
    check_s: float = 3600,
    clock=time.time,
) -> Experiments:
    """One gateway's Experiments. Long periods by default, so a test refreshes and checks when it
    means to."""
    experiments = Experiments.from_settings(
        list(configured), f"sqlite:///{db}", Metrics(), refresh_s, check_s
    )
    experiments.clock = clock
    return experiments


def outcome(
    experiment: str, arm: str, variant: str, error: str | None = None, latency_s: float = 0.2
) -> dict:
    return {
        "request_id": f"r{next(_ids)}",
        "experiment": experiment,
        "arm": arm,
        "variant": variant,
        "user_hash": None,
        "latency_s": latency_s,
        "ttft_s": latency_s / 4,
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "finish_reason": "length",
        "error": error,
        "created_at": time.time(),
    }


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
