"""A download of one attempt's output into a new (or empty) folder, all of it or nothing.

Like `git clone`, it refuses a destination that exists and holds anything: merging into a
folder would mix two runs' files, or overwrite the user's. Every stored name is checked before
the first byte is written (`member_path`); files are created exclusively (never through a link,
never over a file); on any failure, an interrupt included, what was written is removed, and a
destination this download made is removed too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from fleet.artifacts.choose import Choice, choose_attempt, member_path
from fleet.artifacts.store import Artifact, ArtifactStore, Listing
from fleet.errors import FleetError, NotFound

if TYPE_CHECKING:
    from fleet.store.protocol import JobReads

CHUNK = 2**20


@runtime_checkable
class Fetches(Protocol):
    """A store that writes a file at a path itself (an object store's download, streamed to
    disk), rather than handing out a file to read."""

    def fetch(self, job_id: str, attempt: int, name: str, target: Path) -> None: ...


@dataclass(frozen=True)
class Download:
    """What `Client.artifacts` wrote: the files (under `dest`), their bytes, what the store
    held that was not copied (links, FIFOs, ...), and a note when the attempt did not succeed."""

    job_id: str
    attempt: int
    dest: Path
    paths: list[Path]
    size: int
    skipped: list[str]
    note: str | None = None


def download_job(
    jobs: JobReads, store: ArtifactStore, job_id: str, dest: str | Path | None = None,
    attempt: int | None = None,
) -> Download:
    """The output of the job's attempt chosen by `choose_attempt`, copied into `dest` (default:
    a folder named after the job, here). NotFound for an unknown job; FleetError, with nothing
    written, when the destination is not a new or empty folder, the attempt wrote no output,
    or the store cannot be read."""
    target = Path(job_id) if dest is None else Path(dest)
    choice, listing = list_job(jobs, store, job_id, attempt)
    _check_dest(target)
    if not listing.files:
        left = f"; left out, not regular files: {', '.join(listing.skipped)}" \
            if listing.skipped else ""
        raise FleetError(f"job {job_id} attempt {choice.attempt} wrote no output (a job keeps "
                         f"files by writing them under ctx.output_dir){left}")
    paths = download(store, job_id, choice.attempt, listing.files, target)
    return Download(job_id, choice.attempt, target, paths, sum(f.size for f in listing.files),
                    listing.skipped, choice.note)


def list_job(jobs: JobReads, store: ArtifactStore, job_id: str,
             attempt: int | None = None) -> tuple[Choice, Listing]:
    """The attempt `choose_attempt` picks, and its output as the store lists it. NotFound for
    an unknown job."""
    job = jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    choice = choose_attempt(job, jobs.attempts(job_id), attempt)
    return choice, store.listing(job_id, choice.attempt)


def download(
    store: ArtifactStore, job_id: str, attempt: int, files: Sequence[Artifact], dest: Path,
) -> list[Path]:
    """Copy `files` of the attempt's output into `dest` (new, or an empty folder); the paths
    written, in the order of `files`."""
    targets = [member_path(dest, f.name) for f in files]  # all checked before any is written
    existed = _check_dest(dest)
    try:
        dest.mkdir(parents=True, exist_ok=existed)
    except FileExistsError:
        raise FleetError(f"{dest} was made meanwhile: download into a new folder") from None
    except OSError as exc:
        raise FleetError(f"cannot make {dest}: {exc.strerror or exc}") from None
    try:
        for f, target in zip(files, targets, strict=True):
            _copy(store, job_id, attempt, f.name, target)
    except BaseException:
        _remove_contents(dest)
        if not existed:
            os.rmdir(dest)
        raise
    return targets


def _copy(store: ArtifactStore, job_id: str, attempt: int, name: str, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(store, Fetches):
            store.fetch(job_id, attempt, name, target)
            return
        with store.open(job_id, attempt, name) as src, target.open("xb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    except OSError as exc:  # the destination's disk, or two stored names for one path
        raise FleetError(f"cannot write {target}: {exc.strerror or exc} (nothing was kept)") \
            from None


def _check_dest(dest: Path) -> bool:
    """Whether `dest` exists (an empty folder); FleetError when it exists otherwise."""
    try:
        held = os.listdir(dest)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise FleetError(f"{dest} exists and is not a folder: download into a new folder "
                         f"(-o DIR)") from None
    except OSError as exc:
        raise FleetError(f"cannot read {dest}: {exc.strerror or exc}") from None
    if held:
        raise FleetError(f"{dest} exists and is not empty: download into a new folder "
                         f"(-o DIR); nothing was written")
    return True


def _remove_contents(folder: Path) -> None:
    """Empty a folder this download filled (it was empty or new), links removed, not followed."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
