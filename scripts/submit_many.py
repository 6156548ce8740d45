#!/usr/bin/env python3
"""Enqueue a hyper-parameter sweep: one job per point of a grid, on the running fleet.

    python scripts/submit_many.py examples/digits-torch.yaml \
        --grid params.lr=0.003,0.01,0.03 --grid params.hidden=32,64 --wait

Every point is validated before the first is submitted, so a bad grid enqueues nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from fleet.client import Client
from fleet.errors import FleetError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="job spec file (YAML or JSON)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a swept field; repeat for a cartesian product")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--repeat", type=int, default=1, help="submit each point this many times")
    p.add_argument("--wait", action="store_true", help="wait for every job; exit 1 if any failed")
    p.add_argument("--json", action="store_true", help="print the job ids (and states) as JSON")
    args = p.parse_args(argv)
    try:
        axes = [_axis(g) for g in args.grid]
        points = [list(args.overrides) + [f"{k}={v}" for k, v in combo]
                  for combo in itertools.product(*axes)] * args.repeat
        client = Client()
        specs = [client.spec_from(args.spec, overrides) for overrides in points]
        ids = [client.submit(spec) for spec in specs]
        states = {i: client.wait(i)["state"] for i in ids} if args.wait else {}
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps([{"id": i, "state": states.get(i, "PENDING")} for i in ids]))
    else:
        for i in ids:
            print(i, states.get(i, ""))
    return 1 if any(s != "SUCCEEDED" for s in states.values()) else 0


def _axis(text: str) -> list[tuple[str, str]]:
    key, _, values = text.partition("=")
    if not key or not values:
        raise FleetError(f"--grid: expected KEY=V1,V2, got {text!r}")
    return [(key, v) for v in values.split(",")]


if __name__ == "__main__":
    sys.exit(main())
