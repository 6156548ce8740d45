"""The storage URL, the credentials file, storage keys, settings and the manifest check: pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.settings import BadSetting, Settings
from fleet.storage import BadKey, FileStorage, ObjectInfo, open_storage
from fleet.storage.base import check_key
from fleet.storage.manifest import check_set, manifest_bytes
from fleet.storage.url import (
    S3URL,
    BadStorageURL,
    FileURL,
    S3Credentials,
    credentials_text,
    parse_credentials,
    parse_storage_url,
)


def test_default_is_the_artifact_directory(tmp_path: Path) -> None:
    assert parse_storage_url(None, tmp_path) == FileURL(tmp_path.resolve())
    assert parse_storage_url("", tmp_path) == FileURL(tmp_path.resolve())


@pytest.mark.parametrize("text, expected", [
    ("file:///srv/fleet", FileURL(Path("/srv/fleet"))),
    ("file://localhost/srv/a%20b", FileURL(Path("/srv/a b"))),
    ("s3://fleet", S3URL("fleet", "")),
    ("s3://fleet/", S3URL("fleet", "")),
    ("s3://my-bucket/runs/prod/", S3URL("my-bucket", "runs/prod/")),
    (" s3://abc/x ", S3URL("abc", "x/")),
])
def test_good_urls(text: str, expected: object) -> None:
    assert parse_storage_url(text, Path("/unused")) == expected


@pytest.mark.parametrize("text, reason", [
    ("http://x/y", "scheme 'http'"),
    ("/srv/fleet", "scheme 'none'"),
    ("file://host/srv", "with a host"),
    ("file:relative", "absolute"),
    ("file:///srv/../etc", "'..'"),
    ("s3://Bad_Bucket/x", "bucket 'Bad_Bucket'"),
    ("s3://ab/x", "bucket 'ab'"),
    ("s3://key:secret@bucket/x", "credentials in the URL"),
    ("s3://bucket/a//b", "empty, '.' or '..'"),
    ("s3://bucket/a/../b", "empty, '.' or '..'"),
    ("s3://bucket/x?endpoint=y", "no ?query"),
])
def test_bad_urls_are_one_line_naming_the_field(text: str, reason: str) -> None:
    with pytest.raises(BadStorageURL) as err:
        parse_storage_url(text, Path("/unused"))
    message = str(err.value)
    assert message.startswith("FLEET_STORAGE: ") and reason in message and "\n" not in message


def test_url_round_trips_through_str() -> None:
    for text in ("s3://fleet/runs/", "file:///srv/fleet"):
        assert str(parse_storage_url(text, Path("/"))) == text


def test_credentials_file() -> None:
    creds = S3Credentials("AK", "SECRET")
    assert parse_credentials(credentials_text(creds), "f") == creds
    assert "SECRET" not in repr(creds)
    with pytest.raises(BadStorageURL, match=r"^f: \[default\] has no aws_secret_access_key$"):
        parse_credentials("[default]\naws_access_key_id = x\n", "f")
    with pytest.raises(BadStorageURL, match=r"^f: no \[default\] section$"):
        parse_credentials("[other]\n", "f")
    with pytest.raises(BadStorageURL, match="^f: not an INI credentials file"):
        parse_credentials("garbage", "f")


@pytest.mark.parametrize("key", ["a", "a/b.c", "jobs/1/attempt-2/output.log", "x/.hidden"])
def test_good_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/./b", "../x", "a/..", "a\\b", "a/",
                                 "x/.fleet-tmp-1", "k" * 1025])
def test_bad_keys(key: str) -> None:
    with pytest.raises(BadKey):
        check_key(key)


def test_prefixes_may_be_empty_or_end_with_a_slash() -> None:
    assert check_key("", prefix=True) == "" and check_key("a/", prefix=True) == "a/"
    with pytest.raises(BadKey):
        check_key("../", prefix=True)


def test_settings_check_the_url_and_endpoint(tmp_path: Path) -> None:
    with pytest.raises(BadSetting, match=r"^FLEET_STORAGE: scheme 'ftp'"):
        Settings(storage="ftp://x")
    with pytest.raises(BadSetting, match="^FLEET_S3_ENDPOINT: expected http"):
        Settings(s3_endpoint="localhost:8333")
    store = open_storage(Settings(home=tmp_path))
    assert isinstance(store, FileStorage) and store.root == (tmp_path / "artifacts").resolve()


def test_open_storage_s3_reads_the_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text(credentials_text(S3Credentials("AK", "SK")))
    store = open_storage(Settings(home=tmp_path, storage="s3://fleet/p",
                                  s3_endpoint="http://127.0.0.1:1", s3_credentials_file=creds))
    assert store.url == "s3://fleet/p/ at http://127.0.0.1:1"
    with pytest.raises(BadStorageURL, match="^FLEET_S3_CREDENTIALS_FILE: .*missing"):
        open_storage(Settings(home=tmp_path, storage="s3://fleet",
                              s3_credentials_file=tmp_path / "missing"))


def test_manifest_check() -> None:
    manifest = manifest_bytes({"b": 2, "a": 1}, {"token": 3})
    listing = [ObjectInfo("p/a", 1), ObjectInfo("p/b", 2), ObjectInfo("p/MANIFEST.json", 9)]
    assert check_set(manifest, listing, "p/")["meta"] == {"token": 3}
    with pytest.raises(ValueError, match="^p/b: missing, manifest says 2 bytes$"):
        check_set(manifest, listing[:1], "p/")
    with pytest.raises(ValueError, match="^p/b: 3 bytes, manifest says 2 bytes$"):
        check_set(manifest, [ObjectInfo("p/a", 1), ObjectInfo("p/b", 3)], "p/")
    with pytest.raises(ValueError, match="not a version-1 manifest"):
        check_set(b"{}", listing, "p/")
