"""An in-memory store: the Redis store's twin for unit tests (dramatiq's StubBroker is the model).

`MemoryStore` conforms to `fleet.store.protocol.Store` and keeps its invariants (see there): the
master's real round, a Client and the CLI run over it with no server. The job steps are in
`fleet.store.memory_jobs`, the records and their reads in `fleet.store.memory_data`; node
reports, intakes and the master's lease are here. A node's report expires like its Redis key,
on `clock` (a test may pass its own).

    store = MemoryStore()
    client = Client(settings, store=store)
    master = Master(settings, store, lambda *attempt: sent.append(attempt))  # what it publishes
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import acl
from fleet.observe.events import decode_event  # the one decoder of an event entry
from fleet.resources import Resources
from fleet.settings import Settings
from fleet.store import keys, peek, published, records, registry
from fleet.store.memory_jobs import MemoryJobs
from fleet.store.protocol import Entry, Lease, RawEntry, Repairs, Store

HOLDING = ("PLACED", "RUNNING")  # states that hold a reservation


@dataclass
class _Node:
    incarnation: str
    capacity: str  # JSON, as heartbeat.lua stores it
    report: str  # JSON
    expires: float  # on the store's clock


@dataclass
class _Lease:
    holder: str | None = None
    expires: float = 0.0
    seen: float | None = None  # when a master last held it (epoch s)
    errors: int = 0  # master rounds that failed
    bad: dict[str, int] = field(default_factory=dict)  # keys.BAD_RECORDS


class MemoryStore(MemoryJobs):
    """Every store call over dicts in this process, each step under one lock."""

    def __init__(self, *, intake: str = acl.OPERATOR_INTAKE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._intake = intake
        self.clock = clock
        self.reports: dict[str, _Node] = {}
        self.node_names: set[str] = set()
        self.drained: set[str] = set()
        self.histories: dict[str, list[str]] = {}
        self.intakes: dict[str, list[tuple[str, dict[str, str | bytes]]]] = {}
        self.extra_intakes: list[str] = []
        self.bundles: dict[str, bytes] = {}  # digest -> archive, as fleet:bundle:<hex> holds
        self.bundle_use: dict[str, float] = {}  # digest -> last use, as keys.BUNDLES_USED holds
        self.settings_json: str | None = None  # as keys.SETTINGS holds
        self.master = _Lease()
        self._entry_at = (0, 0)  # (ms, seq) of the last intake entry

    # -- reads beside the job steps' -------------------------------------------------------
    def events(self, job: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            found = [decode_event(i, f) for i, f in self.event_log
                     if job is None or f.get("job") == job]
        return found if limit is None else found[-limit:] if limit else []

    def events_after(self, since: str, block_ms: int = 0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + block_ms / 1000
        with self.lock:
            while True:
                after = [decode_event(i, f) for i, f in self.event_log if _id(i) > _id(since)]
                left = deadline - time.monotonic()
                if after or left <= 0:
                    return after[:100]
                self._woken.wait(left)

    def last_event_id(self) -> str:
        with self.lock:
            return self.event_log[-1][0] if self.event_log else "0-0"

    def append_log(self, job_id: str, attempt: int, *lines: str) -> None:
        """What a supervisor's output capture writes (for tests of log readers)."""
        with self.lock:
            self.logs.setdefault((job_id, attempt), []).extend(lines)

    # -- nodes -------------------------------------------------------------------------------
    def _node_holder(self, node: str) -> tuple[str | None, str | None]:
        live = self._live(node)
        return (live.incarnation, live.capacity) if live else (None, None)

    def _live(self, node: str) -> _Node | None:
        held = self.reports.get(node)
        if held is not None and held.expires <= self.clock():
            del self.reports[node]  # expired, as a Redis key with a TTL
            held = None
        return held

    def heartbeat(self, report: Mapping[str, Any], ttl: float) -> bool:
        node = report["node"]
        report = {**report, "time": report.get("time", time.time())}
        cap = report["capacity"]
        capacity = Resources.parse(cap).to_wire()
        sample = {"time": report["time"], "usage": report.get("usage", {}),
                  "reserved": report.get("reserved", {})}
        with self.lock:
            live = self._live(node)
            holder = live.incarnation if live else None
            if live is not None and holder != report["incarnation"]:
                ours = json.loads(live.report).get("incarnation")
                if ours == holder:  # a live twin wrote its own report in the same step
                    raise registry.NodeIdTaken(node, str(holder))
            self.reports[node] = _Node(report["incarnation"], json.dumps(capacity),
                                       json.dumps(report), self.clock() + ttl)
            self.node_names.add(node)
            kept = self.histories.setdefault(node, [])
            kept.append(json.dumps(sample))
            del kept[:-registry.HISTORY_CAP]
            self._wake()
        return bool(holder == report["incarnation"])

    def node_states(self) -> list[dict[str, Any]]:
        with self.lock:
            nodes = self.known_nodes()
            raw: list[Any] = []
            for node in nodes:
                live = self._live(node)
                raw += [[live.report if live else None], dict(self.alloc.get(node, {})),
                        int(node in self.drained)]
        return registry.states_from(nodes, raw)

    def live_reports(self) -> list[dict[str, Any]]:
        return [s["report"] for s in self.node_states() if s["report"] is not None]

    def known_nodes(self) -> list[str]:
        with self.lock:
            return registry.names(self.node_names)

    def allocations(self, node: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            held = dict(self.alloc.get(node, {}))
        return registry.decode_allocations(node, held)[0]

    def set_drain(self, node: str, on: bool = True) -> None:
        with self.lock:
            (self.drained.add if on else self.drained.discard)(node)

    def is_draining(self, node: str) -> bool:
        return node in self.drained

    def deregister(self, node: str, incarnation: str) -> None:
        with self.lock:
            live = self._live(node)
            if live is not None and live.incarnation not in ("", incarnation):
                return
            self.reports.pop(node, None)
            self.drained.discard(node)
            self.node_names.discard(node)

    def forget(self, node: str) -> None:
        with self.lock:
            self.node_names.discard(node)
            self.drained.discard(node)
            self.alloc.pop(node, None)

    def drop_alloc(self, node: str, job_id: str) -> None:
        with self.lock:
            self.alloc.get(node, {}).pop(job_id, None)

    def history(self, node: str) -> list[dict[str, Any]]:
        with self.lock:
            raw = list(self.histories.get(node, []))
        return [records.history_sample(v) for v in raw]

    # -- intakes -----------------------------------------------------------------------------
    @property
    def intake(self) -> str:
        return self._intake

    def intake_names(self) -> list[str]:
        return [*acl.INTAKES, *(n for n in self.extra_intakes if n not in acl.INTAKES)]

    def intake_len(self, name: str) -> int:
        return len(self.intakes.get(name, []))

    def intake_append(self, name: str, fields: Mapping[str, str | bytes], cap: int) -> str:
        with self.lock:
            ms = int(time.time() * 1000)
            last_ms, last_seq = self._entry_at
            self._entry_at = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
            entry_id = "{}-{}".format(*self._entry_at)
            held = self.intakes.setdefault(name, [])
            held.append((entry_id, dict(fields)))
            del held[:-cap]
            self._wake()  # the doorbell: an entry wakes the master at once
        return entry_id

    def bundle_exists(self, digest: str) -> bool:
        with self.lock:
            return digest in self.bundles

    def bundle_put(self, digest: str, data: bytes) -> bool:
        with self.lock:
            if digest in self.bundles:
                return False
            self.bundles[digest] = bytes(data)
            return True

    def bundle_get(self, digest: str) -> bytes | None:
        with self.lock:
            return self.bundles.get(digest)

    def bundles_stored(self) -> list[str]:
        with self.lock:
            return list(self.bundles)

    def bundles_used(self) -> dict[str, float]:
        with self.lock:
            return dict(self.bundle_use)

    def bundles_touch(self, digests: Iterable[str], now: float) -> None:
        with self.lock:
            self.bundle_use.update(dict.fromkeys(digests, now))

    def bundle_delete(self, digest: str) -> None:
        with self.lock:
            self.bundles.pop(digest, None)
            self.bundle_use.pop(digest, None)

    def published_settings(self) -> dict[str, Any] | None:
        with self.lock:
            return published.decode(self.settings_json)

    def publish_settings(self, settings: Settings) -> None:
        with self.lock:
            self.settings_json = published.encode(settings)

    def intake_newest(self, name: str, count: int) -> list[Entry]:
        with self.lock:
            newest = reversed(self.intakes.get(name, [])[-count:])
            return [(i, {k: "" if isinstance(v, peek.Oversize) else keys.decode(v)
                         for k, v in f.items()})
                    for i, f in peek.bound([newest], count, peek.NEWEST)[0]]

    def intake_holds(self, name: str, entry_id: str) -> bool:
        with self.lock:
            return any(i == entry_id for i, _ in self.intakes.get(name, []))

    def intake_read(self, names: Sequence[str], count: int,
                    caps: peek.Caps) -> list[list[RawEntry] | Exception]:
        with self.lock:
            return list(peek.bound([self.intakes.get(name, []) for name in names], count, caps))

    def intake_trim(self, name: str, through: str) -> None:
        with self.lock:
            self.intakes[name] = [e for e in self.intakes.get(name, [])
                                  if _id(e[0]) > _id(through)]

    def count_bad(self, kind: str) -> None:
        with self.lock:
            self.master.bad[kind] = self.master.bad.get(kind, 0) + 1

    # -- the master's ------------------------------------------------------------------------
    def lease(self, holder: str, ttl: float) -> Lease:
        return _MemoryLease(self, holder, ttl)

    def master_status(self) -> dict[str, Any]:
        with self.lock:
            m = self.master
            up = m.holder is not None and m.expires > self.clock()
            down_for = None if up or m.seen is None else max(0.0, time.time() - m.seen)
            return {"up": up, "leader": m.holder if up else None, "down_for": down_for,
                    "last_seen": m.seen}

    def repairs(self, settings: Settings) -> Repairs:
        return _Repairs(self)

    def read_round(
        self, size: int, known: Container[str],
    ) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[str, Any] | str | None]]:
        head = self.pending_ids(0, size)
        read = self.read_many([j for j in head if j not in known])
        return self.node_states(), head, read

    def mark_placing(self, job_id: str, now: float) -> None:
        with self.lock:
            self.placing_since[job_id] = now

    def unmark_placing(self, job_id: str) -> None:
        with self.lock:
            self.placing_since.pop(job_id, None)

    def wait_wake(self, timeout: float) -> None:
        with self.lock:
            if self.wakes == 0:
                self._woken.wait(timeout)
            self.wakes = 0

    def start_doorbell(self, stop: threading.Event) -> None:
        """Nothing to start: an intake entry wakes the master as it is appended."""

    def round_failed(self) -> None:
        with self.lock:
            self.master.errors += 1

    def quarantine(self, key: str) -> None:
        """Nothing is ever written over in memory."""

    def flush_notes(self) -> None:
        """Malformed records found are counted by fleet.store.quarantine; none persist here."""


