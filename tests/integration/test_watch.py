"""Watching the fleet, for real: Flower in a real headless Chromium, logs followed live and after
a node's death, plots of recorded metrics, the Prometheus endpoint against the CLI, top, events.

Real Redis, real master and worker processes, a real Flower, a real browser (Debian's
`chromium`, driven over its DevTools protocol). Missing Chromium fails the test when CI=true.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleet.drivers.redis_server import RedisServer
from fleet.settings import Settings
from fleet.store import keys
from tests.integration.support import EXAMPLES, REPO, Fleet, eventually

T = TypeVar("T")

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1000",
]


def job(entrypoint: str, name: str = "t", cpus: float = 1, memory: str = "256Mi",
        **params: Any) -> dict:
    return {"name": name, "entrypoint": f"workers.jobs.synthetic:{entrypoint}",
            "resources": {"cpus": cpus, "memory": memory}, "params": params}


# -- a headless Chromium, driven over the DevTools protocol ----------------------------------------
def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


class Browser:
    """One page of a headless Chromium; `auth` goes in an Authorization header on every request."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        active = profile / "DevToolsActivePort"
        port = eventually(lambda: active.is_file() and active.read_text().split("\n")[0],
                          30, what="chromium's DevTools port")
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                                    timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws_url = page["webSocketDebuggerUrl"]
        self.loop = asyncio.new_event_loop()
        self.ws: Any = None
        self.seq = 0

    def call(self, method: str, **params: Any) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    async def _call(self, method: str, params: dict) -> dict:
        from tornado.websocket import websocket_connect

        if self.ws is None:
            self.ws = await websocket_connect(self.ws_url, max_message_size=64 * 2**20)
        self.seq += 1
        await self.ws.write_message(json.dumps({"id": self.seq, "method": method,
                                                "params": params}))
        while True:
            msg = await asyncio.wait_for(self.ws.read_message(), 30)
            if msg is None:
                raise AssertionError("chromium closed the DevTools connection")
            data = json.loads(msg)
            if data.get("id") == self.seq:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                return data.get("result", {})

    def open(self, url: str, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.call("Network.enable")
        self.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True)
        return str(result.get("result", {}).get("value", ""))

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.loop.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def _get(url: str, user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    return urllib.request.urlopen(req, timeout=10).read().decode()


def test_flower_in_headless_chromium_shows_the_jobs_task_and_its_progress(fleet: Fleet) -> None:
    executable = chromium_path()
    fleet.master()
    fleet.node("node-1")
    _pid, flower = fleet.driver._start_flower(fleet.server.url)  # as `fleet up` starts it
    url, user = flower["flower_url"], flower["flower_user"]
    password = Path(flower["flower_password_file"]).read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as denied:  # never open without a login
        eventually(lambda: _try_get(f"{url}/workers", "", ""), 60, what="flower to answer")
    assert denied.value.code == 401
    # Flower's view of tasks is built from events: wait until it hears the node's worker
    eventually(lambda: "node-1@" in _get(f"{url}/metrics", user, password), 60,
               what="flower to hear node-1's events")

    job_id = fleet.client.submit(job("sleep", name="flower-watch", seconds=120, steps=240))
    task = f"{job_id}.1"
    eventually(lambda: (fleet.client.status(job_id).get("progress") or {}).get("step", 0) >= 3,
               30, what="progress reports")

    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    browser = Browser(executable, profile)
    try:
        browser.open(f"{url}/tasks", user, password)
        listed = eventually(lambda: task in (t := browser.text()) and t, 30,
                            what="the job's task in Flower's task list")
        browser.screenshot(ARTIFACTS / "flower-tasks.png")
        row = next(line for line in listed.splitlines() if task in line)
        assert "flower-watch" in row and "PROGRESS" in row, row

        browser.call("Page.navigate", url=f"{url}/task/{task}")
        page = eventually(lambda: "progress" in (t := browser.text()) and t, 30,
                          what="the task page with its progress")
        browser.screenshot(ARTIFACTS / "flower-task.png")
        assert "flower-watch" in page and "PROGRESS" in page and "node-1@" in page, page
        shown = re.search(r'"step": (\d+)', page)
        assert shown and int(shown.group(1)) >= 3, page
        assert f'"job": "{job_id}"' in page and '"node": "node-1"' in page
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
        fleet.client.cancel(job_id)
    assert (ARTIFACTS / "flower-task.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fleet.wait_job(job_id, 30)["state"] == "CANCELLED"


def _try_get(url: str, user: str, password: str) -> str | None:
    try:
        return _get(url, user, password)
    except urllib.error.URLError as exc:
        if isinstance(exc, urllib.error.HTTPError):
            raise
        return None


# -- logs ----------------------------------------------------------------------------------------
def test_logs_follow_shows_lines_within_2s_and_they_survive_the_workers_death(fleet: Fleet) -> None:
    fleet.master()
    node = fleet.node("node-1")
    job_id = fleet.client.submit(job("print_lines", name="printer", lines=300, interval=0.2))
    env = {**os.environ, **fleet.settings.to_env()}
    follower = subprocess.Popen([sys.executable, "-m", "fleet", "logs", job_id, "-f"], env=env,
                                stdout=subprocess.PIPE, text=True)
    seen: list[tuple[float, str]] = []

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            seen.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        eventually(lambda: len(seen) >= 15, 60, what="15 followed lines")
        reports = {r["step"]: r["time"] for r in fleet.client.metrics(job_id)}
        for arrived, text in seen[5:15]:  # past the follower's start-up
            i = int(text.split()[1])
            assert text == f"line {i} of 300"
            assert arrived - reports[i] < 2.0, (text, arrived - reports[i])
        fleet.kill(node)  # SIGKILL the worker node: the job process dies with it
        time.sleep(1.0)
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)  # it has read to the end: the pipe can be closed under no one
        assert follower.stdout is not None
        follower.stdout.close()
    followed = [text for _, text in seen]
    after = fleet.cli("logs", job_id, "--attempt", "1")
    assert after.returncode == 0, after.stderr
    kept = after.stdout.splitlines()
    assert kept[: len(followed)] == followed
    assert kept == [f"line {i} of 300" for i in range(1, len(kept) + 1)]
    assert len(kept) >= 15
    log_path = fleet.settings.artifacts_dir / "jobs" / job_id / "attempt-1" / "output.log"
    assert log_path.read_text().splitlines()[: len(kept)] == kept
    missing = fleet.cli("logs", job_id, "--attempt", "7")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


# -- plots ---------------------------------------------------------------------------------------
def _check_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


@pytest.mark.training
def test_plot_of_a_finished_torch_job_draws_its_recorded_metrics(fleet: Fleet, tmp_path: Path) -> None:
    from fleet.observe.plot import draw_job, job_series

    fleet.master()
    fleet.node("node-1", memory="2Gi")
    job_id = fleet.client.submit(EXAMPLES / "digits-torch.yaml", overrides=["params.epochs=4"])
    final = fleet.wait_job(job_id, 240)
    assert final["state"] == "SUCCEEDED", final
    out = tmp_path / "plot-digits-torch.png"
    done = fleet.cli("plot", job_id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    _check_png(out)

    reports = fleet.client.metrics(job_id)
    drawn = draw_job(job_series(job_id, reports, final["attempts"]), tmp_path / "again.png")
    assert {"loss", "accuracy"} <= set(drawn["panels"])
    for metric, lines in drawn["panels"].items():
        assert lines == [{"attempt": 1, "x": [float(r["step"]) for r in reports],
                          "y": [r["metrics"][metric] for r in reports]}]
    assert [r["step"] for r in reports] == [1, 2, 3, 4]
    assert drawn["boundaries"] == []


def test_plot_marks_where_a_retried_attempt_resumed(fleet: Fleet, tmp_path: Path) -> None:
    from fleet.observe.plot import draw_job, job_series

    fleet.master()
    fleet.node("node-1")
    job_id = fleet.client.submit(job("steps", name="resumer", steps=5, step_seconds=0.1, crash_at=3))
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "SUCCEEDED" and final["attempt"] == 2, final
    assert final["attempts"][1]["resumed_from_step"] == 3
    out = tmp_path / "plot-resumed.png"
    done = fleet.cli("plot", job_id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    _check_png(out)
    drawn = draw_job(job_series(job_id, fleet.client.metrics(job_id), final["attempts"]),
                     tmp_path / "again.png")
    assert drawn["boundaries"] == [3.0]
    assert [(line["attempt"], line["x"]) for line in drawn["panels"]["progress"]] == [
        (1, [1.0, 2.0, 3.0]), (2, [4.0, 5.0])]


def test_plot_of_the_fleet_draws_node_load(fleet: Fleet, tmp_path: Path) -> None:
    fleet.master()
    fleet.node("node-1")
    eventually(lambda: fleet.r.llen(keys.node_history("node-1")) >= 3, 30, what="load samples")
    out = tmp_path / "plot-fleet.png"
    done = fleet.cli("plot", "--fleet", "-o", str(out))
    assert done.returncode == 0, done.stderr
    _check_png(out)


# -- Prometheus ----------------------------------------------------------------------------------
@pytest.fixture
def slow_fleet(tmp_path: Path, redis_server: RedisServer) -> Any:
    """Heartbeats every 3 s: node reports hold still long enough to compare two readers."""
    settings = Settings(home=tmp_path / "home", redis_url=redis_server.url,
                        heartbeat_interval=3.0, heartbeat_ttl=15.0)
    f = Fleet(settings, redis_server)
    yield f
    f.stop()
    print(f.log_tails())


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_endpoint_parses_and_matches_nodes_and_jobs(slow_fleet: Fleet) -> None:
    from fleet.drivers.redis_server import free_port

    f = slow_fleet
    f.master()
    f.node("node-1", cpus=1, memory="2Gi")
    done = f.client.submit(job("noop", name="done"))
    assert f.wait_job(done, 60)["state"] == "SUCCEEDED"
    running = f.client.submit(job("sleep", name="runs", seconds=120, steps=120))
    f.wait_state(running, "RUNNING")
    eventually(lambda: any(n["jobs"] for n in f.client.nodes()), 30,
               what="a heartbeat that lists the running job")  # reports are 3 s apart here
    waiting = f.client.submit(job("noop", name="waits"))
    cancelled = f.client.submit(job("noop", name="cancelled"))
    f.wait_state(waiting, "PENDING")
    assert f.client.cancel(cancelled) == "CANCELLED"

    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "fleet", "exporter", f"--port={port}"],
                                env={**os.environ, **f.settings.to_env()},
                                stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        eventually(lambda: _try_scrape(url), 30, what="the exporter to answer")
        # The jobs hold still from here on; the node reports anew every 3 s, and `fleet nodes`
        # may take longer than that to start on a busy machine. So the metrics compared are
        # those of a scrape that saw the very report `fleet nodes` read: scrapes run back to
        # back from before it starts until after it ends, one of them (unless two reports
        # came within one scrape) while that report was the node's last.
        jobs = json.loads(f.cli("jobs", "--json", "--limit", "1000", check=True).stdout)
        stamp = ("fleet_node_report_timestamp_seconds", (("node", "node-1"),))
        for _ in range(10):
            scrapes, listed = _scraping(url, lambda: f.cli("nodes", "--json", check=True))
            nodes = json.loads(listed.stdout)
            m = next((s for s in scrapes if s[stamp] == nodes[0]["time"]), None)
            if m is not None:
                break
        else:
            raise AssertionError("no scrape saw the node report `fleet nodes` read")
    finally:
        exporter.terminate()
        exporter.wait(10)

    by_state: dict[str, int] = {}
    for j in jobs:
        by_state[j["state"]] = by_state.get(j["state"], 0) + 1
    assert by_state == {"SUCCEEDED": 1, "RUNNING": 1, "PENDING": 1, "CANCELLED": 1}
    for state in ("PENDING", "PLACED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
        assert m[("fleet_jobs", (("state", state),))] == by_state.get(state, 0), state
    assert m[("fleet_pending_jobs", ())] == by_state["PENDING"]
    assert m[("fleet_nodes", ())] == len(nodes) == 1
    for n in nodes:
        label = ("node", n["node"])
        for kind, values in (("capacity", n["capacity"]), ("reserved", n["reserved"]),
                             ("used", n["usage"])):
            labels = (("kind", kind), label)
            assert m[("fleet_node_cpus", labels)] == pytest.approx(values["cpus"]), kind
            assert m[("fleet_node_memory_bytes", labels)] == values["memory"], kind
            assert m[("fleet_node_gpus", labels)] == values.get("gpus", 0), kind
        assert m[("fleet_node_running_jobs", (label,))] == len(n["jobs"]) == 1
    assert nodes[0]["reserved"]["cpus"] == 1.0
    started = [f.client.status(j) for j in (done, running)]
    placed = sorted(s["attempts"][0]["placed_at"] - s["submitted_at"] for s in started)
    waited = sorted(s["attempts"][0]["started_at"] - s["submitted_at"] for s in started)
    assert m[("fleet_job_placement_latency_seconds_count", ())] == 2
    assert m[("fleet_job_placement_latency_seconds_sum", ())] == pytest.approx(sum(placed))
    assert m[("fleet_job_wait_seconds_count", ())] == 2
    assert m[("fleet_job_wait_seconds_sum", ())] == pytest.approx(sum(waited))
    assert m[("fleet_job_wait_seconds_bucket", (("le", "+Inf"),))] == 2
    f.client.cancel(running)
    f.client.cancel(waiting)


def _scraping(url: str, run: Callable[[], T]) -> tuple[list[dict[tuple[str, tuple], float]], T]:
    """`run()`'s value and the scrapes of `url` taken back to back from before it starts until
    after it returns, in order."""
    scrapes = [_scrape(url)]
    done = threading.Event()

    def scrape_until_done() -> None:
        while not done.is_set():
            scrapes.append(_scrape(url))

    scraper = threading.Thread(target=scrape_until_done, daemon=True)
    scraper.start()
    try:
        value = run()
    finally:
        done.set()
        scraper.join()
    scrapes.append(_scrape(url))
    return scrapes, value


def _try_scrape(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).read()
        return True
    except OSError:
        return False


# -- events and top ------------------------------------------------------------------------------
def test_events_json_lists_a_jobs_lifecycle_and_top_renders_once(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    env = {**os.environ, **fleet.settings.to_env()}
    follower = subprocess.Popen([sys.executable, "-m", "fleet", "events", "-f", "--json"],
                                env=env, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    collector = _collect(follower, lines)
    time.sleep(1.5)  # let it start following before the job exists
    job_id = fleet.client.submit(job("noop", name="evented"))
    assert fleet.wait_job(job_id, 60)["state"] == "SUCCEEDED"

    listed = fleet.cli("events", job_id, "--json")
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["event"] for e in events] == ["submitted", "placed", "started", "finished"]
    assert all(e["job"] == job_id and isinstance(e["time"], float) for e in events)
    assert events[1]["node"] == "node-1" and events[1]["attempt"] == 1
    assert events[2]["node"] == "node-1" and events[2]["attempt"] == 1
    assert events[3]["state"] == "SUCCEEDED" and events[3]["reason"] == "SUCCEEDED"
    try:
        followed = eventually(
            lambda: next((e for e in map(json.loads, lines)
                          if e["job"] == job_id and e["event"] == "finished"), None),
            20, what="the followed finished event")
    finally:
        follower.terminate()
        follower.wait(10)
        collector.join(10)  # it has read to the end: the pipe can be closed under no one
        assert follower.stdout is not None
        follower.stdout.close()
    assert followed["state"] == "SUCCEEDED"

    busy = fleet.client.submit(job("sleep", name="busy", seconds=60, steps=60))
    fleet.wait_state(busy, "RUNNING")
    waits = fleet.client.submit(job("noop", name="queued"))
    eventually(lambda: fleet.client.status(waits)["waiting"], 20, what="a waiting reason")
    top = fleet.cli("top", "--once")
    assert top.returncode == 0, top.stderr
    assert "node-1" in top.stdout and busy in top.stdout and waits in top.stdout
    assert "pending (1)" in top.stdout
    fleet.client.cancel(waits)
    fleet.client.cancel(busy)


def _collect(proc: subprocess.Popen, into: list[str]) -> threading.Thread:
    """Read a child's stdout lines into a list, in a thread (a pipe's reads block)."""

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread
