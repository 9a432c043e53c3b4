"""What every request handler needs, built once per app and reached through a dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from server.backends.registry import Registry
from server.experiments.service import Experiments
from server.metrics.registry import Metrics
from server.settings import Settings
from server.variants.service import VariantManager


@dataclass
class Keys:
    api: list[str]
    admin: str | None


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    metrics: Metrics
    experiments: Experiments
    variants: VariantManager
    keys: Keys


def get_state(request: Request) -> AppState:
    return request.app.state.leanserve


State = Annotated[AppState, Depends(get_state)]
