"""Serving other machines (fleet.listen, fleet.drivers.join): the addresses --listen takes, the
join kit `fleet up --listen` writes (no secret outside a 0600 file) and what a node started with
FLEET_JOIN reads from it, wherever the kit was copied to."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from fleet import listen
from fleet.drivers import join
from fleet.drivers.redis_server import RedisServer, TlsFiles, new_server
from fleet.errors import FleetError, SpecError
from fleet.settings import Settings

NOT_HERE = "203.0.113.7"  # TEST-NET-3: never an address of this machine


@pytest.mark.parametrize(("given", "checked"), [
    ("10.251.0.1", ["10.251.0.1"]),
    ("10.0.0.1, host1.example,10.0.0.1", ["10.0.0.1", "host1.example"]),
    ("[fd00::1]", ["fd00::1"]),
    ('["10.0.0.1", "H-2.lan."]', ["10.0.0.1", "h-2.lan"]),  # as a driver passes settings on
])
def test_addresses_are_ips_or_names(given: str, checked: list[str]) -> None:
    assert listen.parse_addresses(given, "--listen") == checked
    assert Settings(listen=given).listen == checked


@pytest.mark.parametrize(("given", "why"), [
    ("0.0.0.0", "listens everywhere"),
    ("::", "listens everywhere"),
    ("127.0.0.1", "loopback"),
    ("10.0.0.1,::1", "loopback"),
    ("a b", "not an IP address or a host name"),
    ("-a.example", "not an IP address or a host name"),
    ("a..example", "not an IP address or a host name"),
    ("10.0.0.1:6379", "not an IP address or a host name"),
    (" , ", "expected ADDR"),
])
def test_a_bad_address_is_one_line_naming_listen(given: str, why: str) -> None:
    with pytest.raises(SpecError, match=why) as caught:
        listen.parse_addresses(given, "--listen")
    assert str(caught.value).startswith("--listen: ") and "\n" not in str(caught.value)


def test_a_bad_fleet_listen_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_LISTEN", "0.0.0.0")
    with pytest.raises(SpecError, match=r"^FLEET_LISTEN: 0.0.0.0 listens everywhere"):
        Settings()


def test_an_address_not_of_this_machine_is_refused_before_anything_starts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(SpecError, match=rf"^--listen: {NOT_HERE} is not an address of this"):
        listen.listening(settings, NOT_HERE, "local")
    with pytest.raises(SpecError, match="^--listen: localhost resolves to loopback only"):
        listen.listening(settings, "localhost", "local")
    with pytest.raises(SpecError, match="^--listen: the docker driver does not serve"):
        listen.listening(settings, "10.0.0.1", "docker")
    assert not (tmp_path / "home").exists()


def test_listening_takes_the_option_else_the_variable(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listen, "_check_local", lambda *_: None)  # any address is "ours"
    settings = Settings(home=tmp_path)
    assert listen.listening(settings, None, "docker") is settings  # nothing to serve
    assert listen.listening(settings, "10.0.0.1,10.0.0.2", "local").listen == ["10.0.0.1",
                                                                              "10.0.0.2"]
    from_env = Settings(home=tmp_path, listen="10.0.0.3")
    assert listen.listening(from_env, None, "local").listen == ["10.0.0.3"]
    with pytest.raises(SpecError, match="^FLEET_LISTEN: the swarm driver"):
        listen.listening(from_env, None, "swarm")


def test_a_name_is_served_on_what_it_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listen, "_check_local", lambda *_: None)
    monkeypatch.setattr(listen.socket, "getaddrinfo", lambda *_, **__: [
        (2, 1, 6, "", ("127.0.1.1", 0)), (2, 1, 6, "", ("10.0.0.7", 0))])
    where = listen.resolve(["host1.example", "10.0.0.8"], "--listen")
    assert where == listen.Listen(("10.0.0.7", "10.0.0.8"), ("host1.example",), "host1.example")


def test_the_hint_names_the_kit_and_the_command(tmp_path: Path) -> None:
    assert listen.hint(Settings(home=tmp_path)) is None
    line = listen.hint(Settings(home=tmp_path, listen="10.0.0.1"))
    assert line is not None and "\n" not in line
    assert str(tmp_path / "join") in line and "FLEET_JOIN=" in line and "fleet worker" in line


def _server(tmp_path: Path) -> RedisServer:
    ca = tmp_path / "tls" / "ca.pem"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n")
    return new_server(tmp_path / "redis", port=6390, bind=("10.0.0.1",),
                      tls=TlsFiles(ca.parent / "s.pem", ca.parent / "s.key", ca))


def _kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: Path | None = None
         ) -> tuple[Settings, RedisServer, Path]:
    monkeypatch.setattr(listen, "_check_local", lambda *_: None)
    settings = Settings(home=tmp_path / "home", listen="10.0.0.1")
    server = _server(tmp_path)
    kit = join.write_kit(settings, server, s3_credentials=s3)
    assert kit == tmp_path / "home" / "join"
    return settings, server, kit


def test_the_kit_holds_its_secrets_in_0600_files_only(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "s3.credentials"
    creds.write_text("[default]\naws_access_key_id = AK\naws_secret_access_key = SECRETKEY\n")
    _, server, kit = _kit(tmp_path, monkeypatch, s3=creds)
    assert stat.S_IMODE(kit.stat().st_mode) == 0o700
    assert sorted(p.name for p in kit.iterdir()) == ["ca.pem", "redis.url", "s3.credentials"]
    for path in kit.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert server.password not in "".join(p.read_text() for p in kit.iterdir()
                                          if p.name != "redis.url")
    assert (kit / "s3.credentials").read_text() == creds.read_text()
    assert (kit / "ca.pem").read_text() == server.tls.ca.read_text()  # type: ignore[union-attr]
    url = (kit / "redis.url").read_text().strip()
    assert url == (f"rediss://:{server.password}@10.0.0.1:6390/0"
                   "?ssl_cert_reqs=required&ssl_ca_certs=ca.pem")


def test_a_fleet_that_does_not_listen_leaves_no_kit(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "s3.credentials"
    creds.write_text("[default]\n")
    settings, server, kit = _kit(tmp_path, monkeypatch, s3=creds)
    join.write_kit(settings, server)  # the next `fleet up` runs no S3: its copy goes
    assert not (kit / "s3.credentials").exists()
    assert join.write_kit(Settings(home=settings.home), server) is None
    assert not kit.exists()


def test_a_node_reads_the_kit_wherever_it_was_copied(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "s3.credentials"
    creds.write_text("[default]\n")
    _, server, kit = _kit(tmp_path, monkeypatch, s3=creds)
    copied = tmp_path / "elsewhere" / "fleet join"  # a space: the CA path is quoted in the URL
    shutil.copytree(kit, copied)
    monkeypatch.chdir(tmp_path / "elsewhere")
    node = listen.joined(Settings(home=tmp_path / "h2", join=Path("fleet join")))
    assert node.redis_url == (f"rediss://:{server.password}@10.0.0.1:6390/0?ssl_cert_reqs="
                              f"required&ssl_ca_certs={str(copied).replace(' ', '%20')}/ca.pem")
    assert node.s3_credentials_file == copied / "s3.credentials"
    import redis

    kwargs = redis.ConnectionPool.from_url(node.redis_url).connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(copied / "ca.pem") and kwargs["host"] == "10.0.0.1"
    assert kwargs["password"] == server.password


def test_a_node_without_fleet_join_is_as_before_and_a_bad_kit_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Settings(home=tmp_path)
    assert listen.joined(plain) is plain
    with pytest.raises(FleetError, match=r"^FLEET_JOIN: .*missing is not a join kit"):
        listen.joined(Settings(home=tmp_path, join=tmp_path / "missing"))
    with pytest.raises(FleetError, match="^FLEET_JOIN: FLEET_REDIS_URL or"):
        listen.joined(Settings(home=tmp_path, join=tmp_path,
                               redis_url="redis://:pw@127.0.0.1:1/0"))


def test_url_with_ca_keeps_an_absolute_ca_and_every_other_part() -> None:
    url = "rediss://:p%40ss@h:1/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    assert listen.url_with_ca(url, Path("/kit/ca.pem")) == url
    assert listen.url_with_ca(url.replace("/etc/ca.pem", "ca.pem"), Path("/kit/ca.pem")) == (
        url.replace("/etc/ca.pem", "/kit/ca.pem"))


def test_a_server_other_machines_reach_is_tls_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS only"):
        new_server(tmp_path, bind=("10.0.0.1",))
    server = _server(tmp_path)
    assert server.url_at("fd00::1", "ca.pem").startswith(f"rediss://:{server.password}@[fd00::1]:")
    assert os.fspath(server.tls.ca) in server.url  # type: ignore[union-attr]


def test_listening_without_cryptography_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listen.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match=r"^--listen: .*pip install 'fleet\[listen\]'"):
        listen.listening(Settings(home=tmp_path), "10.0.0.1", "local")


def test_fleet_up_with_an_address_not_of_this_machine_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from fleet.cli import context
    from fleet.cli.main import app

    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    context.settings.cache_clear()
    try:
        done = CliRunner().invoke(app, ["up", "--listen", NOT_HERE, "--workers", "0", "-d"])
    finally:
        context.settings.cache_clear()
    assert isinstance(done.exception, SpecError), done.output
    assert str(done.exception).startswith(f"--listen: {NOT_HERE} is not an address of this")
    assert not (tmp_path / "home").exists()  # no keeper, no Redis, not even FLEET_HOME
