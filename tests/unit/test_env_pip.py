"""The environment a node gives pip: its index, and the plain-HTTP hosts it names trusted (pip
ignores an http:// index off localhost otherwise), never their credentials."""

from __future__ import annotations

from workers.env.build import Pip, plain_http_hosts


def test_the_hosts_of_plain_http_urls_are_trusted_without_their_credentials() -> None:
    assert plain_http_hosts("http://172.22.0.1:8080/simple/", None) == ["172.22.0.1:8080"]
    assert plain_http_hosts("http://user:tok@pypi.lan/simple/") == ["pypi.lan"]
    assert plain_http_hosts(None, "http://a.lan/w/ /srv/wheels http://b.lan:81/") == [
        "a.lan", "b.lan:81"]


def test_https_indexes_and_folders_need_no_trust() -> None:
    assert plain_http_hosts("https://pypi.lan/simple/", "/srv/wheels") == []
    assert plain_http_hosts(None, None) == []
    assert "PIP_TRUSTED_HOST" not in Pip({}, "https://pypi.lan/simple/", "/srv/wheels").env()


def test_pips_environment_adds_the_trusted_hosts_to_the_nodes_own() -> None:
    env = Pip({"PIP_TRUSTED_HOST": "mirror.lan"}, "http://172.22.0.1:8080/", None).env()
    assert env["PIP_INDEX_URL"] == "http://172.22.0.1:8080/"
    assert env["PIP_TRUSTED_HOST"] == "mirror.lan 172.22.0.1:8080"
