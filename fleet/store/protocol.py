"""What the master, the Client and the CLI need from the store, as typing Protocols.

Two implementations keep the same invariants: `fleet.store.redis_store.RedisStore` (Lua-backed:
each step of a job's life is one atomic script) and `fleet.store.memory.MemoryStore` (a lock
around plain dicts, for unit tests of the master's round, the Client and the CLI: the model is
dramatiq's StubBroker). The invariants both keep:

- a step is atomic: nobody sees half of a submit, reserve, claim, progress, finish or cancel;
- a step is fenced: it names the attempt (and the node incarnation) it acts for, and only the
  job's current attempt may act, so a duplicate or late delivery changes nothing;
- a node's reservations never exceed its capacity, whatever runs concurrently;
- a job reaches exactly one terminal state; finishing it twice changes nothing;
- pending jobs are in line by priority (higher first), then by submit order.

Records come back in one shape from both: a job as `fleet.store.records.job_record` decodes it,
a node state as `fleet.store.registry.states_from` builds it.
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from fleet.settings import Settings
    from fleet.spec import JobSpec
    from fleet.store.jobstore import Outcome
    from fleet.store.peek import Caps

#: A stream entry as the store answers it: (entry id "ms-seq", fields).
Entry = tuple[str, dict[str, str]]
#: An entry as it was written, for the master to validate as untrusted input (Redis: bytes,
#: so that sizes are measured and text decoded by the check itself).
RawEntry = tuple[str, Mapping[Any, Any]]


class Refused(Exception):
    """A step the store refused for a record it could not use (Redis answers such a step with
    a ResponseError; the in-memory store raises this, e.g. for a job id that exists)."""


class JobSteps(Protocol):
    """The atomic, fenced steps of a job's life (see fleet/store/lua/ for their rules)."""

    def submit(self, spec: JobSpec, *, job_id: str | None = None, now: float | None = None,
               submitted_by: str = "") -> str: ...

    def reject(self, job_id: str, error: str, *, submitted_by: str,
               now: float | None = None) -> bool: ...

    def reserve(self, job_id: str, node: str, incarnation: str, placement: Mapping[str, Any],
                now: float | None = None) -> tuple[int, str]: ...

    def claim(self, job_id: str, attempt: int, node: str,
              incarnation: str) -> tuple[bool, str]: ...

    def claim_spec(self, job_id: str, attempt: int, node: str,
                   incarnation: str) -> tuple[bool, str, dict[str, Any] | None]: ...

    def progress(self, job_id: str, attempt: int, report: Mapping[str, Any],
                 kind: str = "progress") -> bool: ...

    def progress_many(self, job_id: str, attempt: int, reports: Sequence[Mapping[str, Any]],
                      kind: str = "progress") -> bool: ...

    def finish(self, job_id: str, attempt: int, node: str, outcome: Outcome,
               now: float | None = None,
               progress: Sequence[Mapping[str, Any]] = ()) -> tuple[bool, str]: ...

    def commit_checkpoint(self, job_id: str, attempt: int, node: str, incarnation: str,
                          step: int, name: str, now: float | None = None) -> tuple[bool, str]: ...

    def cancel(self, job_id: str) -> str: ...

    def set_waiting(self, reasons: Mapping[str, str]) -> None: ...

    def drop_pending(self, job_id: str, why: str, now: float | None = None) -> str: ...

    def repair_alloc(self, node: str, job_id: str) -> str: ...


