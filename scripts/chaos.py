#!/usr/bin/env python3
"""Chaos run: jobs of mixed lengths on a live fleet while nodes, Redis and the master are killed.

    python scripts/chaos.py --jobs 200 --worker-kills 10 --redis-restarts 1 --master-kills 1 --seed 7

On a schedule drawn from the seed it SIGKILLs random worker nodes (and brings each back, with
the same node id, a few seconds later), kills and restarts Redis, and kills the leading master
(a standby takes over; a new standby is started). Then it checks every job from two witnesses:
what Redis recorded (state, attempts) and what the jobs themselves logged (each step with its
attempt and time, in the artifact store, which Redis cannot veto):

- lost: a submitted job that did not end SUCCEEDED;
- doubled: a job whose work was completed by more than one attempt;
- two_nodes_at_once: attempts of one job whose logged steps overlap in time on two nodes;
- interrupted / resumed_from_checkpoint: jobs with an attempt ended by a fault, and of those,
  the ones whose next attempt resumed from a checkpoint rather than from zero;
- steps_lost: steps done by an interrupted attempt after its last checkpoint (redone later);
- leaked_reservations: reservations left on nodes once every job has ended.

Exits non-zero on any lost, doubled or concurrent job, or a leaked reservation.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.client import Client
from fleet.drivers.base import NodeShape
from fleet.drivers.local import LocalDriver
from fleet.drivers.processes import stop_processes
from fleet.drivers.redis_server import new_server
from fleet.observe.logs import log_file
from fleet.settings import Settings
from fleet.store import keys, registry
from fleet.units import parse_memory

STEP_LINE = re.compile(r"^step (\d+) attempt (\d+) at ([\d.]+)$")
DONE_LINE = re.compile(r"^done attempt (\d+) at ([\d.]+)$")


@dataclass
class Event:
    at: float
    kind: str  # worker | redis | master


@dataclass
class LocalChaos:
    """A local fleet whose parts can be killed: private Redis, two masters, N nodes."""

    home: Path
    nodes: int
    shape: NodeShape
    log: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.server = new_server(self.home / "redis").start()
        self.settings = Settings(home=self.home, redis_url=self.server.url,
                                 heartbeat_interval=0.5, heartbeat_ttl=3.0)
        self.driver = LocalDriver(self.settings)
        self.masters = [self.driver.start_master(self.server.url) for _ in range(2)]
        self.node_pids = {f"node-{i}": self._start_node(f"node-{i}") for i in range(1, self.nodes + 1)}

    def _start_node(self, node: str) -> int:
        return self.driver.start_node(node, self.shape, self.server.url)

    def kill_worker(self, rng: random.Random, down: set[str]) -> str | None:
        alive = sorted(set(self.node_pids) - down)
        if not alive:
            return None
        node = rng.choice(alive)
        self._kill(self.node_pids[node])
        self.log.append(f"{time.time():.3f} killed {node}")
        return node

    def revive_worker(self, node: str) -> None:
        self.node_pids[node] = self._start_node(node)
        self.log.append(f"{time.time():.3f} restarted {node}")

    def restart_redis(self, down_for: float) -> None:
        self.server.kill()
        self.log.append(f"{time.time():.3f} killed redis")
        time.sleep(down_for)
        self.server.start()
        self.log.append(f"{time.time():.3f} restarted redis")

    def kill_master(self) -> None:
        client = Client(self.settings)
        holder = client.r.get(keys.MASTER_LEASE)
        pid = int(holder.decode().split(":")[1]) if holder else self.masters[0]
        if pid in self.masters:
            self._kill(pid)
            self.masters.remove(pid)
        self.masters.append(self.driver.start_master(self.server.url))
        self.log.append(f"{time.time():.3f} killed master {pid}")

    def _kill(self, pid: int) -> None:
        """A crash: SIGKILL, no warm shutdown (reaped when this process started it)."""
        stop_processes([self.driver.procs.get(pid, pid)], grace=0)

    def stop(self) -> None:
        stop_processes(list(self.driver.procs.values()), grace=0)
        self.server.stop()


def make_jobs(n: int, rng: random.Random) -> list[dict[str, Any]]:
    jobs = []
    for _ in range(n):
        steps = rng.choice([4, 6, 8, 12, 16, 24])
        jobs.append({
            "name": "chaos", "entrypoint": "workers.jobs.synthetic:steps",
            "resources": {"cpus": rng.choice([0.5, 1.0]), "memory": "192Mi"},
            "params": {"steps": steps, "step_seconds": rng.choice([0.2, 0.3, 0.5])},
            "max_retries": 2,
        })
    return jobs


def schedule(args: argparse.Namespace, rng: random.Random, horizon: float) -> list[Event]:
    events = [Event(rng.uniform(2, horizon), "worker") for _ in range(args.worker_kills)]
    events += [Event(rng.uniform(horizon * 0.2, horizon * 0.8), "redis")
               for _ in range(args.redis_restarts)]
    events += [Event(rng.uniform(horizon * 0.1, horizon * 0.9), "master")
               for _ in range(args.master_kills)]
    return sorted(events, key=lambda e: e.at)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    fleet = LocalChaos(home, args.nodes, NodeShape(cpus=1.0, memory=parse_memory("1Gi")))
    fleet.start()
    try:
        client = Client(fleet.settings)
        deadline = time.monotonic() + 60
        while len(registry.live_reports(client.r)) < args.nodes:
            if time.monotonic() > deadline:
                raise SystemExit("nodes did not come up")
            time.sleep(0.2)
        specs = make_jobs(args.jobs, rng)
        ids = [client.submit(s) for s in specs]
        work = sum(s["params"]["steps"] * s["params"]["step_seconds"] for s in specs)
        horizon = max(10.0, work / (args.nodes * 1.5))
        t0 = time.monotonic()
        revive: list[tuple[float, str]] = []
        for event in schedule(args, rng, horizon):
            while time.monotonic() - t0 < event.at:
                revive = _revive_due(fleet, revive, t0)
                time.sleep(0.1)
            if event.kind == "worker":
                node = fleet.kill_worker(rng, down={n for _, n in revive})
                if node is not None:
                    revive.append((time.monotonic() - t0 + rng.uniform(2, 5), node))
            elif event.kind == "redis":
                fleet.restart_redis(down_for=rng.uniform(1, 3))
            else:
                fleet.kill_master()
        while revive:
            revive = _revive_due(fleet, revive, t0)
            time.sleep(0.1)
        finals = _wait_all(client, ids, args.timeout)
        return check(client, fleet.settings, ids, finals) | {
            "seed": args.seed, "jobs": args.jobs, "nodes": args.nodes, "faults": fleet.log,
            "wall_s": round(time.monotonic() - t0, 1)}
    finally:
        fleet.stop()


def _revive_due(fleet: LocalChaos, revive: list[tuple[float, str]], t0: float) -> list:
    now = time.monotonic() - t0
    for _at, node in [r for r in revive if r[0] <= now]:
        fleet.revive_worker(node)
    return [r for r in revive if r[0] > now]


def _wait_all(client: Client, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    finals: dict[str, dict] = {}
    while len(finals) < len(ids) and time.monotonic() < deadline:
        for job_id in ids:
            if job_id not in finals:
                try:
                    status = client.status(job_id)
                except Exception:  # noqa: BLE001 - a job missing from Redis is counted as lost
                    continue
                if status["terminal"]:
                    finals[job_id] = status
        time.sleep(0.5)
    return finals


def check(client: Client, settings: Settings, ids: list[str], finals: dict[str, dict]) -> dict:
    lost, doubled, concurrent, interrupted, resumed = [], [], [], [], []
    not_resumed: list[dict] = []
    details: list[dict] = []
    steps_lost = 0
    for job_id in ids:
        final = finals.get(job_id)
        if final is None or final["state"] != "SUCCEEDED":
            lost.append(job_id)
        attempts = client.status(job_id)["attempts"] if final else []
        runs = _witness(settings, job_id, attempts)
        counted = sum(a.get("end_reason") == "SUCCEEDED" for a in attempts)
        if counted > 1 or _steps_run_twice(runs):
            doubled.append(job_id)
            details.append({"job": job_id, "attempts": attempts, "runs": runs})
        if _overlap(runs):
            concurrent.append(job_id)
        # Interrupted: an attempt ended by a fault after it had done (and checkpointed) a step.
        # An attempt lost while still queued, or before its first step, had no work to lose.
        cut = [i for i, a in enumerate(attempts[:-1])
               if a.get("end_reason") != "SUCCEEDED" and runs[i]["last_step"] > 0]
        if cut:
            interrupted.append(job_id)
            if all(_resumed_after(attempts, runs, i) for i in cut):
                resumed.append(job_id)
            else:
                not_resumed.append({"job": job_id, "attempts": attempts, "runs": runs})
        for i in range(len(attempts) - 1):
            steps_lost += max(0, runs[i]["last_step"] - (attempts[i + 1].get("resumed_from_step") or 0))
    leaked = {s["node"]: list(s["alloc"]) for s in registry.node_states(client.r) if s["alloc"]}
    return {
        "lost": len(lost), "doubled": len(doubled), "two_nodes_at_once": len(concurrent),
        "interrupted": len(interrupted), "resumed_from_checkpoint": len(resumed),
        "resumed_ratio": round(len(resumed) / len(interrupted), 3) if interrupted else None,
        "steps_lost": steps_lost, "leaked_reservations": sum(len(v) for v in leaked.values()),
        "lost_ids": lost, "doubled_ids": doubled, "concurrent_ids": concurrent,
        "not_resumed": not_resumed, "doubled_details": details,
    }


def _resumed_after(attempts: list[dict], runs: list[dict], i: int) -> bool:
    """The next attempt that really ran (one lost while queued did not) resumed from a step."""
    for j in range(i + 1, len(attempts)):
        if attempts[j].get("resumed_from_step"):
            return True
        if runs[j]["last_step"] > 0 or attempts[j].get("end_reason") == "SUCCEEDED":
            return False
    return False


def _steps_run_twice(runs: list[dict]) -> bool:
    """A step logged by two attempts: work done twice (a step is logged after its checkpoint)."""
    seen: set[int] = set()
    for r in runs:
        if seen & r["steps"]:
            return True
        seen |= r["steps"]
    return False


def _witness(settings: Settings, job_id: str, attempts: list[dict]) -> list[dict]:
    """Per attempt: the node, the first and last logged step time, whether it logged `done`."""
    runs = []
    for a in attempts:
        log = log_file(settings.artifacts_dir, job_id, int(a["attempt"]))
        times, last_step, done, steps = [], 0, False, set()
        for line in log.read_text().splitlines() if log.exists() else []:
            if m := STEP_LINE.match(line):
                last_step = int(m.group(1))
                steps.add(last_step)
                times.append(float(m.group(3)))
            elif m := DONE_LINE.match(line):
                done = True
                times.append(float(m.group(2)))
        runs.append({"node": a.get("node"), "start": min(times, default=None),
                     "end": max(times, default=None), "done": done, "last_step": last_step,
                     "steps": steps})
    return runs


def _overlap(runs: list[dict]) -> bool:
    spans = sorted((r["start"], r["end"], r["node"]) for r in runs if r["start"] is not None)
    return any(b[0] < a[1] and a[2] != b[2] for a, b in zip(spans, spans[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--worker-kills", type=int, default=5)
    p.add_argument("--redis-restarts", type=int, default=0)
    p.add_argument("--master-kills", type=int, default=0)
    p.add_argument("--driver", choices=["local"], default="local")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for all jobs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, default=sorted))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("jobs", "faults", "lost", "doubled", "two nodes at once", "interrupted",
                      "resumed from checkpoint", "steps lost", "leaked reservations", "wall s",
                      title=f"chaos run, seed {args.seed}")
        table.add_row(str(result["jobs"]), str(len(result["faults"])), str(result["lost"]),
                      str(result["doubled"]), str(result["two_nodes_at_once"]),
                      str(result["interrupted"]), str(result["resumed_from_checkpoint"]),
                      str(result["steps_lost"]), str(result["leaked_reservations"]),
                      str(result["wall_s"]))
        Console().print(table)
    bad = (result["lost"] or result["doubled"] or result["two_nodes_at_once"]
           or result["leaked_reservations"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
