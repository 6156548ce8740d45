"""A stored bundle lives while an unfinished job references it, then FLEET_BUNDLE_RETENTION
past its last use, and is then deleted (fleet.master.bundles).

The store bodies run on the in-memory store and (marked integration) on a real Redis.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from fleet.client import Client
from fleet.master.bundles import BundleSweep, decide
from fleet.master.intake import Ingest, bundle_entry
from fleet.master.loop import Master
from fleet.settings import DAY, Settings
from fleet.store.protocol import Store
from tests.unit.test_store_round import node_report

SPEC = {"name": "mine", "entrypoint": "mytrain:train", "resources": {"cpus": 1, "memory": "64Mi"}}


def test_a_referenced_bundle_is_used_now_and_an_idle_one_goes_after_the_retention() -> None:
    used = {"a": 0.0, "b": 0.0, "c": 90.0, "gone": 5.0}
    verdict = decide(["a", "b", "c", "new"], referenced=["a"], used=used, now=100.0,
                     retention=50.0)
    assert verdict.touch == {"a", "new"}  # referenced; stored before use times were kept
    assert verdict.delete == {"b"}  # unreferenced, unused for 100 s > 50 s; c only 10 s
    assert verdict.forget == {"gone"}


def folder_with(tmp_path: Path, name: str, text: str) -> Path:
    code = tmp_path / name
    code.mkdir()
    (code / "mytrain.py").write_text(f"# {text}\ndef train(ctx):\n    return 1\n")
    return code


def test_a_pending_job_keeps_its_bundle_for_days_and_an_unused_one_goes(
        store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store.heartbeat(node_report("n1", "i1", cpus=0.5), ttl=600)  # too small: the job waits
    t0 = time.time()
    client = Client(settings, store=store)
    job = client.submit({**SPEC, "resources": {"cpus": 0.5, "memory": "64Mi"}},
                        code=folder_with(tmp_path, "a", "kept"))
    loose = b"a bundle no job names"
    loose_digest = "sha256:" + hashlib.sha256(loose).hexdigest()
    store.intake_append(store.intake, bundle_entry(loose_digest, loose), 100)
    Ingest(store, settings).run(t0)
    kept = store.get(job)["spec"]["bundle"]  # type: ignore[index]
    assert set(store.bundles_stored()) == {kept, loose_digest}

    sweep = BundleSweep(store, retention=3 * DAY)
    assert not sweep.run(t0 + 1 * DAY).delete  # both within the retention
    assert sweep.run(t0 + 4 * DAY).delete == {loose_digest}
    assert store.bundles_stored() == [kept]  # its job still waits, four days on
    assert store.bundle_get(loose_digest) is None

    store.cancel(job)  # finished: its bundle's retention runs from the last sweep that saw it
    assert not sweep.run(t0 + 6 * DAY).delete
    assert sweep.run(t0 + 7.5 * DAY).delete == {kept}
    assert store.bundles_stored() == [] and store.bundles_used() == {}


def test_a_submit_that_names_a_stored_bundle_renews_it(store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store.heartbeat(node_report("n1", "i1"), ttl=600)
    folder = folder_with(tmp_path, "b", "again")
    t0 = time.time()
    client = Client(settings, store=store)
    first = client.submit(SPEC, code=folder)
    ingest = Ingest(store, settings)
    ingest.run(t0)
    store.cancel(first)
    digest = store.get(first)["spec"]["bundle"]  # type: ignore[index]
    assert store.bundles_used()[digest] <= t0 + 1
    later = t0 + 2 * DAY
    again = client.submit(SPEC, code=folder)  # stored already: not sent, but a use
    Ingest(store, settings).apply(store.intake, {"op": "submit", "job_id": again,
                                                 "spec": store.intake_newest(
                                                     store.intake, 1)[0][1]["spec"]}, later)
    store.cancel(again)
    assert store.bundles_used()[digest] == later
    assert not BundleSweep(store, retention=3 * DAY).run(t0 + 4 * DAY).delete


def test_the_leading_master_sweeps_bundles(store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", bundle_retention=60)
    data = b"nobody's"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.intake_append(store.intake, bundle_entry(digest, data), 100)
    master = Master(settings, store)
    now = time.time()
    master.step(now)
    assert store.bundle_exists(digest)
    master.bundles.every = 1.0
    master.step(now + 120)
    assert not store.bundle_exists(digest)
