"""A job's `requirements`: pip requirement strings, checked and normalized at submit (pure).

A node builds one virtualenv per set of requirements (`workers.env`), from the package index the
node is configured with (FLEET_PIP_INDEX_URL, FLEET_PIP_FIND_LINKS) and from nowhere else: a
producer names packages and versions, never where they come from. So pip options (`-e`,
`--index-url`, `-r`), URLs and file paths are refused here, with the entry named, before
anything is written. What is kept is the normalized form (canonical names, sorted extras and
specifiers, one of each, sorted), so that the same packages written two ways share one env.
"""

from __future__ import annotations

from typing import Annotated

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import AfterValidator

from fleet.errors import SpecError

MAX_REQUIREMENTS = 100
MAX_CHARS = 200  # one requirement
MAX_FILE_BYTES = 64 * 1024  # a bundle's requirements.txt
FILE_NAME = "requirements.txt"
ONLY_INDEX = "packages come only from the node's package index (FLEET_PIP_INDEX_URL)"
_VCS = ("git+", "hg+", "svn+", "bzr+")


def check_requirement(text: str) -> str:
    """One requirement (`numpy>=1.24`, `rich[jupyter]==13.*; python_version >= "3.10"`) in
    its normalized form; ValueError with the reason when it is not one pip may install here."""
    entry = text.strip()
    if not entry:
        raise ValueError("empty requirement")
    if len(entry) > MAX_CHARS or not entry.isprintable():
        raise ValueError(f"expected one printable line of at most {MAX_CHARS} characters")
    if entry.startswith("-"):
        raise ValueError(f"pip options ({entry.split()[0]}) are refused: {ONLY_INDEX}")
    if "://" in entry or entry.startswith(_VCS):
        raise ValueError(f"URLs are refused: {ONLY_INDEX}")
    if entry.startswith((".", "/", "~")) or "\\" in entry or "/" in entry.split(";")[0]:
        raise ValueError(f"file paths are refused: {ONLY_INDEX}")
    try:
        req = Requirement(entry)
    except InvalidRequirement as exc:
        raise ValueError(f"not a pip requirement: {str(exc).splitlines()[0]}") from None
    if req.url:
        raise ValueError(f"direct references (name @ URL) are refused: {ONLY_INDEX}")
    extras = f"[{','.join(sorted({canonicalize_name(e) for e in req.extras}))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}"


def normalize(entries: list[str] | None) -> list[str] | None:
    """Checked entries as one sorted list, each once; None (not asked) stays None."""
    if entries is None:
        return None
    if len(entries) > MAX_REQUIREMENTS:
        raise ValueError(f"{len(entries)} entries; at most {MAX_REQUIREMENTS} are allowed")
    return sorted(set(entries))


Requirements = Annotated[
    list[Annotated[str, AfterValidator(check_requirement)]] | None, AfterValidator(normalize)
]


def parse_file(data: bytes, name: str = FILE_NAME) -> list[str]:
    """A requirements.txt (a bundle's) as normalized requirements: one per line, `#` comments
    and blank lines skipped. SpecError naming the file and the line for anything else."""
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(name, f"{len(data)} bytes; at most {MAX_FILE_BYTES} are allowed")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError(name, "not UTF-8 text") from None
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split(" #")[0].strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            found.append(check_requirement(entry))
        except ValueError as exc:
            raise SpecError(name, f"line {number}: {exc}") from None
    try:
        return normalize(found) or []
    except ValueError as exc:
        raise SpecError(name, str(exc)) from None
