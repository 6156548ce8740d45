"""Every input a user or a network can send: valid, or refused naming the field, nothing half-done.

Hypothesis drives the real client and the real CLI against a live Redis with a live node
report: after each example, what Redis holds is exactly what was accepted, with no reservation.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.client import Client
from fleet.errors import SpecError
from fleet.store import keys, registry
from tests.integration.support import Fleet
from tests.unit.test_spec import json_like, mutate, paths

pytestmark = pytest.mark.integration
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def _one_node(fleet: Fleet) -> None:
    registry.heartbeat(fleet.r, {"node": "node-1", "incarnation": "i",
                                 "capacity": {"cpus": 4, "memory": 8 * 2**30, "gpus": 1}}, ttl=600)


def _accepted(fleet: Fleet) -> int:
    """Submissions acknowledged: in the operator's intake (no master runs to take them)."""
    assert not registry.allocations(fleet.r, "node-1")  # nothing reserved: no master runs
    assert fleet.r.zcard(keys.JOBS) == fleet.r.zcard(keys.PENDING) == 0
    return fleet.r.xlen(keys.intake("operator"))


@settings(max_examples=1000, deadline=None, suppress_health_check=HEALTH)
@given(changes=st.lists(st.tuples(paths, json_like, st.booleans()), min_size=1, max_size=3))
def test_hypothesis_specs_are_accepted_whole_or_refused_naming_the_field(
        fleet: Fleet, changes: list[tuple[str, Any, bool]]) -> None:
    _one_node(fleet)
    before = _accepted(fleet)
    try:
        job_id = fleet.client.submit(mutate(changes))
    except SpecError as exc:
        assert exc.field and "\n" not in str(exc)
        assert _accepted(fleet) == before
    else:
        assert _accepted(fleet) == before + 1
        assert fleet.client.status(job_id)["state"] == "PENDING"


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run the real `fleet` entry point in-process; (exit code, stderr)."""
    from fleet.cli.main import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        old = sys.argv
        sys.argv = ["fleet", *argv]
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = old
    return code, err.getvalue()


overrides = st.tuples(paths, json_like).map(
    lambda pv: f"{pv[0]}={yaml.safe_dump(pv[1], default_flow_style=True).strip()}")


@settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
@given(sets=st.lists(overrides | st.text(max_size=12), max_size=3),
       extra=st.lists(st.sampled_from(["--json", "--wait=x", "--bogus", "-x", "", "--set"]),
                      max_size=2))
def test_hypothesis_cli_arguments_never_show_a_traceback(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch, sets: list[str], extra: list[str]) -> None:
    _one_node(fleet)
    for name, value in fleet.settings.to_env().items():
        monkeypatch.setenv(name, value)
    from fleet.cli.context import settings as cached

    cached.cache_clear()
    spec = Path(__file__).resolve().parents[2] / "examples" / "digits-torch.yaml"
    argv = ["submit", str(spec), *[a for s in sets for a in ("--set", s)], *extra]
    before = _accepted(fleet)
    code, err = _cli(argv)
    assert "Traceback" not in err
    if code == 0:
        assert _accepted(fleet) == before + 1
    else:
        assert _accepted(fleet) == before
        assert err.strip() and len(err.strip().splitlines()) <= 6, err  # click usage is 3-5 lines


def test_unreachable_redis_and_redis_dying_mid_command_are_one_line(fleet: Fleet) -> None:
    env = {**os.environ, **fleet.settings.to_env()}
    closed = f"redis://:x@127.0.0.1:{fleet.server.port + 1}/0"
    out = subprocess.run([sys.executable, "-m", "fleet", "jobs"], capture_output=True, text=True,
                         env={**env, "FLEET_REDIS_URL": closed}, timeout=60)
    assert out.returncode == 3 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach redis" in out.stderr
    # submit --wait follows a job; Redis dies under it
    spec = Path(__file__).resolve().parents[2] / "examples" / "digits-torch.yaml"
    _one_node(fleet)
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "submit", str(spec), "--wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    import time

    deadline = time.monotonic() + 30
    while fleet.r.xlen(keys.intake("operator")) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    fleet.server.kill()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    fleet.server.start()  # the fixture's teardown expects it back


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_SPECS = {  # what a user sent -> the field the one-line error must name
    "deep-params": ({"params": {"x": _deep(10_000)}}, "params"),
    "huge-label": ({"node_selector": {"k" * 10_000_000: "v"}}, "node_selector"),
    "private-function": ({"entrypoint": "workers.jobs.synthetic:_fault"}, "entrypoint"),
    "a-class": ({"entrypoint": "workers.jobs.synthetic:Path"}, "entrypoint"),
    "a-module": ({"entrypoint": "workers.jobs.synthetic:os"}, "entrypoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_each_bad_input_is_refused_by_client_and_cli_naming_the_field(
        fleet: Fleet, tmp_path: Path, case: str) -> None:
    import json

    _one_node(fleet)
    change, field = BAD_SPECS[case]
    data = {"name": "bad", "entrypoint": "workers.jobs.synthetic:sleep", **change}
    with pytest.raises(SpecError) as info:
        fleet.client.submit(data)
    assert info.value.field == field and "\n" not in str(info.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data) if case != "deep-params" else
                    '{"name": "bad", "entrypoint": "workers.jobs.synthetic:sleep", "params": '
                    '{"x": ' + "[" * 10_000 + "]" * 10_000 + "}}")
    out = fleet.cli("submit", str(path))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and (field in lines[0] or "file" in lines[0])
    assert _accepted(fleet) == 0


@pytest.mark.parametrize("name, value", [
    ("FLEET_ALLOWLIST", "workers.jobs,my-train"), ("FLEET_REDIS_URL", "notaurl")])
def test_a_bad_variable_exits_2_with_one_line_naming_it(fleet: Fleet, name: str, value: str) -> None:
    out = subprocess.run([sys.executable, "-m", "fleet", "jobs"], capture_output=True, text=True,
                         env={**os.environ, **fleet.settings.to_env(), name: value}, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        out.stderr.strip()] and name in out.stderr, out.stderr


def test_the_comma_form_of_the_allowlist_is_accepted(fleet: Fleet) -> None:
    env = {**os.environ, **fleet.settings.to_env(), "FLEET_ALLOWLIST": "workers.jobs,tests"}
    out = subprocess.run([sys.executable, "-m", "fleet", "jobs"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_client_raises_only_fleet_errors_while_redis_is_away(fleet: Fleet) -> None:
    from fleet.errors import RedisUnavailable

    _one_node(fleet)
    job_id = fleet.client.submit({"name": "a", "entrypoint": "workers.jobs.synthetic:noop"})
    fleet.server.kill()
    try:
        for call in (lambda: fleet.client.submit({"name": "b",
                                                  "entrypoint": "workers.jobs.synthetic:noop"}),
                     lambda: fleet.client.status(job_id), fleet.client.jobs, fleet.client.nodes,
                     lambda: next(fleet.client.follow(job_id)),
                     lambda: fleet.client.cancel(job_id)):
            with pytest.raises(RedisUnavailable, match="retry"):
                call()
    finally:
        fleet.server.start()
    assert fleet.client.status(job_id)["state"] == "PENDING"  # acknowledged, kept


def test_wait_gives_up_at_its_timeout_while_the_job_does_not_change(fleet: Fleet) -> None:
    import time

    from fleet.errors import WaitTimedOut

    _one_node(fleet)  # and no master: the job stays PENDING, its status never changes
    job_id = fleet.client.submit({"name": "a", "entrypoint": "workers.jobs.synthetic:noop"})
    started = time.monotonic()
    with pytest.raises(WaitTimedOut, match="still PENDING after 1s"):
        fleet.client.wait(job_id, timeout=1)
    assert time.monotonic() - started < 30  # not the old unbounded wait: no tight bound here


__all__ = ["Client"]
