"""The node's fork server: job processes forked from a warm interpreter behave as exec'd ones did.

Real processes (a fork server and its jobs), no Redis: each test starts its own server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.context import JobContext
from workers.process.forkclient import ForkServer, JobProcess, LeaseLapsed


# -- jobs these tests run (this module is on the orders' allowlist) ------------------------------
def whoami(ctx: JobContext) -> dict[str, Any]:
    ctx.report(1)
    return {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
            "cwd": os.getcwd(), "var": os.environ.get("FLEET_TEST_VAR"),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "secret": os.environ.get("FLEET_TEST_SECRET"),
            "cmdline": Path("/proc/self/cmdline").read_bytes().decode().split("\0")}


def with_child(ctx: JobContext, seconds: float = 60) -> dict[str, Any]:
    """Starts a grandchild in its own process group, reports its pid, then waits."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ctx.report(1, child=child.pid)
    ctx.wait(seconds)
    return {}


def exits(ctx: JobContext, code: int = 3) -> dict[str, Any]:
    os._exit(code)


def leaves_an_orphan(ctx: JobContext) -> dict[str, Any]:
    """Starts a grandchild outside its group (so the group sweep spares it) and returns."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"],
                             start_new_session=True)
    ctx.report(1, child=child.pid)
    return {}


def sizes(ctx: JobContext, blob: str = "") -> dict[str, Any]:
    return {"blob": len(blob)}


# -- helpers -------------------------------------------------------------------------------------
def _server() -> ForkServer:
    env = {k: v for k, v in os.environ.items() if k != "FLEET_TEST_SECRET"}
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return ForkServer({**env, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def server() -> Iterator[ForkServer]:
    fs = _server()
    fs.renew(time.monotonic() + 3600)  # a node's lease, held through the test
    fs.start()
    yield fs
    fs.stop()


@pytest.fixture
def unleased() -> Iterator[ForkServer]:
    """A server whose lease the test gives (or not) itself."""
    fs = _server()
    fs.start()
    yield fs
    if fs.pid is not None:
        os.kill(fs.pid, signal.SIGCONT)
    fs.stop()


def order(workdir: Path, entrypoint: str, **params: Any) -> bytes:
    return json.dumps({
        "job_id": "t-00000000", "attempt": 1, "entrypoint": entrypoint, "params": params,
        "framework": "none", "allowlist": ["workers.jobs", "tests.unit.test_forkserver"],
        "workdir": str(workdir), "checkpoint_dir": str(workdir / "ckpt"),
        "resources": {"cpus": 1, "memory": 2**28, "cpuset": [], "gpu_ids": []},
    }).encode()


def events_of(job: JobProcess, timeout: float = 30) -> list[dict]:
    """Every event the job wrote, once its event pipe closes."""
    data = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(job.events, True)
    while time.monotonic() < deadline:
        chunk = os.read(job.events, 1 << 16)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines() if line]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def eventually_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def eventually_reaped(pid: int, timeout: float = 10) -> bool:
    """Gone from /proc: not even a zombie."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def close(job: JobProcess) -> None:
    for fd in (job.events, job.output):
        try:
            os.close(fd)
        except OSError:
            pass
    job.close()


# -- tests ---------------------------------------------------------------------------------------
def test_a_forked_job_runs_in_its_own_session_with_its_env_and_cwd(server: ForkServer,
                                                                   tmp_path: Path) -> None:
    os.environ["FLEET_TEST_SECRET"] = "x"  # set after the server started: never seen by jobs
    try:
        job = server.spawn({"FLEET_TEST_VAR": "yes", "OMP_NUM_THREADS": "3"}, tmp_path,
                           order(tmp_path, "tests.unit.test_forkserver:whoami"))
        assert job.wait(30) == 0
        events = events_of(job)
    finally:
        os.environ.pop("FLEET_TEST_SECRET", None)
    assert [e["type"] for e in events] == ["progress", "result"]
    me = events[-1]["result"]
    assert me["pid"] == job.pid == me["pgid"] == me["sid"]  # its own session and group
    assert me["ppid"] == server.pid  # forked by the server, not exec'd by the supervisor
    assert me["cwd"] == str(tmp_path)
    assert (me["var"], me["threads"], me["secret"]) == ("yes", "3", None)
    assert me["cmdline"][1:3] == ["-m", "workers.process.jobproc"]  # as ps showed an exec'd one
    assert job.maxrss > 0
    close(job)


