"""`fleet demo`: the README's first command. An embedded fleet trains both example jobs.

It starts a local fleet (unless one runs already), submits the PyTorch and the TensorFlow digits
classifiers, shows a progress bar per job, then prints where each ran and why, and stops the
fleet it started.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from fleet.cli.context import client, console, settings
from fleet.cli.render import JobProgress, state_text, why_line
from fleet.errors import FleetError

EXAMPLES = ("digits-torch.yaml", "digits-tf.yaml")
NODE_MEMORY = "3Gi"


def examples_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "examples"
    if not here.is_dir():
        raise FleetError(f"examples not found at {here}; run from a checkout (pip install -e .)")
    return here


def run_demo(*, workers: int, keep: bool, epochs: int | None) -> int:
    from fleet.drivers import get_driver
    from fleet.drivers.base import NodeShape
    from fleet.statefile import read_state
    from fleet.units import parse_memory

    s = settings()
    driver = get_driver("local", s)
    started = False
    if read_state(s) is None:
        console.print(f"starting an embedded fleet: {workers} nodes × 1 CPU, {NODE_MEMORY} ...")
        up = driver.up(workers, NodeShape(cpus=1.0, memory=parse_memory(NODE_MEMORY)))
        started = True
        console.print(f"Flower: {up.flower_url} (user {up.flower_user}, password in "
                      f"{up.flower_password_file})", highlight=False)
    try:
        c = client()
        overrides = [f"params.epochs={epochs}"] if epochs else []
        ids = [c.submit(examples_dir() / name, overrides=overrides) for name in EXAMPLES]
        console.print(f"submitted {', '.join(ids)}", highlight=False)
        final = JobProgress(c).follow(ids)
        table = Table("job", "state", "node", "test accuracy")
        for job_id in ids:
            f = final[job_id]
            acc = (f.get("result") or {}).get("accuracy")
            table.add_row(job_id, state_text(f["state"]), f.get("node") or "-",
                          "-" if acc is None else f"{acc:.3f}")
        console.print(table)
        for job_id in ids:
            f = final[job_id]
            console.print(f"{job_id}: {why_line(f.get('placement'))}", highlight=False)
            if f["state"] != "SUCCEEDED":
                console.print(f"  {f.get('reason')}: {f.get('error')}", highlight=False)
        return 0 if all(f["state"] == "SUCCEEDED" for f in final.values()) else 1
    finally:
        if started and not keep:
            driver.down()
            console.print("embedded fleet stopped (fleet demo --keep leaves it running)")
