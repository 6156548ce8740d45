"""Intakes: how a request from a producer seat becomes a fleet record, validated by the master.

A producer may write one key only, its intake stream (`keys.intake(name)`, see fleet.acl): the
Client appends `{op: submit, job_id, spec}` or `{op: cancel, job_id}` and the master, which
alone writes the fleet's records, takes every intake's entries here and applies them with the
fleet's own atomic steps (fleet.store.jobstore). Every entry is untrusted: sizes are checked before
anything is parsed, and a value past its cap (a bundle over the cap, a spec over
MAX_SPEC_BYTES) is measured in Redis and never read (fleet.store.peek); the spec is validated
with the master's own allowlist and limits, the job id must have the form `new_job_id` gives.
Who submitted is the intake the entry came from, recorded as the job's `submitted_by`; nothing
in the entry can claim otherwise. A bundle refused (over the cap, or not what its digest
names) fails the submit that names it with the same one-line reason.

Durable without a cursor: an entry leaves its intake (XTRIM MINID) only after it was applied,
so a master killed mid-ingest finds it again, and applying an entry twice is harmless (a job id
that exists is a duplicate; a second cancel finds the job cancelled). A bad entry with a usable
job id becomes a FAILED job (reason REJECTED, the one-line error), so a producer waiting on it
learns why; one without is logged and counted in `keys.BAD_RECORDS` (field `intake`).

The master ingests at the start of each round (`Ingest.run`). It sleeps on `fleet:wake`, which
producers may not write, so the store's doorbell (`RedisStore.start_doorbell`: a thread blocked
on the intakes, XREAD BLOCK) pokes `fleet:wake` when an entry lands: submit → placed stays a few
milliseconds. The intakes are read and trimmed through the store (fleet.store.protocol), so the
same code runs over the in-memory store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from fleet import acl
from fleet.entrypoints import is_job_id
from fleet.errors import FleetError, NotFound
from fleet.settings import Settings
from fleet.spec import JobSpec, parse_spec
from fleet.store import keys, records
from fleet.store.peek import Caps, Oversize
from fleet.store.protocol import Refused, Store

log = logging.getLogger("fleet.intake")

INTAKE_CAP = 100_000  # entries one intake holds; a Client refuses to add past it
BATCH = 256  # entries taken from each intake per round
MAX_SPEC_BYTES = 256 * 1024  # a spec as JSON (params alone may have 64 KiB)
RETRY_S = 30.0  # how long an entry a fleet step refuses is kept for later rounds
MAX_FIELDS = 8
MAX_FIELD_NAME = 16
OPS = ("submit", "cancel", "bundle")
BUNDLE_HEADROOM = 16 * 2**20  # a bundle entry's archive may exceed the cap by its tar headers
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
BAD_KIND = "intake"  # the field of keys.BAD_RECORDS this module counts under
REFUSED_KEPT = 1000  # refused bundles whose reason a later submit naming them is given


@dataclass(frozen=True)
class Request:
    op: str
    job_id: str
    spec: JobSpec | None = None  # submit only
    data: bytes | None = None  # bundle only: the archive; `job_id` holds its digest


class BadEntry(ValueError):
    """An entry that cannot be applied; `job_id` when it names a usable one, `digest` for a
    bundle entry (the submit naming it then fails with this reason)."""

    def __init__(self, reason: str, job_id: str | None = None, digest: str | None = None) -> None:
        super().__init__(reason)
        self.job_id = job_id
        self.digest = digest


def entry(op: str, job_id: str, spec: JobSpec | None = None) -> dict[str, str]:
    """The fields a Client appends (the one place their names are spelled)."""
    fields = {"op": op, "job_id": job_id}
    if spec is not None:
        fields["spec"] = json.dumps(spec.payload())
    return fields


def bundle_entry(digest: str, data: bytes) -> dict[str, str | bytes]:
    """A code bundle's bytes, appended before the submit that names it (fleet.bundles.pack):
    a producer may write nothing but its intake, so the master stores them."""
    return {"op": "bundle", "digest": digest, "data": data}


def parse(fields: Mapping[Any, Any], settings: Settings) -> Request:
    """Validate an entry as untrusted input: sizes first, then JSON, then the spec."""
    if len(fields) > MAX_FIELDS or any(len(k) > MAX_FIELD_NAME for k in fields):
        raise BadEntry(f"more than {MAX_FIELDS} fields or a field name over {MAX_FIELD_NAME}")
    raw = {keys.decode(k): v for k, v in fields.items()}
    if keys.decode(raw.get("op", b"")) == "bundle":
        return _parse_bundle(raw, settings)
    job_id = raw.get("job_id", b"")
    if isinstance(job_id, Oversize):
        raise BadEntry(f"job_id: {job_id} bytes, not a job id")
    if len(job_id) > 80 or not is_job_id(keys.decode(job_id)):
        raise BadEntry(f"job_id: not a job id ({keys.decode(job_id[:40])!r})")
    job_id = keys.decode(job_id)
    op = keys.decode(raw.get("op", b""))
    if op not in OPS:
        raise BadEntry(f"op: expected one of {', '.join(OPS)}, got {op[:20]!r}", job_id)
    if op == "cancel":
        return Request(op, job_id)
    spec = raw.get("spec", b"")
    size = spec if isinstance(spec, Oversize) else len(spec)  # Oversize: left in Redis
    if size > MAX_SPEC_BYTES:
        raise BadEntry(f"spec: {size} bytes; at most {MAX_SPEC_BYTES} are allowed", job_id)
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
    if parsed.code is not None or parsed.bundle is not None:
        if not settings.code_bundles:
            raise BadEntry("code: this fleet runs no code bundles (FLEET_CODE_BUNDLES=off); "
                           "submit an installed, allowlisted entry point", job_id)
        if parsed.bundle is None:
            raise BadEntry("code: a folder on the producer's machine: submit it with the Client "
                           "(`fleet submit SPEC --code DIR`), which packs and uploads it", job_id)
    return Request(op, job_id, parsed)


def _parse_bundle(raw: Mapping[str, Any], settings: Settings) -> Request:
    """A bundle entry: its digest well formed, its size under the cap, its bytes what the
    digest names (else it is refused and never stored)."""
    digest = raw.get("digest", b"")
    digest = "" if isinstance(digest, Oversize) else keys.decode(digest)[:80]
    if not DIGEST.fullmatch(digest):
        raise BadEntry(f"bundle: not a digest ({digest[:20]!r}...)")
    data = raw.get("data", b"")
    if not settings.code_bundles:
        raise BadEntry(f"bundle {digest}: this fleet runs no code bundles "
                       "(FLEET_CODE_BUNDLES=off)", digest=digest)
    size = data if isinstance(data, Oversize) else len(data)  # Oversize: never read
    if size > settings.bundle_cap + BUNDLE_HEADROOM:
        raise BadEntry(f"bundle {digest}: {size} bytes, over the cap ({settings.bundle_cap} "
                       "bytes of files; FLEET_BUNDLE_CAP)", digest=digest)
    data = data.encode() if isinstance(data, str) else bytes(data)
    got = hashlib.sha256(data).hexdigest()
    if digest != f"sha256:{got}":
        raise BadEntry(f"bundle {digest}: its bytes are sha256:{got}, refused", digest=digest)
    return Request("bundle", digest, data=data)


class Ingest:
    """The master's side: take, validate, apply, trim."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._unreadable: set[str] = set()  # reported once
        self._refused: dict[str, float] = {}  # entry -> when a step first refused it
        self._bundles_refused: dict[str, str] = {}  # digest -> why (the newest REFUSED_KEPT)
        cap = settings.bundle_cap + BUNDLE_HEADROOM
        # An entry's bytes past these stay in Redis (fleet.store.peek): a round holds about
        # one bundle, however many or large the entries producers wrote.
        self.caps = Caps(data=cap, other=MAX_SPEC_BYTES, budget=cap, max_fields=MAX_FIELDS,
                         max_name=MAX_FIELD_NAME)

    def run(self, now: float) -> int:
        """Apply what waits in every intake (up to BATCH each); the number of entries taken."""
        intakes = self.store.intake_names()
        taken = 0
        for name, entries in zip(intakes, self.store.intake_read(intakes, BATCH, self.caps), strict=True):
            if isinstance(entries, Exception):  # not a stream: not ours
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    self._bad(name, f"the intake is unreadable ({entries})")
                continue
            done = []
            for entry_id, fields in entries:  # in order: a request waits for those before it
                if not self.apply(name, fields, _submitted_at(entry_id, now),
                                  entry=f"{name}/{entry_id}"):
                    break
                done.append(entry_id)
            if done:  # applied: gone from the intake (every entry up to the last one done)
                self.store.intake_trim(name, done[-1])
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
            if exc.digest is not None:  # its submit, next, fails with this reason
                self._bundles_refused.pop(exc.digest, None)
                self._bundles_refused[exc.digest] = str(exc)
                while len(self._bundles_refused) > REFUSED_KEPT:
                    del self._bundles_refused[next(iter(self._bundles_refused))]
            if exc.job_id is None:
                self._bad(intake, str(exc))
            else:
                log.warning("intake %s: job %s rejected: %s", intake, exc.job_id, exc)
                self.store.reject(exc.job_id, str(exc), submitted_by=intake, now=now)
            return True
        try:
            if request.data is not None:
                if self.store.bundle_put(request.job_id, request.data):
                    log.info("intake %s: bundle %s stored (%d bytes)", intake, request.job_id,
                             len(request.data))
                self.store.bundles_touch([request.job_id], now)  # its lifetime: master.bundles
            elif request.spec is None:
                self._cancel(intake, request.job_id)
            else:
                self._submit(intake, request.job_id, request.spec, now)
        except (redis.exceptions.ResponseError, Refused) as exc:
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
        moved aside and the acknowledged submission still becomes its job. A bundle job
        whose bundle is not stored (its entry refused, or never sent) is rejected: FAILED."""
        if spec.bundle is not None and not self.store.bundle_exists(spec.bundle):
            why = self._bundles_refused.get(spec.bundle) or (
                f"bundle: {spec.bundle} is not stored in this fleet; submit with the Client "
                "(code=DIR), which uploads it")
            self.store.reject(job_id, why, submitted_by=intake, now=now)
            return
        if spec.bundle is not None:
            self.store.bundles_touch([spec.bundle], now)
        try:
            self.store.submit(spec, job_id=job_id, now=now, submitted_by=intake)
            return
        except (redis.exceptions.ResponseError, Refused) as exc:
            if "job id exists" not in str(exc):
                raise
        try:
            self.store.get(job_id)
            log.info("intake %s: job %s exists already (applied twice)", intake, job_id)
            return
        except records.BadRecord:
            self.store.quarantine(keys.job(job_id))
        self.store.submit(spec, job_id=job_id, now=now, submitted_by=intake)

    def _bad(self, intake: str, why: str) -> None:
        log.warning("intake %s: unusable entry dropped: %s", intake, why)
        self.store.count_bad(BAD_KIND)

    def _cancel(self, intake: str, job_id: str) -> None:
        """The operator may cancel any job; a producer seat only those it submitted."""
        owner = self.store.submitted_by(job_id)
        if intake != acl.OPERATOR_INTAKE and owner != intake:
            log.warning("intake %s: cancel of %s refused (submitted by %r)", intake, job_id,
                        owner or None)
            return
        try:
            self.store.cancel(job_id)
        except NotFound:
            log.info("intake %s: cancel of unknown job %s", intake, job_id)


def _submitted_at(entry_id: str, now: float) -> float:
    """When Redis took the entry (its id's milliseconds): the job's submit time. An id the
    producer chose itself (XADD takes one) counts only within the last hour."""
    try:
        at = int(entry_id.partition("-")[0]) / 1000
    except ValueError:
        return now
    return at if now - 3600 <= at <= now else now


