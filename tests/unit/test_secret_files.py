"""Secrets as files: 0600, named by FLEET_REDIS_URL_FILE, never passed on as variables."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleet.drivers.secret_files import flower_config, service_env, write_secret
from fleet.errors import FleetError
from fleet.settings import Settings
from fleet.statefile import redis_url


def test_a_secret_file_is_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "secrets" / "redis.url", "redis://:pw@127.0.0.1:1/0")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == "redis://:pw@127.0.0.1:1/0\n"
    assert [p.name for p in path.parent.iterdir()] == ["redis.url"]  # no temporary left


def test_the_url_comes_from_the_file_the_variable_names(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url_file = write_secret(tmp_path / "url", "redis://:pw@127.0.0.1:6379/0")
    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    monkeypatch.setenv("FLEET_REDIS_URL_FILE", str(url_file))
    assert redis_url(Settings(home=tmp_path)) == "redis://:pw@127.0.0.1:6379/0"
    monkeypatch.setenv("FLEET_REDIS_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(FleetError) as err:
        redis_url(Settings(home=tmp_path))
    assert str(err.value).startswith("FLEET_REDIS_URL_FILE: cannot read")
    assert "\n" not in str(err.value)


def test_a_started_process_gets_the_files_path_and_no_secret_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLEET_REDIS_URL", "CELERY_BROKER_URL", "FLOWER_BASIC_AUTH", "REDISCLI_AUTH"):
        monkeypatch.setenv(name, "redis://:leaked@x:1/0")
    env = service_env(Settings(home=tmp_path, redis_url="redis://:leaked@x:1/0"),
                      tmp_path / "url", tmp_path)
    assert "leaked" not in "".join(env.values())
    assert env["FLEET_REDIS_URL_FILE"] == str(tmp_path / "url")
    assert env["FLEET_HOME"] == str(tmp_path)


def test_flower_gets_basic_auth_from_its_config_and_never_starts_open() -> None:
    namespace: dict[str, object] = {}
    exec(flower_config("admin", "p'w"), namespace)  # what Flower's --conf does with it
    assert namespace["basic_auth"] == ["admin:p'w"]
    from fleet.observe.flower_app import main

    assert main(["--port=1"]) == 2  # no --conf: refused before anything starts


def test_a_job_gets_no_key_to_the_store() -> None:
    from workers.attempt.supervisor import SECRET_ENV as JOB_STRIPPED

    assert {"FLEET_S3_CREDENTIALS_FILE", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_SHARED_CREDENTIALS_FILE"} <= JOB_STRIPPED
