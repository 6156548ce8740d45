"""Settings come from FLEET_* variables; a bad one is one line naming the variable."""

from __future__ import annotations

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
