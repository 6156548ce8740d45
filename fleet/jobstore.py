"""Job records in Redis and the atomic steps of a job's life.

Each step that touches more than one key (submit, reserve, claim, progress, finish, cancel) is one
Lua script (`fleet/lua/`), so it is atomic and one round trip, and fenced: a step names the
attempt it acts for, and only the job's current attempt may act. That is what makes a duplicate
or late delivery harmless and keeps exactly one terminal state per job.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

from fleet import keys
from fleet.spec import JobSpec
from fleet.states import TERMINAL_NAMES, EndReason, JobState

METRICS_CAP = 10_000  # progress reports kept per job
MAX_INFRA_RETRIES = 10  # attempts lost to infrastructure before a job is declared FAILED
RETRY_BACKOFF_S = 2.0  # first delay after a counted failure; doubles each time


@cache
def _script_source(name: str) -> str:
    lua = resources.files("fleet") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def request_of(spec: JobSpec) -> dict[str, int]:
    """The reservation a job needs, in the integer units the Lua scripts compare."""
    res = spec.resources
    return {"cpus_m": round(res.cpus * 1000), "memory": int(res.memory), "gpus": int(res.gpus)}


def new_job_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the supervisor (or the master, for a lost node) saw it."""

    reason: EndReason
    error: str = ""
    result: Mapping[str, Any] | None = None
    final: bool = False  # end the job now, whatever retries remain (e.g. timeout)
    extra: Mapping[str, Any] | None = None  # merged into the attempt record (peak memory, ...)

    @property
    def outcome(self) -> str:
        if self.reason is EndReason.SUCCEEDED:
            return JobState.SUCCEEDED.value
        if self.reason is EndReason.CANCELLED:
            return JobState.CANCELLED.value
        return JobState.FAILED.value if self.final else "FAILURE"


