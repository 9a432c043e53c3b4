"""An experiment as every gateway replica shares it: definition, state, arms stopped by a
guardrail, and the ramp's clock. One row of the experiment store; requests are routed by the
in-memory copy each gateway refreshes from it.

Ramp: at share s, each non-control arm gets s times the traffic its weight gives it at full
rollout and the control gets the rest. A user's arm is still the sticky hash of the full split;
a second, independent hash admits the user to a non-control arm only when it falls below s, so
as s grows, users already in an arm stay there and at s = 1 the split is the configured one.
The ramp's clock is running time: a paused experiment does not advance.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from server.experiments.assign import bucket, choose_arm
from server.settings import ExperimentSettings


@dataclass
class Experiment:
    name: str
    arms: list[dict]  # {name, variant, weight}, in configured order
    control: str
    guardrails: list[dict] = field(default_factory=list)  # {metric, margin}
    ramp: dict | None = None  # {steps, step_s}
    state: str = "running"
    state_reason: str | None = None
    state_by: str = "api"  # who set the state last: config or api (config must not undo api)
    arm_stops: dict[str, dict] = field(default_factory=dict)  # arm -> {metric, reason, at, ...}
    run_s: float = 0.0  # running time before running_since: the ramp's clock
    running_since: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 1

    @property
    def arm_names(self) -> list[str]:
        return [a["name"] for a in self.arms]

    def variant_of(self, arm: str) -> str:
        return next(a["variant"] for a in self.arms if a["name"] == arm)

    def running_time(self, now: float) -> float:
        since = self.running_since
        return self.run_s + (max(0.0, now - since) if since is not None else 0.0)

    def share(self, now: float) -> float:
        """The non-control arms' share of their full traffic now (1 without a ramp)."""
        return ramp_share(self.ramp, self.running_time(now))

    def choose(self, user: str | None, now: float) -> str:
        """The arm a request goes to: sticky per user, ramped, never an arm that is stopped."""
        point = bucket(self.name, user) if user else random.random()
        arm = choose_arm([(a["name"], a["weight"]) for a in self.arms], point)
        if arm == self.control:
            return arm
        if arm in self.arm_stops:
            return self.control
        share = self.share(now)
        if share < 1.0:
            gate = bucket(f"{self.name}\x00ramp", user) if user else random.random()
            if gate >= share:
                return self.control
        return arm

    def with_state(self, state: str, reason: str | None, by: str, now: float) -> Experiment:
        """A copy in `state`; the ramp's clock stops while not running."""
        run_s, since = self.run_s, self.running_since
        if since is not None and state != "running":
            run_s, since = self.running_time(now), None
        elif since is None and state == "running":
            since = now
        return _replace(self, state=state, state_reason=reason, state_by=by, run_s=run_s,
                        running_since=since)  # fmt: skip

    def definition(self) -> dict:
        """What configuration decides (the rest is state)."""
        return {
            "arms": self.arms,
            "control": self.control,
            "guardrails": self.guardrails,
            "ramp": self.ramp,
        }

    def view(self, now: float) -> dict:
        """The API's view."""
        arms = [
            {**a, "guardrail": guardrail_view(self.arm_stops.get(a["name"]))} for a in self.arms
        ]
        return {
            "name": self.name,
            "arms": arms,
            "control": self.control,
            "state": self.state,
            "state_reason": self.state_reason,
            "guardrails": self.guardrails,
            "ramp": None if self.ramp is None else {**self.ramp, "share": self.share(now)},
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def guardrail_view(stop: dict | None) -> dict:
    return {"stopped": False} if stop is None else {"stopped": True, **stop}


def ramp_share(ramp: dict | None, running_s: float) -> float:
    if not ramp:
        return 1.0
    steps = ramp["steps"]
    return float(steps[min(int(running_s // ramp["step_s"]), len(steps) - 1)])


def from_settings(settings: ExperimentSettings, by: str, now: float) -> Experiment:
    dumped = settings.model_dump()
    experiment = Experiment(
        name=settings.name,
        arms=dumped["arms"],
        control=dumped["control"],
        guardrails=dumped["guardrails"],
        ramp=dumped["ramp"],
        state="paused",
        created_at=now,
        updated_at=now,
    )
    return experiment.with_state(settings.state, None, by, now)


JSON_FIELDS = ("arms", "guardrails", "ramp", "arm_stops")


def to_row(e: Experiment) -> dict:
    row = dict(vars(e))
    for name in JSON_FIELDS:
        row[name] = json.dumps(row[name])
    return row


def from_row(row: dict) -> Experiment:
    values = dict(row)
    for name in JSON_FIELDS:
        values[name] = json.loads(values[name]) if values[name] is not None else None
    values["arm_stops"] = values["arm_stops"] or {}
    values["guardrails"] = values["guardrails"] or []
    return Experiment(**values)


def _replace(e: Experiment, **changes) -> Experiment:
    return Experiment(**{**vars(e), **changes})