def test_an_order_larger_than_a_pipe_reaches_the_job_whole(server: ForkServer,
                                                           tmp_path: Path) -> None:
    job = server.spawn({}, tmp_path, order(tmp_path, "tests.unit.test_forkserver:sizes",
                                           blob="x" * 300_000))
    assert job.wait(30) == 0
    assert events_of(job)[-1]["result"] == {"blob": 300_000}
    close(job)


def test_exit_codes_and_errors_come_back_as_subprocess_gives_them(server: ForkServer,
                                                                 tmp_path: Path) -> None:
    failed = server.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:fail",
                                              message="boom"))
    assert failed.wait(30) == 1
    assert events_of(failed)[-1] == {"type": "error", "error": "RuntimeError: boom"}
    assert b"RuntimeError: boom" in os.read(failed.output, 1 << 16)  # the traceback, its log
    exited = server.spawn({}, tmp_path, order(tmp_path, "tests.unit.test_forkserver:exits",
                                              code=3))
    assert exited.wait(30) == 3
    killed = server.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:steps",
                                              steps=1, step_seconds=0, crash_at=1))
    assert killed.wait(30) == -signal.SIGKILL and not killed.server_lost
    for job in (failed, exited, killed):
        close(job)


def test_jobs_die_with_the_server_and_a_dead_server_is_replaced(server: ForkServer,
                                                                tmp_path: Path) -> None:
    job = server.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:sleep",
                                           seconds=60, steps=60))
    assert job.wait(0.5) is None and alive(job.pid)
    old = server.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)  # as the OOM killer or a stray kill would
    assert job.wait(10) == -signal.SIGKILL and job.server_lost
    assert eventually_dead(job.pid)  # PR_SET_PDEATHSIG: no orphan
    close(job)
    again = server.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:noop"))
    assert server.pid != old and again.wait(30) == 0
    close(again)


def test_closing_the_server_kills_its_jobs_and_what_they_started(server: ForkServer,
                                                               tmp_path: Path) -> None:
    """What a SIGKILLed worker amounts to: its end of the control socket closes."""
    job = server.spawn({}, tmp_path, order(tmp_path, "tests.unit.test_forkserver:with_child"))
    deadline = time.monotonic() + 30
    line = b""
    while b"\n" not in line and time.monotonic() < deadline:
        line += os.read(job.events, 1 << 16)
    grandchild = int(json.loads(line.split(b"\n")[0])["metrics"]["child"])
    assert alive(job.pid) and alive(grandchild)
    server.stop()
    assert eventually_dead(job.pid) and eventually_dead(grandchild)
    close(job)


def test_what_a_job_leaves_orphaned_is_reaped_by_the_server(server: ForkServer,
                                                           tmp_path: Path) -> None:
    job = server.spawn({}, tmp_path, order(tmp_path, "tests.unit.test_forkserver:leaves_an_orphan"))
    assert job.wait(30) == 0
    orphan = int(events_of(job)[0]["metrics"]["child"])
    stat = Path(f"/proc/{orphan}/stat").read_text()
    assert int(stat.rsplit(")", 1)[1].split()[1]) == server.pid  # reparented to the server
    assert eventually_reaped(orphan)  # and reaped when it ends, not left a zombie
    close(job)


