"""The producer API: submit a job, read its state, follow its progress, wait for it, cancel it.

    from fleet import Client
    client = Client()                      # the fleet `fleet up` started, or FLEET_REDIS_URL
    job_id = client.submit("examples/digits-torch.yaml", overrides=["params.epochs=3"])
    final = client.wait(job_id, on_progress=print)

A spec is validated (pydantic) and checked against the live nodes before anything is written:
a bad spec or a job bigger than every node raises SpecError naming the field, and nothing is
enqueued. A submission (or cancel) is then one entry appended to this credential's intake
stream, durable once acknowledged; the master validates it again and writes the job's record
(fleet.master.intake): a producer's credential may write nothing else (fleet.acl). Until the master
has taken it, `status` finds the job in the intake: PENDING, "not yet accepted by the master".

The nodes a submission is checked against may be up to `NODES_FRESH_S` old when they show room
for it (as if it had been submitted that much earlier: nodes come and go, and a job accepted
just before its node left waits like any other); a refusal is always checked against the nodes
as they are now. A burst of submissions thus costs one round trip each.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from fleet import acl
from fleet.artifacts import Choice, Download, Listing, StorageArtifacts, download_job, list_job
from fleet.bundles.upload import attach, code_override
from fleet.entrypoints import is_job_id
from fleet.errors import (
    ConnectionFailed,
    FleetError,
    NotFound,
    RedisUnavailable,
    SpecError,
    WaitTimedOut,
)
from fleet.master import intake
from fleet.observe.logs import JobLogs, LogLine
from fleet.placement import NodeView, Request, never_fits
from fleet.settings import Settings
from fleet.spec import JobSpec, load_spec, parse_spec
from fleet.statefile import redis_url as resolve_redis_url
from fleet.states import TERMINAL_NAMES
from fleet.store import published
from fleet.store.jobstore import new_job_id
from fleet.store.protocol import Store
from fleet.store.redis_store import RedisStore
from fleet.views import job_view

NODES_FRESH_S = 1.0
CANCEL_WAIT_S = 5.0  # how long `cancel` waits for the master to apply it
NOT_ACCEPTED = "not yet accepted by the master"
INTAKE_SCAN = 1000  # newest entries of the intake `status` looks through for a job
FOLLOW_BLOCK_MS = 1000  # how long one read of `events(follow=True)` waits for a new event
ACTIVE_RECENT = 50  # finished jobs `fleet top` shows beside the pending and running ones


def connect(url: str) -> redis.Redis:
    """A checked connection: a wrong password or a dead server is a one-line FleetError."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=10)
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ConnectionFailed(f"redis refused our credentials: {exc}") from None
    except redis.exceptions.ResponseError as exc:  # NOAUTH and friends
        raise ConnectionFailed(f"redis refused the connection: {exc}") from None
    except redis.exceptions.ConnectionError as exc:
        raise ConnectionFailed(f"cannot reach redis at {_safe_url(url)}: {exc}") from None
    return client


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """redis-py's exceptions as the FleetError a caller of the Client handles (the Client's
    one promise about errors: nothing else escapes it but bugs)."""
    try:
        yield
    except redis.exceptions.BusyLoadingError:
        raise RedisUnavailable("redis is loading its data after a restart; retry in a few "
                               "seconds (what it acknowledged is kept)") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise RedisUnavailable(f"redis unreachable ({exc}); retry once it is back (what it "
                               "acknowledged is kept)") from None
    except redis.exceptions.AuthenticationError as exc:
        raise ConnectionFailed(f"redis refused our credentials: {exc}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise FleetError(f"redis refused this credential: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise FleetError(f"redis: {exc}") from None


def escaped_store_error(exc: BaseException) -> str | None:
    """The one line the CLI prints (exit 3) for a Redis failure raised outside a Client's
    methods (a driver's or the master's own connection); None for any other exception, a bug
    that keeps its traceback. The CLI thus handles Redis's errors without importing Redis."""
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return f"redis refused our credentials: {exc}"
    if isinstance(exc, redis.exceptions.RedisError):
        return f"redis: {exc}"
    return None


def _raising_fleet_errors(cls: type) -> type:
    """Wrap every public method (generators included) in `redis_errors`."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(method):
            continue
        if inspect.isgeneratorfunction(method):
            @functools.wraps(method)
            def wrapped(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
                with redis_errors():
                    yield from _method(*args, **kwargs)
        else:
            @functools.wraps(method)
            def wrapped(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
                with redis_errors():
                    return _method(*args, **kwargs)
        setattr(cls, name, wrapped)
    return cls


@_raising_fleet_errors
class Client:
    """The producer's and operator's API. Raises only FleetError subclasses (SpecError for a
    bad spec, NotFound, RedisUnavailable with a retry hint, ConnectionFailed)."""

    def __init__(
        self, settings: Settings | None = None, *, redis_url: str | None = None,
        client: redis.Redis | None = None, store: Store | None = None,
    ) -> None:
        """Over `store` when given (e.g. a `fleet.store.memory.MemoryStore`), else over the
        Redis at `client`, `redis_url` or the settings' URL."""
        self.settings = settings or Settings()
        if store is None:
            store = RedisStore(client or connect(redis_url or resolve_redis_url(self.settings)))
        self.store: Store = store
        self.r = getattr(store, "r", None)  # the Redis connection, when the store has one
        self.intake = store.intake
        self._nodes: tuple[float, NodeView] | None = None  # (read at, monotonic), nodes
        self._sent: set[str] = set()  # digests of the bundles this Client sent
        self.fleet = published.Reader(store, self.settings)  # what the nodes check jobs against

    # -- submit ------------------------------------------------------------------------------
    def spec_from(
        self, source: JobSpec | Mapping[str, Any] | str | Path, overrides: Sequence[str] = (),
    ) -> JobSpec:
        """`source` as a checked JobSpec: a spec as is, a mapping or a file (YAML or JSON)
        validated with `overrides` applied, under this fleet's limits. SpecError names the
        field at fault."""
        if isinstance(source, JobSpec):
            return source
        if isinstance(source, Mapping):
            from fleet.spec import apply_overrides

            return parse_spec(apply_overrides(dict(source), overrides), **self._limits())
        return load_spec(source, overrides, **self._limits())

    def submit(
        self, source: JobSpec | Mapping[str, Any] | str | Path, *, overrides: Sequence[str] = (),
        job_id: str | None = None, code: str | Path | None = None,
    ) -> str:
        """Validate, check it can fit some node, then append it to the intake. Returns the job
        id at once; the master accepts it within milliseconds (or rejects it: FAILED). `code`
        (overriding the spec's `code`): a folder packed and sent as the job's code bundle,
        once (fleet.bundles.upload)."""
        if isinstance(source, JobSpec) and code is not None:
            source = source.model_dump()
        spec = self.spec_from(source, [*overrides, *code_override(code)])
        attached = attach(spec, self.fleet.settings(), self.store, self._sent)
        spec = attached.spec
        request = Request.of(spec.resources.value(), spec.node_selector)
        too_big = never_fits(self._live_nodes(), request)
        if too_big is not None and self._nodes is not None:
            self._nodes = None  # a refusal is judged on the nodes as they are now
            too_big = never_fits(self._live_nodes(), request)
        if too_big is not None:
            raise SpecError(*too_big)
        job_id = job_id or new_job_id(spec.name)
        if not is_job_id(job_id):
            raise SpecError("job_id", "expected lowercase letters, digits, '.', '_' or '-'")
        if attached.bundle is not None:  # before the submit: the master applies them in order
            self._append(intake.bundle_entry(attached.bundle.digest, attached.bundle.data))
            self._sent.add(attached.bundle.digest)
        self._append(intake.entry("submit", job_id, spec))
        return job_id

    def _append(self, fields: Mapping[str, str | bytes]) -> str:
        """One request into this credential's intake; its entry id."""
        waiting = self.store.intake_len(self.intake)
        if waiting >= intake.INTAKE_CAP:
            raise FleetError(f"intake {self.intake} holds {waiting} requests the master has not "
                             f"taken: is a master running? (`fleet status`)")
        return self.store.intake_append(self.intake, fields, intake.INTAKE_CAP)

    def _requested(self, job_id: str) -> dict[str, Any] | None:
        """A submission still in this credential's intake (the master has not taken it yet),
        as a job record: PENDING, not yet accepted."""
        for entry_id, fields in self.store.intake_newest(self.intake, INTAKE_SCAN):
            if fields.get("job_id") != job_id or fields.get("op") != "submit":
                continue
            try:
                spec = json.loads(fields.get("spec", "{}"))
            except ValueError:
                spec = {}
            spec = spec if isinstance(spec, dict) else {}
            at = int(entry_id.split("-")[0]) / 1000
            return {"id": job_id, "name": spec.get("name"), "state": "PENDING", "spec": spec,
                    "submitted_at": at, "updated_at": at, "waiting": NOT_ACCEPTED}
        return None

    def _live_nodes(self) -> NodeView:
        now = time.monotonic()
        if self._nodes is None or not 0 <= now - self._nodes[0] < NODES_FRESH_S:
            self._nodes = (now, NodeView.from_reports(self.store.live_reports()))
        return self._nodes[1]

    def _limits(self) -> dict[str, Any]:
        fleet = self.fleet.settings()
        return {"allowlist": fleet.allowlist, "max_timeout": fleet.max_job_timeout}

    # -- read --------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """The job's record in the documented `--json` shape (see docs/json.md)."""
        job = self.store.get(job_id)
        if job is None:
            requested = self._requested(job_id)
            if requested is not None:
                return job_view(requested, [])
            job = self.store.get(job_id)  # taken between the two reads
            if job is None:
                raise NotFound(f"no job {job_id!r}")
        return job_view(job, self.store.attempts(job_id))

    def jobs(self, limit: int | None = 200) -> list[dict[str, Any]]:
        """The `limit` newest jobs the master has accepted (all when None), newest first, in
        `status`'s shape without attempts: `fleet jobs`. Unreadable records are left out."""
        return [job_view(j) for j in self.store.get_many(self.store.job_ids(limit))]

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes' last reports, with `reserved` summed from their allocations and
        `draining`: `fleet nodes`, `fleet top`. A node whose lease lapsed is left out."""
        return [s["report"] for s in self.store.node_states() if s["report"]]

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """The job's progress reports (step, metrics) from the `start`-th, oldest first, across
        attempts: `fleet plot` draws them, `submit --wait` prints the new ones off a terminal."""
        return self.store.metrics(job_id, start)

    def master_status(self) -> dict[str, Any]:
        """Whether a master leads: `{"up", "leader", "down_for", "last_seen"}`. `down_for` is
        how many seconds no master has held the lease (None while one does, or when none
        ever has: `last_seen` None), measured on Redis's clock. `up` is None when this
        credential may not read the master's keys."""
        return self.store.master_status()

    def cancel(self, job_id: str, wait: float = CANCEL_WAIT_S) -> str:
        """Ask the master to cancel; the state the job is in (or heads to) once it has, waiting
        up to `wait` s: CANCELLED (it was pending or placed), CANCELLING (it runs: its node
        stops it within seconds; also when the master has not answered yet), or the terminal
        state it had already reached. A producer may cancel only the jobs it submitted."""
        job = self.store.get(job_id)
        if job is None and self._requested(job_id) is None:
            job = self.store.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
        if job is not None:
            if job["terminal"]:
                return str(job["state"])
            owner = job.get("submitted_by") or None
            if self.intake != acl.OPERATOR_INTAKE and owner != self.intake:
                raise FleetError(f"job {job_id} was submitted through intake {owner!r}, not "
                                 f"{self.intake!r}: only that producer or the operator may "
                                 f"cancel it")
        entry_id = self._append(intake.entry("cancel", job_id))
        deadline = time.monotonic() + wait
        while self.store.intake_holds(self.intake, entry_id):
            if time.monotonic() > deadline:
                return "CANCELLING"
            time.sleep(0.005)
        state, flagged = self.store.job_state(job_id)
        if state in TERMINAL_NAMES or not flagged:
            return state
        return "CANCELLING"

    # -- follow ------------------------------------------------------------------------------
    def follow(
        self, job_id: str, interval: float = 0.5, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yields the job's status each time it changes, ending with its terminal state.
        Raises WaitTimedOut once `timeout` seconds pass first, changes or not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            status = self.status(job_id)
            key = (status["state"], status["attempt"], status["updated_at"])
            if key != last:
                last = key
                yield status
            if status["terminal"]:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimedOut(f"job {job_id} still {status['state']} after {timeout:g}s")
            time.sleep(interval if left is None else min(interval, left))

    def wait(
        self, job_id: str, *, timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The job's terminal status; `on_progress` sees each change on the way. Raises
        WaitTimedOut when `timeout` seconds pass first (the job goes on)."""
        for status in self.follow(job_id, timeout=timeout):
            if on_progress is not None:
                on_progress(status)
            if status["terminal"]:
                return status
        raise AssertionError("unreachable")

    # -- observe: what `fleet top`, `plot`, `logs` and `events` read -------------------------
    def active_jobs(self, recent: int = ACTIVE_RECENT) -> list[dict[str, Any]]:
        """The pending jobs (in line order), the running ones, then the `recent` newest others,
        each once: what `fleet top` draws, without reading every job the fleet remembers."""
        newest = self.store.job_ids(recent)
        pending = self.store.pending_ids()
        running = [j["job"] for n in self.nodes() for j in n.get("jobs") or []]
        ids = list(dict.fromkeys([*pending, *running, *newest]))
        return [job_view(j) for j in self.store.get_many(ids)]

    def node_histories(self) -> dict[str, list[dict[str, Any]]]:
        """Each known node's recorded load samples, oldest first: `fleet plot --fleet`."""
        return {n: self.store.history(n) for n in self.store.known_nodes()}

    def log_attempt(self, job_id: str) -> int:
        """The job's current attempt (0 before its first placement). NotFound: no such job."""
        return self._logs(job_id).job_attempt()[0]

    def log_lines(self, job_id: str, attempt: int) -> list[str]:
        """Every output line kept of one attempt (the store's when Redis dropped some)."""
        return self._logs(job_id).lines(attempt)

    def follow_logs(self, job_id: str, attempt: int | None = None) -> Iterator[LogLine]:
        """Output lines as they come, of `attempt` or (None) of each in turn, to the job's end."""
        yield from self._logs(job_id).follow(attempt)

    def _logs(self, job_id: str) -> JobLogs:
        return JobLogs(self.store, self.fleet.storage, job_id, self.settings.log_max_bytes)

    def artifacts(self, job_id: str, dest: str | Path | None = None, *,
                  attempt: int | None = None) -> Download:
        """Copy what the job wrote under `ctx.output_dir` into `dest` (new or empty; default
        `./<job id>`): its succeeded attempt's, else its latest's (`note` says), or `attempt`'s."""
        return download_job(self.store, StorageArtifacts(self.fleet.storage()), job_id, dest, attempt)

    def artifact_list(self, job_id: str, attempt: int | None = None) -> tuple[Choice, Listing]:
        """What `artifacts` would download: the attempt, and its files as the store lists them."""
        return list_job(self.store, StorageArtifacts(self.fleet.storage()), job_id, attempt)

    def events(
        self, job: str | None = None, *, limit: int | None = None, follow: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Lifecycle events, oldest first: the past ones (the last `limit`; of `job` only when
        given), then with `follow` each new one as it is appended, until the caller stops.
        The newest id is read first: an event appended meanwhile comes once, as a new one."""
        since = self.store.last_event_id()
        for event in self.store.events(job, limit):
            if _stream_id_le(event["id"], since):
                yield event
        while follow:
            for event in self.store.events_after(since, block_ms=FOLLOW_BLOCK_MS):
                since = event["id"]
                if job is None or event.get("job") == job:
                    yield event


def _stream_id_le(a: str, b: str) -> bool:
    """Stream ids compare as (ms, seq) pairs."""
    ma, _, sa = a.partition("-")
    mb, _, sb = b.partition("-")
    return (int(ma), int(sa or 0)) <= (int(mb), int(sb or 0))


def _safe_url(url: str) -> str:
    """The URL without its password, fit to print."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
