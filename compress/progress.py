"""Progress for people (tqdm bars on stderr) and for programs (JSON lines on stdout).

JSON lines, one object per line, flushed at once: the models in compress.schema (start,
stage, progress, log, done, error), which the server parses them with. An error line comes
with a non-zero exit status. Unknown keys may be added later; readers must ignore them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO

from compress.schema import Event, LogEvent, ProgressEvent, StageEvent


class Progress:
    """One job's progress. Stages are declared up front so overall percent is meaningful."""

    def __init__(self, json_out: IO[str] | None = None, bars: bool = True) -> None:
        self.json_out = json_out
        self.bars = bars
        self.stages: list[str] = []
        self.index = -1
        self._bar = None
        self._stage_start = time.monotonic()
        self._last_emit = 0.0
        self._total = 100.0

    def emit(self, event: Event) -> None:
        if self.json_out is not None:
            self.json_out.write(json.dumps(event.dump()) + "\n")
            self.json_out.flush()

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        self.emit(LogEvent(message=message))

    def plan(self, stages: list[str]) -> None:
        self.stages = list(stages)

    def stage(self, name: str, total: float = 100.0) -> None:
        """Begin a stage; closes the previous one's bar."""
        self.close_bar()
        if name not in self.stages:
            self.stages.append(name)
        self.index = self.stages.index(name)
        self._stage_start = time.monotonic()
        self._last_emit = 0.0
        self._total = total
        self.emit(StageEvent(stage=name, index=self.index + 1, stages=len(self.stages)))
        if self.bars:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=name, file=sys.stderr, leave=True, dynamic_ncols=True
            )

    def set_total(self, total: float) -> None:
        """Re-scale the current stage once its amount of work is known."""
        self._total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, done: float, detail: dict | None = None, force: bool = False) -> None:
        """Report `done` out of the stage's total (absolute, not an increment)."""
        done = min(done, self._total)
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
        now = time.monotonic()
        if not force and now - self._last_emit < 1.0 and done < self._total:
            return  # at most one JSON line a second per stage
        self._last_emit = now
        fraction = done / self._total if self._total else 1.0
        elapsed = now - self._stage_start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        overall = (self.index + fraction) / max(len(self.stages), 1) * 100
        self.emit(
            ProgressEvent(
                stage=self.stages[self.index] if self.index >= 0 else None,
                percent=round(fraction * 100, 1),
                eta_s=round(eta, 1) if eta is not None else None,
                overall_percent=round(overall, 1),
                detail=detail or {},
            )
        )

    def finish_stage(self) -> None:
        self.update(self._total, force=True)
        self.close_bar()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
