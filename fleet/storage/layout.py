"""Where each thing a job leaves lives in the store: one key layout for every backend.

The layout mirrors the artifact directory (`<artifacts>/jobs/<job>/...`), so with the default
store (a directory: the artifact folder itself) a node's files are already where the store
keeps them, and `Storage.local_path` tells an uploader there is nothing to copy. Keys:

    jobs/<job>/checkpoints/attempt-<n>/step-<s>/<files>   a checkpoint; MANIFEST.json last
    jobs/<job>/attempt-<n>/output/<files>                 what the job wrote to ctx.output_dir
    jobs/<job>/attempt-<n>/output.log                     the attempt's whole log, at its end
    jobs/<job>/attempt-<n>/log/<offset>                   the log in chunks, as it comes
"""

from __future__ import annotations

from fleet.entrypoints import is_job_id
from fleet.storage.base import BadKey


def job_prefix(job_id: str) -> str:
    if not is_job_id(job_id):
        raise BadKey(f"job id {job_id!r}: not a job id", job_id)
    return f"jobs/{job_id}/"


def checkpoints_prefix(job_id: str) -> str:
    """Every checkpoint of the job, all attempts."""
    return f"{job_prefix(job_id)}checkpoints/"


def checkpoint_prefix(job_id: str, attempt: int, step: int) -> str:
    """One checkpoint's set (`fleet.storage.manifest`): the same name as the committed one in
    Redis (`attempt-<n>/step-<s>`, workers.checkpoint.committed_name) under the job's root."""
    return f"{checkpoints_prefix(job_id)}attempt-{attempt}/step-{step:08d}/"


def attempt_prefix(job_id: str, attempt: int) -> str:
    return f"{job_prefix(job_id)}attempt-{attempt}/"


def output_prefix(job_id: str, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}output/"


def log_key(job_id: str, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}output.log"


def log_chunk_key(job_id: str, attempt: int, offset: int) -> str:
    """A chunk of the log starting at byte `offset` of the attempt's output (zero-padded: the
    store's key order is the log's order)."""
    return f"{attempt_prefix(job_id, attempt)}log/{offset:016d}"
