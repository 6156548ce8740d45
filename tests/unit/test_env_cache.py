"""A node's job envs: named by what decides them, built once under a lock, a killed build never
used, evicted least recently used past the budget but never while in use; pip's failure in one
line, its time bounded. Builds here are stand-ins (a few files), not pip."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.cli.render import progress_line
from fleet.spec import JobSpec
from fleet.states import JobState
from fleet.store.protocol import Store
from fleet.views import job_view
from workers.env.build import BuildCancelled, BuildFailed, run
from workers.env.cache import MARKER, EnvCache, Lease
from workers.env.policy import Kept, env_key, failure_summary, requirements_of, to_evict

A, B, C = "a" * 32, "b" * 32, "c" * 32


def never() -> bool:
    return False


def fake_build(calls: list[str], size: int = 100, pause: float = 0.0) -> Callable[[Path], None]:
    def build(target: Path) -> None:
        calls.append(target.name)
        time.sleep(pause)
        site = target / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        site.mkdir(parents=True)
        (site / "blob").write_bytes(b"x" * size)
    return build


def acquire(cache: EnvCache, key: str, calls: list[str], size: int = 100,
            pause: float = 0.0) -> Lease:
    return cache.acquire(key, fake_build(calls, size, pause), waiting=lambda: None, wait_s=30,
                         cancelled=never)


def test_an_env_is_named_by_its_requirements_python_and_index() -> None:
    key = env_key(["numpy", "scipy"], "/usr/bin/python 3.11.7", ("https://idx/simple", None))
    assert len(key) == 32 and key == env_key(["scipy", "numpy"], "/usr/bin/python 3.11.7",
                                             ("https://idx/simple", None))
    assert key != env_key(["numpy"], "/usr/bin/python 3.11.7", ("https://idx/simple", None))
    assert key != env_key(["numpy", "scipy"], "/usr/bin/python 3.12.1", ("https://idx/simple", None))
    assert key != env_key(["numpy", "scipy"], "/usr/bin/python 3.11.7", ("https://other/", None))


def test_a_stored_requirements_list_is_checked_again_on_the_node() -> None:
    assert requirements_of(None) == []
    assert requirements_of(["NumPy", "numpy"]) == ["numpy"]
    for bad in ("numpy", [1], ["-e ."]):
        with pytest.raises(ValueError):
            requirements_of(bad)


def test_eviction_takes_the_least_recently_used_until_the_rest_fit() -> None:
    envs = [Kept(A, 50, 3.0), Kept(B, 50, 1.0), Kept(C, 50, 2.0)]
    assert to_evict(envs, budget=150) == []
    assert to_evict(envs, budget=100) == [B]
    assert to_evict(envs, budget=0) == [B, C, A]
    assert to_evict(envs, budget=0, keep={B}) == [C, A]  # the env just built stays, over or not


def test_pips_failure_is_its_error_lines_in_one_line() -> None:
    output = ("Looking in indexes: http://127.0.0.1/\nCollecting nosuch\n"
              "ERROR: Could not find a version that satisfies the requirement nosuch\n"
              "ERROR: No matching distribution found for nosuch\n")
    assert failure_summary(output) == ("ERROR: Could not find a version that satisfies the "
                                       "requirement nosuch | ERROR: No matching distribution "
                                       "found for nosuch")
    assert failure_summary("a\nb\nc\nd\n") == "b | c | d"
    assert failure_summary("") == "no output"
    assert len(failure_summary("x" * 1000)) == 400


def test_an_env_is_built_once_then_found(tmp_path: Path) -> None:
    cache, calls = EnvCache(tmp_path / "envs", 10**6), list[str]()
    first = acquire(cache, A, calls)
    assert (first.built, first.waited) == (True, True) and first.site.is_dir()
    first.release()
    again = acquire(cache, A, calls)
    assert (again.built, again.waited, calls) == (False, False, [A])
    again.release()


def test_two_jobs_at_once_build_one_env_once(tmp_path: Path) -> None:
    cache, calls = EnvCache(tmp_path / "envs", 10**6), list[str]()
    leases: list[Lease] = []
    barrier = threading.Barrier(2)

    def job() -> None:
        barrier.wait()
        leases.append(acquire(cache, A, calls, pause=0.5))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [A]
    assert sorted(lease.built for lease in leases) == [False, True]
    assert all(lease.waited for lease in leases)


def test_a_failed_or_killed_build_leaves_nothing_used(tmp_path: Path) -> None:
    cache, calls = EnvCache(tmp_path / "envs", 10**6), list[str]()

    def failing(target: Path) -> None:
        (target / "half").mkdir(parents=True)
        raise BuildFailed("pip install exited with code 1: ERROR: nope")

    with pytest.raises(BuildFailed):
        cache.acquire(A, failing, waiting=lambda: None, wait_s=5, cancelled=never)
    assert not (cache.root / A).exists()
    (cache.root / B / "lib").mkdir(parents=True)  # what a SIGKILLed build left: no marker
    lease = acquire(cache, B, calls)
    assert lease.built and (cache.root / B / MARKER).is_file()
    lease.release()
    (cache.root / C / "lib").mkdir(parents=True)
    assert cache.evict() == [C]


def test_eviction_keeps_the_budget_but_never_removes_an_env_in_use(tmp_path: Path) -> None:
    cache, calls = EnvCache(tmp_path / "envs", budget=5000), list[str]()
    held = acquire(cache, A, calls, size=3000)  # in use until released
    old = time.time() - 100
    os.utime(cache.root / A / MARKER, (old, old))  # the least recently used
    acquire(cache, B, calls, size=3000).release()  # over the budget: A would go, but is in use
    assert (cache.root / A / MARKER).is_file() and (cache.root / B / MARKER).is_file()
    held.release()
    acquire(cache, C, calls, size=3000).release()
    # A (no longer in use), then B, least recently used first, until C alone is left
    assert [p.name for p in cache.root.iterdir() if p.is_dir()] == [C]
    marker = json.loads((cache.root / C / MARKER).read_text())
    assert marker["bytes"] >= 3000


def test_pip_is_stopped_at_its_timeout_or_a_cancel(tmp_path: Path) -> None:
    out: list[bytes] = []
    slow = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(30)"]
    started = time.monotonic()
    with pytest.raises(BuildFailed, match=r"ran past 0.5 s \(FLEET_ENV_BUILD_TIMEOUT\): working"):
        run(slow, dict(os.environ), 0.5, out.append, never)
    assert time.monotonic() - started < 5
    with pytest.raises(BuildCancelled):
        run(slow, dict(os.environ), 30, out.append, lambda: True)
    failing = [sys.executable, "-c", "import sys; print('ERROR: no such package'); sys.exit(1)"]
    with pytest.raises(BuildFailed, match=r"exited with code 1: ERROR: no such package$"):
        run(failing, dict(os.environ), 30, out.append, never)
    assert b"ERROR: no such package\n" in b"".join(out)


def test_the_preparing_phase_is_shown_while_running_then_recorded(store: Store) -> None:
    store.heartbeat({"node": "n1", "incarnation": "i1",
                     "capacity": {"cpus": 2, "memory": 2**30}}, ttl=60)
    job = store.submit(JobSpec(name="job", entrypoint="workers.jobs.synthetic:noop",
                               requirements=["numpy"]))
    attempt, _ = store.reserve(job, "n1", "i1", {})
    assert store.claim(job, attempt, "n1", "i1")[0]
    assert store.progress(job, attempt, {"env": "0123456789ab"}, kind="preparing")
    view = job_view(store.get(job))  # type: ignore[arg-type]
    assert (view["state"], view["phase"]) == (JobState.RUNNING.value, "PREPARING")
    assert progress_line(view).startswith("preparing env")
    assert store.progress(job, attempt, {"env": "0123456789ab", "built": True, "seconds": 2.5},
                          kind="prepared")
    view = job_view(store.get(job), store.attempts(job))  # type: ignore[arg-type]
    assert view["phase"] is None
    assert {k: view["attempts"][0][k] for k in ("env", "env_built", "env_seconds")} == {
        "env": "0123456789ab", "env_built": True, "env_seconds": 2.5}
    events = [(e["event"], e.get("built")) for e in store.events(job)]
    assert events[-2:] == [("preparing", None), ("prepared", "true")]
