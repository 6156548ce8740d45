"""Settings come from FLEET_* variables; a bad one is one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.errors import SpecError
from fleet.settings import BadSetting, Settings


@pytest.mark.parametrize("value, expected", [
    ("workers.jobs,mytrain", ["workers.jobs", "mytrain"]),
    (" workers.jobs , mytrain ", ["workers.jobs", "mytrain"]),
    ('["workers.jobs", "mytrain"]', ["workers.jobs", "mytrain"]),
    ("workers.jobs", ["workers.jobs"]),
])
def test_allowlist_takes_the_comma_form_and_the_json_form(
        monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("FLEET_ALLOWLIST", value)
    assert Settings().allowlist == expected


@pytest.mark.parametrize("name, value, says", [
    ("FLEET_ALLOWLIST", "workers.jobs,my-train", "not a module name"),
    ("FLEET_ALLOWLIST", "[not json", "JSON list"),
    ("FLEET_REDIS_URL", "notaurl", "redis://"),
    ("FLEET_REDIS_URL", "http://:secret@host:1/0", "redis://"),
    ("FLEET_HEARTBEAT_TTL", "soon", "number"),
    ("FLEET_HEARTBEAT_TTL", "-1", "greater than 0"),
])
def test_a_bad_variable_is_one_line_naming_it(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(BadSetting) as info:
        Settings()
    message = str(info.value)
    assert message.startswith(f"{name}: ") and says in message and "\n" not in message
    assert "secret" not in message  # a URL's password is never echoed
    assert isinstance(info.value, SpecError) and info.value.exit_code == 2


@pytest.mark.parametrize("value, says", [
    ('["workers.jobs", 3]', "JSON list of module names (strings)"),
    ('{"workers.jobs": 1}', "is not a module name"),
    ("workers.jobs mytrain", "'workers.jobs mytrain' is not a module name"),
    ("workers.jobs;mytrain", "is not a module name"),
])
def test_an_allowlist_in_neither_form_is_one_line(
        monkeypatch: pytest.MonkeyPatch, value: str, says: str) -> None:
    monkeypatch.setenv("FLEET_ALLOWLIST", value)
    with pytest.raises(BadSetting) as info:
        Settings()
    assert str(info.value).startswith("FLEET_ALLOWLIST: ") and says in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_parts_of_the_comma_form_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ALLOWLIST", "workers.jobs,,mytrain,")
    assert Settings().allowlist == ["workers.jobs", "mytrain"]


@pytest.mark.parametrize("name, value", [
    ("FLEET_BUNDLE_CAP", "100MiB"), ("FLEET_CODE_BUNDLES", "maybe"),
    ("FLEET_MAX_JOB_TIMEOUT", "0"), ("FLEET_BUNDLE_RETENTION", "-1"),
])
def test_every_bad_fleet_wide_variable_is_one_line_naming_it(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(BadSetting) as info:
        Settings()
    assert str(info.value).startswith(f"{name}: ") and "\n" not in str(info.value)


def test_a_node_started_with_a_bad_variable_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "FLEET_HOME": str(tmp_path), "FLEET_ALLOWLIST": "workers.jobs,my-train"}
    out = subprocess.run([sys.executable, "-m", "workers.main", "--node-id", "n1"], env=env,
                         capture_output=True, text=True, timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "FLEET_ALLOWLIST: 'my-train' is not a module name" in lines[0]
