"""A job's packages, had before its process starts: the attempt's PREPARING phase.

A job whose spec has `requirements` runs with the env built for them (`workers.env`): found in
the node's cache (a lock, a stat: milliseconds), or built there now, once, whoever else needs it.
While it is built the job shows the phase PREPARING (`fleet status`, the events `preparing` and
`prepared`), pip's output is the first part of the attempt's log (`fleet logs`), and the time
counts against FLEET_ENV_BUILD_TIMEOUT, not the job's own `timeout` (its watch starts after).

A build that fails (pip exits non-zero, or runs out of time) ends the job FAILED, ENV_FAILED,
final: the same requirements would fail the same way on a retry. The reason ends with pip's last
lines. The env stays held (no eviction) until the supervisor calls `release` for the job.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from fleet.errors import SpecError
from fleet.requirements import FILE_NAME, parse_file
from fleet.settings import Settings
from fleet.states import EndReason
from fleet.store.jobstore import JobStore, Outcome
from workers.attempt.outcome import SUPERSEDED
from workers.attempt.relay import REDIS_DOWN, LogCapture
from workers.env.build import BuildCancelled, BuildFailed, Pip, build
from workers.env.cache import EnvCache, Lease
from workers.env.policy import SHORT, env_key, requirements_of

log = logging.getLogger("fleet.supervisor")

CACHE = "envs"  # under the artifact root, beside the bundles' cache
FLUSH_S = 0.5  # pip's output reaches `fleet logs` at least this often
WAIT_MARGIN_S = 60.0  # a job waiting for another's build waits its timeout and this


class NotPrepared(Exception):
    """The attempt ends before its process starts, with `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class Environments:
    """The node's job envs as its supervisor uses them: one held per running job."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.pip = Pip(environ, settings.pip_index_url, settings.pip_find_links,
                       settings.env_build_timeout)
        self._cache: EnvCache | None = None  # made with the first job that needs it
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def prepare(
        self, store: JobStore, job_id: str, attempt: int, spec: Mapping[str, Any],
        log_path: Path, cores: Sequence[int], cancelled: Callable[[], bool],
        code: Path | None = None,
    ) -> Path | None:
        """The site-packages folder of the job's env, held for it; None when it asks for no
        packages. NotPrepared when the attempt must end instead."""
        try:
            wanted = requirements_of(spec.get("requirements"))
            listed = None if code is None else code / FILE_NAME
            if spec.get("requirements") is None and listed is not None and listed.is_file():
                wanted = parse_file(listed.read_bytes())  # a bundle submitted by digest alone
        except (ValueError, SpecError) as exc:
            why = str(exc) if isinstance(exc, SpecError) else f"requirements: {exc}"
            raise NotPrepared(Outcome(EndReason.ENV_FAILED, why, final=True)) from None
        if not wanted:
            return None
        key = env_key(wanted, f"{sys.executable} {sys.version}",
                      (self.pip.index_url, self.pip.find_links))
        name = key[:SHORT]
        capture = Output(LogCapture(store.r, job_id, attempt, log_path,
                                    self.settings.log_max_bytes))
        started = time.monotonic()

        def waiting() -> None:
            _phase(store, job_id, attempt, "preparing", {"env": name})
            capture.say(f"preparing env {name} ({len(wanted)} requirements): "
                        f"{' '.join(wanted)}")

        def build_here(target: Path) -> None:
            capture.say(f"building env {name} with pip")
            build(target, wanted, self.pip, capture.write, cancelled, cores)

        try:
            lease = self.cache().acquire(key, build_here, waiting=waiting, cancelled=cancelled,
                                         wait_s=self.settings.env_build_timeout + WAIT_MARGIN_S)
            with self._lock:
                self._held[job_id] = lease
            seconds = round(time.monotonic() - started, 4)
            how = "built" if lease.built else "built by another job" if lease.waited else "cached"
            capture.say(f"env {name} ready ({how}) in {seconds:.3f} s")
        except BuildFailed as exc:
            capture.say(f"env {name} failed: {exc}")
            raise NotPrepared(Outcome(EndReason.ENV_FAILED, f"env {name}: {exc}",
                                      final=True)) from None
        except BuildCancelled:
            raise NotPrepared(Outcome(EndReason.CANCELLED, "cancelled by request",
                                      final=True)) from None
        finally:
            capture.close()
        _phase(store, job_id, attempt, "prepared",
               {"env": name, "built": lease.built, "seconds": seconds})
        return lease.site

    def release(self, job_id: str) -> None:
        """The job is over: its env may be evicted."""
        with self._lock:
            lease = self._held.pop(job_id, None)
        if lease is not None:
            lease.release()

    def cache(self) -> EnvCache:
        if self._cache is None:
            artifacts = self.settings.artifacts_dir
            self._cache = EnvCache(artifacts / CACHE, self.settings.env_cache_bytes,
                                   tighten=[artifacts])
        return self._cache


class Output:
    """The build's output into the attempt's log, reaching Redis at least every FLUSH_S."""

    def __init__(self, capture: LogCapture) -> None:
        self.capture = capture
        self._flushed = time.monotonic()

    def say(self, line: str) -> None:
        """A line of fleet's own, marked as such."""
        self.write(f"[fleet: {line}]\n".encode())
        self.capture.flush()

    def write(self, data: bytes) -> None:
        self.capture.write(data)
        if time.monotonic() - self._flushed >= FLUSH_S:
            self._flushed = time.monotonic()
            self.capture.flush()

    def close(self) -> None:
        self.capture.flush()
        self.capture.close()


def _phase(store: JobStore, job_id: str, attempt: int, kind: str, report: dict[str, Any]) -> None:
    """The job's phase and event (fenced, as progress is); NotPrepared when this attempt is no
    longer the job's. Redis away: the phase goes unshown, the build goes on."""
    try:
        current = store.progress(job_id, attempt, report, kind=kind)
    except (*REDIS_DOWN, redis.exceptions.ResponseError) as exc:
        log.warning("phase %s of %s not recorded: %s", kind, job_id, exc)
        return
    if not current:
        raise NotPrepared(Outcome(EndReason.NODE_LOST, SUPERSEDED))
