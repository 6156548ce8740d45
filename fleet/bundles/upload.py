"""The Client's side of code bundles: a spec's `code` folder packed, checked, sent once.

A producer may write only its intake (fleet.acl), so the bytes travel as one intake entry of
kind "bundle" (fleet.master.intake.bundle_entry), ahead of the submit that names them; the
master checks them against the digest and stores them at `keys.bundle`. A bundle already in
the store (producers may read) is not sent again, nor one this Client sent already. The job's
spec keeps only the digest (`bundle`), never the producer's path.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fleet.bundles.entry import check_folder_entrypoint
from fleet.bundles.memo import PACKS
from fleet.bundles.pack import Bundle
from fleet.errors import SpecError
from fleet.requirements import FILE_NAME, parse_file
from fleet.settings import Settings
from fleet.spec import JobSpec
from fleet.store.protocol import Store

OFF = ("code: this fleet runs no code bundles (FLEET_CODE_BUNDLES=off); submit an installed, "
       "allowlisted entry point")


@dataclass(frozen=True)
class Attached:
    """A spec ready to submit, and the bundle to send before it (None: stored already)."""

    spec: JobSpec
    bundle: Bundle | None = None


def code_override(code: str | Path | None) -> list[str]:
    """`code=DIR` (over the spec's `code`) as a `--set` override: an absolute path, as JSON, so
    that any path reads back whole and a spec file's folder does not move it."""
    if code is None:
        return []
    return [f"code={json.dumps(str(Path(code).expanduser().absolute()))}"]


def attach(spec: JobSpec, settings: Settings, store: Store, sent: set[str]) -> Attached:
    """`spec` with its `code` folder packed into `bundle`; a spec naming a `bundle` alone must
    name one the store holds. SpecError, one line, else."""
    folder = spec.code
    if folder is None and spec.bundle is None:
        return Attached(spec)
    if not settings.code_bundles:
        raise SpecError("code", OFF.removeprefix("code: "))
    if folder is None:
        assert spec.bundle is not None
        if not store.bundle_exists(spec.bundle):
            raise SpecError("bundle", f"{spec.bundle} is not stored in this fleet: submit the "
                                      "folder with code=DIR (`--code DIR`), which uploads it")
        return Attached(spec)
    bundle = PACKS.pack(Path(folder).expanduser(), settings.bundle_cap)  # again only if changed
    check_folder_entrypoint(spec.entrypoint, Path(folder).expanduser(), _members(bundle))
    spec = spec.model_copy(update={"code": None, "bundle": bundle.digest})
    if spec.requirements is None:  # none in the spec: the bundle's requirements.txt, if any
        spec = spec.model_copy(update={"requirements": _requirements_file(bundle)})
    if bundle.digest in sent or store.bundle_exists(bundle.digest):
        return Attached(spec)
    return Attached(spec, bundle)


def _requirements_file(bundle: Bundle) -> list[str] | None:
    """The bundle's top-level requirements.txt, checked (SpecError naming its line)."""
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:") as tar:
        try:
            member = tar.getmember(FILE_NAME)
        except KeyError:
            return None
        f = tar.extractfile(member) if member.isfile() else None
        return None if f is None else parse_file(f.read())


def _members(bundle: Bundle) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:") as tar:
        return set(tar.getnames())
