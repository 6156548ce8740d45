"""The in-memory store's records, as Redis would hold them, and the reads of them.

Records are kept as the strings the Lua scripts write and decoded by the same
`fleet.store.records` functions, so reads answer in the Redis store's shapes. The steps that
write them are fleet.store.memory_jobs'; node reports, intakes and the lease, fleet.store.memory's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleet.store import records
from fleet.store.jobstore import METRICS_CAP, decode_job

EVENTS_CAP = 100_000  # as the scripts' XADD MAXLEN


def number_text(value: float) -> str:
    """A number as the scripts store it: integral ones without a fraction."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class MemoryData:
    """The records, as Redis would hold them, and the helpers the scripts' prelude gives."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # held by every step and read: a step is atomic
        self._woken = threading.Condition(self.lock)
        self.jobs: dict[str, dict[str, str]] = {}  # job id -> its hash
        self.job_index: dict[str, float] = {}  # keys.JOBS
        self.pending: dict[str, float] = {}  # keys.PENDING: job id -> order score
        self.placing_since: dict[str, float] = {}  # keys.PLACING
        self.seq = 0
        self.attempt_records: dict[str, dict[str, str]] = {}  # job id -> attempt n -> JSON
        self.metric_lists: dict[str, list[str]] = {}
        self.cancel_flags: dict[str, str] = {}
        self.logs: dict[tuple[str, int], list[str]] = {}
        self.event_log: list[tuple[str, dict[str, str]]] = []
        self._event_seq = 0
        self._event_ms = 0
        self.alloc: dict[str, dict[str, str]] = {}  # node -> job id -> JSON reservation
        self.wakes = 0

    # -- the prelude's helpers (called with the lock held) -------------------------------------
    def _event(self, name: str, job: str, now: str, **fields: object) -> None:
        self._event_seq += 1  # ids grow like a stream's, whatever the clock does
        self._event_ms = max(self._event_ms, int(time.time() * 1000))
        entry = {"event": name, "job": job, "time": now, **{k: str(v) for k, v in fields.items()}}
        self.event_log.append((f"{self._event_ms}-{self._event_seq}", entry))
        del self.event_log[:-EVENTS_CAP]
        self._woken.notify_all()

    def _wake(self) -> None:
        self.wakes += 1
        self._woken.notify_all()

    def _update_attempt(self, job: str, n: int | str, fields: Mapping[str, Any]) -> None:
        attempts = self.attempt_records.setdefault(job, {})
        rec = json.loads(attempts.get(str(n), "{}"))
        rec["attempt"] = int(n)
        rec.update(fields)
        attempts[str(n)] = json.dumps(rec)

    def _release(self, node: str, job: str, attempt: str) -> None:
        """Drop `job`'s reservation on `node`, only when that attempt holds it."""
        held = self.alloc.get(node, {})
        raw = held.get(job)
        if raw is None:
            return
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or str(entry.get("attempt")) == str(attempt):
            del held[job]

    def _record_progress(self, job: str, reports: Sequence[Mapping[str, Any]], now: str) -> None:
        if not reports:
            return
        texts = [json.dumps(dict(r)) for r in reports]
        self.jobs[job].update(progress=texts[-1], updated_at=now)
        kept = self.metric_lists.setdefault(job, [])
        kept.extend(texts)
        del kept[:-METRICS_CAP]

    def _node_holder(self, node: str) -> tuple[str | None, str | None]:
        """(incarnation, capacity JSON) of the node's live report; Nones when it has none."""
        raise NotImplementedError

    def is_draining(self, node: str) -> bool:
        raise NotImplementedError


class MemoryReads(MemoryData):
    """The job reads of `fleet.store.protocol`."""

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            raw = dict(self.jobs.get(job_id, {}))
        return decode_job(raw, job_id) if raw else None

    def get_many(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(job_ids)
        return [job for job in self.read_many(ids).values() if isinstance(job, dict)]

    def read_many(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any] | str | None]:
        out: dict[str, dict[str, Any] | str | None] = {}
        for job_id in job_ids:
            try:
                out[job_id] = self.get(job_id)
            except records.BadRecord as exc:
                out[job_id] = str(exc)
        return out

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            raw = list(self.attempt_records.get(job_id, {}).values())
        return sorted((records.attempt_record(v) for v in raw), key=lambda a: a["attempt"])

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            raw = list(self.metric_lists.get(job_id, [])[start:])
        return [records.metric_entry(v) for v in raw]

    def committed_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            job = self.jobs.get(job_id, {})
            found = [json_object(job.get(f)) for f in ("checkpoint", "checkpoint_prev")]
        return [c for c in found if c is not None]

    def pending_ids(self, start: int = 0, limit: int | None = None) -> list[str]:
        with self.lock:
            line = sorted(self.pending, key=lambda j: (self.pending[j], j))
        return line[start:] if limit is None else line[start:start + limit]

    def placing(self, older_than: float) -> list[str]:
        with self.lock:
            return sorted((j for j, t in self.placing_since.items() if t <= older_than),
                          key=lambda j: (self.placing_since[j], j))

    def job_ids(self, limit: int | None = None) -> list[str]:
        with self.lock:
            ids = sorted(self.job_index, key=lambda j: (self.job_index[j], j), reverse=True)
        return ids if limit is None else ids[:limit]

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self.cancel_flags

    def submitted_by(self, job_id: str) -> str:
        return self.jobs.get(job_id, {}).get("submitted_by", "")

    def job_state(self, job_id: str) -> tuple[str, bool]:
        with self.lock:
            return self.jobs.get(job_id, {}).get("state", ""), job_id in self.cancel_flags

    def log_lines(self, job_id: str, attempt: int, start: int = 0) -> list[str]:
        with self.lock:
            return list(self.logs.get((job_id, attempt), [])[start:])


def stamp(now: float | None) -> str:
    return repr(time.time() if now is None else now)


def as_int(value: str | None) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def json_object(raw: str | None) -> dict[str, Any] | None:
    """A JSON object, or None when `raw` is missing or not one (the prelude's `decode`)."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def is_amount(value: object) -> bool:
    """A usable amount of a resource: a number, not negative, not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
