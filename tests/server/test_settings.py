"""Configuration: defaults < YAML < environment < CLI flags; bad fields are named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import load_settings


def test_precedence(tmp_path, monkeypatch):
    config = tmp_path / "leanserve.yaml"
    config.write_text("port: 9001\nmax_n: 3\nengine:\n  kv_cache_gib: 2\n")
    assert load_settings(config).port == 9001
    monkeypatch.setenv("LEANSERVE_PORT", "9002")
    monkeypatch.setenv("LEANSERVE_ENGINE__KV_CACHE_GIB", "3")
    settings = load_settings(config)
    assert (settings.port, settings.max_n, settings.engine.kv_cache_gib) == (9002, 3, 3.0)
    assert load_settings(config, port=9003).port == 9003


def test_unknown_field_is_named(tmp_path):
    config = tmp_path / "leanserve.yaml"
    config.write_text("engine:\n  kv_cache_gb: 2\n")
    with pytest.raises(ValidationError, match="kv_cache_gb"):
        load_settings(config)


def test_bad_value_is_named(tmp_path):
    config = tmp_path / "leanserve.yaml"
    config.write_text("max_n: 0\n")
    with pytest.raises(ValidationError, match="max_n"):
        load_settings(config)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.yaml")
