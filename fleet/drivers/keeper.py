"""The keeper: the process `fleet up` (local driver) leaves behind to run the fleet it started.

`fleet up` starts it and waits for one report line on a pipe: the fleet is up, or why not. The
keeper starts the embedded S3 server (`--storage s3`), Redis, the master, Flower, the exporter
and the nodes as its own children (so it reaps them and sees each death at once), then watches
the services: one that dies is started again after a backoff (0.5 s, doubling to 30 s, back to
0.5 s once it has lived a minute), Redis on its append-only file, S3 on its data with the same
ports and keys, so a SIGKILLed master is back in well under 10 s. Nodes are not
restarted here: a drained node exits on purpose, and a lost node's jobs are the master's to
re-place. The keeper holds FLEET_HOME's lock for as long as it runs, so a second `fleet up`
there fails at once. SIGTERM ends the keeper alone; `fleet down` stops it first, then the fleet.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

from fleet.drivers.base import NodeShape, UpResult
from fleet.drivers.local import LocalDriver
from fleet.drivers.processes import stop_processes
from fleet.errors import FleetError
from fleet.settings import SECRET_ENV, Settings
from fleet.statefile import remove_state

log = logging.getLogger("fleet.keeper")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a service that lived this long starts its backoff over
POLL_S = 0.2
UP_TIMEOUT_S = 300.0
KEEPER_EXIT_S = 30.0  # a keeper that reported failure has only to exit


def next_delay(failures: int, lived: float) -> tuple[float, int]:
    """(seconds to wait before the restart, failures counted so far) after a service that lived
    `lived` seconds died, `failures` being the count before. Pure."""
    if lived >= STABLE_S:
        failures = 0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**failures), failures + 1


@dataclass
class Watch:
    """One supervised service: its current pid, when it started, when to restart it."""

    pid: int
    started: float
    failures: int = 0
    restart_at: float | None = None


# -- in `fleet up`: start the keeper, wait for its report ----------------------------------------
def start(settings: Settings, workers: int, shape: NodeShape, *, flower: bool,
          lock_fd: int) -> UpResult:
    home = settings.home_dir
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "fleet.drivers.keeper", f"--report-fd={write_end}",
            f"--lock-fd={lock_fd}", f"--workers={workers}", f"--cpus={shape.cpus!r}",
            f"--memory={int(shape.memory)}", *([] if flower else ["--no-flower"])]
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update({k: v for k, v in settings.to_env().items() if k not in SECRET_ENV})
    env["FLEET_HOME"] = str(home)
    keeper_log = logs / "keeper.log"
    with keeper_log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                pass_fds=(write_end, lock_fd))
    os.close(write_end)
    try:
        line = _read_line(read_end, UP_TIMEOUT_S)
    finally:
        os.close(read_end)
    if not line:
        code = proc.poll()
        what = "did not report" if code is None else f"exited with code {code}"
        raise FleetError(f"the fleet's keeper {what} before the fleet was up (log: {keeper_log})")
    report = json.loads(line)
    if "error" in report:
        # The keeper reports only after stopping what it started; wait for it to exit too,
        # so a failed `fleet up` returns with nothing of the fleet still running.
        _reap(proc)
        raise FleetError(report["error"])
    up = report["up"]
    return UpResult(up["redis_url"], up["flower_url"], up["flower_user"],
                    up["flower_password_file"], tuple(up["nodes"]))


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a keeper that reported failure to exit; kill it if it hangs on the way out."""
    try:
        proc.wait(KEEPER_EXIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read_line(fd: int, timeout: float) -> str:
    """One line from `fd` (until EOF or the timeout)."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0]


# -- the keeper process ---------------------------------------------------------------------------
class Keeper:
    """Restarts the services of a LocalDriver that started them in this process."""

    def __init__(self, driver: LocalDriver) -> None:
        self.driver = driver
        now = time.monotonic()
        state = driver._state()
        self.watches = {name: Watch(pid, now) for name, pid in state["pids"].items()
                        if name in ("redis", "s3", *driver.services) and isinstance(pid, int)}

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        for proc in list(self.driver.procs.values()):
            proc.poll()  # reap every child (nodes too), so none lingers as a zombie
        for name, watch in self.watches.items():
            if watch.restart_at is None and not self._alive(watch.pid):
                delay, watch.failures = next_delay(watch.failures, now - watch.started)
                watch.restart_at = now + delay
                log.warning("%s (pid %d) died; restarting it in %.1f s", name, watch.pid, delay)
            if watch.restart_at is not None and now >= watch.restart_at:
                self._restart(name, watch)

    def _restart(self, name: str, watch: Watch) -> None:
        try:
            pid = self.driver.restart(name)
        except FleetError as exc:
            delay, watch.failures = next_delay(watch.failures, 0.0)
            watch.restart_at = time.monotonic() + delay
            log.error("%s did not start again: %s; next try in %.1f s", name, exc, delay)
            return
        watch.pid, watch.started, watch.restart_at = pid, time.monotonic(), None
        with self.driver.locked_state() as state:
            state["pids"][name] = pid
        log.warning("%s started again (pid %d)", name, pid)

    def _alive(self, pid: int) -> bool:
        proc = self.driver.procs.get(pid)
        if proc is not None:
            return proc.poll() is None
        for server in (self.driver.server, self.driver.s3):
            if server is not None and server.process is not None and server.process.pid == pid:
                return server.process.poll() is None
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fleet.drivers.keeper")
    p.add_argument("--report-fd", type=int, required=True)
    p.add_argument("--lock-fd", type=int, required=True)  # held, never read: FLEET_HOME's lock
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--cpus", type=float, required=True)
    p.add_argument("--memory", type=int, required=True)
    p.add_argument("--no-flower", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    report = os.fdopen(args.report_fd, "w")
    driver = LocalDriver(Settings())
    try:
        up = driver.start_fleet(args.workers, NodeShape(args.cpus, args.memory),
                                flower=not args.no_flower)
    except Exception as exc:  # reported to `fleet up` in one line; the traceback stays here
        log.exception("the fleet did not come up")
        message = str(exc) if isinstance(exc, FleetError) else (
            f"the fleet did not come up ({type(exc).__name__}: {exc}); "
            f"see {driver.logs / 'keeper.log'}")
        _stop_started(driver)
        report.write(json.dumps({"error": message}) + "\n")
        report.close()
        return 1
    report.write(json.dumps({"up": asdict(up)}) + "\n")
    report.close()
    log.info("fleet up: %d nodes; supervising %s", len(up.nodes), ", ".join(
        ["redis", *(["s3"] if driver.s3 else []), *driver.services]))
    Keeper(driver).run(stop)
    log.info("keeper stopping (the fleet runs on until `fleet down`)")
    return 0


def _stop_started(driver: LocalDriver) -> None:
    """Stop what a failed start left running, and its state: nothing half-up stays behind."""
    stop_processes(list(driver.procs.values()), grace=10)
    if driver.server is not None:
        driver.server.stop()
    if driver.s3 is not None:
        driver.s3.stop()
    remove_state(driver.settings)
    driver.url_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
