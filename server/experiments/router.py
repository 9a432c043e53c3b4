"""/v1/experiments (admin writes), /v1/experiments/{name}/report, and /v1/feedback."""

from __future__ import annotations

import asyncio
import math

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import SQLAlchemyError

from server.api_docs import ERROR_RESPONSES
from server.auth import Admin, ApiKey, RateLimited
from server.errors import APIError
from server.experiments.service import ACTIONS, store_unavailable
from server.settings import ExperimentSettings
from server.state import State

router = APIRouter(prefix="/v1", tags=["experiments"], responses=ERROR_RESPONSES)


MAX_SCORE = 1e6


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        min_length=1, max_length=64, description="From the X-Request-Id header."
    )
    # Bounded: a few huge scores would overflow an arm's mean (to infinity, shown as null).
    score: float = Field(ge=-MAX_SCORE, le=MAX_SCORE, description="Any scale within +-1e6.")

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("score must be a finite number")
        return value


@router.get("/experiments", dependencies=[ApiKey])
async def list_experiments(state: State) -> dict:
    experiments = state.experiments
    return {"data": [experiments.view(e) for e in experiments.experiments.values()]}


@router.post("/experiments", dependencies=[Admin, RateLimited], status_code=201)
async def create_experiment(experiment: ExperimentSettings, state: State) -> dict:
    unknown = [a.variant for a in experiment.arms if a.variant not in state.variants.known_names()]
    if unknown:
        raise APIError(
            400,
            f"Arms name unknown variants: {unknown}.",
            "invalid_request_error",
            "arms",
            "unknown_variant",
        )
    created = await state.experiments.create(experiment)
    return state.experiments.view(created)


@router.get("/experiments/{name}", dependencies=[ApiKey])
async def get_experiment(name: str, state: State) -> dict:
    return state.experiments.view(state.experiments.get(name))


@router.post("/experiments/{name}/{action}", dependencies=[Admin, RateLimited])
async def change_experiment(name: str, action: str, state: State) -> dict:
    if action not in ACTIONS:
        raise APIError(
            404,
            f"Unknown action '{action}': use pause, resume or stop.",
            "invalid_request_error",
            "action",
            "not_found",
        )
    return state.experiments.view(await state.experiments.set_state(name, action))


@router.get("/experiments/{name}/report", dependencies=[ApiKey])
async def experiment_report(name: str, state: State) -> dict:
    report = await state.experiments.report(name)
    state.metrics.publish_report(report)
    return report


@router.post("/feedback", dependencies=[ApiKey, RateLimited])
async def feedback(body: Feedback, state: State) -> dict:
    store = state.experiments.store
    await store.flush(timeout_s=5)
    try:
        found = await asyncio.to_thread(store.set_feedback, body.request_id, body.score)
    except SQLAlchemyError as exc:
        raise store_unavailable() from exc
    # A request id not recorded (yet) is kept too: its outcome may still be on its way from
    # another gateway replica. `attached` says whether it is already joined to an outcome.
    return {"request_id": body.request_id, "score": body.score, "attached": found}
