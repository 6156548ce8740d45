"""The CLI reads and writes the fleet through `fleet.client.Client` only.

Every module of fleet/cli is parsed (not imported) and each import it makes, at the top or
inside a function, is checked: nothing of Redis, the store, the master or a concrete driver
(the `fleet.drivers` facade chooses one). Nor may a command reach into a Client's connection
or store (`.r`, `.store`): what it needs is a Client method, so a command runs on a Client over
the in-memory store as well as over Redis.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "fleet" / "cli"
MODULES = sorted(CLI.glob("*.py"))
FORBIDDEN = ("redis", "fleet.store", "fleet.master")
DRIVERS_ALLOWED = {"fleet.drivers", "fleet.drivers.base"}  # the facade and the shapes it takes
CLIENT_INSIDES = {"r", "store"}


def is_module(name: str) -> bool:
    """Whether `name` (dotted) is a module or package of this checkout."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in `tree`, at any depth; `from a import b` imports `a`,
    and `a.b` too where b is a module (`from fleet import store`)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if is_module(f"{base}.{alias.name}")]
    return found


def refused(module: str) -> bool:
    if module.startswith("."):  # relative: within fleet.cli, which this test checks itself
        return False
    if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
        return True
    return module.startswith("fleet.drivers.") and module not in DRIVERS_ALLOWED


def test_the_cli_has_modules_to_check() -> None:
    assert {"main.py", "context.py", "job_cmds.py", "observe_cmds.py"} <= {p.name for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_cli_module_imports_nothing_of_redis_the_store_the_master_or_a_driver(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = [f"{path.name}:{line} imports {name}" for line, name in imported(tree) if refused(name)]
    assert not bad, "the CLI goes through fleet.client.Client (and fleet.drivers): " + "; ".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_cli_module_reaches_into_no_clients_connection_or_store(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = [f"{path.name}:{node.lineno} uses .{node.attr}" for node in ast.walk(tree)
           if isinstance(node, ast.Attribute) and node.attr in CLIENT_INSIDES]
    assert not bad, "add a Client method for what a command reads: " + "; ".join(bad)


@pytest.mark.parametrize(("source", "bad"), [
    ("import redis", True),
    ("import redis.exceptions", True),
    ("def f():\n    from fleet.store import registry", True),
    ("from fleet.store.jobstore import JobStore", True),
    ("from fleet import store", True),
    ("def f():\n    from fleet.master.loop import Master", True),
    ("from fleet.drivers.local import LocalDriver", True),
    ("from fleet.drivers import local", True),
    ("from fleet.drivers import get_driver", False),
    ("from fleet.drivers.base import NodeShape", False),
    ("from fleet.client import Client", False),
    ("import redistools", False),
    ("from fleet.storefront import x", False),
])
def test_the_walk_sees_imports_at_any_depth(source: str, bad: bool) -> None:
    assert any(refused(name) for _, name in imported(ast.parse(source))) is bad
