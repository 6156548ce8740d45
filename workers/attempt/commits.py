"""Checkpoint commits: an attempt's checkpoint counts only once committed with its fencing token.

Each attempt saves under its own folder of the job's checkpoint root (`attempt-<N>/`) and says
so on its event pipe (`{"type": "checkpoint", "step": S}`). The supervisor commits the newest
one announced with a fenced Redis step (`JobStore.commit_checkpoint`: only the job's current
attempt, on this node and incarnation); the next attempt's order names the committed ones,
and `ctx.restore()` resumes from nothing else. So a superseded attempt (a paused node that
came back) may still write files, but never what the job resumes from.

Only the newest announced checkpoint is committed: an older one not committed yet is removed
when a newer one comes, and after each commit what can no longer be resumed from is pruned
(the job's `keep_checkpoints` newest committed ones are kept).

Under a supervisor an `uploader` (workers.attempt.uploads) is attached: an announced step is
handed to it, and it commits the step in Redis only once the step's files are in the fleet's
store, beside training. Without one (tests, direct use) `flush` commits on the caller's thread.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.states import EndReason
from fleet.store.jobstore import JobStore, Outcome
from workers import checkpoint as checkpoints

if TYPE_CHECKING:
    from workers.attempt.uploads import CheckpointUploader

log = logging.getLogger("fleet.supervisor")
SUCCESS_WAIT_S = 5.0  # a finished job's last checkpoint upload: at most this long


def restore_order(root: Path, committed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `restore` field of an attempt's order: the committed checkpoints (newest first) as
    {"step", "dir"}, `dir` absolute; a record whose name is not a checkpoint's is left out."""
    found = []
    for record in committed:
        parsed = checkpoints.parse_committed(str(record.get("dir")))
        if parsed is not None:
            found.append({"step": parsed[1], "dir": str(root / str(record["dir"]))})
    return found


def keep_of(spec: dict[str, Any]) -> int:
    """The spec's `keep_checkpoints` (a stored spec is data: anything but an int >= 1 reads
    as the default)."""
    keep = spec.get("keep_checkpoints")
    return keep if isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1 \
        else checkpoints.KEEP


class CheckpointCommits:
    """Commits the checkpoints one attempt announces: `announce` and `flush` on the relay's
    thread; with an uploader, `commit` on the uploader's."""

    def __init__(
        self, store: JobStore, job_id: str, attempt: int, node: str, incarnation: str,
        root: Path, committed: list[dict[str, Any]], keep: int = checkpoints.KEEP,
    ) -> None:
        self.store = store
        self.job_id, self.attempt = job_id, attempt
        self.node, self.incarnation = node, incarnation
        self.root = root  # the job's checkpoint root; this attempt writes under attempt-<N>/
        self.restore = restore_order(root, committed)  # what this attempt may resume from
        self.kept = [str(r["dir"]) for r in committed
                     if checkpoints.parse_committed(str(r.get("dir")))]
        self.keep = keep  # committed checkpoints kept, newest first
        self.pending: int | None = None  # the newest step announced, not committed yet
        self.committed: int | None = None
        self.uploader: CheckpointUploader | None = None
        self.refused = False  # the uploader's commit was refused: the attempt is superseded

    @property
    def folder(self) -> Path:
        return self.root / checkpoints.attempt_dir_name(self.attempt)

    def announce(self, step: Any) -> None:
        """The job says it published checkpoint `step` in its folder (a job's word: a step
        that is not a number, or names no published checkpoint, is ignored)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return
        if not (self.folder / checkpoints.step_dir_name(step)).is_dir():
            return
        if self.uploader is not None:
            self.uploader.offer(step)
            return
        if self.pending is not None and self.pending != step:
            checkpoints.remove_uncommitted(self.root, self.attempt, self.pending)
        self.pending = step

    def flush(self) -> bool:
        """Commit the pending checkpoint, if any. False when the attempt is superseded (it must
        stop); Redis errors propagate, and the checkpoint stays pending. With an uploader the
        commit is its own, and this only tells a refusal it met (`pending` is then set, so
        the relay calls here)."""
        if self.uploader is not None:
            refused, self.refused, self.pending = self.refused, False, None
            return not refused
        if self.pending is None:
            return True
        step = self.pending
        ok = self.commit(step)
        if self.pending == step:
            self.pending = None
        return ok

    def finish(self, outcome: Outcome, wait: float) -> Outcome:
        """At the attempt's end, before `outcome` is recorded: the last checkpoint uploaded
        and committed, waiting up to `wait` s for the uploader; the outcome, with why it was
        not (`checkpoint_upload`) when it was not."""
        if self.uploader is None:
            self.flush()
            return outcome
        if outcome.reason is EndReason.SUCCEEDED:
            # Nothing resumes from a finished job's checkpoint: its success is held back by an
            # upload only briefly (a node lost meanwhile would run the whole job again).
            wait = min(wait, SUCCESS_WAIT_S)
        elif outcome.reason is EndReason.NODE_LOST:
            wait = 0.0  # superseded or fenced: its commit would be refused, so wait for none
        unsaved = self.uploader.finish(wait)
        if unsaved is None:
            return outcome
        return replace(outcome, extra={**(outcome.extra or {}), "checkpoint_upload": unsaved})

    def commit(self, step: int) -> bool:
        """The fenced Redis commit of `step` (its files are where the job will resume from),
        then the local pruning. False when refused; Redis errors propagate."""
        name = checkpoints.committed_name(self.attempt, step)
        ok, why = self.store.commit_checkpoint(self.job_id, self.attempt, self.node,
                                               self.incarnation, step, name)
        if not ok:
            log.info("checkpoint %s of %s attempt %s not committed: %s", step, self.job_id,
                     self.attempt, why)
            return False
        self.committed = step
        self.kept = [name, *[k for k in self.kept if k != name]][:self.keep]
        try:
            checkpoints.prune_committed(self.root, self.attempt, self.kept)
        except OSError as exc:  # what is left over is only disk space, never resumed from
            log.warning("pruning the checkpoints of %s: %s", self.job_id, exc)
        return True
