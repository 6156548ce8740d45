"""`fleet up --storage s3`: the fleet starts the embedded SeaweedFS beside its Redis, publishes
its URL and endpoint, hands every process its keys as a 0600 file, restarts it when it dies,
and `fleet down` stops it. Real CLI, real weed, the torch and TF examples; FLEET_HOME in a
temporary folder. One fleet for the module (its start and the two trainings are the cost);
the tests run in file order, the last one stops it."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import Client
from fleet.settings import Settings
from fleet.statefile import read_state, with_recorded_storage
from fleet.storage import open_storage
from fleet.storage.url import parse_credentials
from fleet.store import keys
from tests.integration.procscan import read_proc
from tests.integration.support import EXAMPLES, eventually
from tests.integration.test_keeper import fleet, processes_naming

pytestmark = [pytest.mark.integration, pytest.mark.training]

def weed_pids(home: Path) -> list[str]:
    return [pid for pid, rec in read_proc().items()
            if "weed" in (rec.get("cmdline") or "").split("\n")[0]
            and str(home) in (rec.get("cmdline") or "")]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("s3fleet") / "home"
    up = fleet(home, "up", "--detach", "--workers", "2", "--cpus", "1", "--memory", "3Gi",
               "--no-flower", "--storage", "s3")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "storage: s3://fleet/ at http://127.0.0.1:" in " ".join(up.stdout.split()), up.stdout
    yield home
    fleet(home, "down", timeout=120)


@pytest.fixture(scope="module")
def state(home: Path) -> dict[str, Any]:
    found = read_state(Settings(home=home))
    assert found is not None
    return found


@pytest.fixture(scope="module")
def jobs(home: Path) -> dict[str, dict[str, Any]]:
    """The torch and TF examples, run to their end on the fleet: {job id: final status}."""
    client = Client(Settings(home=home))
    ids = [client.submit(EXAMPLES / f"digits-{kind}.yaml") for kind in ("torch", "tf")]
    return {job: client.wait(job, timeout=600) for job in ids}


def test_weed_runs_under_fleet_home_and_its_url_is_published(home: Path,
                                                             state: dict[str, Any]) -> None:
    assert state["storage"] == "s3://fleet/"
    assert state["s3_credentials_file"] == str(home / "s3" / "credentials")
    assert stat.S_IMODE(os.stat(state["s3_credentials_file"]).st_mode) == 0o600
    assert weed_pids(home) == [str(state["pids"]["s3"])]
    client = Client(Settings(home=home))
    published = json.loads(client.r.get(keys.SETTINGS))
    assert published["storage"] == "s3://fleet/"
    assert published["s3_endpoint"] == state["s3_endpoint"]
    assert "credentials" not in json.dumps(published)  # the keys' file is never published
    for node in state["pids"]["nodes"].values():
        environ = read_proc()[str(node)]["environ"] or ""
        assert f"FLEET_S3_CREDENTIALS_FILE={state['s3_credentials_file']}" in environ
        assert f"FLEET_S3_ENDPOINT={state['s3_endpoint']}" in environ


def test_a_sigkilled_weed_is_back_on_its_port_with_its_keys_and_data(
    home: Path, state: dict[str, Any],
) -> None:
    settings = Settings(home=home)
    store = open_storage(with_recorded_storage(settings))
    store.put_bytes("before-the-kill", b"kept")
    os.kill(state["pids"]["s3"], signal.SIGKILL)
    eventually(lambda: (read_state(settings) or {})["pids"]["s3"] != state["pids"]["s3"], 30,
               what="weed restarted by the keeper and recorded", interval=0.2)
    eventually(lambda: store.get_bytes("before-the-kill") == b"kept", 30,
               what="the same endpoint and keys serving the same data", interval=0.5)
    state["pids"]["s3"] = (read_state(settings) or {})["pids"]["s3"]
    keeper_log = (home / "logs" / "keeper.log").read_text()
    assert "s3 started again" in keeper_log


def test_a_node_fleet_scale_adds_gets_the_store_too(home: Path, state: dict[str, Any]) -> None:
    """`fleet scale` runs in another process than the keeper: it finds the store recorded."""
    scaled = fleet(home, "scale", "worker=3", "--wait", "60")
    assert scaled.returncode == 0, scaled.stderr
    node = (read_state(Settings(home=home)) or {})["pids"]["nodes"]["node-3"]
    environ = read_proc()[str(node)]["environ"] or ""
    assert f"FLEET_S3_CREDENTIALS_FILE={state['s3_credentials_file']}" in environ
    assert "FLEET_STORAGE=s3://fleet/" in environ


def test_torch_and_tf_examples_succeed_with_the_store_on_s3(
    jobs: dict[str, dict[str, Any]],
) -> None:
    for job, final in jobs.items():
        assert final["state"] == "SUCCEEDED", (job, final)
        assert final["result"]["accuracy"] >= 0.90, final["result"]
    assert len({final["node"] for final in jobs.values()}) == 2  # spread: not on one node


def test_the_bucket_holds_the_probe_and_no_secret_is_on_any_argv(
    home: Path, state: dict[str, Any], jobs: dict[str, dict[str, Any]],
) -> None:
    store = open_storage(with_recorded_storage(Settings(home=home)))
    assert ".fleet-ready" in {o.key for o in store.list("")}  # the bucket `up` made
    creds = parse_credentials(Path(state["s3_credentials_file"]).read_text(), "credentials")
    password = state["redis_url"].split(":")[2].split("@")[0]
    secrets = {"S3 secret key": creds.secret_key, "S3 access key": creds.access_key,
               "Redis password": password}
    ours = {pid: rec for pid, rec in read_proc().items()
            if str(home) in (rec.get("cmdline") or "") + (rec.get("environ") or "")}
    assert len(ours) >= 5, ours.keys()  # keeper, weed, Redis, master, 2 nodes
    for pid, rec in ours.items():
        for what, secret in secrets.items():
            assert secret not in (rec.get("cmdline") or ""), f"{what} on the argv of {pid}"
            assert secret not in (rec.get("environ") or ""), f"{what} in the env of {pid}"


def test_the_jobs_checkpoints_logs_and_outputs_are_in_the_bucket(
    home: Path, jobs: dict[str, dict[str, Any]], tmp_path: Path,
) -> None:
    """What each example left is in S3 (the nodes' artifact folders deleted first, so nothing
    can be read from them), and `fleet artifacts` lists and downloads its model from there."""
    import shutil

    for node_dir in (home / "artifacts" / "jobs",):
        shutil.rmtree(node_dir, ignore_errors=True)
    store = open_storage(with_recorded_storage(Settings(home=home)))
    for job, final in jobs.items():
        stored = [o.key for o in store.list(f"jobs/{job}/")]
        attempt = f"jobs/{job}/attempt-{final['attempt']}"
        assert any(k.startswith(f"jobs/{job}/checkpoints/") and k.endswith("MANIFEST.json")
                   for k in stored), stored
        assert any(k.startswith(f"{attempt}/log/") for k in stored), stored
        assert f"{attempt}/output/MANIFEST.json" in stored, stored
        listed = fleet(home, "artifacts", job, "--list")
        model = "model.pt" if "torch" in job else "model.keras"
        assert listed.returncode == 0 and model in listed.stdout, listed.stdout + listed.stderr
        got = fleet(home, "artifacts", job, "-o", str(tmp_path / job))
        assert got.returncode == 0, got.stdout + got.stderr
        assert (tmp_path / job / model).stat().st_size > 0
        logs = fleet(home, "logs", job)
        assert logs.returncode == 0 and "test accuracy" in logs.stdout, logs.stdout + logs.stderr


def test_fleet_down_stops_weed_and_keeps_its_data_and_keys(home: Path,
                                                           state: dict[str, Any]) -> None:
    creds = Path(state["s3_credentials_file"]).read_text()
    down = fleet(home, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert weed_pids(home) == [] and processes_naming(home) == []
    ports = state["s3_ports"].values()
    assert not [p for p in Path("/tmp").glob("seaweedfs-*.sock")
                if int(p.stem.rsplit("-", 1)[1]) in ports]
    # the next `fleet up --storage s3` here serves the same bucket with the same keys
    again = fleet(home, "up", "--detach", "--workers", "0", "--no-flower", "--storage", "s3")
    assert again.returncode == 0, again.stderr
    assert Path(state["s3_credentials_file"]).read_text() == creds
    store = open_storage(with_recorded_storage(Settings(home=home)))
    assert store.get_bytes("before-the-kill") == b"kept"
    assert fleet(home, "down", timeout=120).returncode == 0
    assert weed_pids(home) == []
