"""The rules of a node's job envs, with no I/O: which env a job needs, what to evict, and
what of pip's output explains a failed build.

An env is named by a hash of everything that decides its content: the job's requirements (as
`fleet.requirements` normalized them), the Python that runs the job (its executable and
version: an env is built for one interpreter) and the index it was installed from. The same
requirements on another image, or from another index, are another env.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.requirements import check_requirement, normalize

LAYOUT = 1  # of a built env; a change here names every env anew
KEY_CHARS = 32  # of the sha256, in hex: the env's folder name
SHORT = 12  # in logs and events


def requirements_of(value: Any) -> list[str]:
    """A stored spec's `requirements` checked again (the node trusts no record), normalized;
    [] when the job asks for none. ValueError with the reason when malformed."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return normalize([check_requirement(v) for v in value]) or []


def env_key(requirements: Sequence[str], python: str, index: Sequence[str | None]) -> str:
    """The env's name: hex, KEY_CHARS long, the same for the same inputs on any node."""
    blob = json.dumps({"layout": LAYOUT, "requirements": sorted(requirements),
                       "python": python, "index": list(index)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_CHARS]


@dataclass(frozen=True)
class Kept:
    """A built env in the cache: its size (bytes) and when a job last used it."""

    key: str
    size: int
    last_used: float


def to_evict(envs: Sequence[Kept], budget: int, keep: Collection[str] = ()) -> list[str]:
    """The envs to remove, least recently used first, until the rest fit `budget` bytes;
    never one in `keep` (the env just built: it may alone be over the budget)."""
    total = sum(e.size for e in envs)
    chosen: list[str] = []
    for env in sorted(envs, key=lambda e: (e.last_used, e.key)):
        if total <= budget:
            break
        if env.key in keep:
            continue
        chosen.append(env.key)
        total -= env.size
    return chosen


def failure_summary(output: str, lines: int = 3, limit: int = 400) -> str:
    """pip's last words, for the job's reason: its last ERROR lines when it wrote some (what
    went wrong, not the traceback above), else its last lines; one line, at most `limit`."""
    kept = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith("ERROR:")]
    text = " | ".join((errors or kept)[-lines:]) or "no output"
    return text if len(text) <= limit else "..." + text[-(limit - 3):]
