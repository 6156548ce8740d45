"""A job's artifacts: what it wrote under `ctx.output_dir`, kept with the job and downloaded.

Each attempt has its own output folder in the artifact store, `jobs/<job>/attempt-<n>/output/`
(beside its `output.log`), so the files of a replaced or fenced attempt never mix with the
winner's. A download takes the output of the attempt that SUCCEEDED; for a job that has not
succeeded, that of its latest attempt that ran, with a note saying so; or the attempt asked for.
It goes into a new folder (default `./<job id>/`; an existing one must be empty), written in a
hidden folder beside it and renamed into place when complete: a failed download leaves nothing.

The store is reached through `ArtifactStore` (`list` and `open` of one attempt's output): the
fleet's store (`StorageArtifacts`: S3, or a folder, where the nodes put each attempt's output
as a set) or a directory the nodes write in (`LocalArtifacts`, the default store's case).
Nothing in a job's folders is read through a link, and no name is written outside the
destination.
"""

from __future__ import annotations

from fleet.artifacts.choose import Choice, choose_attempt, member_path
from fleet.artifacts.download import Download, download, download_job, list_job
from fleet.artifacts.store import (
    Artifact,
    ArtifactStore,
    Listing,
    LocalArtifacts,
    StorageArtifacts,
    output_dir,
)

__all__ = [
    "Artifact", "ArtifactStore", "Choice", "Download", "Listing", "LocalArtifacts",
    "StorageArtifacts", "choose_attempt", "download", "download_job", "list_job", "member_path",
    "output_dir",
]
