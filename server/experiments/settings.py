"""Experiment settings: the arms, the control, guardrails and a ramp, as a config file or
POST /v1/experiments gives them (part of server/settings.py's Settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ArmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Defaults to the variant; set it for A/A.")
    variant: str = Field(min_length=1, description="Public model name the arm is served by.")
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _default_name(self):
        if self.name is None:
            self.name = self.variant
        return self


class GuardrailSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["error_rate", "ttft_p95", "latency", "feedback"] = Field(
        description="error_rate counts errors and fallbacks (the arm's variant failed and another "
        "served the request)."
    )
    margin: float = Field(
        ge=0,
        description="How much worse than the control the arm may be before it is stopped, once "
        "the always-valid statistics show it: error_rate and feedback absolute (0.05 = 5 points "
        "more errors; 0.5 = half a point lower score), latency (mean) and ttft_p95 relative "
        "(0.1 = 10 % slower).",
    )


class RampSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[float] = Field(
        min_length=1,
        description="Shares of their full traffic the non-control arms get, step by step (the "
        "rest goes to the control); the last one holds.",
    )
    step_s: float = Field(gt=0, description="Seconds of running time per step.")

    @model_validator(mode="after")
    def _steps_grow(self):
        if any(not 0 < s <= 1 for s in self.steps):
            raise ValueError("ramp steps are shares in (0, 1]")
        if self.steps != sorted(self.steps):
            raise ValueError("ramp steps must not decrease")
        return self


class ExperimentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    arms: list[ArmSettings] = Field(min_length=2)
    control: str | None = Field(
        default=None, description="The arm others are compared to; the first."
    )
    state: Literal["running", "paused", "stopped"] = "running"
    guardrails: list[GuardrailSettings] = Field(
        default_factory=list,
        description="A non-control arm shown worse than the control by more than a margin is "
        "stopped: its users go to the control.",
    )
    ramp: RampSettings | None = Field(
        default=None, description="Grow the non-control arms' traffic step by step."
    )

    @model_validator(mode="after")
    def _control_is_an_arm(self):
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arms must have distinct names (give A/A arms a name each)")
        if self.control is None:
            self.control = names[0]
        elif self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the arms {names}")
        return self
