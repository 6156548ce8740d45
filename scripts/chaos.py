#!/usr/bin/env python3
"""Chaos run: jobs of mixed lengths on a live fleet while nodes, Redis and the master are killed.

    python scripts/chaos.py --jobs 200 --worker-kills 10 --redis-restarts 1 --master-kills 1 --seed 7
    python scripts/chaos.py --jobs 100 --worker-kills 10 --partitions 1 --s3-restarts 1 \
        --storage s3 --hosts 2 --seed 7

On a schedule drawn from the seed it SIGKILLs random worker nodes (and brings each back, with
the same node id, a few seconds later), kills and restarts Redis, and kills the leading master
(a standby takes over; a new standby is started). `--storage s3` starts the embedded S3
(SeaweedFS) and gives it to the fleet as its store; `--s3-restarts` kill and restart it.
`--hosts 2` runs half the nodes on a second host (tests/hosts.py, needs root: a network
namespace behind a veth pair and a filesystem of its own, reaching Redis and S3 at the first
host's veth address, reading the storage URL from Redis); `--partitions` cut that link for
`--partition-seconds`. Then it checks every job from two witnesses: what Redis recorded
(state, attempts) and what the jobs themselves logged (each step with its attempt and time, in
the attempt's log on the disk of the host it ran on, which Redis cannot veto):

- lost: a submitted job that did not end SUCCEEDED;
- doubled: a job whose work counted twice: two counted completions, or a step run again after
  an earlier attempt had committed its checkpoint (the next attempt must resume after it);
- two_nodes_at_once: attempts of one job whose logged steps overlap in time on two nodes;
- interrupted / resumed_from_checkpoint: jobs with an attempt ended by a fault after it had
  committed a checkpoint, and of those, the ones whose next attempt resumed from a checkpoint
  rather than from zero; interrupted_before_commit: jobs with an attempt that logged steps but
  was cut off or killed before its first checkpoint was uploaded and committed (nothing to
  resume from);
- steps_lost: steps done by an interrupted attempt after the checkpoint the next resumed from;
- steps_redone / finished_uncounted: steps logged by two attempts, and jobs with an attempt that
  logged `done` but never counted. Checkpoints are uploaded and committed beside training, so
  an attempt cut off or killed runs on (until it fences itself) past its last committed
  checkpoint, possibly to its end: that tail never counted and runs again. Lost work, not work
  counted twice, and never at the same time as the next attempt (two_nodes_at_once);
- leaked_reservations: reservations left on nodes once every job has ended;
- nodes_missing_at_end: nodes not heartbeating then (a cut-off host's must have rejoined).

Exits non-zero on any lost, doubled or concurrent job, or a leaked reservation. `--save`
writes the result with the machine's details to bench/results/chaos-<time>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.client import Client
from fleet.drivers.base import NodeShape
from fleet.drivers.local import LocalDriver
from fleet.drivers.processes import stop_processes
from fleet.drivers.redis_server import new_server
from fleet.drivers.s3_server import S3Server
from fleet.drivers.secret_files import service_env, write_secret
from fleet.observe.logs import log_file
from fleet.scaling import cores_for, node_index
from fleet.settings import Settings
from fleet.storage import StorageError, open_storage
from fleet.storage.layout import log_key
from fleet.store import keys, registry
from fleet.units import format_cpus, parse_memory

if TYPE_CHECKING:
    import subprocess

    from tests.hosts import SecondHost

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # chaos_check, bench_common beside it
from chaos_check import Job, check  # noqa: E402


@dataclass
class Event:
    at: float
    kind: str  # worker | redis | master | partition | s3


@dataclass
class LocalChaos:
    """A local fleet whose parts can be killed: private Redis, two masters, N nodes; with
    `storage="s3"` the embedded S3, with `hosts=2` the last half of the nodes on a second host."""

    base: Path
    nodes: int
    shape: NodeShape
    storage: str = "file"
    hosts: int = 1
    log: list[str] = field(default_factory=list)
    host2: SecondHost | None = None
    s3: S3Server | None = None
    far: set[str] = field(default_factory=set)  # the nodes on the second host
    far_procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _backoff: dict[str, float] = field(default_factory=dict)  # node -> no restart before

    @property
    def home(self) -> Path:
        return self.base / "home"

    def start(self) -> None:
        if self.hosts == 2:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))
            from tests.hosts import SecondHost

            self.host2 = SecondHost.create()
        address = self.host2.address if self.host2 else "127.0.0.1"
        self.server = new_server(self.home / "redis").start()
        self._listen()
        self.settings = Settings(home=self.home, redis_url=self.server.url,
                                 heartbeat_interval=0.5, heartbeat_ttl=3.0)
        if self.storage == "s3":
            self.s3 = S3Server(self.home / "s3", host=address).start()
            self.settings = self.settings.model_copy(update={
                "storage": f"s3://{self.s3.bucket}/chaos", "s3_endpoint": self.s3.endpoint,
                "s3_credentials_file": self.s3.credentials_file})
        self.driver = LocalDriver(self.settings)
        names = [f"node-{i}" for i in range(1, self.nodes + 1)]
        if self.host2:
            self.far = set(names[len(names) - self.nodes // 2:])
            self._far_env = self._second_host_disk(address)
        self.masters = [self.driver.start_master(self.server.url) for _ in range(2)]
        self.node_pids = {node: self._start_node(node) for node in names}

    def _listen(self) -> None:
        """Redis on loopback, and on the veth for the second host (again after each restart)."""
        if self.host2:
            self.server.client().config_set("bind", f"127.0.0.1 {self.host2.address}")

    def outside(self, path: Path) -> Path:
        """Where the second host's `path` lies on this disk."""
        return self.base / "host2" / path.relative_to(self.base)

    def _second_host_disk(self, address: str) -> dict[str, str]:
        """What an operator puts on the second host's disk: the Redis URL at this host's veth
        address and the S3 credentials, 0600; its nodes' environment, less the published
        storage URL and endpoint (they read those from Redis)."""
        url_file = self.home / "secrets" / "redis.url"
        write_secret(self.outside(url_file),
                     self.server.url.replace("@127.0.0.1:", f"@{address}:", 1))
        if self.settings.s3_credentials_file is not None:
            write_secret(self.outside(self.settings.s3_credentials_file),
                         self.settings.s3_credentials_file.read_text())
        own = self.settings.model_copy(update={"storage": None, "s3_endpoint": None})
        return service_env(own, url_file, self.home)

    def _start_node(self, node: str) -> int:
        if node not in self.far:
            return self.driver.start_node(node, self.shape, self.server.url)
        assert self.host2 is not None
        cores = cores_for(node_index(node) or 1, self.shape.cpus, sorted(os.sched_getaffinity(0)))
        argv = [sys.executable, "-m", "workers.main", "--node-id", node,
                "--cpus", format_cpus(self.shape.cpus), "--memory", str(int(self.shape.memory)),
                "--cpuset", ",".join(map(str, cores)), "--cgroup"]
        proc = self.host2.spawn(argv, env=self._far_env, root=self.base / "host2",
                                shadow=self.base, log=self.outside(self.home / "logs" / f"{node}.log"))
        self.far_procs[proc.pid] = proc
        return proc.pid

    def artifacts(self, node: str | None) -> Path:
        """The artifact directory of the host `node` runs on."""
        mine = self.settings.artifacts_dir
        return self.outside(mine) if node in self.far else mine

    def read_log(self, job_id: str, attempt: int, node: str | None) -> str:
        """An attempt's log from the disk of the host it ran on, else from the store."""
        log = log_file(self.artifacts(node), job_id, attempt)
        if log.exists():
            return log.read_text(errors="replace")
        try:
            return open_storage(self.settings).get_bytes(log_key(job_id, attempt)).decode(
                errors="replace")
        except StorageError:
            return ""

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

    def restart_exited(self, down: set[str]) -> None:
        """The operator's restart policy (systemd's Restart=on-failure, RestartSec=2): a node
        that exited on its own, not one killed here and not yet due back, is started again.
        A node started while its host is cut off exits: it cannot reach Redis to join."""
        now = time.monotonic()
        for node, pid in self.node_pids.items():
            proc = self.driver.procs.get(pid) or self.far_procs.get(pid)
            if node in down or proc is None or proc.poll() is None or now < self._backoff.get(node, 0):
                continue
            self.log.append(f"{time.time():.3f} {node} exited with code {proc.returncode}")
            self._backoff[node] = now + 2
            self.revive_worker(node)

    def restart_redis(self, down_for: float) -> None:
        self.server.kill()
        self.log.append(f"{time.time():.3f} killed redis")
        time.sleep(down_for)
        self.server.start()
        self._listen()
        self.log.append(f"{time.time():.3f} restarted redis")

    def restart_s3(self, down_for: float) -> None:
        assert self.s3 is not None
        self.s3.kill()
        self.log.append(f"{time.time():.3f} killed s3")
        time.sleep(down_for)
        self.s3.start()
        self.log.append(f"{time.time():.3f} restarted s3 (ready in {self.s3.started_in:.1f} s)")

    def cut(self) -> None:
        assert self.host2 is not None
        self.host2.cut()
        self.log.append(f"{time.time():.3f} cut the second host's link")

    def mend(self) -> None:
        assert self.host2 is not None
        self.host2.mend()
        self.log.append(f"{time.time():.3f} mended the second host's link")

    def kill_master(self) -> None:
        client = Client(self.settings)
        assert client.r is not None
        holder = client.r.get(keys.MASTER_LEASE)
        pid = int(holder.decode().split(":")[1]) if holder else self.masters[0]
        if pid in self.masters:
            self._kill(pid)
            self.masters.remove(pid)
        self.masters.append(self.driver.start_master(self.server.url))
        self.log.append(f"{time.time():.3f} killed master {pid}")

    def _kill(self, pid: int) -> None:
        """A crash: SIGKILL, no warm shutdown (reaped when this process started it)."""
        stop_processes([self.driver.procs.get(pid) or self.far_procs.get(pid) or pid], grace=0)

    def stop(self) -> None:
        if self.host2:
            self.host2.close()  # every process there, first: they are not the driver's
        stop_processes(list(self.driver.procs.values()), grace=0)
        self.server.stop()
        if self.s3:
            self.s3.stop()


