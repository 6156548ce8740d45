"""Commands that start, scale and stop a fleet, and the long-running services themselves."""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from fleet.cli.context import console, print_json, settings, wait_for_stop


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("scale")(scale)
    app.command("master")(master)
    app.command(
        "worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(worker)
    app.command("demo")(demo)


def up(
    workers: int = typer.Option(2, "--workers", "-n", min=0, help="worker nodes to start"),
    cpus: float = typer.Option(1.0, "--cpus", help="CPUs per node"),
    memory: str = typer.Option("3Gi", "--memory", help="memory per node, e.g. 2Gi"),
    driver: str = typer.Option("local", "--driver", help="local | docker | swarm"),
    detach: bool = typer.Option(False, "--detach", "-d", help="return once the fleet is up"),
    flower: bool = typer.Option(True, "--flower/--no-flower", help="start Flower"),
    storage: str = typer.Option(
        None, "--storage", help="where checkpoints, logs and outputs go: s3 (start the embedded "
        "S3 server), s3://bucket/prefix, file:///path; default FLEET_STORAGE, else the "
        "artifacts folder"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
    listen: str = typer.Option(None, "--listen", help="ADDR[,ADDR]: serve other machines' nodes "
                               "there too, over TLS (FLEET_LISTEN); writes a join kit"),
) -> None:
    """Start a fleet: Redis, the master, N worker nodes and Flower (and S3 with --storage s3)."""
    from fleet.drivers import get_driver, with_storage
    from fleet.drivers.base import NodeShape
    from fleet.errors import SpecError
    from fleet.listen import hint, listening
    from fleet.statefile import read_state
    from fleet.units import parse_memory

    if cpus <= 0:
        raise SpecError("--cpus", "must be > 0")
    try:
        shape = NodeShape(cpus=cpus, memory=parse_memory(memory))
    except ValueError as exc:
        raise SpecError("--memory", str(exc)) from None
    # a bad --storage or --listen: an error, nothing started
    conf = listening(with_storage(settings(), storage, driver), listen, driver)
    drv = get_driver(driver, conf)
    result = drv.up(workers, shape, flower=flower)
    state = read_state(settings()) or {}
    if json_out:
        print_json({"nodes": list(result.nodes), "flower_url": result.flower_url,
                    "flower_user": result.flower_user, "state_file": str(settings().state_file),
                    "storage": state.get("storage"), "s3_endpoint": state.get("s3_endpoint"),
                    "s3_credentials_file": state.get("s3_credentials_file")})
    else:
        console.print(f"fleet up: {len(result.nodes)} nodes ({', '.join(result.nodes)}), "
                      f"state in {settings().state_file}")
        if state.get("s3_endpoint"):
            console.print(f"storage: {state['storage']} at {state['s3_endpoint']} (keys in "
                          f"{state['s3_credentials_file']})", highlight=False, soft_wrap=True)
        elif state.get("storage"):
            console.print(f"storage: {state['storage']}", highlight=False, soft_wrap=True)
        if result.flower_url:
            console.print(f"Flower: {result.flower_url}  (user {result.flower_user}, "
                          f"password in {result.flower_password_file})")
        if no_producer := state.get("no_producer"):
            console.print(no_producer, highlight=False, soft_wrap=True)  # one line, unwrapped
        if join_line := hint(conf):
            console.print(join_line, highlight=False, soft_wrap=True)
    if detach:
        return
    console.print("running; Ctrl-C stops the fleet")
    try:
        wait_for_stop()
    finally:
        drv.down()
        console.print("fleet down")


RECORDED = "default: the driver that started the fleet (state file), else local"


def down(driver: str = typer.Option(None, "--driver", help=RECORDED)) -> None:
    """Stop the fleet this machine started (nodes, master, Flower, Redis)."""
    from fleet.drivers import driver_for_state

    driver_for_state(settings(), driver).down()
    console.print("fleet down")


def scale(
    target: str = typer.Argument(..., help="worker=N"),
    driver: str = typer.Option(None, "--driver", help=RECORDED),
    wait: float = typer.Option(None, "--wait", help="wait up to S seconds for nodes to join/leave"),
) -> None:
    """Converge to N worker nodes; extra nodes drain (finish what they run) before stopping."""
    from fleet.drivers import driver_for_state
    from fleet.scaling import parse_target

    added, draining = driver_for_state(settings(), driver).scale(parse_target(target), wait=wait)
    console.print(f"added: {', '.join(added) or '-'}; draining: {', '.join(draining) or '-'}")


def master() -> None:
    """Run a master (leader, or standby while another holds the lease)."""
    import logging

    from fleet.services import build_master

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    m = build_master(settings())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    m.run(stop)


def worker(ctx: typer.Context) -> None:
    """Run one worker node (see `fleet worker --help`); arguments go to `python -m workers.main`.

    Started by command line, not import: the control plane never imports the data plane.
    """
    os.execv(sys.executable, [sys.executable, "-m", "workers.main", *ctx.args])


def demo(
    workers: int = typer.Option(2, "--workers", "-n", min=1),
    keep: bool = typer.Option(False, "--keep", help="leave the fleet running afterwards"),
    epochs: int = typer.Option(None, "--epochs", help="override the examples' epochs"),
) -> None:
    """The main job: start an embedded fleet, train the PyTorch and TensorFlow examples on it."""
    from fleet.cli.demo import run_demo

    raise typer.Exit(run_demo(workers=workers, keep=keep, epochs=epochs))
