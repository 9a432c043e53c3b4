"""Recipes: declarative chains of compression steps, read from YAML or from a name.

A recipe is a list of steps. Each step is a pydantic model whose fields are its YAML keys
(unknown keys are errors). This module is data only: it imports none of the modules that do
the numeric work (quantize, prune, distill); build.py runs each step with its module.

Names compose with "+": `prune-0.25+distill+w8a8` is the chain of the named recipes
`prune-0.25`, `distill` and `w8a8`. Named recipes:

    w8a8            SmoothQuant + GPTQ, int8 weights (per channel) and int8 dynamic activations
    w4a16           AWQ + GPTQ int4 weights with zero points, groups of 32
    fp8             FP8 weights (per channel) and FP8 dynamic activations, no calibration
    prune-<f>       drop round(f * layers) decoder layers by block influence (ShortGPT)
    prune-<f>-angular  the same, by angular distance (Gromov et al.): one contiguous block
    distill         heal the current model by KL distillation from the base
    wanda-<s>       unstructured Wanda pruning to sparsity s
    sparse-2:4      2:4 SparseGPT pruning

A YAML file holds `name` (optional) and `steps`, each either a step mapping (with `kind`)
or the name of a recipe to splice in:

    name: my-hybrid
    steps:
      - prune-0.25
      - kind: distill
        max_seconds: 600
      - w8a8
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from compress.checkpoint import ModelShape
from compress.errors import CompressError

RECIPE_DIR = Path(__file__).parent / "data" / "recipes"
GROUP_SIZES = (128, 64, 32)  # tried in this order when a recipe leaves group_size open


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Calibration(Strict):
    """How much of the calibration text a one-shot step sees."""

    samples: int = Field(64, ge=1)
    seq_len: int = Field(512, ge=16)


class QuantizeStep(Strict):
    """Post-training quantization with llm-compressor (see quantize.py)."""

    kind: Literal["quantize"] = "quantize"
    scheme: Literal["w8a8", "w4a16", "fp8_dynamic"]
    algorithm: Literal["gptq", "rtn"] = "gptq"
    # w4a16 only: None means the largest of 128/64/32 that divides every Linear input.
    group_size: int | None = None
    symmetric: bool = True
    # GPTQ column order: "static" (by activation size, same format), "group" (stores g_idx).
    actorder: Literal["static", "group"] | None = "static"
    # Activation-aware scaling before quantizing: SmoothQuant for w8a8, AWQ for w4a16.
    smoothing_strength: float | None = Field(None, gt=0, lt=1)
    awq: bool = False
    dampening_frac: float = Field(0.01, gt=0)
    # Mixed precision: Linear modules matching these regexes get 8-bit weights instead.
    int8_targets: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    calibration: Calibration = Calibration()

    def check(self, shape: ModelShape) -> QuantizeStep:
        if self.scheme != "w4a16":
            if self.group_size is not None or self.awq or self.int8_targets:
                raise CompressError("group_size, awq and int8_targets apply to w4a16 only")
            if self.scheme == "fp8_dynamic" and self.algorithm == "gptq":
                return self.model_copy(update={"algorithm": "rtn"})
            return self
        if self.smoothing_strength is not None:
            raise CompressError("smoothing_strength applies to w8a8 (use awq: true for w4a16)")
        widths = shape.linear_in_features
        if self.group_size is None:
            fitting = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
            if not fitting:
                raise CompressError(f"no group size in {GROUP_SIZES} divides widths {widths}")
            return self.model_copy(update={"group_size": fitting[0]})
        bad = [w for w in widths if w % self.group_size]
        if bad:
            raise CompressError(
                f"group size {self.group_size} does not divide the Linear input width(s) "
                f"{bad} of this model (hidden size {shape.hidden_size}); use one of "
                f"{[g for g in GROUP_SIZES if all(w % g == 0 for w in widths)] or 'none'}"
            )
        return self

    def tag(self) -> str:
        if self.scheme == "w4a16":
            parts = ["w4a16", f"g{self.group_size or 'auto'}"]
            parts += ["awq"] if self.awq else []
            parts += ["asym"] if not self.symmetric else []
            parts += [f"act{self.actorder}"] if self.actorder != "static" else []
            parts += ["mixed"] if self.int8_targets else []
            parts += ["rtn"] if self.algorithm == "rtn" else []
            return "-".join(parts)
        if self.scheme == "fp8_dynamic":
            return "fp8-dynamic"
        return "w8a8" if self.algorithm == "gptq" else "w8a8-rtn"


class LayerPruneStep(Strict):
    """Drop whole decoder layers, chosen by a similarity score on calibration text."""

    kind: Literal["layer_prune"] = "layer_prune"
    fraction: float = Field(gt=0, lt=1)
    metric: Literal["block_influence", "angular"] = "block_influence"
    calibration: Calibration = Calibration(samples=32, seq_len=512)

    def layers_to_drop(self, num_layers: int) -> int:
        return int(self.fraction * num_layers + 0.5)

    def check(self, shape: ModelShape) -> LayerPruneStep:
        n = self.layers_to_drop(shape.num_layers)
        if n < 1 or n >= shape.num_layers:
            raise CompressError(
                f"prune fraction {self.fraction} drops {n} of {shape.num_layers} layers; "
                "it must drop at least one and keep at least one"
            )
        return self

    def tag(self) -> str:
        return f"prune{self.fraction:g}" + ("-angular" if self.metric == "angular" else "")


class SparsifyStep(Strict):
    """Unstructured (Wanda) or 2:4 (SparseGPT) weight pruning with llm-compressor."""

    kind: Literal["sparsify"] = "sparsify"
    method: Literal["wanda", "sparsegpt"]
    sparsity: float = Field(gt=0, lt=1)
    mask_structure: Literal["0:0", "2:4"] = "0:0"
    ignore: list[str] = Field(default_factory=lambda: ["re:.*lm_head"])
    calibration: Calibration = Calibration()

    def check(self, shape: ModelShape) -> SparsifyStep:
        if self.mask_structure == "2:4" and self.sparsity != 0.5:
            raise CompressError("2:4 sparsity is 0.5 by definition")
        return self

    def tag(self) -> str:
        if self.mask_structure == "2:4":
            return f"{self.method}-2of4"
        return f"{self.method}{self.sparsity:g}"


class DistillStep(Strict):
    """Heal the current model by matching the base's next-token distribution (distill.py)."""

    kind: Literal["distill"] = "distill"
    direction: Literal["forward", "reverse"] = "forward"  # KL(base||student) or KL(student||base)
    temperature: float = Field(1.0, gt=0)
    max_seconds: float = Field(1800, gt=0)  # whichever budget runs out first ends training
    max_tokens: int = Field(2_000_000, ge=1)
    seq_len: int = Field(256, ge=16)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    train_embeddings: bool = False  # the tied 49k x 576 table is a third of this model
    # Hinton et al.'s mix: this weight times the cross-entropy on the text's own next tokens,
    # added to the KL term. 0 is pure distillation.
    hard_label_weight: float = Field(0.0, ge=0)

    def check(self, shape: ModelShape) -> DistillStep:
        return self

    def tag(self) -> str:
        return "distill" if self.direction == "forward" else "distill-rkl"


