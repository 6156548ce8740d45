"""An attempt's log and outputs, to the fleet's store, so they outlive the node's host.

`AttemptFiles` is the supervisor's one hook: made before the job starts (it opens the store
the fleet publishes and starts the log's shipper, `workers.attempt.logship`), finished after
the job's process is gone: the rest of the log is sent (waiting up to LOG_END_S; a store still
away is retried in the background), then `ctx.output_dir` is uploaded as one set under
`layout.output_prefix(job, attempt)`, manifest last (fleet.storage.manifest), retried with a
backoff for at most OUTPUTS_S. A store that cannot be had never fails the job: the attempt's
record says so (`storage_error`), and its files stay on the node.

The output folder is the job's to write: every file is opened with O_NOFOLLOW, relative to
its parent's descriptor (`fleet.artifacts.store.LocalArtifacts`), so a link, a FIFO or a device
is never read, only named in the manifest's `skipped`; the store reads the opened file itself
(`/proc/self/fd/N`), never a path the job could swap. With the default store (the artifacts
folder: `local_path` of the set is the output folder itself) nothing is copied.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.artifacts.store import OUTPUT_NAME, LocalArtifacts
from fleet.errors import FleetError
from fleet.observe.logs import attempt_dir
from fleet.settings import Settings
from fleet.storage import AlreadyExists, BadKey, Storage, StorageError, layout, open_storage
from fleet.storage.manifest import MANIFEST, manifest_bytes
from workers.attempt.logship import MAX_BACKOFF_S, LogShipper, same_file
from workers.attempt.outputlog import OutputLog

log = logging.getLogger("fleet.supervisor")

LOG_END_S = 10.0  # the attempt's end waits this long for its log to reach the store
OUTPUTS_S = 60.0  # retrying the outputs' upload (a put under way is never cut)

_opened: dict[tuple[Any, ...], Storage] = {}  # one client per store a node is told of
_opening = threading.Lock()


def node_storage(settings: Settings) -> Storage:
    """The store `settings` name (the fleet's published ones over the node's), opened once
    per distinct store: an S3 client costs a session, and it is safe across threads."""
    key = (settings.storage, settings.s3_endpoint, settings.s3_region,
           settings.s3_credentials_file, settings.artifacts_dir)
    with _opening:
        if key not in _opened:
            _opened[key] = open_storage(settings)
        return _opened[key]


class AttemptFiles:
    """One attempt's log shipper and output upload (see the module's docstring)."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, log_path: Path) -> None:
        self.artifacts, self.job_id, self.attempt = settings.artifacts_dir, job_id, attempt
        self.errors: list[str] = []
        self.storage: Storage | None = None
        self.shipper: LogShipper | None = None
        try:
            self.storage = node_storage(settings)
        except Exception as exc:  # e.g. an unreadable credentials file: the job runs on
            self.errors.append(f"store not opened: {exc}")
            log.warning("%s attempt %s: %s", job_id, attempt, self.errors[-1],
                        exc_info=not isinstance(exc, FleetError))
            return
        self.shipper = LogShipper(self.storage, job_id, attempt, log_path).start()

    def open_log(self, path: Path, max_bytes: int) -> OutputLog:
        if self.shipper is None:
            return OutputLog(path, max_bytes)
        return self.shipper.open_log(path, max_bytes)

    def finish(self, node: str, log_wait: float = LOG_END_S,
               outputs_wait: float = OUTPUTS_S) -> dict[str, Any]:
        """Send the log's rest and the outputs; the attempt record's fields saying what could
        not be stored ({} when all was)."""
        if self.shipper is not None and not self.shipper.finish(log_wait):
            self.errors.append(f"log not all in the store yet (retried in the background): "
                               f"{self.shipper.error}")
        if self.storage is not None:
            error = upload_outputs(self.storage, self.artifacts, self.job_id, self.attempt,
                                   {"node": node}, outputs_wait)
            if error is not None:
                self.errors.append(error)
        return {"storage_error": "; ".join(self.errors)} if self.errors else {}


def upload_outputs(
    storage: Storage, artifacts: Path, job_id: str, attempt: int, meta: dict[str, Any],
    within: float = OUTPUTS_S, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Put the attempt's output folder (under `artifacts`) in the store as one set, manifest
    last; None when done (or nothing to do), else why not, after `within` seconds of tries."""
    prefix = layout.output_prefix(job_id, attempt)
    folder = attempt_dir(artifacts, job_id, attempt) / OUTPUT_NAME
    target = storage.local_path(prefix + MANIFEST)
    if target is not None and same_file(target.parent, folder):
        return None  # the default store: the outputs are where it keeps them
    local = LocalArtifacts(artifacts)
    deadline, delay = clock() + within, 1.0
    sizes: dict[str, int] = {}
    while True:
        try:
            listing = local.listing(job_id, attempt)
            skipped = [*listing.skipped, *(f.name for f in listing.files if f.name == MANIFEST)]
            for item in listing.files:
                if item.name in sizes or item.name in skipped:
                    continue
                try:
                    sizes[item.name] = _put(storage, local, job_id, attempt, prefix, item.name)
                except BadKey:  # a name no store can hold (S3's key rules)
                    skipped.append(item.name)
            storage.put_bytes(prefix + MANIFEST,
                              manifest_bytes(sizes, {**meta, "skipped": skipped}), if_absent=True)
            return None
        except AlreadyExists:
            return None  # committed by an earlier try whose answer was lost
        except (StorageError, FleetError, OSError) as exc:  # OSError: a local store's own
            if clock() + delay > deadline or not isinstance(exc, (StorageError, OSError)):
                why = f"outputs not stored ({len(sizes)} files sent): {exc}"
                log.warning("%s attempt %s: %s", job_id, attempt, why)
                return why
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def _put(storage: Storage, local: LocalArtifacts, job_id: str, attempt: int, prefix: str,
         name: str) -> int:
    """One output file into the store, read through the descriptor opened without following
    a link; its size."""
    with local.open(job_id, attempt, name) as f:
        storage.put_file(prefix + name, Path(f"/proc/self/fd/{f.fileno()}"))
        return os.fstat(f.fileno()).st_size
