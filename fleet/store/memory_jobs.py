"""The in-memory store's job records and steps: fleet/store/lua/ rewritten over plain dicts.

Each step holds one lock for its whole length (so it is atomic, as a Lua script is) and keeps
the scripts' rules line for line: fenced by attempt number (and node incarnation), never
over-committing a node, one terminal state per job, the pending order by priority then submit
order. The records and their reads are fleet.store.memory_data's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fleet.errors import NotFound
from fleet.resources import RESERVED
from fleet.spec import JobSpec
from fleet.states import JobState
from fleet.store import records
from fleet.store.jobstore import (
    MAX_INFRA_RETRIES,
    RETRY_BACKOFF_S,
    Outcome,
    chosen_score,
    new_job_id,
    pending_score,
    request_of,
)
from fleet.store.memory_data import MemoryReads, as_int, is_amount, json_object, number_text, stamp
from fleet.store.protocol import Refused

TERMINAL = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value}
RESOURCES = tuple(k.wire for k in RESERVED)  # the allocation entry's amounts, as reserve.lua's


class MemoryJobs(MemoryReads):
    """The job steps and reads of `fleet.store.protocol`."""

    # -- steps -------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, *, job_id: str | None = None, now: float | None = None,
               submitted_by: str = "") -> str:
        job_id = job_id or new_job_id(spec.name)
        at = stamp(now)
        with self.lock:
            if job_id in self.jobs:
                raise Refused(f"job id exists: {job_id}")
            self.seq += 1
            self.jobs[job_id] = {
                "id": job_id, "seq": str(self.seq), "state": JobState.PENDING.value,
                "attempt": "0", "retries": "0", "infra_retries": "0", "submitted_at": at,
                "updated_at": at, "priority": str(spec.priority), "submitted_by": submitted_by,
                "name": spec.name, "spec": json.dumps(spec.payload()),
                "request": json.dumps(request_of(spec)), "max_retries": str(spec.max_retries),
                "max_infra_retries": str(MAX_INFRA_RETRIES), "not_before": "0",
            }
            self.job_index[job_id] = float(at)
            self.pending[job_id] = pending_score(spec.priority, self.seq)
            self._event("submitted", job_id, at)
            self._wake()
        return job_id

    def reject(self, job_id: str, error: str, *, submitted_by: str,
               now: float | None = None) -> bool:
        at = stamp(now)
        with self.lock:
            if job_id in self.jobs:
                return False
            self.jobs[job_id] = {
                "id": job_id, "name": job_id.rsplit("-", 1)[0], "state": JobState.FAILED.value,
                "reason": "REJECTED", "error": error[:500], "attempt": "0", "retries": "0",
                "infra_retries": "0", "submitted_at": at, "finished_at": at, "updated_at": at,
                "submitted_by": submitted_by,
            }
            self.job_index[job_id] = float(at)
            self._event("finished", job_id, at, state="FAILED", reason="REJECTED")
        return True

    def reserve(self, job_id: str, node: str, incarnation: str, placement: Mapping[str, Any],
                now: float | None = None) -> tuple[int, str]:
        at = stamp(now)
        with self.lock:
            job = self.jobs.get(job_id, {})
            if job.get("state") != JobState.PENDING.value:
                return 0, f"job is {job.get('state', 'nil')}"
            if self.is_draining(node):
                return 0, "node is draining"
            holder, capacity = self._node_holder(node)
            if holder != incarnation:
                return 0, "node is gone"
            cap, req = json_object(capacity), json_object(job.get("request"))
            if cap is None:
                return 0, "node capacity unreadable"
            if req is None or any(not is_amount(req.get(r, 0)) for r in RESOURCES):
                return 0, "job request unreadable"
            used = dict.fromkeys(RESOURCES, 0.0)
            for raw in self.alloc.get(node, {}).values():
                entry = json_object(raw)
                if entry is None or any(not is_amount(entry.get(r, 0)) for r in RESOURCES):
                    return 0, "node allocations unreadable"
                for r in RESOURCES:
                    used[r] += entry.get(r, 0)
            for r in RESOURCES:
                have = cap.get(r, 0)
                if not isinstance(have, (int, float)):
                    return 0, "node capacity unreadable"
                if used[r] + req.get(r, 0) > have:
                    return 0, f"no room for {r}"
            n = int(job["attempt"]) + 1
            self.alloc.setdefault(node, {})[job_id] = json.dumps(
                {"attempt": n, "incarnation": incarnation, **{r: req.get(r) for r in RESOURCES}})
            self.pending.pop(job_id, None)
            job.update(attempt=str(n), state=JobState.PLACED.value, node=node,
                       incarnation=incarnation, placed_at=at, updated_at=at,
                       placement=json.dumps(dict(placement)), waiting="")
            self._update_attempt(job_id, n, {"node": node, "incarnation": incarnation,
                                             "placed_at": float(at)})
            self.placing_since[job_id] = float(at)
            self._event("placed", job_id, at, node=node, attempt=n,
                        score=chosen_score(placement, node))
        return n, "ok"

    def claim(self, job_id: str, attempt: int, node: str, incarnation: str) -> tuple[bool, str]:
        ok, why, _ = self.claim_spec(job_id, attempt, node, incarnation)
        return ok, why

    def claim_spec(self, job_id: str, attempt: int, node: str,
                   incarnation: str) -> tuple[bool, str, dict[str, Any] | None]:
        at = stamp(None)
        with self.lock:
            job = self.jobs.get(job_id, {})
            if (job.get("attempt"), job.get("node"), job.get("incarnation")) != (
                    str(attempt), node, incarnation):
                return False, "superseded", None
            if job.get("state") != JobState.PLACED.value:
                return False, f"job is {job.get('state', 'nil')}", None
            self.placing_since.pop(job_id, None)
            job.update(state=JobState.RUNNING.value, started_at=at, updated_at=at)
            job.pop("phase", None)
            self._update_attempt(job_id, attempt, {"started_at": float(at)})
            self._event("started", job_id, at, node=node, attempt=attempt)
            raw = job.get("spec", "")
        try:  # claimed: a spec nobody can read must end the attempt, not the worker
            return True, "ok", records.job_spec(records.json_object("job", "spec", raw))
        except records.BadRecord as exc:
            return True, exc.args[0], None

    def progress(self, job_id: str, attempt: int, report: Mapping[str, Any],
                 kind: str = "progress") -> bool:
        return self.progress_many(job_id, attempt, [report], kind)

    def progress_many(self, job_id: str, attempt: int, reports: Sequence[Mapping[str, Any]],
                      kind: str = "progress") -> bool:
        at = stamp(None)
        with self.lock:
            job = self.jobs.get(job_id, {})
            if job.get("attempt") != str(attempt) or job.get("state") != JobState.RUNNING.value:
                return False
            if kind == "resumed":
                step = reports[0].get("step")
                self._update_attempt(job_id, attempt, {"resumed_from_step": step})
                self._event("resumed", job_id, at, attempt=attempt, step=step)
                return True
            if kind == "note":  # fields of the attempt record (progress.lua says how)
                self._update_attempt(job_id, attempt, reports[0])
                return True
            if kind in ("preparing", "prepared"):  # the job's env (progress.lua says how)
                self._phase(job_id, attempt, kind, reports[0], at)
                return True
            self._record_progress(job_id, reports, at)
        return True

    def _phase(self, job_id: str, attempt: int, kind: str, r: Mapping[str, Any], at: str) -> None:
        job, env = self.jobs[job_id], r.get("env")
        if kind == "preparing":
            job.update(phase="PREPARING", updated_at=at)
            self._event(kind, job_id, at, attempt=attempt, env=env)
            return
        job.pop("phase", None)
        built, seconds = str(r.get("built")).lower(), r.get("seconds")
        self._update_attempt(job_id, attempt, {"env": env, "env_built": r.get("built"),
                                               "env_seconds": seconds})
        self._event(kind, job_id, at, attempt=attempt, env=env, built=built, seconds=seconds)

    def finish(self, job_id: str, attempt: int, node: str, outcome: Outcome,
               now: float | None = None,
               progress: Sequence[Mapping[str, Any]] = ()) -> tuple[bool, str]:
        at = stamp(now)
        counted = not outcome.reason.infrastructure
        with self.lock:
            job = self.jobs.get(job_id, {})
            if job.get("attempt") != str(attempt):
                return False, "superseded"
            state = job.get("state")
            if state == JobState.PENDING.value or state in TERMINAL:
                return False, f"job is {state}"
            if state == JobState.RUNNING.value:
                self._record_progress(job_id, progress, at)
            self._release(node, job_id, str(attempt))
            self.placing_since.pop(job_id, None)
            rec: dict[str, Any] = {**dict(outcome.extra or {}), "ended_at": float(at),
                                   "end_reason": outcome.reason.value, "counted": counted}
            if outcome.error:
                rec["error"] = outcome.error
            self._update_attempt(job_id, attempt, rec)
            final = outcome.finish_as
            if final == "FAILURE":
                retries = as_int(job.get("retries")) + counted
                infra = as_int(job.get("infra_retries")) + (not counted)
                job.update(retries=str(retries), infra_retries=str(infra))
                if job_id in self.cancel_flags:
                    final = JobState.CANCELLED.value
                elif (retries > as_int(job.get("max_retries"))
                      or infra > as_int(job.get("max_infra_retries"))):
                    final = JobState.FAILED.value
                else:
                    delay = RETRY_BACKOFF_S * 2 ** (retries - 1) if counted else 0
                    job.update(state=JobState.PENDING.value, node="", incarnation="",
                               updated_at=at, not_before=number_text(float(at) + delay),
                               waiting=f"retrying after {outcome.reason.value}")
                    self.pending[job_id] = pending_score(as_int(job.get("priority")),
                                                         as_int(job.get("seq")))
                    self._event("retrying", job_id, at, attempt=attempt,
                                reason=outcome.reason.value)
                    self._wake()
                    return True, JobState.PENDING.value
            job.update(state=final, finished_at=at, updated_at=at, reason=outcome.reason.value,
                       error=outcome.error, result=json.dumps(dict(outcome.result or {})))
            self.cancel_flags.pop(job_id, None)
            self._event("finished", job_id, at, state=final, reason=outcome.reason.value)
            self._wake()
        return True, final

    def commit_checkpoint(self, job_id: str, attempt: int, node: str, incarnation: str,
                          step: int, name: str, now: float | None = None) -> tuple[bool, str]:
        record = json.dumps({"attempt": attempt, "step": step, "dir": name})
        with self.lock:
            job = self.jobs.get(job_id, {})
            if (job.get("attempt"), job.get("node"), job.get("incarnation")) != (
                    str(attempt), node, incarnation):
                return False, "superseded"
            if job.get("state") != JobState.RUNNING.value:
                return False, f"job is {job.get('state', 'nil')}"
            if job.get("checkpoint") and job["checkpoint"] != record:
                job["checkpoint_prev"] = job["checkpoint"]
            job.update(checkpoint=record, updated_at=stamp(now))
            self._update_attempt(job_id, attempt, {"committed_step": step})
        return True, "ok"

    def cancel(self, job_id: str) -> str:
        at = stamp(None)
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            state = job["state"]
            if state in TERMINAL:
                return state
            if state == JobState.RUNNING.value:
                self.cancel_flags[job_id] = at
                self._event("cancelling", job_id, at)
                return "CANCELLING"
            if state == JobState.PLACED.value:
                self._release(job.get("node", ""), job_id, job["attempt"])
                self.placing_since.pop(job_id, None)
                self._update_attempt(job_id, job["attempt"],
                                     {"ended_at": float(at), "end_reason": "CANCELLED"})
            self.pending.pop(job_id, None)
            job.update(state="CANCELLED", reason="CANCELLED", finished_at=at, updated_at=at,
                       waiting="")
            self._event("finished", job_id, at, state="CANCELLED", reason="CANCELLED")
            self._wake()
        return JobState.CANCELLED.value

    def set_waiting(self, reasons: Mapping[str, str]) -> None:
        with self.lock:
            for job_id, reason in reasons.items():
                if job_id in self.jobs:
                    self.jobs[job_id]["waiting"] = reason

    def drop_pending(self, job_id: str, why: str, now: float | None = None) -> str:
        at = stamp(now)
        with self.lock:
            self.pending.pop(job_id, None)
            job = self.jobs.get(job_id)
            if job is None or job.get("state") != JobState.PENDING.value or not why:
                return "dropped"
            job.update(state="FAILED", reason="REJECTED", error=why[:500], finished_at=at,
                       updated_at=at, waiting="")
            self._event("finished", job_id, at, state="FAILED", reason="REJECTED")
            self._wake()
        return "failed"

    def repair_alloc(self, node: str, job_id: str) -> str:
        """Rewrite `job_id`'s entry on `node` from its record, or drop it (repair_alloc.lua);
        the memory store never holds a malformed one, but a test may plant one."""
        with self.lock:
            job = self.jobs.get(job_id, {})
            held = self.alloc.setdefault(node, {})
            if job.get("state") not in ("PLACED", "RUNNING") or job.get("node") != node:
                held.pop(job_id, None)
                return "dropped"
            req = json_object(job.get("request")) or {}
            held[job_id] = json.dumps({"attempt": max(as_int(job.get("attempt")), 1),
                                       "incarnation": job.get("incarnation") or "-",
                                       **{r: int(req.get(r, 0)) for r in RESOURCES}})
        return "rewritten"
