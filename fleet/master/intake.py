"""Intakes: how a request from a producer seat becomes a fleet record, validated by the master.

A producer may write one key only, its intake stream (`keys.intake(name)`, see fleet.acl): the
Client appends `{op: submit, job_id, spec}` or `{op: cancel, job_id}` and the master, which
alone writes the fleet's records, takes every intake's entries here and applies them with the
fleet's own atomic steps (fleet.store.jobstore). Every entry is untrusted: sizes are checked before
anything is parsed, the spec is validated with the master's own allowlist and limits, the job
id must have the form `new_job_id` gives. Who submitted is the intake the entry came from,
recorded as the job's `submitted_by`; nothing in the entry can claim otherwise.

Durable without a cursor: an entry leaves its intake (XTRIM MINID) only after it was applied,
so a master killed mid-ingest finds it again, and applying an entry twice is harmless (a job id
that exists is a duplicate; a second cancel finds the job cancelled). A bad entry with a usable
job id becomes a FAILED job (reason REJECTED, the one-line error), so a producer waiting on it
learns why; one without is logged and counted in `keys.BAD_RECORDS` (field `intake`).

The master ingests at the start of each round (`Ingest.run`). It sleeps on `fleet:wake`, which
producers may not write, so a `Doorbell` thread blocks on the intakes (XREAD BLOCK) and pokes
`fleet:wake` when an entry lands: submit → placed stays a few milliseconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from fleet import acl
from fleet.store import keys, quarantine, records
from fleet.entrypoints import check_name, is_job_id
from fleet.errors import FleetError, NotFound
from fleet.store.jobstore import JobStore
from fleet.settings import Settings
from fleet.spec import JobSpec, parse_spec

log = logging.getLogger("fleet.intake")

INTAKE_CAP = 100_000  # entries one intake holds; a Client refuses to add past it
BATCH = 256  # entries taken from each intake per round
MAX_SPEC_BYTES = 256 * 1024  # a spec as JSON (params alone may have 64 KiB)
RETRY_S = 30.0  # how long an entry a fleet step refuses is kept for later rounds
MAX_FIELDS = 8
MAX_FIELD_NAME = 16
OPS = ("submit", "cancel")
BAD_KIND = "intake"  # the field of keys.BAD_RECORDS this module counts under


@dataclass(frozen=True)
class Request:
    op: str
    job_id: str
    spec: JobSpec | None = None  # submit only


class BadEntry(ValueError):
    """An entry that cannot be applied; `job_id` when it names a usable one."""

    def __init__(self, reason: str, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.job_id = job_id


def names(client: redis.Redis) -> list[str]:
    """Every intake to read: the built-in ones and those an operator added to keys.INTAKES."""
    found = list(acl.INTAKES)
    for raw in client.smembers(keys.INTAKES):
        name = keys.decode(raw)
        try:
            check_name(name)
        except ValueError:
            continue
        if name not in found:
            found.append(name)
    return found


def entry(op: str, job_id: str, spec: JobSpec | None = None) -> dict[str, str]:
    """The fields a Client appends (the one place their names are spelled)."""
    fields = {"op": op, "job_id": job_id}
    if spec is not None:
        fields["spec"] = json.dumps(spec.payload())
    return fields


def parse(fields: Mapping[Any, Any], settings: Settings) -> Request:
    """Validate an entry as untrusted input: sizes first, then JSON, then the spec."""
    if len(fields) > MAX_FIELDS or any(len(k) > MAX_FIELD_NAME for k in fields):
        raise BadEntry(f"more than {MAX_FIELDS} fields or a field name over {MAX_FIELD_NAME}")
    raw = {keys.decode(k): v for k, v in fields.items()}
    job_id = raw.get("job_id", b"")
    if len(job_id) > 80 or not is_job_id(keys.decode(job_id)):
        raise BadEntry(f"job_id: not a job id ({keys.decode(job_id[:40])!r})")
    job_id = keys.decode(job_id)
    op = keys.decode(raw.get("op", b""))
    if op not in OPS:
        raise BadEntry(f"op: expected one of {', '.join(OPS)}, got {op[:20]!r}", job_id)
    if op == "cancel":
        return Request(op, job_id)
    spec = raw.get("spec", b"")
    if len(spec) > MAX_SPEC_BYTES:
        raise BadEntry(f"spec: {len(spec)} bytes; at most {MAX_SPEC_BYTES} are allowed", job_id)
    try:
        data = json.loads(spec)
    except (ValueError, RecursionError) as exc:
        raise BadEntry(f"spec: not JSON ({str(exc)[:80]})", job_id) from None
    try:
        parsed = parse_spec(data, allowlist=settings.allowlist, max_timeout=settings.max_job_timeout)
    except FleetError as exc:
        raise BadEntry(str(exc), job_id) from None
    except Exception as exc:  # a validator's bug is still a refusal, never the master's death
        raise BadEntry(f"spec: could not be validated ({type(exc).__name__})", job_id) from None
    return Request(op, job_id, parsed)


class Ingest:
    """The master's side: take, validate, apply, trim."""

    def __init__(self, client: redis.Redis, store: JobStore, settings: Settings) -> None:
        self.r = client
        self.store = store
        self.settings = settings
        self._unreadable: set[str] = set()  # reported once
        self._refused: dict[str, float] = {}  # entry -> when a step first refused it

    def run(self, now: float) -> int:
        """Apply what waits in every intake (up to BATCH each); the number of entries taken."""
        intakes = names(self.r)
        pipe = self.r.pipeline(transaction=False)
        for name in intakes:
            pipe.xrange(keys.intake(name), count=BATCH)
        taken = 0
        for name, entries in zip(intakes, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(entries, redis.exceptions.ResponseError):  # not a stream: not ours
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    self._bad(name, f"the intake is unreadable ({entries})")
                continue
            done = []
            for entry_id, fields in entries:  # in order: a request waits for those before it
                if not self.apply(name, fields, _submitted_at(keys.decode(entry_id), now),
                                  entry=f"{name}/{keys.decode(entry_id)}"):
                    break
                done.append(entry_id)
            if done:  # applied: gone from the intake (every entry up to the last one done)
                self.r.xtrim(keys.intake(name), minid=_next_id(keys.decode(done[-1])),
                             approximate=False)
                taken += len(done)
        return taken

    def apply(self, intake: str, fields: Mapping[Any, Any], now: float, entry: str = "") -> bool:
        """Apply one entry: True when it ended here (the caller trims it): applied, rejected as
        a FAILED job, or counted as unusable. False when a fleet step refused it (a key the
        fleet needs is written over, e.g. the sequence counter, which the master repairs): it
        stays for the next round, for up to RETRY_S, then counts as unusable. An acknowledged
        submission is not dropped for a moment's damage. Only an outage raises."""
        try:
            request = parse(fields, self.settings)
        except BadEntry as exc:
            if exc.job_id is None:
                self._bad(intake, str(exc))
            else:
                log.warning("intake %s: job %s rejected: %s", intake, exc.job_id, exc)
                self.store.reject(exc.job_id, str(exc), submitted_by=intake, now=now)
            return True
        try:
            if request.spec is None:
                self._cancel(intake, request.job_id)
            else:
                self._submit(intake, request.job_id, request.spec, now)
        except redis.exceptions.ResponseError as exc:
            first = self._refused.setdefault(entry, time.monotonic())
            if time.monotonic() - first < RETRY_S:
                log.warning("intake %s: %s %s refused by redis, kept for the next round: %s",
                            intake, request.op, request.job_id, exc)
                return False
            self._bad(intake, f"{request.op} {request.job_id} refused by redis for "
                              f"{RETRY_S:g}s: {exc}")
        self._refused.pop(entry, None)
        return True

    def _submit(self, intake: str, job_id: str, spec: JobSpec, now: float) -> None:
        """Submit; a job id that exists is this entry applied twice, unless what exists is no
        readable job record (written over before the master took the entry): then that key is
        moved aside and the acknowledged submission still becomes its job."""
        try:
            self.store.submit(spec, job_id=job_id, now=now, submitted_by=intake)
            return
        except redis.exceptions.ResponseError as exc:
            if "job id exists" not in str(exc):
                raise
        try:
            self.store.get(job_id)
            log.info("intake %s: job %s exists already (applied twice)", intake, job_id)
            return
        except records.BadRecord:
            quarantine.quarantine_key(self.r, keys.job(job_id))
        self.store.submit(spec, job_id=job_id, now=now, submitted_by=intake)

    def _bad(self, intake: str, why: str) -> None:
        log.warning("intake %s: unusable entry dropped: %s", intake, why)
        self.r.hincrby(keys.BAD_RECORDS, BAD_KIND, 1)

    def _cancel(self, intake: str, job_id: str) -> None:
        """The operator may cancel any job; a producer seat only those it submitted."""
        owner = keys.decode(self.r.hget(keys.job(job_id), "submitted_by") or b"")
        if intake != acl.OPERATOR_INTAKE and owner != intake:
            log.warning("intake %s: cancel of %s refused (submitted by %r)", intake, job_id,
                        owner or None)
            return
        try:
            self.store.cancel(job_id)
        except NotFound:
            log.info("intake %s: cancel of unknown job %s", intake, job_id)


class Doorbell:
    """Wakes the master's loop the moment an entry lands in any intake: the loop sleeps on
    `fleet:wake` (BLPOP), which producers may not write. A thread with its own blocking read."""

    def __init__(self, client: redis.Redis, block_ms: int = 1000) -> None:
        self.r = client
        self.block_ms = block_ms

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(stop,), name="intake-doorbell",
                                  daemon=True)
        thread.start()
        return thread

    def _run(self, stop: threading.Event) -> None:
        seen: dict[str, str] = {}  # intake key -> the newest entry id rung for
        skip: set[str] = set()  # keys that are no stream (the master's round reports them)
        while not stop.is_set():
            try:
                streams: dict[Any, Any] = {k: seen.get(k, "0-0") for k in map(keys.intake, names(self.r))
                                           if k not in skip}
                try:
                    found: Any = self.r.xread(streams, count=BATCH, block=self.block_ms)
                except redis.exceptions.ResponseError:  # WRONGTYPE: find which, go on without
                    pipe = self.r.pipeline(transaction=False)
                    for key in streams:
                        pipe.type(key)
                    skip |= {k for k, t in zip(streams, pipe.execute(), strict=True)
                             if keys.decode(t) not in ("stream", "none")}
                    continue
                if found:
                    for stream, entries in found:
                        seen[keys.decode(stream)] = keys.decode(entries[-1][0])
                    pipe = self.r.pipeline(transaction=False)
                    pipe.lpush(keys.WAKE, "1")
                    pipe.ltrim(keys.WAKE, 0, 0)
                    pipe.execute()
            except redis.exceptions.RedisError as exc:  # an outage: the master's loop says so
                log.debug("doorbell: %s", exc)
                stop.wait(1.0)


def _submitted_at(entry_id: str, now: float) -> float:
    """When Redis took the entry (its id's milliseconds): the job's submit time. An id the
    producer chose itself (XADD takes one) counts only within the last hour."""
    try:
        at = int(entry_id.partition("-")[0]) / 1000
    except ValueError:
        return now
    return at if now - 3600 <= at <= now else now


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