def test_a_killed_worker_leaves_no_job_behind(tmp_path: Path) -> None:
    """The worker (here: a child python holding a ForkServer) is SIGKILLed mid-job."""
    code = (
        "import json, os, sys, time\n"
        "from pathlib import Path\n"
        "from workers.process.forkclient import ForkServer\n"
        "fs = ForkServer({**os.environ, 'PYTHONUNBUFFERED': '1'})\n"
        "fs.renew(time.monotonic() + 600)\n"
        "job = fs.spawn({}, Path(sys.argv[1]), sys.argv[2].encode())\n"
        "print(job.pid, fs.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    spec = order(tmp_path, "workers.jobs.synthetic:sleep", seconds=60, steps=60).decode()
    repo = str(Path(__file__).resolve().parents[2])
    worker = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), spec],
                              stdout=subprocess.PIPE, text=True, cwd=repo,
                              env={**os.environ, "PYTHONPATH": repo})
    try:
        assert worker.stdout is not None
        job_pid, server_pid = map(int, worker.stdout.readline().split())
        assert alive(job_pid) and alive(server_pid)
    finally:
        worker.kill()
        worker.wait(10)
        assert worker.stdout is not None
        worker.stdout.close()
    assert eventually_dead(server_pid) and eventually_dead(job_pid)


@pytest.mark.parametrize("name", ["Path", "json", "JobContext"])
def test_a_job_process_runs_only_a_function_its_module_defines(server: ForkServer,
                                                               tmp_path: Path, name: str) -> None:
    """An imported class, module or function (the node's own check; submit checks the source)."""
    job = server.spawn({}, tmp_path, order(tmp_path, f"tests.unit.test_forkserver:{name}"))
    assert job.wait(30) == 1
    errors = [e["error"] for e in events_of(job) if e["type"] == "error"]
    assert errors == [f"TypeError: tests.unit.test_forkserver defines no function {name!r}"]
    close(job)


# -- fencing: jobs live only while the node's lease does -------------------------------------------
def test_without_a_lease_the_server_starts_no_job(unleased: ForkServer, tmp_path: Path) -> None:
    with pytest.raises(LeaseLapsed, match="lease"):
        unleased.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:noop"))
    unleased.renew(time.monotonic() + 3600)
    job = unleased.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:noop"))
    assert job.wait(30) == 0 and not job.fenced
    close(job)


def test_a_lease_that_runs_out_kills_the_jobs_and_starts_no_more(unleased: ForkServer,
                                                                  tmp_path: Path) -> None:
    unleased.renew(time.monotonic() + 2)  # and no renewal after: the worker is paused
    job = unleased.spawn({}, tmp_path, order(tmp_path, "tests.unit.test_forkserver:with_child"))
    line = b""
    while b"\n" not in line:
        line += os.read(job.events, 1 << 16)
    grandchild = int(json.loads(line.split(b"\n")[0])["metrics"]["child"])
    assert job.wait(30) == -signal.SIGKILL and job.fenced
    assert eventually_dead(grandchild)  # its whole group
    with pytest.raises(LeaseLapsed):
        unleased.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:noop"))
    close(job)


def test_a_lapsed_renewal_kills_what_runs_however_long_the_new_lease(unleased: ForkServer,
                                                                      tmp_path: Path) -> None:
    unleased.renew(time.monotonic() + 3600)
    job = unleased.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:sleep",
                                             seconds=60, steps=60))
    assert job.wait(0.5) is None
    unleased.renew(time.monotonic() + 3600, lapsed=True)  # Redis had let the lease expire
    assert job.wait(30) == -signal.SIGKILL and job.fenced
    again = unleased.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:noop"))
    assert again.wait(30) == 0  # the new lease serves new jobs
    for j in (job, again):
        close(j)


def test_a_job_stops_itself_when_its_lease_ran_out_while_the_server_was_stopped(
    unleased: ForkServer, tmp_path: Path
) -> None:
    """A whole node resumed from SIGSTOP: its jobs may run before its fork server does."""
    unleased.renew(time.monotonic() + 2)
    job = unleased.spawn({}, tmp_path, order(tmp_path, "workers.jobs.synthetic:sleep",
                                             seconds=600, steps=6000))
    assert unleased.pid is not None
    os.kill(unleased.pid, signal.SIGSTOP)  # it cannot kill anything now
    try:
        assert eventually_dead(job.pid, 30)  # the job's own fence (a zombie, unreaped)
    finally:
        os.kill(unleased.pid, signal.SIGCONT)
    assert job.wait(30) == -signal.SIGKILL and job.fenced
    close(job)
