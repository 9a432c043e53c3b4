"""Base checkpoints on disk: validation, shape, fingerprint, size, loading."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from compress.errors import CompressError

# Decoder-only models whose blocks live in `model.model.layers` and that llm-compressor's
# SmoothQuant/AWQ mappings and vLLM both know. Others are refused up front, before any work.
# Gemma 3 (text only) with SmoothQuant pairs of its own (quantize.SMOOTHQUANT_MAPPINGS).
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma3ForCausalLM",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    attention_width: int  # num_heads * head_dim: the input width of o_proj
    quantized: str | None  # quant_method of an already-quantized checkpoint (gptq, ...)

    @property
    def linear_in_features(self) -> tuple[int, ...]:
        """Every input width a decoder Linear has: group sizes must divide all of them."""
        return tuple(sorted({self.hidden_size, self.attention_width, self.intermediate_size}))


def read_config(base: Path) -> dict:
    if not base.is_dir():
        raise CompressError(f"base model {base} does not exist or is not a directory")
    config_path = base / "config.json"
    if not config_path.is_file():
        raise CompressError(f"base model {base} has no config.json: not a Hugging Face checkpoint")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{config_path} is not valid JSON: {exc}") from exc


def model_shape(base: Path) -> ModelShape:
    """Read and check a base checkpoint's shape without loading its weights."""
    config = read_config(base)
    architectures = config.get("architectures") or ["<none>"]
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise CompressError(
            f"unsupported architecture {architecture} in {base}: compress supports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in base.iterdir()):
        raise CompressError(f"base model {base} has no weight files (*.safetensors or *.bin)")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    quant = config.get("quantization_config")
    return ModelShape(
        architecture=architecture,
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        intermediate_size=int(config["intermediate_size"]),
        attention_width=heads * head_dim,
        quantized=(quant or {}).get("quant_method") if quant else None,
    )


def fingerprint(base: Path) -> str:
    """Content hash of a checkpoint's config and weights: same bytes, same store folder."""
    digest = hashlib.sha256()
    files = [base / "config.json"] + sorted(
        p for p in base.iterdir() if p.suffix in WEIGHT_SUFFIXES
    )
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:16]


def size_on_disk(directory: Path) -> int:
    """Bytes of the weight files only: what serving the variant has to hold."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def base_name(base: Path) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in base.name.lower())
    return cleaned.strip("-.") or "model"


def load_model(path: Path, dtype: str = "float32"):
    """A checkpoint in transformers (compressed-tensors checkpoints included), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    return model


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def count_parameters(model) -> int:
    """Logical parameter count: packed int4 weights count as their unpacked size."""
    total = 0
    seen = set()
    for _name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if pname == "weight_packed":
                shape = getattr(module, "weight_shape", None)
                total += int(shape.prod()) if shape is not None else param.numel() * 8
            elif pname in ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape"):
                continue
            else:
                total += param.numel()
    return total
