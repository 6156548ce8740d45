"""How long a stored code bundle lives: while an unfinished job needs it, then a retention.

A bundle (`keys.bundle`) is referenced by the jobs whose spec names its digest. The master
deletes one only when no unfinished job references it *and* none has used it for
`FLEET_BUNDLE_RETENTION` seconds (3 days by default). References, not a plain expiry: a job
may wait pending for days, or retry from a checkpoint on another node a week after its submit,
and its bundle must be there whenever a node fetches it; a TTL long enough for that would keep
every other bundle as long. The retention after the last use is what lets a producer submit the
same folder again without sending it (its Client finds the bundle stored).

What counts as a use (`keys.BUNDLES_USED`, digest -> epoch seconds): being stored, a submit
that names it, and each sweep that finds an unfinished job referencing it. The references are
computed from the job records themselves (pending, reserved, and every node's allocations;
each job's spec read once, since a spec never changes), every `SWEEP_EVERY_S`, so nothing can
drift out of step with the jobs: a reference missed in one sweep (a job moving between the
indexes as they are read) is found by the next, long before a retention ends.

The sweep runs in the master's loop, between rounds, so no submit is applied while it decides.
One race is left and said plainly: a Client that found a bundle stored moments before the sweep
deletes it (after days unused) gets its job FAILED with "not stored", and a resubmit sends it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.store.protocol import Store

log = logging.getLogger("fleet.bundles")

SWEEP_EVERY_S = 300.0


@dataclass(frozen=True)
class Verdict:
    touch: frozenset[str]  # digests to mark used now
    delete: frozenset[str]  # digests whose bytes go
    forget: frozenset[str]  # use times of bundles no longer stored


def decide(stored: Iterable[str], referenced: Iterable[str], used: Mapping[str, float],
           now: float, retention: float) -> Verdict:
    """Pure: what a sweep does. A referenced bundle is used now; an unreferenced one goes once
    its last use is over `retention` old; one with no use time (stored before lifetimes were
    kept) starts its clock now."""
    stored, referenced = set(stored), set(referenced)
    touch = {d for d in stored if d in referenced or d not in used}
    delete = {d for d in stored - touch if now - used[d] > retention}
    return Verdict(frozenset(touch), frozenset(delete), frozenset(set(used) - stored))


class BundleSweep:
    """The master's side: every SWEEP_EVERY_S, read, decide, delete."""

    def __init__(self, store: Store, retention: float, every: float = SWEEP_EVERY_S) -> None:
        self.store = store
        self.retention = retention
        self.every = every
        self._at = -math.inf
        self._job_bundle: dict[str, str | None] = {}  # job id -> its bundle (specs never change)

    def maybe_run(self, now: float) -> Verdict | None:
        if 0 <= now - self._at < self.every:
            return None
        self._at = now
        return self.run(now)

    def run(self, now: float) -> Verdict:
        stored = self.store.bundles_stored()
        if not stored:
            self._job_bundle.clear()
            return Verdict(frozenset(), frozenset(), frozenset(self.store.bundles_used()))
        verdict = decide(stored, self.referenced(), self.store.bundles_used(), now,
                         self.retention)
        self.store.bundles_touch(verdict.touch, now)
        for digest in verdict.delete:
            self.store.bundle_delete(digest)
            log.info("bundle %s deleted: no unfinished job uses it, unused for over %gs",
                     digest, self.retention)
        for digest in verdict.forget:
            self.store.bundle_delete(digest)
        return verdict

    def referenced(self) -> set[str]:
        """The bundles of every unfinished job: pending, reserved, or allocated on a node."""
        unfinished = set(self.store.pending_ids()) | set(self.store.placing(math.inf))
        for state in self.store.node_states():
            unfinished.update(state.get("alloc") or {})
        self._job_bundle = {j: b for j, b in self._job_bundle.items() if j in unfinished}
        new = [j for j in unfinished if j not in self._job_bundle]
        for job_id, record in self.store.read_many(new).items() if new else ():
            spec = record.get("spec") if isinstance(record, dict) else None
            bundle = spec.get("bundle") if isinstance(spec, dict) else None
            if record is not None:  # a job not yet readable is read again next sweep
                self._job_bundle[job_id] = str(bundle) if bundle else None
        return {b for b in self._job_bundle.values() if b}
