"""vLLM CPU speed of stored variants against the base, one engine at a time, in one run.

    .venv-compress/bin/python bench/compress_speed.py BASE_DIR VARIANT_DIR [VARIANT_DIR ...]

Prints one JSON line per model (tokens/s at 1 and 32 streams, TTFT) and the speedups. The
same measurement `compress build --speed` records in a card, for variants built without it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from compress import card, speed


def main(argv: list[str]) -> int:
    python = speed.default_vllm_python()
    if not python or len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="compress-speed-"))
    base, *variants = (Path(a) for a in argv)
    base_result = speed.measure(base, python, logs, "base")
    print(json.dumps({"model": str(base), **base_result}), flush=True)
    for path in variants:
        result = speed.measure(path, python, logs, "variant")
        summary = card.speed_summary(base_result, result)
        print(json.dumps({"model": str(path), **result, **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
