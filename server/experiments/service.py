"""Experiments: which are running, which arm a user gets, and where outcomes go.

Definitions and states live in the experiment store (definition_store.py), which every gateway
replica shares. Each gateway keeps an in-memory copy, reloaded every `refresh_s` in the
background and at once after its own writes: requests are routed by that copy alone, so the
database is never on a request's path. A second background task checks the running
experiments' guardrails every `check_s` and stops the arms that breach one. Every replica runs
it; the stop is written once (a replica that finds the arm already stopped writes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import SQLAlchemyError

from server.errors import APIError
from server.experiments import guardrails, stats
from server.experiments.definition_store import DefinitionStore
from server.experiments.definitions import Experiment, from_settings, guardrail_view
from server.experiments.store import OutcomeStore, outcome_row
from server.metrics.registry import Metrics
from server.settings import ExperimentSettings

log = logging.getLogger("leanserve.experiments")

ACTIONS = {"pause": "paused", "resume": "running", "stop": "stopped"}


def store_unavailable() -> APIError:
    return APIError(
        503,
        "The experiment database is busy or unreachable; retry shortly.",
        "service_unavailable",
        None,
        "store_unavailable",
        {"Retry-After": "2"},
    )


def not_found(name: str) -> APIError:
    return APIError(
        404, f"No experiment named '{name}'.", "invalid_request_error", "name", "not_found"
    )


@dataclass
class Experiments:
    store: OutcomeStore
    definitions: DefinitionStore
    configured: list[ExperimentSettings] = field(default_factory=list)
    metrics: Metrics | None = None
    refresh_s: float = 1.0
    check_s: float = 5.0
    clock: Callable[[], float] = time.time
    experiments: dict[str, Experiment] = field(default_factory=dict)  # the in-memory copy
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _failing: set[str] = field(default_factory=set)

    @classmethod
    def from_settings(
        cls,
        configured: list[ExperimentSettings],
        url: str,
        metrics: Metrics | None,
        refresh_s: float = 1.0,
        check_s: float = 5.0,
    ) -> Experiments:
        store = OutcomeStore(url)
        definitions = DefinitionStore(store.engine)
        return cls(store, definitions, list(configured), metrics, refresh_s, check_s)

    async def start(self) -> None:
        """Write the configured experiments to the store, load them all, start the writers."""
        await asyncio.to_thread(self.sync_configured)
        await self.refresh()
        self.store.start()
        self._tasks = [
            asyncio.create_task(self._every(self.refresh_s, self.refresh), name="exp-refresh"),
            asyncio.create_task(
                self._every(self.check_s, self.check_guardrails), name="exp-guardrails"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.stop()

    def sync_configured(self) -> None:
        """Blocking. Configured experiments are upserted: a state set through the API stays."""
        now = self.clock()
        for settings in self.configured:
            self.definitions.upsert_configured(from_settings(settings, "config", now))

    async def refresh(self) -> None:
        self._install(await asyncio.to_thread(self.definitions.load))

    def _install(self, loaded: list[Experiment]) -> None:
        # A periodic load that read before this gateway's own write may finish after the
        # reload that follows the write: never go back to an older version.
        current = self.experiments
        loaded = [
            current[e.name] if e.name in current and current[e.name].version > e.version else e
            for e in loaded
        ]
        if self.metrics:
            for e in loaded:
                if e.name not in self.experiments:
                    self.metrics.add_experiment(e.name, e.arm_names)
                for arm, stop in e.arm_stops.items():
                    self.metrics.experiment_arm_stopped.labels(e.name, arm, stop["metric"]).set(1)
        self.experiments = {e.name: e for e in loaded}

    async def _every(self, period_s: float, work: Callable[[], Awaitable[None]]) -> None:
        name = work.__name__
        while True:
            await asyncio.sleep(period_s)
            try:
                await work()
            except Exception as exc:
                # A database that is locked or down: keep the last copy and keep trying.
                if name not in self._failing:
                    log.warning("experiments: %s failed (%r); retrying every %s s", name, exc,
                                period_s)  # fmt: skip
                self._failing.add(name)
                continue
            if name in self._failing:
                log.info("experiments: %s works again", name)
                self._failing.discard(name)

    async def _refresh_after_write(self) -> None:
        # The write is done; should this reload fail, the next periodic one catches up.
        with contextlib.suppress(SQLAlchemyError):
            await self.refresh()

    def running(self) -> Experiment | None:
        """The experiment routed requests take part in: the oldest one running."""
        return next((e for e in self.experiments.values() if e.state == "running"), None)

    def assign(self, user: str | None) -> tuple[str, str, str] | None:
        """(experiment, arm, variant) for a routed request, or None when none is running."""
        experiment = self.running()
        if experiment is None:
            return None
        arm = experiment.choose(user, self.clock())
        if self.metrics:
            self.metrics.experiment_assignments.labels(experiment.name, arm).inc()
        return experiment.name, arm, experiment.variant_of(arm)

    def record(self, outcome) -> None:
        self.store.add(outcome_row(outcome))
        if self.metrics and outcome.experiment in self.experiments:
            status = "error" if outcome.error else "ok"
            self.metrics.experiment_outcomes.labels(outcome.experiment, outcome.arm, status).inc()

    def get(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise not_found(name)
        return self.experiments[name]

    def view(self, experiment: Experiment) -> dict:
        return experiment.view(self.clock())

    async def create(self, settings: ExperimentSettings) -> Experiment:
        experiment = from_settings(settings, "api", self.clock())
        try:
            created = await asyncio.to_thread(self.definitions.insert, experiment)
        except SQLAlchemyError as exc:
            raise store_unavailable() from exc
        if not created:
            raise APIError(
                409,
                f"Experiment '{experiment.name}' exists.",
                "invalid_request_error",
                "name",
                "exists",
            )
        await self._refresh_after_write()
        return experiment

    async def set_state(self, name: str, action: str) -> Experiment:
        state, now = ACTIONS[action], self.clock()

        def edit(current: Experiment) -> Experiment:
            if current.state == "stopped" and state != "stopped":
                raise APIError(
                    409,
                    f"Experiment '{name}' is stopped for good.",
                    "invalid_request_error",
                    "state",
                    "stopped",
                )
            reason = f"{action} through the API"
            return current.with_state(state, reason if state != "running" else None, "api", now)

        try:
            changed = await asyncio.to_thread(self.definitions.change, name, edit)
        except SQLAlchemyError as exc:
            raise store_unavailable() from exc
        except APIError:
            await self._refresh_after_write()  # the store knew better than this copy
            raise
        if changed is None:
            raise not_found(name)
        await self._refresh_after_write()
        return changed

    async def check_guardrails(self) -> None:
        """Stop every arm of a running experiment that breaches one of its guardrails."""
        for experiment in list(self.experiments.values()):
            serving = [a for a in experiment.arm_names if a not in experiment.arm_stops]
            if experiment.state != "running" or not experiment.guardrails or len(serving) < 2:
                continue
            found = await asyncio.to_thread(self._breaches, experiment)
            for arm, breach in found:
                await self._stop_arm(experiment, arm, breach)

    def _breaches(self, experiment: Experiment) -> list[tuple[str, stats.Breach]]:
        return guardrails.breaches(experiment, self.store.rows(experiment.name))

    async def _stop_arm(self, experiment: Experiment, arm: str, breach: stats.Breach) -> None:
        margin = guardrails.margin_of(experiment, breach.metric)
        record = guardrails.stop_record(breach, margin, self.clock())
        wrote = False

        def edit(current: Experiment) -> Experiment | None:
            nonlocal wrote
            if arm in current.arm_stops or arm not in current.arm_names:
                return None  # another replica was first, or the arm is gone
            wrote = True
            stops = {**current.arm_stops, arm: record}
            reason = current.state_reason
            if all(a in stops for a in current.arm_names if a != current.control):
                reason = "every arm but the control was stopped by a guardrail"
            return replace(current, arm_stops=stops, state_reason=reason)

        await asyncio.to_thread(self.definitions.change, experiment.name, edit)
        if wrote:
            log.warning(
                "experiment %s: arm %s stopped by its %s guardrail (margin %s): %s; its users "
                "go to the control arm %s",
                experiment.name, arm, breach.metric, margin, breach.reason, experiment.control,
            )  # fmt: skip
            if self.metrics:
                self.metrics.experiment_guardrail_breaches.labels(
                    experiment.name, arm, breach.metric
                ).inc()
        await self._refresh_after_write()

    async def report(self, name: str) -> dict:
        experiment = self.get(name)
        await self.store.flush(timeout_s=10)
        try:
            rows = await asyncio.to_thread(self.store.rows, name)
        except SQLAlchemyError as exc:
            raise store_unavailable() from exc
        arms = {a["name"]: a["weight"] for a in experiment.arms}
        figures = await asyncio.to_thread(stats.report, rows, arms, experiment.control)
        for arm, entry in figures["arms"].items():
            if arm in arms:
                entry["guardrail"] = guardrail_view(experiment.arm_stops.get(arm))
        if experiment.ramp or experiment.arm_stops:
            figures["sample_ratio_mismatch"] = {
                **figures["sample_ratio_mismatch"],
                "p_value": None,
                "mismatch": False,
                "note": "not checked: the split changed over time (ramp or a stopped arm)",
            }
        return {
            "experiment": name,
            "state": experiment.state,
            "state_reason": experiment.state_reason,
            **figures,
            "guardrails": [
                {
                    **g,
                    "stopped_arms": [
                        arm for arm, s in experiment.arm_stops.items() if s["metric"] == g["metric"]
                    ],
                }
                for g in experiment.guardrails
            ],
            "ramp": experiment.view(self.clock())["ramp"],
        }