Step = Annotated[
    QuantizeStep | LayerPruneStep | SparsifyStep | DistillStep, Field(discriminator="kind")
]
STEP_ADAPTER: TypeAdapter = TypeAdapter(Step)


class Recipe(Strict):
    name: str
    steps: tuple[Step, ...] = Field(min_length=1)

    def check(self, shape: ModelShape) -> Recipe:
        """Validate against a model and fill in model-dependent defaults (group size)."""
        if shape.quantized:
            raise CompressError(
                f"the base is already quantized ({shape.quantized}); compress needs an "
                "unquantized base (serve GPTQ checkpoints as they are)"
            )
        steps = []
        for i, step in enumerate(self.steps):
            if i and isinstance(self.steps[i - 1], QuantizeStep):
                raise CompressError(
                    f"recipe {self.name}: quantization must be the last step, "
                    f"found {step.kind} after it"
                )
            steps.append(step.check(shape))
            if isinstance(step, LayerPruneStep):
                n = step.layers_to_drop(shape.num_layers)
                shape = ModelShape(**{**shape.__dict__, "num_layers": shape.num_layers - n})
        return self.model_copy(update={"steps": tuple(steps)})

    def tag(self) -> str:
        return "-".join(step.tag() for step in self.steps)

    def spec(self) -> dict:
        return {"name": self.name, "steps": [s.model_dump(mode="json") for s in self.steps]}

    def digest(self, extra: dict | None = None) -> str:
        """Hash of what determines the weights: the steps and the calibration data."""
        payload = {"steps": self.spec()["steps"], **(extra or {})}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.spec(), sort_keys=False)


