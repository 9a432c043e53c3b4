"""Experiments: which are running, which arm a user gets, and where outcomes go."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from server.errors import APIError
from server.experiments import stats
from server.experiments.assign import assign
from server.experiments.store import OutcomeStore, outcome_row
from server.metrics.registry import Metrics
from server.settings import ExperimentSettings

log = logging.getLogger("leanserve.experiments")


def store_unavailable() -> APIError:
    return APIError(
        503,
        "The experiment database is busy or unreachable; retry shortly.",
        "service_unavailable",
        None,
        "store_unavailable",
        {"Retry-After": "2"},
    )


@dataclass
class Experiments:
    store: OutcomeStore
    experiments: dict[str, ExperimentSettings]
    metrics: Metrics | None = None

    @classmethod
    def from_settings(
        cls, configured: list[ExperimentSettings], url: str, metrics: Metrics
    ) -> Experiments:
        for e in configured:
            metrics.add_experiment(e.name, [a.name for a in e.arms])
        return cls(OutcomeStore(url), {e.name: e for e in configured}, metrics)

    def running(self) -> ExperimentSettings | None:
        """The experiment routed requests take part in: the first one running."""
        return next((e for e in self.experiments.values() if e.state == "running"), None)

    def assign(self, user: str | None) -> tuple[str, str, str] | None:
        """(experiment, arm, variant) for a routed request, or None when none is running."""
        experiment = self.running()
        if experiment is None:
            return None
        arm = assign(experiment.name, [(a.name, a.weight) for a in experiment.arms], user)
        if self.metrics:
            self.metrics.experiment_assignments.labels(experiment.name, arm).inc()
        variant = next(a.variant for a in experiment.arms if a.name == arm)
        return experiment.name, arm, variant

    def record(self, outcome) -> None:
        self.store.add(outcome_row(outcome))
        if self.metrics and outcome.experiment in self.experiments:
            status = "error" if outcome.error else "ok"
            self.metrics.experiment_outcomes.labels(outcome.experiment, outcome.arm, status).inc()

    def get(self, name: str) -> ExperimentSettings:
        if name not in self.experiments:
            raise APIError(
                404, f"No experiment named '{name}'.", "invalid_request_error", "name", "not_found"
            )
        return self.experiments[name]

    def create(self, experiment: ExperimentSettings) -> None:
        if experiment.name in self.experiments:
            raise APIError(
                409,
                f"Experiment '{experiment.name}' exists.",
                "invalid_request_error",
                "name",
                "exists",
            )
        self.experiments[experiment.name] = experiment

    def set_state(self, name: str, state: str) -> ExperimentSettings:
        experiment = self.get(name)
        if experiment.state == "stopped" and state != "stopped":
            raise APIError(
                409,
                f"Experiment '{name}' is stopped for good.",
                "invalid_request_error",
                "state",
                "stopped",
            )
        experiment.state = state
        return experiment

    async def report(self, name: str) -> dict:
        experiment = self.get(name)
        await self.store.flush(timeout_s=10)
        try:
            rows = await asyncio.to_thread(self.store.rows, name)
        except SQLAlchemyError as exc:
            raise store_unavailable() from exc
        arms = {a.name: a.weight for a in experiment.arms}
        return {
            "experiment": name,
            "state": experiment.state,
            **stats.report(rows, arms, experiment.control),
        }
