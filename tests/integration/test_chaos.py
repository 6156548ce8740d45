"""Small chaos runs in CI: the same script users run, with every kind of fault; the second
with the embedded S3 as the store and half the nodes on a second host (a network namespace,
root only, like test_two_hosts.py), cut off for 10 s."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.support import REPO

pytestmark = pytest.mark.integration


def chaos(*args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "chaos.py"), *args, "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.stdout.strip(), out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def test_small_chaos_run_loses_and_doubles_nothing() -> None:
    result, out = chaos("--jobs", "20", "--worker-kills", "3", "--redis-restarts", "1",
                        "--master-kills", "1", "--seed", "3")
    print(result)
    assert result["lost"] == 0 and result["doubled"] == 0
    assert result["two_nodes_at_once"] == 0 and result["leaked_reservations"] == 0
    assert len(result["faults"]) >= 5
    if result["interrupted"]:
        assert result["resumed_from_checkpoint"] / result["interrupted"] >= 0.9
    assert out.returncode == 0


def test_small_chaos_run_with_s3_and_a_partitioned_second_host() -> None:
    result, out = chaos("--jobs", "16", "--worker-kills", "3", "--partitions", "1",
                        "--partition-seconds", "10", "--s3-restarts", "1", "--storage", "s3",
                        "--hosts", "2", "--seed", "5")
    print({k: v for k, v in result.items() if k not in ("not_resumed", "doubled_details")})
    assert result["lost"] == 0 and result["doubled"] == 0
    assert result["two_nodes_at_once"] == 0 and result["leaked_reservations"] == 0
    assert result["nodes_missing_at_end"] == []
    assert any("cut" in f for f in result["faults"]) and any("s3" in f for f in result["faults"])
    if result["interrupted"]:
        assert result["resumed_from_checkpoint"] / result["interrupted"] >= 0.9, result
    assert out.returncode == 0
