"""A bundle job's entry point: `module:function` found in the bundle's own files.

`FLEET_ALLOWLIST` is about *installed* modules; a bundle's modules need no allowlist, but the
entry point must then be the bundle's: its module a file of the folder (checked by the Client
at submit, which has the folder, and by the job process against the unpacked bundle), never a
module installed on the node (`os:system` from a bundle job is refused, as without one).
"""

from __future__ import annotations

import sys
from collections.abc import Container
from pathlib import Path

from fleet.entrypoints import functions_defined, split_entrypoint
from fleet.errors import SpecError


def module_file(module: str, root: Path) -> str | None:
    """The '/'-separated path of `module`'s source inside `root`, or None when it has none."""
    stem = "/".join(module.split("."))
    for name in (f"{stem}.py", f"{stem}/__init__.py"):
        if (Path(root) / name).is_file():
            return name
    return None


def check_folder_entrypoint(entrypoint: str, folder: Path,
                            packed: Container[str] | None = None) -> tuple[str, str]:
    """At submit: the entry point's module is a file of `folder` (and of its bundle's members,
    `packed`, when given: `.fleetignore` may have left it out) defining `function`."""
    try:
        module, function = split_entrypoint(entrypoint)
    except ValueError as exc:
        raise SpecError("entrypoint", str(exc)) from None
    found = module_file(module, folder)
    if found is None or (packed is not None and found not in packed):
        where = "is left out by .fleetignore" if found else "is not in the code folder"
        raise SpecError("entrypoint", f"module {module!r} {where} {folder} (expected "
                                      f"{'/'.join(module.split('.'))}.py there)")
    if function not in functions_defined(Path(folder) / found):
        raise SpecError("entrypoint", f"{module} defines no function {function!r} (classes, "
                                      "modules and imported names are not job functions)")
    return module, function


def check_bundle_module(entrypoint: str, code_root: Path) -> tuple[str, str]:
    """In the job process, before importing: the module will be imported from `code_root`
    (first on sys.path): its file is there, and its top-level name is neither imported already
    nor built in, either of which would win over the bundle's file."""
    try:
        module, function = split_entrypoint(entrypoint)
    except ValueError as exc:
        raise SpecError("entrypoint", str(exc)) from None
    top = module.split(".")[0]
    if module_file(module, code_root) is None:
        raise SpecError("entrypoint", f"module {module!r} is not in the job's code bundle")
    if top in sys.modules or top in sys.builtin_module_names:
        raise SpecError("entrypoint", f"module {module!r} of the bundle shadows {top!r}, which "
                                      "the node has already: rename the bundle's package")
    return module, function


def imported_from(module: object, code_root: Path) -> bool:
    """Whether an imported module's file lies in `code_root`."""
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return Path(path).resolve().is_relative_to(Path(code_root).resolve())
