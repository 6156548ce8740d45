"""A small chaos run in CI: the same script users run, with every kind of fault."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.support import REPO

pytestmark = pytest.mark.integration


def test_small_chaos_run_loses_and_doubles_nothing() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chaos.py"), "--jobs", "20", "--worker-kills", "3",
         "--redis-restarts", "1", "--master-kills", "1", "--seed", "3", "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.stdout.strip(), out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)
    assert result["lost"] == 0 and result["doubled"] == 0
    assert result["two_nodes_at_once"] == 0 and result["leaked_reservations"] == 0
    assert len(result["faults"]) >= 5
    if result["interrupted"]:
        assert result["resumed_from_checkpoint"] / result["interrupted"] >= 0.9
    assert out.returncode == 0
