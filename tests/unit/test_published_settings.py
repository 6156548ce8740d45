"""The fleet-wide settings: published by the operator (the leading master), read by every node
and Client, so that a producer needs no FLEET_ALLOWLIST and a submit is checked against what
the nodes will check.

The store bodies run on the in-memory store and (marked integration) on a real Redis.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.client import Client
from fleet.errors import SpecError
from fleet.master.loop import Master
from fleet.settings import PUBLISHED, BadSetting, Settings
from fleet.store import published
from fleet.store.protocol import Store
from tests.unit.test_store_round import node_report

JOB = {"name": "mine", "entrypoint": "mytrain.models:train", "resources": {"cpus": 1}}


def test_published_values_override_a_nodes_own_and_nothing_else() -> None:
    own = Settings(policy="pack", allowlist=["workers.jobs"], bundle_cap=8192)
    fleet = own.with_published({"allowlist": "workers.jobs,mytrain", "bundle_cap": 2**20,
                                "code_bundles": False, "from_a_newer_fleet": 1})
    assert fleet.allowlist == ["workers.jobs", "mytrain"]
    assert (fleet.bundle_cap, fleet.code_bundles, fleet.policy) == (2**20, False, "pack")
    assert own.allowlist == ["workers.jobs"] and own.with_published(None) is own


def test_a_hosts_own_s3_endpoint_wins_over_the_published_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published_values = {"storage": "s3://fleet/", "s3_endpoint": "http://127.0.0.1:8333"}
    assert Settings().with_published(published_values).s3_endpoint == "http://127.0.0.1:8333"
    monkeypatch.setenv("FLEET_S3_ENDPOINT", "http://10.1.2.3:18333")
    mine = Settings().with_published(published_values)
    assert (mine.s3_endpoint, mine.storage) == ("http://10.1.2.3:18333", "s3://fleet/")


def test_what_is_published_reads_back_as_it_was() -> None:
    operator = Settings(allowlist=["workers.jobs", "mytrain"], max_job_timeout=60)
    values = published.decode(published.encode(operator))
    assert values is not None and set(values) == set(PUBLISHED)
    fleet = Settings().with_published(values)
    assert fleet.published() == operator.published()


@pytest.mark.parametrize("values, says", [
    ({"allowlist": ["workers.jobs", "my-train"]}, "published FLEET_ALLOWLIST: 'my-train' is not"),
    ({"bundle_cap": 10}, "published FLEET_BUNDLE_CAP: "),
    ({"max_job_timeout": "soon"}, "published FLEET_MAX_JOB_TIMEOUT: "),
])
def test_a_bad_published_value_is_one_line_naming_it(values: dict[str, object], says: str) -> None:
    with pytest.raises(BadSetting) as info:
        Settings().with_published(values)
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]", b"\xff"])
def test_unreadable_published_settings_are_one_line(raw: bytes) -> None:
    with pytest.raises(BadSetting, match="^published settings: "):
        published.decode(raw)


def test_a_producer_without_the_variable_submits_what_the_fleet_allows(
        store: Store, tmp_path: Path) -> None:
    operator = Settings(home=tmp_path / "op", allowlist=["workers.jobs", "mytrain"])
    Master(operator, store).step(time.time())  # the leading master publishes its settings
    assert store.published_settings() == operator.published()
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    producer = Client(Settings(home=tmp_path / "producer"), store=store)
    assert producer.settings.allowlist == ["workers.jobs"]  # its own: never set
    assert producer.submit(JOB)
    with pytest.raises(SpecError) as info:
        producer.submit({**JOB, "entrypoint": "yourtrain:train"})
    assert "'yourtrain' is not on the allowlist (workers.jobs, mytrain)" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_fleet_that_published_nothing_checks_a_submit_with_the_clients_own(
        store: Store, tmp_path: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    assert store.published_settings() is None
    with pytest.raises(SpecError, match="not on the allowlist"):
        Client(Settings(home=tmp_path), store=store).submit(JOB)
    mine = Settings(home=tmp_path, allowlist=["mytrain"])
    assert Client(mine, store=store).submit(JOB)


def test_the_leading_master_publishes_again_what_was_deleted_or_written_over(
        store: Store, tmp_path: Path) -> None:
    operator = Settings(home=tmp_path, allowlist=["workers.jobs", "mytrain"])
    master = Master(operator, store)
    now = time.time()
    master.step(now)
    store.publish_settings(Settings(home=tmp_path))  # another writer's defaults
    master.step(now + 0.1)  # within the second: left as is
    assert store.published_settings() == Settings().published()
    master.step(now + 1.5)
    assert store.published_settings() == operator.published()