class JobStore:
    """Reads and atomic writes of job records. The connection is passed in, never global."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._scripts = {
            name: client.register_script(_script_source(name))
            for name in ("submit", "reject", "reserve", "claim", "progress", "finish", "cancel",
                         "checkpoint")
        }

    # -- writes ------------------------------------------------------------------------------
    def submit(
        self, spec: JobSpec, *, job_id: str | None = None, now: float | None = None,
        submitted_by: str = "",
    ) -> str:
        """Accept a job (the master, for a request from intake `submitted_by`)."""
        job_id = job_id or new_job_id(spec.name)
        fields = {
            "submitted_by": submitted_by,
            "name": spec.name,
            "spec": json.dumps(spec.payload()),
            "request": json.dumps(request_of(spec)),
            "max_retries": str(spec.max_retries),
            "max_infra_retries": str(MAX_INFRA_RETRIES),
            "not_before": "0",
        }
        self._scripts["submit"](
            keys=[keys.job(job_id), keys.JOBS, keys.PENDING, keys.SEQUENCE, keys.EVENTS, keys.WAKE],
            args=[job_id, _now(now), spec.priority, json.dumps(fields)],
        )
        return job_id

    def reject(self, job_id: str, error: str, *, submitted_by: str, now: float | None = None) -> bool:
        """Record a refused request as a FAILED job (REJECTED, `error`), so whoever waits on
        it learns why; False (nothing written) when the job id exists already."""
        return bool(self._scripts["reject"](
            keys=[keys.job(job_id), keys.JOBS, keys.EVENTS],
            args=[job_id, _now(now), error[:500], submitted_by, job_id.rsplit("-", 1)[0]],
        ))

    def reserve(
        self, job_id: str, node: str, incarnation: str, placement: Mapping, now: float | None = None
    ) -> tuple[int, str]:
        """Attempt number (> 0) when reserved, else (0, why not)."""
        n, why = self._scripts["reserve"](
            keys=[
                keys.job(job_id), keys.node(node), keys.node_alloc(node), keys.node_drain(node),
                keys.PENDING, keys.job_attempts(job_id), keys.EVENTS, keys.PLACING,
            ],
            args=[job_id, node, incarnation, _now(now), json.dumps(placement),
                  _chosen_score(placement, node)],
        )
        return int(n), keys.text(why)

    def claim(self, job_id: str, attempt: int, node: str, incarnation: str) -> tuple[bool, str]:
        ok, why, _ = self.claim_spec(job_id, attempt, node, incarnation)
        return ok, why

    def claim_spec(
        self, job_id: str, attempt: int, node: str, incarnation: str
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Claim the attempt; on success the job's spec comes back in the same round trip."""
        answer = self._scripts["claim"](
            keys=[keys.job(job_id), keys.job_attempts(job_id), keys.EVENTS, keys.PLACING],
            args=[job_id, attempt, node, incarnation, _now(None)],
        )
        ok, why = bool(answer[0]), keys.text(answer[1])
        spec = json.loads(answer[2]) if ok and len(answer) > 2 and answer[2] else None
        return ok, why, spec

    def progress(self, job_id: str, attempt: int, report: Mapping, kind: str = "progress") -> bool:
        """False when the attempt is no longer current: its process must stop."""
        return self.progress_many(job_id, attempt, [report], kind)

    def progress_many(
        self, job_id: str, attempt: int, reports: Sequence[Mapping], kind: str = "progress"
    ) -> bool:
        """Several reports (oldest first) in one step; False as for `progress`."""
        return bool(
            self._scripts["progress"](
                keys=[keys.job(job_id), keys.job_metrics(job_id), keys.job_attempts(job_id),
                      keys.EVENTS],
                args=[job_id, attempt, _now(None), kind, METRICS_CAP,
                      *(json.dumps(r) for r in reports)],
            )
        )

    def finish(
        self, job_id: str, attempt: int, node: str, outcome: Outcome, now: float | None = None,
        progress: Sequence[Mapping] = (),
    ) -> tuple[bool, str]:
        """End an attempt, recording its last `progress` reports first (if it was running).
        Returns (applied, resulting job state)."""
        counted = "0" if outcome.reason.infrastructure else "1"
        ok, state = self._scripts["finish"](
            keys=[
                keys.job(job_id), keys.job_attempts(job_id), keys.node_alloc(node), keys.PENDING,
                keys.EVENTS, keys.WAKE, keys.PLACING, keys.job_cancel(job_id),
                keys.job_metrics(job_id),
            ],
            args=[
                job_id, attempt, outcome.outcome, outcome.reason.value, outcome.error,
                json.dumps(dict(outcome.result or {})), counted, _now(now), RETRY_BACKOFF_S,
                json.dumps(dict(outcome.extra or {})), METRICS_CAP,
                *(json.dumps(r) for r in progress),
            ],
        )
        return bool(ok), keys.text(state)

    def commit_checkpoint(
        self, job_id: str, attempt: int, node: str, incarnation: str, step: int, name: str,
        now: float | None = None,
    ) -> tuple[bool, str]:
        """Make checkpoint `name` (relative to the job's checkpoint root) the one to resume
        from. Fenced: (False, why) unless `attempt` is the job's current, running attempt on
        `node`/`incarnation`."""
        record = json.dumps({"attempt": attempt, "step": step, "dir": name})
        ok, why = self._scripts["checkpoint"](
            keys=[keys.job(job_id), keys.job_attempts(job_id)],
            args=[job_id, attempt, node, incarnation, record, step, _now(now)],
        )
        return bool(ok), keys.text(why)

    def committed_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's committed checkpoints, newest first ({"attempt", "step", "dir"}); a
        record that does not parse is left out (the caller validates `dir` itself)."""
        found = []
        for raw in self.r.hmget(keys.job(job_id), "checkpoint", "checkpoint_prev"):
            try:
                record = json.loads(raw) if raw else None
            except ValueError:
                record = None
            if isinstance(record, dict):
                found.append(record)
        return found

    def cancel(self, job_id: str) -> str:
        """The state the job is in (or heads to) after the request."""
        for _ in range(5):  # a placed job may move between our read and the script: re-read
            node = keys.text(self.r.hget(keys.job(job_id), "node") or b"")
            ok, state = self._scripts["cancel"](
                keys=[
                    keys.job(job_id), keys.PENDING, keys.node_alloc(node or "-"),
                    keys.job_attempts(job_id), keys.EVENTS, keys.WAKE, keys.PLACING,
                    keys.job_cancel(job_id),
                ],
                args=[job_id, _now(None), node],
            )
            state = keys.text(state)
            if state != "moved":
                if not ok and state == "no such job":
                    from fleet.errors import NotFound

                    raise NotFound(f"no job {job_id!r}")
                return state
        return JobState.PLACED.value

    def set_waiting(self, reasons: Mapping[str, str]) -> None:
        """Why each pending job waits (shown by `fleet status` / `fleet explain`)."""
        if not reasons:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id, reason in reasons.items():
            pipe.hset(keys.job(job_id), "waiting", reason)
        pipe.execute()

    # -- reads -------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.job(job_id))
        return decode_job(raw) if raw else None

    def get_many(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        pipe = self.r.pipeline(transaction=False)
        ids = list(job_ids)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        return [decode_job(raw) for raw in pipe.execute() if raw]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        raw = self.r.hgetall(keys.job_attempts(job_id))
        records = [json.loads(v) for v in raw.values()]
        return sorted(records, key=lambda a: a.get("attempt", 0))

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Progress reports of every attempt, oldest first, from index `start`."""
        return [json.loads(v) for v in self.r.lrange(keys.job_metrics(job_id), start, -1)]

    def pending_ids(self, start: int = 0, limit: int | None = None) -> list[str]:
        """Pending jobs in line order (priority, then submit order), `limit` of them from the
        `start`-th."""
        end = -1 if limit is None else start + limit - 1
        return [keys.text(v) for v in self.r.zrange(keys.PENDING, start, end)]

    def placing(self, older_than: float) -> list[str]:
        """Reserved jobs no worker has claimed since `older_than` (maybe never published)."""
        return [keys.text(v) for v in self.r.zrangebyscore(keys.PLACING, "-inf", older_than)]

    def job_ids(self, limit: int | None = None) -> list[str]:
        end = -1 if limit is None else limit - 1
        return [keys.text(v) for v in self.r.zrevrange(keys.JOBS, 0, end)]

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.job_cancel(job_id)))


def _chosen_score(placement: Mapping, node: str) -> str:
    for candidate in placement.get("candidates") or []:
        if candidate.get("node") == node and candidate.get("score") is not None:
            return repr(float(candidate["score"]))
    return ""


def decode_job(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """A job hash as plain Python: JSON fields parsed, numbers as numbers."""
    job: dict[str, Any] = {keys.text(k): keys.text(v) for k, v in raw.items()}
    for field in ("spec", "request", "placement", "progress", "result"):
        if job.get(field):
            job[field] = json.loads(job[field])
        else:
            job[field] = None
    for field in ("attempt", "retries", "infra_retries", "max_retries", "seq", "priority"):
        job[field] = int(job.get(field) or 0)
    for field in ("submitted_at", "placed_at", "started_at", "finished_at", "updated_at",
                  "not_before"):
        job[field] = float(job[field]) if job.get(field) else None
    job["terminal"] = job.get("state") in TERMINAL_NAMES
    return job



def _now(now: float | None) -> str:
    return repr(time.time() if now is None else now)