def make_jobs(n: int, rng: random.Random) -> list[Job]:
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
    events += [Event(rng.uniform(horizon * 0.2, horizon * 0.8), "s3")
               for _ in range(args.s3_restarts)]
    # early enough that the second host still has jobs when it is cut off
    events += [Event(rng.uniform(horizon * 0.1, horizon * 0.4), "partition")
                for _ in range(args.partitions)]
    return sorted(events, key=lambda e: e.at)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    fleet = LocalChaos(base, args.nodes, NodeShape(cpus=1.0, memory=parse_memory("1Gi")),
                       storage=args.storage, hosts=args.hosts)
    try:
        fleet.start()
        client = Client(fleet.settings)
        assert client.r is not None
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
        later: list[tuple[float, str, Callable[[], None]]] = []  # revivals and mends, due at

        def due() -> None:
            now = time.monotonic() - t0
            for _at, _what, action in [x for x in later if x[0] <= now]:
                action()
            later[:] = [x for x in later if x[0] > now]
            fleet.restart_exited(down={w for _, w, _ in later})

        for event in schedule(args, rng, horizon):
            while time.monotonic() - t0 < event.at:
                due()
                time.sleep(0.1)
            now = time.monotonic() - t0
            if event.kind == "worker":
                node = fleet.kill_worker(rng, down={w for _, w, _ in later})
                if node is not None:
                    later.append((now + rng.uniform(2, 5), node,
                                  functools.partial(fleet.revive_worker, node)))
            elif event.kind == "redis":
                fleet.restart_redis(down_for=rng.uniform(1, 3))
            elif event.kind == "s3":
                fleet.restart_s3(down_for=rng.uniform(1, 3))
            elif event.kind == "partition" and not any(w == "mend" for _, w, _ in later):
                fleet.cut()
                later.append((now + args.partition_seconds, "mend", fleet.mend))
            elif event.kind == "master":
                fleet.kill_master()
        while later:
            due()
            time.sleep(0.1)
        finals = _wait_all(client, ids, args.timeout, due)
        wall = round(time.monotonic() - t0, 1)
        # every node back (a cut-off host's as new incarnations) within 30 s
        deadline = time.monotonic() + 30
        while (live := {r["node"] for r in registry.live_reports(client.r)}) < set(fleet.node_pids) \
                and time.monotonic() < deadline:
            due()
            time.sleep(0.5)
        return check(client, fleet.read_log, ids, finals) | {
            "nodes_missing_at_end": sorted(set(fleet.node_pids) - live), "seed": args.seed,
            "jobs": args.jobs, "nodes": args.nodes, "hosts": args.hosts,
            "storage": args.storage, "faults": fleet.log, "wall_s": wall}
    finally:
        fleet.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _wait_all(client: Client, ids: list[str], timeout: float, tick: Callable[[], None]
              ) -> dict[str, Job]:
    deadline = time.monotonic() + timeout
    finals: dict[str, Job] = {}
    while len(finals) < len(ids) and time.monotonic() < deadline:
        tick()
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


