"""`leanserve`: serve the gateway, prepare a base model, or run a compress job.

leanserve serve [--config FILE] [--model M] [--host H] [--port P] [--home DIR]
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
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        access_log=False,
    )
    uvicorn.Server(config).run()
    return 0


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
    sub.add_parser("compress", help="build compressed variants (see `leanserve compress --help`)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    from server import basemodel

    home = ["--home", str(args.home)] if args.home else []
    return basemodel.main([args.model, *home])


if __name__ == "__main__":
    sys.exit(main())
