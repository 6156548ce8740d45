"""The embedded S3 server's pieces that need no running server: which binary, the identities
file, and a command line that carries no secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.drivers.s3_server import (
    LISTENERS,
    S3Server,
    find_weed,
    identities,
    last_fatal,
    new_credentials,
)
from fleet.errors import FleetError


def test_a_bad_explicit_binary_is_one_line_naming_the_setting() -> None:
    with pytest.raises(FleetError, match=r"^FLEET_S3_SERVER: /bin/false does not run as "):
        find_weed("/bin/false")


def test_the_wheels_weed_is_found() -> None:
    assert Path(find_weed()).name == "weed"


def test_identities_hold_the_generated_keys() -> None:
    creds = new_credentials()
    assert creds.access_key.startswith("FLEET") and len(creds.secret_key) >= 40
    assert creds != new_credentials()
    [identity] = json.loads(identities(creds))["identities"]
    assert identity["credentials"] == [{"accessKey": creds.access_key,
                                        "secretKey": creds.secret_key}]
    assert "Admin" in identity["actions"]


def test_the_command_line_names_files_not_secrets(tmp_path: Path) -> None:
    server = S3Server(tmp_path, ports={name: 10000 + i for i, name in enumerate(LISTENERS)})
    command = server.command("weed")
    assert f"-s3.config={tmp_path / 's3.json'}" in command
    assert "-ip.bind=127.0.0.1" in command and "-master.telemetry=false" in command
    assert not any("secret" in arg.lower() or "key" in arg.lower() for arg in command)


def test_why_weed_exited_is_its_last_fatal_line(tmp_path: Path) -> None:
    log = tmp_path / "weed.log"
    log.write_text("I1129 22:37:57.1 master.go:1 fine\n"
                   "E1129 22:37:57.2 s3.go:9 an error\n"
                   "F1129 22:37:57.3 s3.go:212 listen tcp 127.0.0.1:9: bind: address already in use\n"
                   "goroutine 1 [running]:\n")
    assert last_fatal(log) == "listen tcp 127.0.0.1:9: bind: address already in use"
    log.write_text("E1129 22:37:57.2 s3.go:9 an error\n")
    assert last_fatal(log) == "an error"
    assert last_fatal(tmp_path / "none") == "no log"
