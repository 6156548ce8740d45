"""The Redis store: `JobStore`'s Lua steps and `registry`'s node records behind one object
conforming to `fleet.store.protocol.Store`, plus the intakes, the master's lease and its
repairs. The memory twin (fleet.store.memory) answers the same calls in the same shapes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

import redis

from fleet import acl
from fleet.entrypoints import check_name
from fleet.settings import Settings
from fleet.store import keys, peek, published, quarantine, records, registry
from fleet.store.jobstore import JobStore
from fleet.store.lease import Lease
from fleet.store.protocol import Entry, RawEntry, Repairs, Store
from fleet.store.repair import Repairer

log = logging.getLogger("fleet.intake")

INTAKE_BLOCK_MS = 1000  # how long the doorbell's XREAD blocks before it looks for new intakes



class RedisStore(JobStore):
    """Every store call over one Redis connection (passed in, never global)."""

    # -- reads beside JobStore's -------------------------------------------------------------
    def submitted_by(self, job_id: str) -> str:
        return keys.decode(self.r.hget(keys.job(job_id), "submitted_by") or b"")

    def job_state(self, job_id: str) -> tuple[str, bool]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.job(job_id), "state")
        pipe.exists(keys.job_cancel(job_id))
        state, flagged = pipe.execute()
        return keys.decode(state or b""), bool(flagged)

    def events(self, job: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        from fleet.observe.events import read_events

        return read_events(self.r, job=job, limit=limit)

    def events_after(self, since: str, block_ms: int = 0) -> list[dict[str, Any]]:
        from fleet.observe.events import decode_event

        found: Any = self.r.xread({keys.EVENTS: since}, block=block_ms or None, count=100)
        return [decode_event(i, f) for _stream, entries in found or [] for i, f in entries]

    def last_event_id(self) -> str:
        newest: Any = self.r.xrevrange(keys.EVENTS, count=1)
        return keys.decode(newest[0][0]) if newest else "0-0"

    def log_lines(self, job_id: str, attempt: int, start: int = 0) -> list[str]:
        return [keys.decode(v) for v in self.r.lrange(keys.job_logs(job_id, attempt), start, -1)]

    # -- nodes -------------------------------------------------------------------------------
    def heartbeat(self, report: Mapping[str, Any], ttl: float) -> bool:
        return registry.heartbeat(self.r, report, ttl)

    def node_states(self) -> list[dict[str, Any]]:
        return registry.node_states(self.r)

    def live_reports(self) -> list[dict[str, Any]]:
        return registry.live_reports(self.r)

    def known_nodes(self) -> list[str]:
        return registry.known_nodes(self.r)

    def allocations(self, node: str) -> dict[str, dict[str, Any]]:
        return registry.allocations(self.r, node)

    def set_drain(self, node: str, on: bool = True) -> None:
        registry.set_drain(self.r, node, on)

    def is_draining(self, node: str) -> bool:
        return registry.is_draining(self.r, node)

    def deregister(self, node: str, incarnation: str) -> None:
        registry.deregister(self.r, node, incarnation)

    def forget(self, node: str) -> None:
        registry.forget(self.r, node)

    def drop_alloc(self, node: str, job_id: str) -> None:
        self.r.hdel(keys.node_alloc(node), job_id)

    def history(self, node: str) -> list[dict[str, Any]]:
        return registry.history(self.r, node)

    # -- intakes -----------------------------------------------------------------------------
    @property
    def intake(self) -> str:
        return acl.intake_of(self.r.connection_pool.connection_kwargs.get("username"))

    def intake_names(self) -> list[str]:
        """The built-in intakes and those an operator added to keys.INTAKES."""
        found = list(acl.INTAKES)
        for raw in self.r.smembers(keys.INTAKES):
            name = keys.decode(raw)
            try:
                check_name(name)
            except ValueError:
                continue
            if name not in found:
                found.append(name)
        return found

    def intake_len(self, name: str) -> int:
        return int(self.r.xlen(keys.intake(name)))

    def intake_append(self, name: str, fields: Mapping[str, str | bytes], cap: int) -> str:
        entry_id = self.r.xadd(keys.intake(name), dict(fields),  # type: ignore[arg-type]
                               maxlen=cap, approximate=True)
        return keys.decode(entry_id)

    def bundle_exists(self, digest: str) -> bool:
        return bool(self.r.exists(keys.bundle(digest.removeprefix("sha256:"))))

    def bundle_put(self, digest: str, data: bytes) -> bool:
        return bool(self.r.set(keys.bundle(digest.removeprefix("sha256:")), data, nx=True))

    def bundle_get(self, digest: str) -> bytes | None:
        data: Any = self.r.get(keys.bundle(digest.removeprefix("sha256:")))
        return None if data is None else bytes(data if isinstance(data, bytes) else data.encode())

    def bundles_stored(self) -> list[str]:
        head = keys.bundle("")
        return [f"sha256:{keys.decode(k)[len(head):]}"
                for k in self.r.scan_iter(match=keys.bundle("*"), count=1000)]

    def bundles_used(self) -> dict[str, float]:
        used: Any = self.r.hgetall(keys.BUNDLES_USED)
        return {f"sha256:{keys.decode(k)}": _float(v) for k, v in used.items()}

    def bundles_touch(self, digests: Iterable[str], now: float) -> None:
        touched = {d.removeprefix("sha256:"): now for d in digests}
        if touched:
            self.r.hset(keys.BUNDLES_USED, mapping=touched)  # type: ignore[arg-type]

    def bundle_delete(self, digest: str) -> None:
        hex_digest = digest.removeprefix("sha256:")
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.bundle(hex_digest))
        pipe.hdel(keys.BUNDLES_USED, hex_digest)
        pipe.execute()

    def published_settings(self) -> dict[str, Any] | None:
        return published.read(self.r)

    def publish_settings(self, settings: Settings) -> None:
        published.write(self.r, settings)

    def intake_newest(self, name: str, count: int) -> list[Entry]:
        found = self._peek([name], "desc", count, peek.NEWEST)[0]
        if isinstance(found, Exception):
            raise found
        return [_entry(i, f) for i, f in found]

    def intake_holds(self, name: str, entry_id: str) -> bool:
        return bool(self.r.xrange(keys.intake(name), entry_id, entry_id))

    def intake_read(self, names: Sequence[str], count: int,
                    caps: peek.Caps) -> list[list[RawEntry] | Exception]:
        return self._peek(names, "asc", count, caps)

    def _peek(self, names: Sequence[str], order: str, count: int,
              caps: peek.Caps) -> list[list[RawEntry] | Exception]:
        """fleet.store.peek's bounded read, its function loaded on first use (the operator's
        credential may; a producer's falls back to plain reads of a fleet that has none)."""
        streams = [keys.intake(n) for n in names]
        args = [peek.FUNCTION, len(streams), *streams, *caps.args(order, count)]
        try:
            try:
                return peek.decode_reply(self.r.fcall_ro(*args))
            except redis.exceptions.NoPermissionError:
                raise
            except redis.exceptions.ResponseError as exc:
                if peek.unknown_command(exc):  # Redis 6: the same Lua, as a script
                    script = self.r.register_script(peek.SCRIPT)
                    return peek.decode_reply(script(streams, caps.args(order, count)))
                if "function not found" not in str(exc).lower():
                    raise
            peek.load(self.r)
            return peek.decode_reply(self.r.fcall_ro(*args))
        except redis.exceptions.NoPermissionError:  # a fleet older than the function
            return [peek.bound([self._plain(s, order, count)], count, caps)[0] for s in streams]

    def _plain(self, stream: str, order: str, count: int) -> list[RawEntry]:
        read = self.r.xrevrange if order == "desc" else self.r.xrange
        found: Any = read(stream, count=count)
        return [(keys.decode(i), f) for i, f in found]

    def intake_trim(self, name: str, through: str) -> None:
        ms, _, seq = through.partition("-")
        self.r.xtrim(keys.intake(name), minid=f"{ms}-{int(seq or 0) + 1}", approximate=False)

    def count_bad(self, kind: str) -> None:
        self.r.hincrby(keys.BAD_RECORDS, kind, 1)

    # -- the master's ------------------------------------------------------------------------
    def lease(self, holder: str, ttl: float) -> Lease:
        return Lease(self.r, keys.MASTER_LEASE, holder, ttl, seen_key=keys.MASTER_SEEN)

    def master_status(self) -> dict[str, Any]:
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
        return {"up": up, "leader": keys.decode(leader)[:200] if up else None,
                "down_for": down_for, "last_seen": last_seen}

    def repairs(self, settings: Settings) -> Repairs:
        return Repairer(self.r, self, settings)

    def read_round(
        self, size: int, known: Container[str],
    ) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[str, Any] | str | None]]:
        """Two round trips: the node names with the head of the line, then the nodes' records
        with the jobs not `known`. A key of the wrong type reads as empty (the guard moves it
        aside)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(keys.NODES)
        pipe.zrange(keys.PENDING, 0, size - 1)
        members, line = pipe.execute(raise_on_error=False)
        members = [] if isinstance(members, Exception) else members
        line = [] if isinstance(line, Exception) else line
        nodes, head = registry.names(members), [keys.decode(j) for j in line]
        missing = [j for j in head if j not in known]
        pipe = self.r.pipeline(transaction=False)
        registry.read_states(pipe, nodes)
        for job_id in missing:
            pipe.hgetall(keys.job(job_id))
        raw = pipe.execute(raise_on_error=False)
        jobs = raw[registry.READS_PER_NODE * len(nodes):]
        read = {j: self.decode_read(j, r) for j, r in zip(missing, jobs, strict=True)}
        return registry.states_from(nodes, raw), head, read

    def mark_placing(self, job_id: str, now: float) -> None:
        self.r.zadd(keys.PLACING, {job_id: now})

    def unmark_placing(self, job_id: str) -> None:
        self.r.zrem(keys.PLACING, job_id)

    def wait_wake(self, timeout: float) -> None:
        try:
            self.r.blpop([keys.WAKE], timeout=timeout)
        except redis.exceptions.ResponseError:  # written over: the leader moves it aside
            time.sleep(timeout)

    def start_doorbell(self, stop: threading.Event) -> None:
        Doorbell(self).start(stop)

    def round_failed(self) -> None:
        try:
            self.r.incr(keys.MASTER_ERRORS)
        except redis.exceptions.RedisError:
            pass  # counted next time, if the key is moved aside meanwhile

    def quarantine(self, key: str) -> None:
        quarantine.quarantine_key(self.r, key)

    def flush_notes(self) -> None:
        quarantine.found.flush(self.r)


def _float(value: Any) -> float:
    """A use time as stored; 0 (long idle) for one that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _entry(entry_id: Any, fields: Mapping[Any, Any]) -> Entry:
    """An entry as str; a value the read left in Redis (peek.Oversize) as ''."""
    return keys.decode(entry_id), {keys.decode(k): "" if isinstance(v, peek.Oversize)
                                   else keys.decode(v) for k, v in fields.items()}


class Doorbell:
    """Wakes the master's loop the moment an entry lands in any intake: the loop sleeps on
    `fleet:wake` (BLPOP), which producers may not write. A thread with its own blocking read."""

    def __init__(self, store: RedisStore, block_ms: int = INTAKE_BLOCK_MS, batch: int = 256) -> None:
        self.store = store
        self.r = store.r
        self.block_ms = block_ms
        self.batch = batch

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
                streams: dict[Any, Any] = {
                    k: seen.get(k, "0-0") for k in map(keys.intake, self.store.intake_names())
                    if k not in skip}
                try:
                    found: Any = self.r.xread(streams, count=self.batch, block=self.block_ms)
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


def _conforms(store: RedisStore) -> Store:
    """mypy checks here that RedisStore answers every call of the protocol."""
    return store