def save(result: Job, argv: list[str], machine: Job) -> Path:
    """bench/results/chaos-<time>.json: the result, the command and the machine (its load
    average at the start and at the end)."""
    from bench_common import RESULTS

    path = RESULTS / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "benchmark": "chaos", "command": " ".join(["python", "scripts/chaos.py", *argv]),
        "machine": machine | {"loadavg_end": list(os.getloadavg())},
        "result": result}, indent=1, default=sorted) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--worker-kills", type=int, default=5)
    p.add_argument("--redis-restarts", type=int, default=0)
    p.add_argument("--master-kills", type=int, default=0)
    p.add_argument("--storage", choices=["file", "s3"], default="file",
                   help="file: the artifact directory; s3: the embedded S3 server")
    p.add_argument("--s3-restarts", type=int, default=0)
    p.add_argument("--hosts", type=int, choices=[1, 2], default=1,
                   help="2: half the nodes on a second host (a network namespace; needs root)")
    p.add_argument("--partitions", type=int, default=0, help="cuts of the second host's link")
    p.add_argument("--partition-seconds", type=float, default=30.0)
    p.add_argument("--driver", choices=["local"], default="local")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for all jobs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", action="store_true", help="write bench/results/chaos-<time>.json")
    p.add_argument("--keep", action="store_true", help="keep the fleet's folder (logs, data)")
    args = p.parse_args(argv)
    if args.s3_restarts and args.storage != "s3":
        p.error("--s3-restarts: needs --storage s3")
    if args.partitions and args.hosts != 2:
        p.error("--partitions: needs --hosts 2")
    if args.hosts == 2 and args.nodes < 2:
        p.error("--nodes: --hosts 2 needs at least 2")
    from bench_common import machine

    started_on = machine()
    result = run(args)
    if args.save:
        path = save(result, sys.argv[1:] if argv is None else argv, started_on)
        print(f"saved {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, default=sorted))
    else:
        from rich.console import Console
        from rich.table import Table

        columns = {"jobs": "jobs", "faults": "faults", "lost": "lost", "doubled": "doubled",
                   "two_nodes_at_once": "two nodes at once", "interrupted": "interrupted",
                   "resumed_from_checkpoint": "resumed from checkpoint",
                   "steps_lost": "steps lost", "steps_redone": "steps redone",
                   "finished_uncounted": "finished uncounted",
                   "leaked_reservations": "leaked reservations", "wall_s": "wall s"}
        table = Table(*columns.values(), title=f"chaos run, seed {args.seed}")
        table.add_row(*(str(len(result[k]) if k == "faults" else result[k]) for k in columns))
        Console().print(table)
    bad = (result["lost"] or result["doubled"] or result["two_nodes_at_once"]
           or result["leaked_reservations"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
