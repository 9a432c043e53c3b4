"""What a recipe step may use besides the model: the data, the base, progress and notes.

Its own module so the step modules (quantize, prune, distill) can import it without importing
build.py, which dispatches to them: build -> steps -> context, never back.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from compress import checkpoint
from compress.progress import Progress


@dataclass
class BuildContext:
    """One build's shared state; steps write what they measured into `notes` (on the card)."""

    base: Path
    calibration_file: Path
    progress: Progress
    seed: int = 0
    notes: dict = field(default_factory=dict)
    # Where steps compute ("cpu", "cuda"); None: compress.device.pick_device() at use.
    device: str | None = None

    def load_base(self):
        return checkpoint.load_model(self.base, "float32")

    @contextlib.contextmanager
    def layer_progress(self, model) -> Iterator[None]:
        """Progress of an llm-compressor run, read from its log lines naming model.layers.N.

        Its sequential pipeline calibrates and compresses one decoder layer at a time and
        logs each module it compresses (GPTQ, Wanda, SparseGPT), so the highest layer index
        named is the progress. Modifiers that log no such lines (RTN) jump to 100 % at the end.
        """
        from loguru import logger

        num = len(model.model.layers)
        self.progress.set_total(num)
        seen = {"max": 0}

        def sink(message) -> None:
            # Only the per-module work lines: other modifiers (SmoothQuant) list every layer
            # up front, which would read as 100 % at once.
            if not str(message).startswith(("Quantizing", "Sparsifying")):
                return
            for match in re.finditer(r"layers\.(\d+)\.", str(message)):
                index = int(match.group(1)) + 1
                if index > seen["max"]:
                    seen["max"] = index
                    self.progress.update(index)

        handle = logger.add(sink, level="DEBUG", format="{message}")
        try:
            yield
        finally:
            logger.remove(handle)
