"""Checkpoint commits: an attempt's checkpoint counts only once committed with its fencing token.

Each attempt saves under its own folder of the job's checkpoint root (`attempt-<N>/`) and says
so on its event pipe (`{"type": "checkpoint", "step": S}`). The supervisor commits the newest
one announced with a fenced Redis step (`JobStore.commit_checkpoint`: only the job's current
attempt, on this node and incarnation); the next attempt's order names the committed ones,
and `ctx.restore()` resumes from nothing else. So a superseded attempt (a paused node that
came back) may still write files, but never what the job resumes from.

Only the newest announced checkpoint is committed: an older one not committed yet is removed
when a newer one comes, and after each commit what can no longer be resumed from is pruned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fleet.store.jobstore import JobStore
from workers import checkpoint as checkpoints

log = logging.getLogger("fleet.supervisor")


def restore_order(root: Path, committed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `restore` field of an attempt's order: the committed checkpoints (newest first) as
    {"step", "dir"}, `dir` absolute; a record whose name is not a checkpoint's is left out."""
    found = []
    for record in committed:
        parsed = checkpoints.parse_committed(str(record.get("dir")))
        if parsed is not None:
            found.append({"step": parsed[1], "dir": str(root / str(record["dir"]))})
    return found


class CheckpointCommits:
    """Commits the checkpoints one attempt announces. Not thread-safe: the relay's thread."""

    def __init__(
        self, store: JobStore, job_id: str, attempt: int, node: str, incarnation: str,
        root: Path, committed: list[dict[str, Any]],
    ) -> None:
        self.store = store
        self.job_id, self.attempt = job_id, attempt
        self.node, self.incarnation = node, incarnation
        self.root = root  # the job's checkpoint root; this attempt writes under attempt-<N>/
        self.restore = restore_order(root, committed)  # what this attempt may resume from
        self.kept = [str(r["dir"]) for r in committed
                     if checkpoints.parse_committed(str(r.get("dir")))]
        self.pending: int | None = None  # the newest step announced, not committed yet
        self.committed: int | None = None

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
        if self.pending is not None and self.pending != step:
            checkpoints.remove_uncommitted(self.root, self.attempt, self.pending)
        self.pending = step

    def flush(self) -> bool:
        """Commit the pending checkpoint, if any. False when the attempt is superseded (it must
        stop); Redis errors propagate, and the checkpoint stays pending."""
        if self.pending is None:
            return True
        step = self.pending
        name = checkpoints.committed_name(self.attempt, step)
        ok, why = self.store.commit_checkpoint(self.job_id, self.attempt, self.node,
                                               self.incarnation, step, name)
        if self.pending == step:
            self.pending = None
        if not ok:
            log.info("checkpoint %s of %s attempt %s not committed: %s", step, self.job_id,
                     self.attempt, why)
            return False
        self.committed = step
        self.kept = [name, *[k for k in self.kept if k != name]][:2]
        try:
            checkpoints.prune_committed(self.root, self.attempt, self.kept)
        except OSError as exc:  # what is left over is only disk space, never resumed from
            log.warning("pruning the checkpoints of %s: %s", self.job_id, exc)
        return True