class _MemoryLease:
    def __init__(self, store: MemoryStore, holder: str, ttl: float) -> None:
        self.store, self.holder, self.ttl = store, holder, ttl

    def acquire(self) -> bool:
        with self.store.lock:
            m, now = self.store.master, self.store.clock()
            if m.holder not in (None, self.holder) and m.expires > now:
                return False
            m.holder, m.expires, m.seen = self.holder, now + self.ttl, time.time()
            return True

    def release(self) -> None:
        with self.store.lock:
            if self.store.master.holder == self.holder:
                self.store.master.holder = None

    def foreign(self) -> str | None:
        return None  # only masters write it


class _Repairs:
    """Nothing in memory is ever written over: only `backed` has work to do."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def guard_keys(self) -> None:
        pass

    def nodes(self, states: list[dict[str, Any]], now: float) -> None:
        pass

    def check_allocations(self, states: list[dict[str, Any]]) -> None:
        pass

    def entry(self, node: str, job_id: str) -> None:
        self.store.repair_alloc(node, job_id)

    def backed(self, entries: list[tuple[str, str, dict[str, Any]]],
               states: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """As `Repairer.backed`: the entries whose job's record says that attempt holds that
        node, from an incarnation other than the node's live one."""
        live = {s["node"]: s["report"]["incarnation"] for s in states if s["report"] is not None}
        backed = set()
        with self.store.lock:
            for node, job_id, a in entries:
                job = self.store.jobs.get(job_id, {})
                if (job.get("state") in HOLDING and job.get("node") == node
                        and job.get("attempt") == str(a["attempt"])
                        and job.get("incarnation") != live.get(node)):
                    backed.add((node, job_id))
        return backed


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


def _conforms(store: MemoryStore) -> Store:
    """mypy checks here that MemoryStore answers every call of the protocol."""
    return store
