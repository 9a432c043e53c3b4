"""Resolving --model, without converting anything."""

from __future__ import annotations

import json

import pytest

from server import basemodel


def test_default_name():
    assert basemodel.expected_name("default") == "smollm2-135m-instruct"


def test_hub_id_passes_through(tmp_path):
    resolved = basemodel.prepare("meta-llama/Llama-3.1-8B-Instruct", tmp_path)
    assert resolved == basemodel.ResolvedModel(
        "llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", False
    )


def test_checkpoint_directory(tmp_path):
    ckpt = tmp_path / "My Model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    resolved = basemodel.prepare(str(ckpt), tmp_path / "home")
    assert resolved.name == "my-model" and resolved.local and resolved.source == str(ckpt.resolve())


@pytest.mark.parametrize("model", ["/no/such/dir", "./missing.gguf", "not a model id"])
def test_bad_model_is_a_clear_error(tmp_path, model):
    with pytest.raises(basemodel.ModelError):
        basemodel.prepare(model, tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(basemodel.ModelError, match="config.json"):
        basemodel.prepare(str(tmp_path), tmp_path / "home")


def test_checksums_detect_a_changed_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abc")
    basemodel.write_checksums(tmp_path, {"test": True})
    assert basemodel.verify_checkpoint(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"abd")
    assert not basemodel.verify_checkpoint(tmp_path)
    assert json.loads((tmp_path / basemodel.CHECKSUMS).read_text())["origin"] == {"test": True}
