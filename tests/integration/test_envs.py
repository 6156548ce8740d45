"""A bundle's `requirements`, built into a per-node env from the node's package index.

The index is the test's own: a wheel of a package no image has (`fleetprobe-pkg`), made here and
served on 127.0.0.1 as a PEP 503 simple index; the nodes are configured with it
(FLEET_PIP_INDEX_URL) and nothing else is reachable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.drivers.redis_server import RedisServer
from fleet.errors import SpecError
from fleet.settings import Settings
from tests.integration.support import Fleet, eventually
from tests.wheels import make_wheel, served, simple_index

pytestmark = pytest.mark.integration

PROBE = '''\
import os
import sys


def run(ctx):
    import fleetprobe_pkg
    import numpy

    print("probe imported", fleetprobe_pkg.VALUE, flush=True)
    def where(module):
        return sys.path.index(os.path.dirname(os.path.dirname(module.__file__)))

    return {"value": fleetprobe_pkg.VALUE, "probe": fleetprobe_pkg.__file__,
            "numpy": numpy.__file__, "code_first": __file__.startswith(sys.path[0]),
            "env_before_node": where(fleetprobe_pkg) < where(numpy)}


def noop(ctx):
    return {}
'''

SPEC: dict[str, Any] = {"name": "envjob", "entrypoint": "probe.job:run",
                        "resources": {"cpus": 1, "memory": "512Mi"}, "max_retries": 2}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[str]:
    wheel = make_wheel(tmp_path / "wheels", "fleetprobe-pkg", "1.0",
                       {"fleetprobe_pkg/__init__.py": "VALUE = 42\n"})
    with served(simple_index(tmp_path / "index", {"fleetprobe-pkg": wheel})) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer, index: str) -> Settings:
    return Settings(home=tmp_path / "home", redis_url=redis_server.url, heartbeat_interval=0.5,
                    heartbeat_ttl=3.0, pip_index_url=index, env_build_timeout=120)


def probe_folder(root: Path, requirements: str | None = None) -> Path:
    folder = root / "probe-project"
    (folder / "probe").mkdir(parents=True)
    (folder / "probe" / "__init__.py").write_text("")
    (folder / "probe" / "job.py").write_text(PROBE)
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


def fleet_lines(fleet: Fleet, job: str) -> list[str]:
    return [line for line in fleet.client.log_lines(job, 1) if line.startswith("[fleet: ")]


def test_the_first_job_builds_the_env_and_the_next_one_finds_it(
        fleet: Fleet, tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "elsewhere", "# the job's packages\nfleetprobe-pkg\nnumpy\n")
    fleet.master()
    fleet.node("node-1")
    first = fleet.client.submit(SPEC, code=folder)  # requirements.txt, read at submit
    assert fleet.client.status(first)["state"] in ("PENDING", "PLACED", "RUNNING")
    seen = eventually(lambda: fleet.client.status(first)["phase"] == "PREPARING", 60, 0.02,
                      what="the PREPARING phase")
    assert seen
    final = fleet.wait_job(first, 180)
    assert final["state"] == "SUCCEEDED", final
    assert final["phase"] is None
    assert final["result"]["value"] == 42
    assert "/envs/" in final["result"]["probe"]  # from the job's env
    assert "/envs/" not in final["result"]["numpy"]  # the node's own, not installed again
    assert final["result"]["code_first"] and final["result"]["env_before_node"]
    assert final["attempts"][0]["env_built"] is True
    lines = fleet.client.log_lines(first, 1)
    assert any("Successfully installed fleetprobe-pkg-1.0" in line for line in lines), lines
    assert any("Requirement already satisfied: numpy" in line for line in lines), lines
    assert "probe imported 42" in lines
    events = [e["event"] for e in fleet.client.events(first)]
    assert events.index("started") < events.index("preparing") < events.index("prepared")

    # The same packages, written another way in the spec: the same env, found, not rebuilt.
    second = fleet.client.submit({**SPEC, "requirements": ["NumPy", "FleetProbe_Pkg"]},
                                 code=folder)
    done = fleet.wait_job(second, 60)
    assert done["state"] == "SUCCEEDED", done
    attempt = done["attempts"][0]
    assert (attempt["env_built"], attempt["env"]) == (False, final["attempts"][0]["env"])
    assert attempt["env_seconds"] <= 0.5, attempt
    assert not any("building env" in line for line in fleet_lines(fleet, second))

    # A bundle named by its digest alone: the node reads its requirements.txt, same env.
    digest = fleet.client.store.get(first)["spec"]["bundle"]  # type: ignore[index]
    by_digest = fleet.wait_job(fleet.client.submit({**SPEC, "bundle": digest}), 60)
    assert by_digest["state"] == "SUCCEEDED", by_digest
    assert by_digest["attempts"][0]["env"] == attempt["env"]

    # [] overrides the bundle's requirements.txt: no env, so no fleetprobe_pkg
    bare = fleet.client.submit({**SPEC, "requirements": [], "max_retries": 0}, code=folder)
    control = fleet.wait_job(bare, 60)
    assert control["state"] == "FAILED" and "fleetprobe_pkg" in control["error"], control

    # What a found env adds to a job, claim to end: the same no-op with and without it.
    took: dict[str, list[float]] = {"env": [], "bare": []}
    for _ in range(3):
        for kind, wanted in (("env", ["numpy", "fleetprobe-pkg"]), ("bare", [])):
            job = fleet.client.submit({**SPEC, "entrypoint": "probe.job:noop",
                                       "requirements": wanted}, code=folder)
            end = fleet.wait_job(job, 60)
            assert end["state"] == "SUCCEEDED", end
            took[kind].append(end["finished_at"] - end["started_at"])
    added = sorted(took["env"])[1] - sorted(took["bare"])[1]
    print(f"env found in {attempt['env_seconds'] * 1000:.1f} ms; claim to end (median of 3): "
          f"{sorted(took['env'])[1]:.3f} s with the env, {sorted(took['bare'])[1]:.3f} s "
          f"without: {added * 1000:+.0f} ms")
    assert added <= 0.5, took


def test_a_requirement_the_index_lacks_fails_the_job_once_with_pips_error(
        fleet: Fleet, tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "elsewhere")
    fleet.master()
    fleet.node("node-1")
    job = fleet.client.submit({**SPEC, "requirements": ["fleetprobe-missing>=1"]}, code=folder)
    final = fleet.wait_job(job, 180)
    assert (final["state"], final["reason"]) == ("FAILED", "ENV_FAILED"), final
    assert "No matching distribution found for fleetprobe-missing" in final["error"]
    assert len(final["attempts"]) == 1  # final: not retried
    assert fleet.client.metrics(job) == []
    assert any("fleetprobe-missing" in line for line in fleet.client.log_lines(job, 1))

    with pytest.raises(SpecError, match=r"requirements\.0: pip options \(--index-url\)"):
        fleet.client.submit({**SPEC, "requirements": ["--index-url http://elsewhere/"]},
                            code=folder)
    bad = probe_folder(tmp_path / "bad", "fleetprobe-pkg\n-e ../mine\n")
    with pytest.raises(SpecError, match=r"requirements.txt: line 2: pip options \(-e\)"):
        fleet.client.submit(SPEC, code=bad)


def test_two_jobs_needing_one_new_env_at_once_build_it_once(
        fleet: Fleet, tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "elsewhere")
    fleet.master()
    fleet.node("node-1", cores=[0])
    fleet.node("node-2", cores=[1])
    spec = {**SPEC, "requirements": ["fleetprobe-pkg==1.0"]}
    jobs = [fleet.client.submit(spec, code=folder) for _ in range(2)]
    started = time.monotonic()
    finals = [fleet.wait_job(job, 180) for job in jobs]
    assert [f["state"] for f in finals] == ["SUCCEEDED", "SUCCEEDED"], finals
    assert {f["node"] for f in finals} == {"node-1", "node-2"}  # at once, on two nodes
    built = sorted(f["attempts"][0]["env_built"] for f in finals)
    assert built == [False, True]
    builds = [line for job in jobs for line in fleet_lines(fleet, job) if "building env" in line]
    assert len(builds) == 1, builds
    waited = [line for job in jobs for line in fleet_lines(fleet, job)
              if "built by another job" in line]
    assert len(waited) == 1, [fleet_lines(fleet, job) for job in jobs]
    print(f"two jobs, one build: both done in {time.monotonic() - started:.1f} s")


def test_the_build_has_its_own_timeout_and_a_cancel_stops_it(
        tmp_path: Path, redis_server: RedisServer) -> None:
    wheel = make_wheel(tmp_path / "wheels", "fleetprobe-pkg", "1.0",
                       {"fleetprobe_pkg/__init__.py": "VALUE = 42\n"})
    simple = simple_index(tmp_path / "index", {"fleetprobe-pkg": wheel})
    with served(simple, delay=1.0, hang=120) as url:  # each answer a second late
        fleet = Fleet(Settings(home=tmp_path / "home", redis_url=redis_server.url,
                               heartbeat_interval=0.5, heartbeat_ttl=3.0, pip_index_url=url,
                               env_build_timeout=12), redis_server)
        try:
            folder = probe_folder(tmp_path / "elsewhere")
            fleet.master()
            fleet.node("node-1")
            # A build of 2 s and more (two answers) under a job timeout of 1 s: not counted.
            job = fleet.client.submit({**SPEC, "requirements": ["fleetprobe-pkg"], "timeout": 1},
                                      code=folder)
            final = fleet.wait_job(job, 120)
            assert final["state"] == "SUCCEEDED", final
            assert final["attempts"][0]["env_seconds"] > 2.0

            # pip waiting on the index past FLEET_ENV_BUILD_TIMEOUT: stopped, FAILED once.
            started = time.monotonic()
            job = fleet.client.submit({**SPEC, "requirements": ["fleetprobe-hang"]}, code=folder)
            final = fleet.wait_job(job, 120)
            assert (final["state"], final["reason"]) == ("FAILED", "ENV_FAILED"), final
            assert "ran past 12 s (FLEET_ENV_BUILD_TIMEOUT)" in final["error"]
            assert len(final["attempts"]) == 1
            assert time.monotonic() - started < 60

            # Cancelled while PREPARING: pip is stopped, the job CANCELLED.
            job = fleet.client.submit({**SPEC, "requirements": ["fleetprobe-hang", "numpy"]},
                                      code=folder)
            eventually(lambda: fleet.client.status(job)["phase"] == "PREPARING", 60,
                       what="the PREPARING phase")
            shown = fleet.cli("status", job)
            assert "RUNNING" in shown.stdout and "phase: PREPARING" in shown.stdout, shown
            assert "preparing env" in fleet.cli("jobs").stdout
            asked = time.monotonic()
            fleet.client.cancel(job, wait=0)
            final = fleet.wait_job(job, 60)
            assert final["state"] == "CANCELLED", final
            print(f"cancelled while preparing: ended {time.monotonic() - asked:.2f} s later")
            assert time.monotonic() - asked < 10
        finally:
            fleet.stop()
            print(fleet.log_tails())
