"""Real training through the fleet: the example PyTorch and TensorFlow jobs on two nodes."""

from __future__ import annotations

import pytest

from tests.integration.support import EXAMPLES, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.training]


def test_torch_and_tf_examples_train_to_090_through_the_fleet(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, memory="3Gi", cores=[0])
    fleet.node("node-2", cpus=1, memory="3Gi", cores=[1])
    torch_job = fleet.client.submit(EXAMPLES / "digits-torch.yaml")
    tf_job = fleet.client.submit(EXAMPLES / "digits-tf.yaml")
    for job_id in (torch_job, tf_job):
        final = fleet.wait_job(job_id, 300)
        assert final["state"] == "SUCCEEDED", final
        assert final["result"]["accuracy"] >= 0.90
        epochs = [m["step"] for m in fleet.client.metrics(job_id)]
        assert epochs == list(range(1, 13))
        assert all({"loss", "accuracy"} <= set(m["metrics"]) for m in fleet.client.metrics(job_id))
    # spread put the two 1-CPU jobs on different 1-CPU nodes
    assert {fleet.client.status(j)["node"] for j in (torch_job, tf_job)} == {"node-1", "node-2"}
