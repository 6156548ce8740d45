"""Entry points and names: the checks a job process and a worker make before running anything.

Kept free of pydantic and YAML so the job process, which runs them once more before importing
job code, starts fast; `fleet.spec` uses the same functions at submit.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import keyword
import re
from collections.abc import Sequence
from pathlib import Path

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
    if function.startswith("_"):
        raise ValueError(f"function {function!r} is private: a job is a public function")
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


MAX_SOURCE_BYTES = 4 * 1024 * 1024  # a job module's source, read to find its functions


def check_job_function(module: str, function: str) -> tuple[str, str]:
    """The entry point must name a function defined in its module: not a class, not a module,
    not a name the module imported (`synthetic:Path`, `synthetic:os`), which would otherwise
    pass submit and fail on the node. Read from the module's source, never by importing it
    (submit runs no job code). Where this machine does not have the allowlisted package at
    all (a producer without the job code), the node checks it instead; where it has the
    package but not the module, the module does not exist."""
    found = _module_source(module)
    if found is None:
        return module, function
    if not isinstance(found, Path):
        raise SpecError("entrypoint", f"module {module!r} not found")
    if function not in functions_defined(found):
        raise SpecError("entrypoint", f"{module} defines no function {function!r} (classes, "
                                      "modules and imported names are not job functions)")
    return module, function


def _module_source(module: str) -> Path | str | None:
    """The module's source file; "missing" when its top package is here but the module is
    not; None when its top package is not here (or it is not Python source)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name is found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or ():
        stem = Path(base).joinpath(*rest)
        for path in (stem.with_suffix(".py"), stem / "__init__.py"):
            if path.is_file():
                return path
        if any(Path(base).joinpath(*rest[:-1]).glob(f"{rest[-1]}.*.so")):
            return None  # an extension module: nothing to read
    return "missing"


def functions_defined(path: Path) -> frozenset[str]:
    """The functions a module source file defines at its top level (read, never imported)."""
    stat = path.stat()
    return _parse_functions(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _parse_functions(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Public functions a module defines at its top level (also under `if`/`try` there)."""
    if size > MAX_SOURCE_BYTES:
        return frozenset()
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return frozenset()
    names: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.If, ast.Try)):
            todo.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            todo.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
    return frozenset(n for n in names if not n.startswith("_"))
