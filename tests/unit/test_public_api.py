"""`fleet`'s public names, pinned: removing or renaming one breaks users' code, so it must be
a deliberate change to this list, not a side effect of moving modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fleet
from fleet.errors import FleetError
from fleet.store.registry import NodeIdTaken

PUBLIC = ["Client", "FleetError", "SpecError", "__version__"]


def test_fleet_exports_exactly_its_public_names() -> None:
    assert sorted(fleet.__all__) == sorted(PUBLIC)


def test_every_exported_name_resolves() -> None:
    from fleet.client import Client

    assert fleet.Client is Client  # the lazy import hands out the real class
    assert fleet.FleetError is FleetError
    assert issubclass(fleet.SpecError, FleetError)
    assert isinstance(fleet.__version__, str) and fleet.__version__
    for name in fleet.__all__:
        assert getattr(fleet, name) is not None


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from fleet import *", namespace)
    assert {n for n in namespace if n != "__builtins__"} == set(PUBLIC)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        fleet.NoSuchThing  # noqa: B018


def test_importing_fleet_stays_cheap() -> None:
    """The CLI and the workers import fleet: Client (redis, pydantic models) only on first use,
    and never torch or tensorflow."""
    code = ("import sys, fleet; "
            "print(sorted(m for m in ('fleet.client', 'torch', 'tensorflow') if m in sys.modules))")
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo, env={**os.environ, "PYTHONPATH": repo})
    assert out.stdout.strip() == "[]"


def test_a_taken_node_id_is_a_fleet_error() -> None:
    """A user error (two workers started with one --node-id): the CLI prints it in one line."""
    assert issubclass(NodeIdTaken, FleetError)
    exc = NodeIdTaken("node-1", "abc123")
    assert "node-1" in str(exc) and exc.holder == "abc123"
