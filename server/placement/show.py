"""`leanserve plan`: print the placement plan without starting anything.

For this machine by default; `--cores`, `--gpus` and `--memory-gib` describe another one, and
`--base-gib` gives the size of a base that is not downloaded yet (a hub id), so a plan for a
server can be read on a laptop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from server.placement.machine import Machine, detect
from server.placement.needs import GIB, model_needs, size_ratio
from server.placement.plan import PlanError, table
from server.placement.planner import plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--model")
    p.add_argument("--home")
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p.add_argument("--cores", help="another machine: cores per NUMA node, e.g. 16,16")
    p.add_argument("--gpus", help="another machine's GPUs in GiB: 80x8, or 80,40")
    p.add_argument("--memory-gib", type=float, help="another machine's RAM")
    p.add_argument("--base-gib", type=float, help="the base's weights, when not on disk yet")


def _gpus(spec: str) -> list[int]:
    size, _, count = spec.partition("x")
    if count:
        return [int(float(size) * GIB)] * int(count)
    return [int(float(s) * GIB) for s in spec.split(",") if s]


def machine_from(args: argparse.Namespace, engine) -> Machine:
    if not (args.cores or args.gpus or args.memory_gib):
        return detect(with_gpus=engine.device != "cpu", cpus=engine.cpus)
    here = detect(with_gpus=False)
    cores = [int(n) for n in args.cores.split(",")] if args.cores else [len(here.cpus)]
    memory = int(args.memory_gib * GIB) if args.memory_gib else None
    return Machine.simple(cores, _gpus(args.gpus) if args.gpus else (), memory)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from server.settings import load_settings

    try:
        settings = load_settings(args.config, model=args.model, home=args.home)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"leanserve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    needs = model_needs(settings)
    if args.base_gib and needs:
        base = int(args.base_gib * GIB)
        needs = [dataclasses.replace(needs[0], weight_bytes=base)] + [
            dataclasses.replace(
                n, weight_bytes=int(base * size_ratio(n.recipe or "")), estimated=True
            )
            for n in needs[1:]
        ]
    try:
        result = plan(machine_from(args, settings.engine), needs, settings)
    except PlanError as exc:
        print(f"leanserve: the engines do not fit this machine: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else table(result))
    return 0
