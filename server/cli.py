"""`leanserve`: serve the gateway, prepare a base model, or run a compress job.

leanserve serve [--config FILE] [--model M] [--host H] [--port P] [--home DIR]
leanserve plan [--config FILE] [--json] [--cores 16,16] [--gpus 80x8] [--base-gib N]
leanserve model prepare [MODEL] [--home DIR]
leanserve compress ...   (runs `python -m compress ...` in the compress environment)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.http_limits import protocol_class
    from server.settings import load_settings

    try:
        settings = load_settings(
            args.config, model=args.model, host=args.host, port=args.port, home=args.home
        )
    except (ValidationError, FileNotFoundError) as exc:
        print(f"leanserve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call is noise
    from server.basemodel import expected_name
    from server.placement import PlanError, plan_for

    placement = None
    if expected_name(settings.model) not in settings.remote_engines:
        try:  # refused here, with what does not fit, rather than an out-of-memory crash later
            placement = plan_for(settings)
        except PlanError as exc:
            print(f"leanserve: the engines do not fit this machine: {exc}", file=sys.stderr)
            return 2
    limits = settings.limits
    config = uvicorn.Config(
        create_app(settings, placement),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        access_log=False,
        # Header deadline and size cap (server/http_limits.py); uvicorn's own cap on open
        # connections and requests in progress.
        http=protocol_class(limits.header_timeout_s, limits.max_header_bytes),
        limit_concurrency=limits.max_connections,
    )
    uvicorn.Server(config).run()
    return 0


def engine(args: argparse.Namespace) -> int:
    """Run one vLLM engine for the base or a variant (a Kubernetes engine pod's command).

    A variant's folder is named by its recipe's hash, unknown in advance: wait until a compress
    job has published a variant of that recipe in the store, then exec vLLM on it.
    """
    import json
    import subprocess
    import time

    from server.backends.engine_process import EngineConfig
    from server.basemodel import expected_name
    from server.placement.cpu import dtype_flags
    from server.placement.machine import detect
    from server.settings import load_settings
    from server.variants.lookup import find_variant

    settings = load_settings(args.config, home=args.home, model=args.model)
    prepare = [settings.engine.python, "-m", "server.basemodel", settings.model]
    prepared = subprocess.run(
        [*prepare, "--home", str(settings.home)], check=True, capture_output=True, text=True
    )
    base_path = json.loads(prepared.stdout.strip().splitlines()[-1])["source"]
    name, model = expected_name(settings.model), base_path
    if args.recipe:
        name = f"{name}:{args.recipe}"
        store = settings.home / "variants"
        deadline = time.monotonic() + args.wait_s
        while (found := find_variant(store, args.recipe, base_path)) is None:
            if time.monotonic() > deadline:
                print(f"leanserve: no variant '{args.recipe}' in {store}", file=sys.stderr)
                return 2
            time.sleep(5)
        model = str(found)
    # An engine pod is not placed by the gateway: on a CPU node it takes the CPU plan's dtype
    # (float32 where bf16 is only emulated); extra_args still win.
    machine = detect(with_gpus=settings.engine.device != "cpu")
    dtype = list(dtype_flags(machine, settings.engine)) if not machine.gpus else []
    config = EngineConfig.from_settings(
        settings.engine, name, model, host=args.host, port=args.port,
        extra_args=[*dtype, *settings.engine.extra_args],
    )  # fmt: skip
    command = config.command(args.port)
    print("leanserve: exec", " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, config.environment())


def compress(argv: list[str]) -> int:
    python = os.environ.get("LEANSERVE_COMPRESS_PYTHON", ".venv-compress/bin/python")
    if not Path(python).exists():
        print(
            f"leanserve: the compress environment ({python}) is missing: run `make venv-compress`",
            file=sys.stderr,
        )
        return 2
    os.execv(python, [python, "-m", "compress", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compress"]:
        return compress(argv[1:])
    parser = argparse.ArgumentParser(prog="leanserve")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the OpenAI-compatible gateway and its engines")
    p.add_argument("--config", type=Path, help="YAML configuration file")
    p.add_argument("--model")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--home", type=Path)
    m = sub.add_parser("model", help="manage base models")
    m.add_argument("action", choices=["prepare"])
    m.add_argument("model", nargs="?", default="default")
    m.add_argument("--home", type=Path)
    en = sub.add_parser("engine", help="run one vLLM engine for the base or a built variant")
    en.add_argument("--recipe", help="serve the variant built from this recipe (default: base)")
    en.add_argument("--config", type=Path)
    en.add_argument("--model")
    en.add_argument("--home", type=Path)
    en.add_argument("--host", default="0.0.0.0")
    en.add_argument("--port", type=int, default=8000)
    en.add_argument("--wait-s", type=float, default=24 * 3600, help="how long to wait for a build")
    sub.add_parser("compress", help="build compressed variants (see `leanserve compress --help`)")
    from server.placement import show

    show.add_arguments(sub.add_parser("plan", help="print where each engine would run"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "plan":
        return show.main(args)
    if args.command == "engine":
        return engine(args)
    from server import basemodel

    home = ["--home", str(args.home)] if args.home else []
    return basemodel.main([args.model, *home])


if __name__ == "__main__":
    sys.exit(main())
