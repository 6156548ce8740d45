"""The master's repairs of what was written over in Redis: nothing it reads may stop it.

`fleet.store.records` says whether a record is well formed and `fleet.store.quarantine` logs and counts
what is not; this is what the master then does about it, each round or once a second:

- a singleton key of the wrong type (the nodes set, the pending line, the jobs index, the event
  stream...) is moved aside, and the indexes are rebuilt from the job records;
- an allocation entry nobody can read, or that no job record backs, is rewritten from the job's
  record (`repair_alloc.lua`) or dropped; an allocation hash of the wrong type is rebuilt from
  the records of the jobs placed on its node. Until then its node is not placed on: it must
  never look emptier than it is (invariant 3);
- a node report unreadable for longer than a lease is moved aside (a live node rewrites its
  own within a heartbeat), so that a dead node's jobs are not held forever.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from fleet.settings import Settings
from fleet.states import JobState
from fleet.store import keys, quarantine, records
from fleet.store.jobstore import JobStore, pending_score

log = logging.getLogger("fleet.master")

REBUILD_CHUNK = 1000  # job records read per round trip when an index is rebuilt
#: The fleet's own singleton keys and their Redis types: one of another type is moved aside.
SINGLETONS = {
    keys.NODES: "set", keys.PENDING: "zset", keys.PLACING: "zset", keys.JOBS: "zset",
    keys.WAKE: "list", keys.EVENTS: "stream", keys.DEAD_LETTER: "list",
    keys.BAD_RECORDS: "hash", keys.MASTER_SEEN: "string", keys.MASTER_ERRORS: "string",
    keys.SEQUENCE: "string",
}
HOLDING = (JobState.PLACED.value, JobState.RUNNING.value)  # states that hold a reservation


class Repairer:
    """The master's repairs (it calls them only while it leads)."""

    def __init__(self, client: redis.Redis, store: JobStore, settings: Settings) -> None:
        self.r = client
        self.store = store
        self.settings = settings
        self._unreadable_since: dict[str, float] = {}  # node -> when its report first was

    def backed(self, entries: list[tuple[str, str, dict[str, Any]]],
               states: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """The (node, job) of `entries` whose job's record says that attempt holds that node
        from an incarnation other than the node's live one: only those are lost with it. An
        entry written over (another attempt, node or incarnation than the record's) must not
        end a job that runs elsewhere, or on this node's live incarnation. One round trip."""
        if not entries:
            return set()
        live = {s["node"]: s["report"]["incarnation"] for s in states if s["report"] is not None}
        pipe = self.r.pipeline(transaction=False)
        for _, job, _ in entries:
            pipe.hmget(keys.job(job), "state", "node", "attempt", "incarnation")
        backed = set()
        for (node, job, a), row in zip(entries, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(row, Exception):
                continue
            state, on, attempt, incarnation = (keys.decode(v) if v is not None else "" for v in row)
            if (state in HOLDING and on == node
                    and attempt == str(a["attempt"]) and incarnation != live.get(node)):
                backed.add((node, job))
        return backed

    def guard_keys(self) -> None:
        """Move aside a singleton key of the wrong type (the fleet recreates it; the pending
        and placing indexes are rebuilt from the job records) and renumber a broken sequence."""
        wrong = quarantine.wrong_types(self.r, SINGLETONS)
        if keys.SEQUENCE not in wrong:
            seq = self.r.get(keys.SEQUENCE)
            if seq is not None and not keys.decode(seq).isdigit():
                wrong.append(keys.SEQUENCE)
        for key in wrong:
            quarantine.note("index", key, "another Redis type (or not a number)")
            quarantine.quarantine_key(self.r, key)
        if keys.SEQUENCE in wrong:  # after every number given so far (one per job accepted)
            self.r.set(keys.SEQUENCE, int(self.r.zcard(keys.JOBS)) + 1_000_000, nx=True)
        if keys.JOBS in wrong:
            self._rebuild_jobs()
        if keys.PENDING in wrong or keys.PLACING in wrong or keys.JOBS in wrong:
            self._rebuild_indexes()

    def _rebuild_jobs(self) -> None:
        """Put every job record back in the JOBS index (by its submit time), from a SCAN of
        the job keys: the other indexes are rebuilt from it."""
        found = 0
        for key in self.r.scan_iter(match=keys.JOB_SCAN, count=1000, _type="hash"):
            job_id = keys.job_id_of(key)
            if job_id is None:
                continue
            try:
                submitted = records.timestamp("job", self.r.hget(keys.job(job_id), "submitted_at"))
            except (records.BadRecord, redis.exceptions.ResponseError):
                continue  # not a record the fleet wrote
            self.r.zadd(keys.JOBS, {job_id: submitted}, nx=True)
            found += 1
        log.warning("rebuilt the jobs index from %d job records", found)

    def _rebuild_indexes(self) -> None:
        """Put every PENDING job back in line and every PLACED one in the placing index, from
        the job records (ZADD NX: what the scripts added meanwhile stays)."""
        ids = [keys.decode(j) for j in self.r.zrange(keys.JOBS, 0, -1)]
        for i in range(0, len(ids), REBUILD_CHUNK):
            chunk = ids[i:i + REBUILD_CHUNK]
            pipe = self.r.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(keys.job(job_id), "state", "priority", "seq", "placed_at")
            rows = pipe.execute(raise_on_error=False)
            pipe = self.r.pipeline(transaction=False)
            for job_id, row in zip(chunk, rows, strict=True):
                if isinstance(row, Exception):
                    continue
                state, priority, seq, placed_at = (keys.decode(v) if v is not None else "" for v in row)
                try:
                    if state == JobState.PENDING.value:
                        score = pending_score(
                            records.integer("job", "priority", priority or 0, -1000, 1000, True),
                            records.integer("job", "seq", seq or 0, text_ok=True))
                        pipe.zadd(keys.PENDING, {job_id: score}, nx=True)
                    elif state == JobState.PLACED.value:
                        pipe.zadd(keys.PLACING, {job_id: records.timestamp("job", placed_at)},
                                  nx=True)
                except records.BadRecord:
                    continue  # read as malformed when its turn comes
            pipe.execute(raise_on_error=False)
        log.warning("rebuilt the pending and placing indexes from %d job records", len(ids))

    def nodes(self, states: list[dict[str, Any]], now: float) -> None:
        """Repair malformed allocation entries from the job records, rebuild an allocation hash
        of the wrong type, and move aside a report unreadable for longer than a lease (a live
        node rewrites its own within a heartbeat)."""
        for s in states:
            node = s["node"]
            if s["bad_alloc"] == ["*"]:
                self._rebuild_allocations(node)
            else:
                for job_id in s["bad_alloc"]:
                    self.entry(node, job_id)
            if s["unreadable"] is None:
                self._unreadable_since.pop(node, None)
                continue
            since = self._unreadable_since.setdefault(node, now)
            if now - since > self.settings.heartbeat_ttl:
                if self.r.type(keys.node(node)) not in (b"hash", "hash") or \
                        self.r.pttl(keys.node(node)) == -1:
                    quarantine.quarantine_key(self.r, keys.node(node))
                self._unreadable_since.pop(node, None)

    def entry(self, node: str, job_id: str) -> None:
        """Rewrite `job_id`'s entry on `node` from its record, or drop it (repair_alloc.lua)."""
        try:
            done = self.store.repair_alloc(node, job_id)
        except redis.exceptions.ResponseError as exc:
            quarantine.note("alloc", f"{keys.node_alloc(node)}/{job_id[:100]}", exc)
            return
        log.info("allocation of %s on %s: %s", job_id[:100], node, done)

    def _rebuild_allocations(self, node: str) -> None:
        """Move aside `node`'s allocation hash, of the wrong type, and rewrite the reservations
        of every job PLACED or RUNNING on it from their records. Not while the jobs index is
        unreadable too (the guard rebuilds it first): the node stays unplaced on meanwhile."""
        try:
            ids = [keys.decode(j) for j in self.r.zrange(keys.JOBS, 0, -1)]
        except redis.exceptions.ResponseError:
            return
        quarantine.quarantine_key(self.r, keys.node_alloc(node))
        for i in range(0, len(ids), REBUILD_CHUNK):
            chunk = ids[i:i + REBUILD_CHUNK]
            pipe = self.r.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(keys.job(job_id), "state", "node")
            for job_id, row in zip(chunk, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(row, Exception):
                    continue
                state, on = (keys.decode(v) if v is not None else "" for v in row)
                if on == node and state in HOLDING:
                    self.entry(node, job_id)

    def check_allocations(self, states: list[dict[str, Any]]) -> None:
        """Drop (or rewrite) allocation entries their job's record does not back: a job that does
        not exist, has ended, or holds another attempt or node. One round trip."""
        entries = [(s["node"], job, a) for s in states if s["report"] is not None
                   for job, a in s["alloc"].items()
                   if a["incarnation"] == s["report"]["incarnation"]]
        if not entries:
            return
        pipe = self.r.pipeline(transaction=False)
        for _, job, _ in entries:
            pipe.hmget(keys.job(job), "state", "node", "attempt")
        for (node, job, a), row in zip(entries, pipe.execute(raise_on_error=False), strict=True):
            if not isinstance(row, Exception):
                state, on, attempt = (keys.decode(v) if v is not None else "" for v in row)
                if (state in HOLDING and on == node
                        and attempt == str(a["attempt"])):
                    continue
            quarantine.note("alloc", f"{keys.node_alloc(node)}/{job[:100]}",
                            "not backed by its job's record")
            self.entry(node, job)
