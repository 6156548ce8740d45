"""Job records in Redis and the atomic steps of a job's life.

Each step that touches more than one key (submit, reserve, claim, progress, finish, cancel) is one
Lua script (`fleet/store/lua/`), so it is atomic and one round trip, and fenced: a step names the
attempt it acts for, and only the job's current attempt may act. That is what makes a duplicate
or late delivery harmless and keeps exactly one terminal state per job.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fleet.spec import JobSpec
from fleet.states import EndReason, JobState
from fleet.store import keys, quarantine, records
from fleet.store.scripts import Script

METRICS_CAP = 10_000  # progress reports kept per job
MAX_INFRA_RETRIES = 10  # attempts lost to infrastructure before a job is declared FAILED
RETRY_BACKOFF_S = 2.0  # first delay after a counted failure; doubles each time


def request_of(spec: JobSpec) -> dict[str, int]:
    """The reservation a job needs, in the integer units the Lua scripts compare."""
    return spec.resources.value().to_wire()


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
    def finish_as(self) -> str:
        """What finish.lua is asked to make of the job: a terminal state, or "FAILURE" (this
        attempt failed: retry while retries remain, else FAILED)."""
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
            name: Script(client, name)
            for name in ("submit", "reject", "reserve", "claim", "progress", "finish", "cancel",
                         "checkpoint", "drop_pending", "repair_alloc")
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
            keys={"job": keys.job(job_id), "jobs": keys.JOBS, "pending": keys.PENDING,
                  "seq": keys.SEQUENCE, "events": keys.EVENTS, "wake": keys.WAKE},
            args={"job_id": job_id, "now": _now(now), "priority": spec.priority,
                  "fields": json.dumps(fields)},
        )
        return job_id

    def reject(self, job_id: str, error: str, *, submitted_by: str, now: float | None = None) -> bool:
        """Record a refused request as a FAILED job (REJECTED, `error`), so whoever waits on
        it learns why; False (nothing written) when the job id exists already."""
        return bool(self._scripts["reject"](
            keys={"job": keys.job(job_id), "jobs": keys.JOBS, "events": keys.EVENTS},
            args={"job_id": job_id, "now": _now(now), "error": error[:500],
                  "submitted_by": submitted_by, "name": job_id.rsplit("-", 1)[0]},
        ))

    def reserve(
        self, job_id: str, node: str, incarnation: str, placement: Mapping[str, Any],
        now: float | None = None,
    ) -> tuple[int, str]:
        """Attempt number (> 0) when reserved, else (0, why not)."""
        n, why = self._scripts["reserve"](
            keys={"job": keys.job(job_id), "report": keys.node(node),
                  "alloc": keys.node_alloc(node), "drain": keys.node_drain(node),
                  "pending": keys.PENDING, "attempts": keys.job_attempts(job_id),
                  "events": keys.EVENTS, "placing": keys.PLACING},
            args={"job_id": job_id, "node": node, "incarnation": incarnation, "now": _now(now),
                  "placement": json.dumps(placement), "score": chosen_score(placement, node)},
        )
        return int(n), keys.decode(why)

    def claim(self, job_id: str, attempt: int, node: str, incarnation: str) -> tuple[bool, str]:
        ok, why, _ = self.claim_spec(job_id, attempt, node, incarnation)
        return ok, why

    def claim_spec(
        self, job_id: str, attempt: int, node: str, incarnation: str
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Claim the attempt; on success the job's spec comes back in the same round trip."""
        answer = self._scripts["claim"](
            keys={"job": keys.job(job_id), "attempts": keys.job_attempts(job_id),
                  "events": keys.EVENTS, "placing": keys.PLACING},
            args={"job_id": job_id, "attempt": attempt, "node": node,
                  "incarnation": incarnation, "now": _now(None)},
        )
        ok, why = bool(answer[0]), keys.decode(answer[1])
        if not ok:
            return ok, why, None
        try:  # claimed: a spec nobody can read must end the attempt, not the worker
            raw = answer[2] if len(answer) > 2 else None
            spec = records.job_spec(records.json_object("job", "spec", raw or b""))
        except records.BadRecord as exc:
            quarantine.note("job", keys.job(job_id), exc.args[0])
            return ok, exc.args[0], None
        return ok, why, spec

    def progress(
        self, job_id: str, attempt: int, report: Mapping[str, Any], kind: str = "progress",
    ) -> bool:
        """False when the attempt is no longer current: its process must stop."""
        return self.progress_many(job_id, attempt, [report], kind)

    def progress_many(
        self, job_id: str, attempt: int, reports: Sequence[Mapping[str, Any]], kind: str = "progress"
    ) -> bool:
        """Several reports (oldest first) in one step; False as for `progress`."""
        return bool(
            self._scripts["progress"](
                keys={"job": keys.job(job_id), "metrics": keys.job_metrics(job_id),
                      "attempts": keys.job_attempts(job_id), "events": keys.EVENTS},
                args={"job_id": job_id, "attempt": attempt, "now": _now(None), "kind": kind,
                      "cap": METRICS_CAP},
                rest=[json.dumps(r) for r in reports],
            )
        )

    def finish(
        self, job_id: str, attempt: int, node: str, outcome: Outcome, now: float | None = None,
        progress: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[bool, str]:
        """End an attempt, recording its last `progress` reports first (if it was running).
        Returns (applied, resulting job state)."""
        counted = "0" if outcome.reason.infrastructure else "1"
        ok, state = self._scripts["finish"](
            keys={"job": keys.job(job_id), "attempts": keys.job_attempts(job_id),
                  "alloc": keys.node_alloc(node), "pending": keys.PENDING,
                  "events": keys.EVENTS, "wake": keys.WAKE, "placing": keys.PLACING,
                  "cancel": keys.job_cancel(job_id), "metrics": keys.job_metrics(job_id)},
            args={"job_id": job_id, "attempt": attempt, "outcome": outcome.finish_as,
                  "reason": outcome.reason.value, "error": outcome.error,
                  "result": json.dumps(dict(outcome.result or {})), "counted": counted,
                  "now": _now(now), "backoff_s": RETRY_BACKOFF_S,
                  "extra": json.dumps(dict(outcome.extra or {})), "cap": METRICS_CAP},
            rest=[json.dumps(r) for r in progress],
        )
        return bool(ok), keys.decode(state)

    def commit_checkpoint(
        self, job_id: str, attempt: int, node: str, incarnation: str, step: int, name: str,
        now: float | None = None,
    ) -> tuple[bool, str]:
        """Make checkpoint `name` (relative to the job's checkpoint root) the one to resume
        from. Fenced: (False, why) unless `attempt` is the job's current, running attempt on
        `node`/`incarnation`."""
        record = json.dumps({"attempt": attempt, "step": step, "dir": name})
        ok, why = self._scripts["checkpoint"](
            keys={"job": keys.job(job_id), "attempts": keys.job_attempts(job_id)},
            args={"job_id": job_id, "attempt": attempt, "node": node,
                  "incarnation": incarnation, "checkpoint": record, "step": step,
                  "now": _now(now)},
        )
        return bool(ok), keys.decode(why)

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
            node = keys.decode(self.r.hget(keys.job(job_id), "node") or b"")
            ok, state = self._scripts["cancel"](
                keys={"job": keys.job(job_id), "pending": keys.PENDING,
                      "alloc": keys.node_alloc(node or "-"),
                      "attempts": keys.job_attempts(job_id), "events": keys.EVENTS,
                      "wake": keys.WAKE, "placing": keys.PLACING,
                      "cancel": keys.job_cancel(job_id)},
                args={"job_id": job_id, "now": _now(None), "node": node},
            )
            state = keys.decode(state)
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
        pipe.execute(raise_on_error=False)  # a record of the wrong type is the master's to drop

    # -- repairs (the master's, for records it found malformed) -------------------------------
    def drop_pending(self, job_id: str, why: str, now: float | None = None) -> str:
        """Take a member the master cannot place out of the line; a PENDING job whose record is
        malformed (`why` says how) ends FAILED, reason REJECTED. Returns what was done."""
        return keys.decode(self._scripts["drop_pending"](
            keys={"job": keys.job(job_id), "pending": keys.PENDING, "events": keys.EVENTS,
                  "wake": keys.WAKE},
            args={"job_id": job_id, "now": _now(now), "why": why[:500]},
        ))

    def repair_alloc(self, node: str, job_id: str) -> str:
        """Rewrite `job_id`'s entry on `node` from the job's record, or drop it when the job
        holds no reservation there (fleet/store/lua/repair_alloc.lua). Returns what was done."""
        return keys.decode(self._scripts["repair_alloc"](
            keys={"alloc": keys.node_alloc(node), "job": keys.job(job_id),
                  "report": keys.node(node)},
            args={"job_id": job_id, "node": node},
        ))

    # -- reads -------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record; None when there is none. Raises records.BadRecord when it is
        unreadable (another Redis type, or a malformed field)."""
        try:
            raw: Any = self.r.hgetall(keys.job(job_id))
        except redis.exceptions.ResponseError as exc:
            raw = exc
        return self._decoded(job_id, raw)

    def get_many(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The readable records of `job_ids` (missing and malformed ones are left out)."""
        ids = list(job_ids)
        return [job for job in self.read_many(ids).values() if isinstance(job, dict)]

    def read_many(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any] | str | None]:
        """Job id -> its record, None when it has none, or why it is unreadable (one round
        trip; in the order of `job_ids`)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        return {job_id: self.decode_read(job_id, raw)
                for job_id, raw in zip(job_ids, pipe.execute(raise_on_error=False), strict=True)}

    @classmethod
    def decode_read(cls, job_id: str, raw: Any) -> dict[str, Any] | str | None:
        """A job record as a pipeline answered it: the record, None, or why it is unreadable."""
        try:
            return cls._decoded(job_id, raw)
        except records.BadRecord as exc:
            return str(exc)

    @staticmethod
    def _decoded(job_id: str, raw: Any) -> dict[str, Any] | None:
        """The record from what Redis answered (None: no record); BadRecord, noted, when it is
        unreadable (another Redis type, or a malformed field)."""
        if isinstance(raw, Exception):
            quarantine.note("job", keys.job(job_id), raw)
            raise records.BadRecord("job", "key", f"not a hash ({raw})")
        if not raw:
            return None
        try:
            return decode_job(raw, job_id)
        except records.BadRecord as exc:
            quarantine.note("job", keys.job(job_id), exc.args[0])
            raise

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's well-formed attempt records, by attempt number."""
        key = keys.job_attempts(job_id)
        try:
            raw = self.r.hgetall(key)
        except redis.exceptions.ResponseError as exc:
            quarantine.note("attempt", key, exc)
            return []
        out = []
        for field, value in raw.items():
            try:
                out.append(records.attempt_record(value))
            except records.BadRecord as exc:
                quarantine.note("attempt", f"{key}/{keys.decode(field)[:100]}", exc.args[0])
        return sorted(out, key=lambda a: a["attempt"])

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Progress reports of every attempt, oldest first, from index `start` (a malformed
        one is left out)."""
        key = keys.job_metrics(job_id)
        try:
            raw = self.r.lrange(key, start, -1)
        except redis.exceptions.ResponseError as exc:
            quarantine.note("metrics", key, exc)
            return []
        out = []
        for i, value in enumerate(raw):
            try:
                out.append(records.metric_entry(value))
            except records.BadRecord as exc:
                quarantine.note("metrics", f"{key}/{start + i}", exc.args[0])
        return out

    def pending_ids(self, start: int = 0, limit: int | None = None) -> list[str]:
        """Pending jobs in line order (priority, then submit order), `limit` of them from the
        `start`-th."""
        end = -1 if limit is None else start + limit - 1
        return _members(keys.PENDING, lambda: self.r.zrange(keys.PENDING, start, end))

    def placing(self, older_than: float) -> list[str]:
        """Reserved jobs no worker has claimed since `older_than` (maybe never published)."""
        return _members(keys.PLACING,
                        lambda: self.r.zrangebyscore(keys.PLACING, "-inf", older_than))

    def job_ids(self, limit: int | None = None) -> list[str]:
        end = -1 if limit is None else limit - 1
        return _members(keys.JOBS, lambda: self.r.zrevrange(keys.JOBS, 0, end))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.job_cancel(job_id)))


def _members(index: str, read: Any) -> list[str]:
    """The members an index read answers; none when the index is of another type (the master
    moves it aside and rebuilds it)."""
    try:
        return [keys.decode(v) for v in read()]
    except redis.exceptions.ResponseError as exc:
        quarantine.note("index", index, exc)
        return []


def pending_score(priority: int, seq: int) -> float:
    """A pending job's place in line, as `pending_score` in lua/prelude.lua computes it."""
    return (1000 - priority) * 1e12 + seq


def chosen_score(placement: Mapping[str, Any], node: str) -> str:
    """The score placement gave `node` (for the placed event), "" when it gave none."""
    for candidate in placement.get("candidates") or []:
        if candidate.get("node") == node and candidate.get("score") is not None:
            return repr(float(candidate["score"]))
    return ""


def decode_job(raw: Mapping[Any, Any], job_id: str | None = None) -> dict[str, Any]:
    """A job hash as plain Python: JSON fields parsed, numbers as numbers. Raises
    records.BadRecord (naming the field) when it is malformed, or names another job than
    `job_id` (the id its key was built from)."""
    job = records.job_record(raw)
    if job_id is not None and job["id"] != job_id:
        raise records.BadRecord("job", "id", f"{job['id'][:40]!r} is not the id of its key")
    return job


def _now(now: float | None) -> str:
    return repr(time.time() if now is None else now)
