"""`fleet up --storage`: the value checked before anything starts, the store a local command
finds afterwards. Pure: no server, no Redis (the embedded server itself is tested in
tests/integration/test_fleet_s3.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet.cli import context
from fleet.cli.main import app
from fleet.drivers.s3_server import EMBEDDED, storage_choice
from fleet.errors import FleetError
from fleet.settings import BadSetting, Settings
from fleet.statefile import with_recorded_storage
from fleet.storage.url import BadStorageURL


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("  ", None), ("s3", EMBEDDED), (" s3 ", EMBEDDED),
    ("s3://fleet/", "s3://fleet/"), ("s3://my-bucket/runs/a", "s3://my-bucket/runs/a"),
    ("file:///srv/fleet", "file:///srv/fleet"),
])
def test_storage_choice_is_none_embedded_or_the_url_as_given(value: str | None,
                                                             expected: str | None) -> None:
    assert storage_choice(value) == expected


@pytest.mark.parametrize("value, reason", [
    ("ftp://host/x", "scheme 'ftp'"),
    ("S3", "scheme 'none'"),
    ("s3://Bad_Bucket/x", "bucket 'Bad_Bucket'"),
    ("s3://key:secret@bucket/x", "credentials in the URL"),
    ("file://host/x", "file URL with a host"),
    ("file:///a/../b", "'..'"),
])
def test_a_bad_storage_value_is_one_line_naming_the_option(value: str, reason: str) -> None:
    with pytest.raises(BadStorageURL) as err:
        storage_choice(value, "--storage")
    message = str(err.value)
    assert message.startswith("--storage: ") and reason in message and "\n" not in message


def test_fleet_storage_s3_is_a_setting_a_bad_one_names_the_variable() -> None:
    assert Settings(storage="s3").storage == "s3"
    with pytest.raises(BadSetting) as err:
        Settings(storage="s4://x")
    assert str(err.value).startswith("FLEET_STORAGE: ")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    context.settings.cache_clear()
    yield tmp_path / "home"
    context.settings.cache_clear()


def up(home: Path, *args: str, **env: str) -> tuple[int, str]:
    """(the exit code `fleet` would give, the one line it would print): main() turns a
    FleetError into those; the runner hands back the exception itself."""
    result = CliRunner().invoke(app, ["up", "--detach", "--no-flower", *args],
                                env={"FLEET_HOME": str(home), **env})
    exc = result.exception
    assert isinstance(exc, FleetError), result.output
    return exc.exit_code, str(exc)


@pytest.mark.parametrize("args, env, says", [
    (["--storage", "ftp://x/y"], {}, "--storage: scheme 'ftp'"),
    (["--storage", "s3://Nope/x"], {}, "--storage: bucket 'Nope'"),
    (["--storage", "s3", "--driver", "docker"], {}, "--storage: s3 (the embedded S3 server) "
                                                    "runs with --driver local only"),
    ([], {"FLEET_STORAGE": "s3", "FLEET_S3_SERVER": "/bin/false"},
     "FLEET_STORAGE: s3: FLEET_S3_SERVER: /bin/false does not run as SeaweedFS's weed"),
    (["--storage", "s3"], {"FLEET_S3_SERVER": "/bin/false"}, "--storage: s3: FLEET_S3_SERVER"),
])
def test_fleet_up_refuses_a_bad_store_before_starting_anything(
    home: Path, args: list[str], env: dict[str, str], says: str,
) -> None:
    code, output = up(home, *args, **env)
    assert code == 2, output
    assert says in output and "\n" not in output, output
    assert not (home / "state.json").exists() and not (home / "s3").exists()


def test_a_local_command_finds_the_store_fleet_up_recorded(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert with_recorded_storage(settings) is settings  # no fleet: as it was
    creds = tmp_path / "s3" / "credentials"
    settings.state_file.write_text(json.dumps({
        "storage": "s3://fleet/", "s3_endpoint": "http://127.0.0.1:9",
        "s3_credentials_file": str(creds)}))
    found = with_recorded_storage(settings)
    assert (found.storage, found.s3_endpoint, found.s3_credentials_file) == (
        "s3://fleet/", "http://127.0.0.1:9", creds)
    assert with_recorded_storage(Settings(home=tmp_path, storage="s3")).storage == "s3://fleet/"
    # a store named here wins over the recorded one
    own = Settings(home=tmp_path, storage="file:///srv/x")
    assert with_recorded_storage(own) is own
    mine = with_recorded_storage(Settings(home=tmp_path, s3_endpoint="http://10.0.0.1:8333"))
    assert mine.s3_endpoint == "http://10.0.0.1:8333" and mine.storage == "s3://fleet/"


def test_only_the_s3_gateway_listens_beyond_loopback_when_asked(tmp_path: Path) -> None:
    from fleet.drivers.s3_server import LISTENERS, WEED_PORTS, S3Server

    assert set(WEED_PORTS) == set(LISTENERS)
    plain = S3Server(tmp_path, ports=dict(WEED_PORTS)).command("weed")
    assert not any(arg.startswith("-s3.ip.bind") for arg in plain)
    wide = S3Server(tmp_path, s3_bind="0.0.0.0", ports=dict(WEED_PORTS)).command("weed")
    assert "-s3.ip.bind=0.0.0.0" in wide and "-ip.bind=127.0.0.1" in wide


def test_the_compose_server_refuses_a_bad_keys_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet.drivers.s3_server import serve

    bad = tmp_path / "creds"
    bad.write_text("[default]\naws_access_key_id = A\n")
    assert serve([str(tmp_path / "s3"), "--credentials", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --credentials ") and "aws_secret_access_key" in err, err
    assert "\n" not in err and not (tmp_path / "s3").exists()


def test_fleet_down_sweeps_a_weed_of_this_home_only(tmp_path: Path) -> None:
    from fleet.drivers.sweep import belongs

    home = tmp_path / "home"
    weed = ["/venv/bin/weed", f"-logdir={home}/s3/logs", "server", f"-dir={home}/s3/data"]
    assert belongs(weed, {}, home, None, cwd=home / "s3")
    other = ["/venv/bin/weed", "-logdir=/srv/s3/logs", "server", "-dir=/srv/s3/data"]
    assert not belongs(other, {}, home, None, cwd=Path("/srv/s3"))
