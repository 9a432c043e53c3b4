"""What every request handler needs, built once per app and reached through a dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from server.backends.registry import Registry
from server.experiments.service import Experiments
from server.limits import RateLimiter
from server.metrics.registry import Metrics
from server.quality.shadow import Shadow
from server.settings import Settings
from server.variants.service import VariantManager


@dataclass
class Keys:
    api: list[str]
    admin: str | None
    metrics: str | None = None


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    metrics: Metrics
    experiments: Experiments
    variants: VariantManager
    keys: Keys
    limiter: RateLimiter
    open_streams: int = 0
    # Failed authentications, per client address (server/auth.py).
    auth_failures: RateLimiter = field(default_factory=lambda: RateLimiter(None))
    shadow: Shadow | None = None  # live quality: scores a sample of answers once sent


def get_state(request: Request) -> AppState:
    return request.app.state.leanserve


State = Annotated[AppState, Depends(get_state)]
