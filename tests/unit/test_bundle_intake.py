"""Code bundles through the intake: the Client packs and sends a folder once, the master checks
the bytes against the digest before it stores them, and a fleet with bundles off refuses them.

The same bodies run on the in-memory store and (marked integration) on a real Redis.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from fleet.bundles.pack import pack
from fleet.client import Client
from fleet.errors import SpecError
from fleet.master.intake import Ingest, bundle_entry
from fleet.settings import Settings
from fleet.store import keys
from fleet.store.protocol import Store
from tests.unit.test_store_round import node_report

TRAIN = "def train(ctx, steps=1):\n    return {'steps': steps}\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    code = tmp_path / "mycode"
    code.mkdir()
    (code / "mytrain.py").write_text(TRAIN)
    return code


SPEC = {"name": "mine", "entrypoint": "mytrain:train", "resources": {"cpus": 1, "memory": "64Mi"}}


def entries(store: Store, intake: str) -> list[dict[str, str]]:
    return [fields for _, fields in reversed(store.intake_newest(intake, 100))]


def test_the_master_stores_a_bundle_then_submits_the_job_that_names_it(
        store: Store, settings: Settings, folder: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    client = Client(settings, store=store)
    job = client.submit(SPEC, code=folder)
    ops = [e["op"] for e in entries(store, client.intake)]
    assert ops == ["bundle", "submit"]  # the bytes first: the master applies them in order
    assert Ingest(store, settings).run(time.time()) == 2
    spec = store.get(job)["spec"]  # type: ignore[index]
    digest = spec["bundle"]
    assert spec["code"] is None  # the producer's path is not kept
    data = store.bundle_get(digest)
    assert data is not None and f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
    assert client.status(job)["state"] == "PENDING"


def test_the_same_folder_is_sent_once(store: Store, settings: Settings, folder: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    ingest = Ingest(store, settings)
    Client(settings, store=store).submit(SPEC, code=folder)
    ingest.run(time.time())
    again = Client(settings, store=store)  # a new Client: it learns from the store
    again.submit(SPEC, code=folder)
    again.submit(SPEC, code=folder)
    assert [e["op"] for e in entries(store, again.intake)] == ["submit", "submit"]
    assert ingest.run(time.time()) == 2


def test_a_bundle_whose_bytes_do_not_match_its_digest_is_never_stored(
        store: Store, settings: Settings) -> None:
    claimed = "sha256:" + hashlib.sha256(b"what was packed").hexdigest()
    store.intake_append(store.intake, bundle_entry(claimed, b"something else"), 100)
    assert Ingest(store, settings).run(time.time()) == 1  # taken, refused, counted
    assert store.bundle_get(claimed) is None
    assert not store.bundle_exists(claimed)


def test_a_job_whose_bundle_is_not_stored_fails_with_one_line(
        store: Store, settings: Settings, folder: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    client = Client(settings, store=store)
    missing = "sha256:" + "0" * 64
    with pytest.raises(SpecError, match="not stored in this fleet"):
        client.submit({**SPEC, "bundle": missing})
    store.intake_append(store.intake, {  # a producer that bypasses the Client
        "op": "submit", "job_id": "mine-1",
        "spec": client.spec_from({**SPEC, "bundle": missing}).model_dump_json()}, 100)
    Ingest(store, settings).run(time.time())
    job = client.status("mine-1")
    assert job["state"] == "FAILED" and "is not stored" in job["error"]
    assert "\n" not in job["error"]


def test_bundles_off_are_refused_by_the_client_and_by_the_master(
        store: Store, tmp_path: Path, folder: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    off = Settings(home=tmp_path / "home", code_bundles="off")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="FLEET_CODE_BUNDLES=off"):
        Client(off, store=store).submit(SPEC, code=folder)
    on = Client(Settings(home=tmp_path / "home"), store=store)  # a producer with bundles on
    job = on.submit(SPEC, code=folder)
    Ingest(store, off).run(time.time())
    final = on.status(job)
    assert final["state"] == "FAILED" and "FLEET_CODE_BUNDLES=off" in final["error"]
    assert not store.bundle_exists(pack(folder).digest)  # refused: not stored either


def test_an_entrypoint_outside_the_folder_is_refused_at_submit(
        store: Store, settings: Settings, folder: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    client = Client(settings, store=store)
    with pytest.raises(SpecError, match="'elsewhere' is not in the code folder") as err:
        client.submit({**SPEC, "entrypoint": "elsewhere:train"}, code=folder)
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="defines no function 'nope'"):
        client.submit({**SPEC, "entrypoint": "mytrain:nope"}, code=folder)
    (folder / ".fleetignore").write_text("mytrain.py\n")
    (folder / "other.py").write_text(TRAIN)
    with pytest.raises(SpecError, match="left out by .fleetignore"):
        client.submit(SPEC, code=folder)
    assert store.intake_len(client.intake) == 0  # nothing was sent


def test_code_in_a_spec_file_is_relative_to_the_file(
        store: Store, settings: Settings, folder: Path, tmp_path: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    spec_file = folder.parent / "job.yaml"
    spec_file.write_text("name: mine\nentrypoint: mytrain:train\ncode: mycode\n"
                         "resources: {cpus: 1, memory: 64Mi}\n")
    client = Client(settings, store=store)
    assert client.spec_from(spec_file).code == str(folder)
    client.submit(spec_file)
    assert keys.bundle("ab") == "fleet:bundle:ab"
    assert [e["op"] for e in entries(store, client.intake)] == ["bundle", "submit"]


def test_a_bundle_job_runs_only_its_bundle_s_modules(folder: Path) -> None:
    from fleet.bundles.entry import check_bundle_module

    assert check_bundle_module("mytrain:train", folder) == ("mytrain", "train")
    with pytest.raises(SpecError, match="not in the job's code bundle"):
        check_bundle_module("os:system", folder)
    (folder / "json.py").write_text(TRAIN)  # would lose to the json the node imported already
    with pytest.raises(SpecError, match="shadows 'json'"):
        check_bundle_module("json:train", folder)
