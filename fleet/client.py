"""The producer API: submit a job, read its state, follow its progress, wait for it, cancel it.

    from fleet import Client
    client = Client()                      # the fleet `fleet up` started, or FLEET_REDIS_URL
    job_id = client.submit("examples/digits-torch.yaml", overrides=["params.epochs=3"])
    final = client.wait(job_id, on_progress=print)

A spec is validated (pydantic) and checked against the live nodes before anything is written:
a bad spec or a job bigger than every node raises SpecError naming the field, and nothing is
enqueued. An accepted submission is one atomic Redis step, durable once acknowledged.

The nodes a submission is checked against may be up to `NODES_FRESH_S` old when they show room
for it (as if it had been submitted that much earlier: nodes come and go, and a job accepted
just before its node left waits like any other); a refusal is always checked against the nodes
as they are now. A burst of submissions thus costs one round trip each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import redis

from fleet import keys, records, registry
from fleet.errors import ConnectionFailed, FleetError, NotFound, SpecError
from fleet.jobstore import JobStore
from fleet.placement import NodeView, Request, never_fits
from fleet.settings import Settings
from fleet.spec import JobSpec, load_spec, parse_spec

NODES_FRESH_S = 1.0


def connect(url: str) -> redis.Redis:
    """A checked connection: a wrong password or a dead server is a one-line FleetError."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=10)
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ConnectionFailed(f"redis refused our credentials: {exc}") from None
    except redis.exceptions.ResponseError as exc:  # NOAUTH and friends
        raise ConnectionFailed(f"redis refused the connection: {exc}") from None
    except redis.exceptions.ConnectionError as exc:
        raise ConnectionFailed(f"cannot reach redis at {_safe_url(url)}: {exc}") from None
    return client


class Client:
    def __init__(
        self, settings: Settings | None = None, *, redis_url: str | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.r = client or connect(redis_url or self.settings.resolved_redis_url())
        self.store = JobStore(self.r)
        self._nodes: tuple[float, NodeView] | None = None  # (read at, monotonic), nodes

    # -- submit ------------------------------------------------------------------------------
    def spec_from(self, source: JobSpec | Mapping | str | Path, overrides=()) -> JobSpec:
        if isinstance(source, JobSpec):
            return source
        if isinstance(source, Mapping):
            from fleet.spec import apply_overrides

            return parse_spec(apply_overrides(dict(source), overrides), **self._limits())
        return load_spec(source, overrides, **self._limits())

    def submit(
        self, source: JobSpec | Mapping | str | Path, *, overrides=(), job_id: str | None = None
    ) -> str:
        """Validate, check it can fit some node, then accept it atomically. Returns the job id."""
        spec = self.spec_from(source, overrides)
        request = Request.from_resources(spec.resources.model_dump(), spec.node_selector)
        too_big = never_fits(self._live_nodes(), request)
        if too_big is not None and self._nodes is not None:
            self._nodes = None  # a refusal is judged on the nodes as they are now
            too_big = never_fits(self._live_nodes(), request)
        if too_big is not None:
            raise SpecError(*too_big)
        return self.store.submit(spec, job_id=job_id)

    def _live_nodes(self) -> NodeView:
        now = time.monotonic()
        if self._nodes is None or not 0 <= now - self._nodes[0] < NODES_FRESH_S:
            self._nodes = (now, NodeView.from_reports(registry.live_reports(self.r)))
        return self._nodes[1]

    def _limits(self) -> dict[str, Any]:
        return {"allowlist": self.settings.allowlist, "max_timeout": self.settings.max_job_timeout}

    # -- read --------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """The job's record in the documented `--json` shape (see docs/json.md)."""
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job_view(job, self.store.attempts(job_id))

    def jobs(self, limit: int | None = 200) -> list[dict[str, Any]]:
        return [job_view(j) for j in self.store.get_many(self.store.job_ids(limit))]

    def nodes(self) -> list[dict[str, Any]]:
        return [s["report"] for s in registry.node_states(self.r) if s["report"]]

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        return self.store.metrics(job_id, start)

    def master_status(self) -> dict[str, Any]:
        """Whether a master leads: `{"up", "leader", "down_for", "last_seen"}`. `down_for` is
        how many seconds no master has held the lease (None while one does, or when none
        ever has: `last_seen` None), measured on Redis's clock. `up` is None when this
        credential may not read the master's keys."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(keys.MASTER_LEASE)
        pipe.get(keys.MASTER_SEEN)
        pipe.time()
        leader, seen, now = pipe.execute(raise_on_error=False)
        if isinstance(leader, redis.exceptions.NoPermissionError):
            return {"up": None, "leader": None, "down_for": None, "last_seen": None}
        if isinstance(now, Exception):
            now = (time.time(), 0)
        up = leader is not None and not isinstance(leader, Exception)
        try:
            last_seen = None if seen is None or isinstance(seen, Exception) else \
                records.timestamp("master_seen", seen)
        except records.BadRecord:
            last_seen = None
        clock = now[0] + now[1] / 1e6
        down_for = None if up or last_seen is None else max(0.0, clock - last_seen)
        return {"up": up, "leader": keys.text(leader)[:200] if up else None,
                "down_for": down_for, "last_seen": last_seen}

    def cancel(self, job_id: str) -> str:
        return self.store.cancel(job_id)

    # -- follow ------------------------------------------------------------------------------
    def follow(self, job_id: str, interval: float = 0.5) -> Iterator[dict[str, Any]]:
        """Yields the job's status each time it changes, ending with its terminal state."""
        last = None
        while True:
            status = self.status(job_id)
            key = (status["state"], status["attempt"], status["updated_at"])
            if key != last:
                last = key
                yield status
            if status["terminal"]:
                return
            time.sleep(interval)

    def wait(
        self, job_id: str, *, timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        for status in self.follow(job_id):
            if on_progress is not None:
                on_progress(status)
            if status["terminal"]:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise FleetError(f"job {job_id} still {status['state']} after {timeout:g}s")
        raise AssertionError("unreachable")


def job_view(job: Mapping[str, Any], attempts: list[dict] | None = None) -> dict[str, Any]:
    """The stable JSON shape of a job (documented in docs/json.md; scripts parse it)."""
    spec = job.get("spec") or {}
    view = {
        "id": job["id"],
        "name": job.get("name"),
        "state": job.get("state"),
        "terminal": job.get("terminal", False),
        "node": job.get("node") or None,
        "attempt": job.get("attempt", 0),
        "retries": job.get("retries", 0),
        "infra_retries": job.get("infra_retries", 0),
        "priority": job.get("priority", 0),
        "resources": spec.get("resources"),
        "entrypoint": spec.get("entrypoint"),
        "framework": spec.get("framework"),
        "params": spec.get("params"),
        "submitted_at": job.get("submitted_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "updated_at": job.get("updated_at"),
        "reason": job.get("reason") or None,
        "error": job.get("error") or None,
        "waiting": job.get("waiting") or None,
        "progress": job.get("progress"),
        "result": job.get("result"),
        "placement": job.get("placement"),
    }
    if attempts is not None:
        fields = ("attempt", "node", "incarnation", "placed_at", "started_at", "ended_at",
                  "end_reason", "error", "counted", "resumed_from_step", "peak_memory")
        view["attempts"] = [{**{f: None for f in fields}, **a} for a in attempts]
    return view


def _safe_url(url: str) -> str:
    """The URL without its password, fit to print."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
