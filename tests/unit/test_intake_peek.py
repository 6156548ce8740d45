"""Intake entries are read within caps: a value past its cap stays in Redis, measured, and is
refused by its length alone; `status` of a job not yet accepted never reads a bundle's bytes.

The store bodies run on the in-memory store and (marked integration) on a real Redis, whose
reads go through fleet.store.peek's Redis function: the same answers prove the two alike.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from fleet.client import NOT_ACCEPTED, Client
from fleet.master.intake import BUNDLE_HEADROOM, Ingest, bundle_entry, entry
from fleet.settings import Settings
from fleet.store.peek import Caps, Oversize, bound
from fleet.store.protocol import Store
from tests.unit.test_store_round import node_report

CAPS = Caps(data=100, other=20, budget=250, max_fields=3, max_name=5)
SPEC = {"name": "mine", "entrypoint": "mytrain:train", "resources": {"cpus": 1, "memory": "64Mi"}}


def test_a_value_over_its_cap_is_its_length_and_the_budget_ends_the_read() -> None:
    stream = [("1-0", {"op": "bundle", "data": b"x" * 101}),
              ("2-0", {"op": "bundle", "data": b"y" * 100}),
              ("3-0", {"spec": "z" * 21, "a_long_name": "v", "b": "1", "c": "2", "d": "3"}),
              ("4-0", {"op": "submit"})]
    (found,) = bound([stream], 10, CAPS)
    assert found[0] == ("1-0", {"op": "bundle", "data": Oversize(101)})
    assert found[1] == ("2-0", {"op": "bundle", "data": b"y" * 100})
    assert found[2] == ("3-0", {"spec": Oversize(21), "a_long": "v", "b": "1", "c": "2"})
    assert [i for i, _ in found] == ["1-0", "2-0", "3-0", "4-0"]
    (few,) = bound([stream], 2, CAPS)
    assert len(few) == 2
    big = [(f"{i}-0", {"data": b"x" * 100}) for i in range(1, 6)]
    first, second = bound([big, big], 10, Caps(data=100, other=20, budget=250))
    assert len(first) == 2 and second == []  # 2 x 104 bytes fit 250; a third would not
    (alone,) = bound([big], 10, Caps(data=100, other=20, budget=10))
    assert len(alone) == 1  # the first entry always: a reader makes progress


def test_both_stores_read_an_intake_within_the_caps(store: Store) -> None:
    name = store.intake
    store.intake_append(name, {"op": "bundle", "digest": "d", "data": b"x" * 5000}, 100)
    store.intake_append(name, {"op": "submit", "job_id": "j-1", "spec": "s" * 30}, 100)
    store.intake_append(name, {"f1": "1", "f2": "2", "f3": "3", "f4": "4", "f5": "5"}, 100)
    store.intake_append(name, {"op": "cancel", "job_id": "j-1"}, 100)
    (found,) = store.intake_read([name], 10, CAPS)
    fields = [{k: v.decode() if isinstance(v, bytes) else v for k, v in f.items()}
              for _, f in found]
    assert fields == [{"op": "bundle", "digest": "d", "data": Oversize(5000)},
                      {"op": "submit", "job_id": "j-1", "spec": Oversize(30)},
                      {"f1": "1", "f2": "2", "f3": "3", "f4": "4"},
                      {"op": "cancel", "job_id": "j-1"}]
    assert isinstance(fields[0]["data"], Oversize)
    (two,) = store.intake_read([name], 10, Caps(data=100, other=20, budget=45))
    assert len(two) == 2  # 19 + 21 bytes of names and values; the third would pass 45
    newest = store.intake_newest(name, 10)
    assert [f.get("op") for _, f in newest] == ["cancel", None, "submit", "bundle"]
    assert newest[-1][1]["data"] == ""  # never a bundle's bytes


def test_a_bundle_over_the_cap_is_refused_unread_and_its_job_says_why(
        store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, bundle_cap=4096)
    data = b"\0" * (4096 + BUNDLE_HEADROOM + 1)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.intake_append(store.intake, bundle_entry(digest, data), 100)
    spec = Client(settings, store=store).spec_from({**SPEC, "bundle": digest})
    store.intake_append(store.intake, entry("submit", "mine-1", spec), 100)
    assert Ingest(store, settings).run(time.time()) == 2
    assert not store.bundle_exists(digest)
    job = store.get("mine-1")
    assert job is not None and job["state"] == "FAILED"
    assert job["error"] == (f"bundle {digest}: {len(data)} bytes, over the cap (4096 bytes "
                            "of files; FLEET_BUNDLE_CAP)")


def test_a_spec_over_its_cap_fails_its_job_with_one_line(store: Store, tmp_path: Path) -> None:
    store.intake_append(store.intake, {"op": "submit", "job_id": "big-00000001",
                                       "spec": "x" * (300 * 1024)}, 100)
    Ingest(store, Settings(home=tmp_path)).run(time.time())
    job = store.get("big-00000001")
    assert job is not None and job["error"] == "spec: 307200 bytes; at most 262144 are allowed"


def test_a_round_holds_about_one_bundle_and_takes_the_rest_next(
        store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, bundle_cap=4096)
    ingest = Ingest(store, settings)
    ingest.caps = Caps(data=ingest.caps.data, other=ingest.caps.other, budget=6000)
    for i in range(3):
        data = bytes([i]) * 4000
        store.intake_append(store.intake, bundle_entry(
            "sha256:" + hashlib.sha256(data).hexdigest(), data), 100)
    assert [ingest.run(time.time()) for _ in range(4)] == [1, 1, 1, 0]


def test_status_of_a_job_not_yet_accepted_shows_it_from_the_intake(
        store: Store, tmp_path: Path) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "mytrain.py").write_text("def train(ctx):\n    return 1\n")
    (folder / "weights.bin").write_bytes(b"\1" * 300_000)
    client = Client(Settings(home=tmp_path), store=store)
    job = client.submit(SPEC, code=folder)
    status = client.status(job)
    assert (status["state"], status["waiting"]) == ("PENDING", NOT_ACCEPTED)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_caps_lay_out_the_functions_arguments(order: str) -> None:
    assert CAPS.args(order, 7) == [order, 7, 250, 100, 20, 3, 5]