class JobReads(Protocol):
    """Job records as plain Python (`records.job_record`'s shape)."""

    def get(self, job_id: str) -> dict[str, Any] | None: ...

    def get_many(self, job_ids: Iterable[str]) -> list[dict[str, Any]]: ...

    def read_many(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any] | str | None]: ...

    def attempts(self, job_id: str) -> list[dict[str, Any]]: ...

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]: ...

    def committed_checkpoints(self, job_id: str) -> list[dict[str, Any]]: ...

    def pending_ids(self, start: int = 0, limit: int | None = None) -> list[str]: ...

    def placing(self, older_than: float) -> list[str]: ...

    def job_ids(self, limit: int | None = None) -> list[str]: ...

    def cancel_requested(self, job_id: str) -> bool: ...

    def submitted_by(self, job_id: str) -> str:
        """The intake that submitted the job ("" when none, or no such job)."""
        ...

    def job_state(self, job_id: str) -> tuple[str, bool]:
        """(the job's state, "" when none; whether a cancel is flagged), read together."""
        ...

    def events(self, job: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Past lifecycle events, oldest first (`fleet.observe.events.decode_event`'s shape)."""
        ...

    def events_after(self, since: str, block_ms: int = 0) -> list[dict[str, Any]]:
        """Events appended after entry id `since`, waiting up to `block_ms` for one."""
        ...

    def last_event_id(self) -> str: ...

    def log_lines(self, job_id: str, attempt: int, start: int = 0) -> list[str]:
        """An attempt's captured output lines kept in the store, from index `start`."""
        ...


class NodeRecords(Protocol):
    """Node reports (their existence is the node's lease), allocations, drain flags."""

    def heartbeat(self, report: Mapping[str, Any], ttl: float) -> bool: ...

    def node_states(self) -> list[dict[str, Any]]: ...

    def live_reports(self) -> list[dict[str, Any]]: ...

    def known_nodes(self) -> list[str]: ...

    def allocations(self, node: str) -> dict[str, dict[str, Any]]: ...

    def set_drain(self, node: str, on: bool = True) -> None: ...

    def is_draining(self, node: str) -> bool: ...

    def deregister(self, node: str, incarnation: str) -> None: ...

    def forget(self, node: str) -> None: ...

    def drop_alloc(self, node: str, job_id: str) -> None:
        """Drop `job_id`'s entry on `node` (a stale one its job has moved past)."""
        ...

    def history(self, node: str) -> list[dict[str, Any]]: ...


class Intakes(Protocol):
    """Producers' request streams: a Client appends, the master takes and trims."""

    @property
    def intake(self) -> str:
        """The intake this store's credential writes (fleet.acl)."""
        ...

    def intake_names(self) -> list[str]: ...

    def intake_len(self, name: str) -> int: ...

    def intake_append(self, name: str, fields: Mapping[str, str | bytes], cap: int) -> str: ...

    def intake_newest(self, name: str, count: int) -> list[Entry]:
        """The newest `count` entries, newest first, within peek.NEWEST: no bundle's bytes."""
        ...

    def intake_holds(self, name: str, entry_id: str) -> bool: ...

    def intake_read(self, names: Sequence[str], count: int,
                    caps: Caps) -> list[list[RawEntry] | Exception]:
        """The oldest `count` entries of each intake, as written but within `caps` (a value
        over its cap as fleet.store.peek.Oversize, its length; an Exception for an unreadable
        intake)."""
        ...

    def intake_trim(self, name: str, through: str) -> None:
        """Drop every entry up to and including entry id `through`."""
        ...

    def count_bad(self, kind: str) -> None:
        """Count one unusable record of `kind` (keys.BAD_RECORDS)."""
        ...


class Bundles(Protocol):
    """Code bundles by digest ("sha256:<hex>"): a producer reads, only the master writes, and
    only bytes it checked against the digest; a stored bundle is never written over (SET NX)."""

    def bundle_exists(self, digest: str) -> bool: ...

    def bundle_put(self, digest: str, data: bytes) -> bool:
        """Store `data` unless the digest has bytes already; True when written."""
        ...

    def bundle_get(self, digest: str) -> bytes | None: ...

    def bundles_stored(self) -> list[str]:
        """The digests of every stored bundle."""
        ...

    def bundles_used(self) -> dict[str, float]:
        """Digest -> when a job last used it (fleet.master.bundles)."""
        ...

    def bundles_touch(self, digests: Iterable[str], now: float) -> None: ...

    def bundle_delete(self, digest: str) -> None:
        """Delete a bundle's bytes and its use time (the master's sweep only)."""
        ...


class Published(Protocol):
    """The fleet-wide settings (fleet.store.published): the operator writes, everyone reads."""

    def published_settings(self) -> dict[str, Any] | None:
        """The published values; None when none are; BadSetting when unreadable."""
        ...

    def publish_settings(self, settings: Settings) -> None: ...


class Lease(Protocol):
    """The master's leader lease (fleet.store.lease)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...

    def foreign(self) -> str | None: ...


class Repairs(Protocol):
    """What the master does about records written over (fleet.store.repair)."""

    def guard_keys(self) -> None: ...

    def nodes(self, states: list[dict[str, Any]], now: float) -> None: ...

    def check_allocations(self, states: list[dict[str, Any]]) -> None: ...

    def backed(self, entries: list[tuple[str, str, dict[str, Any]]],
               states: list[dict[str, Any]]) -> set[tuple[str, str]]: ...

    def entry(self, node: str, job_id: str) -> None: ...


class MasterRecords(Protocol):
    """What only the master's loop uses besides the steps and reads."""

    def lease(self, holder: str, ttl: float) -> Lease: ...

    def master_status(self) -> dict[str, Any]:
        """`{"up", "leader", "down_for", "last_seen"}` (see `Client.master_status`)."""
        ...

    def repairs(self, settings: Settings) -> Repairs: ...

    def read_round(
        self, size: int, known: Container[str],
    ) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[str, Any] | str | None]]:
        """(node states, the first `size` pending ids, the records of those not in `known`
        as `read_many` answers them), in as few round trips as the store allows."""
        ...

    def mark_placing(self, job_id: str, now: float) -> None: ...

    def unmark_placing(self, job_id: str) -> None: ...

    def wait_wake(self, timeout: float) -> None:
        """Until poked (a job arrived or ended) or `timeout` s passed."""
        ...

    def start_doorbell(self, stop: threading.Event) -> None:
        """Poke the master's wait whenever an intake entry lands (until `stop`)."""
        ...

    def round_failed(self) -> None:
        """Count a master round that failed (keys.MASTER_ERRORS)."""
        ...

    def quarantine(self, key: str) -> None:
        """Move a key no fleet step wrote out of the way (Redis only)."""
        ...

    def flush_notes(self) -> None:
        """Write out the counts of malformed records found (fleet.store.quarantine)."""
        ...


@runtime_checkable
class Store(JobSteps, JobReads, NodeRecords, Intakes, Bundles, Published, MasterRecords,
            Protocol):
    """Everything: what a master, a Client or a CLI command is given."""