_PRUNE = re.compile(r"^prune-(?P<f>[^-]+)(?P<angular>-angular)?$")
_WANDA = re.compile(r"^wanda-(?P<s>[^-]+)$")


def named_recipes() -> dict[str, str]:
    """Name -> one-line description, for `list-recipes` and error messages."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        steps = _steps_from_yaml(data, str(path))
        out[str(data.get("name") or path.stem)] = " then ".join(s.tag() for s in steps)
    out["prune-<fraction>"] = "drop layers by block influence (ShortGPT), e.g. prune-0.25"
    out["prune-<fraction>-angular"] = "drop a contiguous block by angular distance"
    out["wanda-<sparsity>"] = "unstructured Wanda pruning, e.g. wanda-0.5"
    out["a+b+..."] = "a chain, e.g. prune-0.25+distill+w8a8"
    return out


def _parse_fraction(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise CompressError(f"{what} {text!r} is not a number") from exc
    if not 0 < value < 1:
        raise CompressError(f"{what} {value:g} is out of range: it must be between 0 and 1")
    return value


def _named_steps(token: str, depth: int = 0) -> list:
    if depth > 8:
        raise CompressError(f"recipe {token} includes itself")
    path = RECIPE_DIR / f"{token.replace(':', '-')}.yaml"
    if path.is_file():
        return _steps_from_yaml(yaml.safe_load(path.read_text()), str(path), depth + 1)
    if m := _PRUNE.match(token):
        metric = "angular" if m["angular"] else "block_influence"
        return [LayerPruneStep(fraction=_parse_fraction(m["f"], "prune fraction"), metric=metric)]
    if m := _WANDA.match(token):
        return [SparsifyStep(method="wanda", sparsity=_parse_fraction(m["s"], "wanda sparsity"))]
    raise CompressError(
        f"unknown recipe {token!r}; known: {', '.join(named_recipes())}, or a recipe .yaml file"
    )


def _steps_from_yaml(data: Any, where: str, depth: int = 0) -> list:
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise CompressError(f"{where}: a recipe is a mapping with a 'steps' list")
    unknown = set(data) - {"name", "steps"}
    if unknown:
        raise CompressError(f"{where}: unknown recipe keys {sorted(unknown)}")
    steps = []
    for i, item in enumerate(data["steps"]):
        if isinstance(item, str):
            steps += _named_steps(item, depth)
            continue
        try:
            steps.append(STEP_ADAPTER.validate_python(item))
        except ValidationError as exc:
            raise CompressError(f"{where}: step {i + 1} is invalid: {_short(exc)}") from exc
    return steps


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'step'}: {e['msg']}" for e in exc.errors()
    )


def load_recipe(spec: str) -> Recipe:
    """A recipe from a name, a '+' chain of names, or a YAML file path."""
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise CompressError(f"recipe file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CompressError(f"recipe file {path} is not valid YAML: {exc}") from exc
        steps = _steps_from_yaml(data, str(path))
        name = str(data.get("name") or path.stem)
    else:
        steps = [s for token in spec.split("+") for s in _named_steps(token.strip())]
        name = spec
    if not steps:
        raise CompressError(f"recipe {spec} has no steps")
    return Recipe(name=name, steps=tuple(steps))


def with_budget(
    recipe: Recipe,
    calibration_samples: int | None = None,
    distill_seconds: float | None = None,
    distill_tokens: int | None = None,
) -> Recipe:
    """Override every step's budget (small for tests, large for benchmarks)."""
    steps = []
    for step in recipe.steps:
        update: dict[str, Any] = {}
        if calibration_samples is not None and hasattr(step, "calibration"):
            update["calibration"] = step.calibration.model_copy(
                update={"samples": calibration_samples}
            )
        if isinstance(step, DistillStep):
            if distill_seconds is not None:
                update["max_seconds"] = distill_seconds
            if distill_tokens is not None:
                update["max_tokens"] = distill_tokens
        steps.append(step.model_copy(update=update) if update else step)
    return recipe.model_copy(update={"steps": tuple(steps)})
