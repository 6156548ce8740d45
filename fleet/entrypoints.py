"""Entry points and names: the checks a job process and a worker make before running anything.

Kept free of pydantic and YAML so the job process, which runs them once more before importing
job code, starts fast; `fleet.spec` uses the same functions at submit.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence

from fleet.errors import SpecError

_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_identifier(part: str, what: str) -> str:
    if not _IDENTIFIER.fullmatch(part) or keyword.iskeyword(part):
        raise ValueError(f"{what} {part!r} is not a Python identifier")
    if part.startswith("__"):
        raise ValueError(f"{what} {part!r} is refused: dunder names are never job code")
    return part


def split_entrypoint(entrypoint: str) -> tuple[str, str]:
    """The shape alone: `pkg.module:function`, plain ASCII identifiers, no dunders, no dots
    leading or doubled (so nothing relative, nothing like `os:__dict__` or `x:__init__`)."""
    module, sep, function = entrypoint.partition(":")
    if not sep or not module or not function:
        raise ValueError(f"expected 'module:function', got {repr(entrypoint[:60])}")
    for part in module.split("."):
        check_identifier(part, "module part")
    check_identifier(function, "function")
    return module, function


def is_job_id(text: str) -> bool:
    """A job id as `new_job_id` makes them (name-<hex>): safe as a path part and a key part."""
    return isinstance(text, str) and len(text) <= 80 and bool(_NAME.fullmatch(text)) and ".." not in text


def check_name(name: str) -> str:
    """Names become directory and queue-name parts: lowercase, and never a way out of a folder."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"expected lowercase letters, digits, '.', '_' or '-', starting and ending with a "
            f"letter or digit, got {name!r}"
        )
    if ".." in name:
        raise ValueError(f"'..' is not allowed in a name, got {name!r}")
    return name


def check_entrypoint(entrypoint: str, allowlist: Sequence[str]) -> tuple[str, str]:
    """Split `module:function` and authorize it: the module must be an allowlisted module or a
    submodule of one (`workers.jobs` admits `workers.jobs.digits_torch`, not `workers.jobsX` nor
    `workers`). Called at submit and again by the worker before it imports anything."""
    try:
        module, function = split_entrypoint(entrypoint)
    except ValueError as exc:
        raise SpecError("entrypoint", str(exc)) from None
    if not any(module == allowed or module.startswith(allowed + ".") for allowed in allowlist):
        raise SpecError(
            "entrypoint",
            f"module {module!r} is not on the allowlist ({', '.join(allowlist) or 'empty'})",
        )
    return module, function
