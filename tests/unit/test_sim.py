"""The simulator, the trace generator and `fleet sim`: metrics by hand, then the policies
compared on a large uneven trace."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fleet.errors import SpecError
from fleet.placement import DEFAULT_POLICY, POLICIES
from fleet.sim.engine import compare, simulate
from fleet.sim.metrics import lower_bound
from fleet.sim.trace import parse_trace

GI = 2**30
ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


make_trace = _load_script("make_trace").make_trace


def trace(nodes: list[dict], jobs: list[tuple]) -> dict:
    """jobs as (id, submit_at, duration, cpus, memory GiB[, priority])."""
    return {
        "nodes": copy.deepcopy(nodes),
        "jobs": [
            {
                "id": j[0],
                "submit_at": j[1],
                "duration": j[2],
                "resources": {"cpus": j[3], "memory": f"{j[4]}Gi"},
                "priority": j[5] if len(j) > 5 else 0,
            }
            for j in jobs
        ],
    }


ONE_NODE = [{"name": "n1", "cpus": 2, "memory": "4Gi"}]


# -- metrics on traces small enough to work out by hand ---------------------------------------


def test_metrics_of_a_two_job_trace_worked_out_by_hand():
    # a fills the node for 10 s; b waits for it, then runs 5 s.
    result = simulate(trace(ONE_NODE, [("a", 0, 10, 2, 1), ("b", 0, 5, 1, 1)]), "spread")
    assert result.jobs == 2 and result.rejected == result.failed == result.unplaced == 0
    assert result.mean_jct == 12.5  # (10 + 15) / 2
    assert result.mean_wait == 5.0  # (0 + 10) / 2
    assert result.mean_slowdown == 2.0  # (10/10 + 15/5) / 2
    assert result.mean_duration == 7.5
    assert result.makespan == 15.0
    # CPU work 2×10 + 1×5 = 25 CPU-s on 2 CPUs: at least 12.5 s.
    assert result.makespan_lower_bound == 12.5 and result.work_bound == 12.5
    assert result.makespan_ratio == pytest.approx(1.2)
    # 15 GiB-s of memory on 4 GiB over 15 s.
    assert result.utilization == {
        "cpus": pytest.approx(25 / 30, abs=1e-4),
        "memory": pytest.approx(0.25),
    }
    assert result.idle_while_waiting == 0  # b never fit while it waited
    assert result.over_commits == result.kills == 0
    assert result.decisions >= 2 and result.decision_time_ms_mean > 0
    assert result.per_job["b"] == {"submit": 0, "start": 10, "end": 15, "attempts": 1}


def test_priority_goes_first_in_the_simulator_too():
    jobs = [("a", 0, 10, 2, 1), ("low", 1, 5, 2, 1), ("high", 2, 5, 2, 1, 1)]
    result = simulate(trace(ONE_NODE, jobs), "spread")
    assert result.per_job["high"]["start"] == 10
    assert result.per_job["low"]["start"] == 15


def test_seed_over_commits_cpus_and_every_job_on_the_node_slows_down():
    jobs = [("a", 0, 10, 2, 1), ("b", 0, 10, 2, 1)]
    seed = simulate(trace(ONE_NODE, jobs), "seed")
    assert seed.over_commits == 1  # the second placement: 4 CPUs reserved on 2
    assert seed.mean_jct == 20.0  # both run at half speed, from 0 to 20
    assert seed.kills == 0
    spread = simulate(trace(ONE_NODE, jobs), "spread")
    assert spread.mean_jct == 15.0 and spread.over_commits == 0  # 10 and 20


def test_seed_over_commits_memory_and_the_oom_killer_takes_the_largest_job():
    # Two 3Gi jobs on a 4Gi node. Each time b is placed beside a, the node runs out of memory a
    # tenth of b's duration later and the kernel kills the largest job (b, on a tie).
    jobs = [("a", 0, 10, 1, 3), ("b", 0, 10, 1, 3)]
    result = simulate(trace(ONE_NODE, jobs), "seed")
    assert result.per_job["a"]["end"] == 10
    # b is placed at 0, 1, ..., 9 and killed at 1, ..., 9; placed at 9, it outlives a (ends at
    # 10, before the OOM check at 10) and finishes at 19.
    assert result.per_job["b"] == {"submit": 0, "start": 9, "end": 19, "attempts": 10}
    assert result.kills == 9 and result.over_commits == 10


def test_gpu_over_commit_fails_the_job_that_shares():
    nodes = [{"name": "g", "cpus": 8, "memory": "32Gi", "gpus": 1}]
    jobs = [
        {"id": "a", "submit_at": 0, "duration": 10, "resources": {"cpus": 1, "memory": GI, "gpus": 1}},
        {"id": "b", "submit_at": 0, "duration": 10, "resources": {"cpus": 1, "memory": GI, "gpus": 1}},
    ]
    result = simulate({"nodes": nodes, "jobs": jobs}, "seed")
    assert result.kills >= 1 and result.per_job["b"]["attempts"] > 1
    assert simulate({"nodes": nodes, "jobs": jobs}, "spread").kills == 0


def test_a_large_job_is_not_starved_by_a_stream_of_small_ones():
    nodes = [{"name": "n1", "cpus": 4, "memory": "8Gi"}]
    small = [(f"s{k}", 3.0 * k, 10, 1, 1) for k in range(400)]  # always 3 or 4 running
    jobs = [*small, ("large", 5, 10, 4, 1)]
    held = simulate(trace(nodes, jobs), "spread", starvation_after=60)
    assert 65 <= held.per_job["large"]["start"] <= 80  # waits 60 s, then the node drains
    assert held.held_while_waiting > 0 and held.idle_while_waiting == 0
    never = simulate(trace(nodes, jobs), "spread", starvation_after=1e9)
    assert never.per_job["large"]["start"] >= 3.0 * 399  # only once the stream dries up


# -- what jobs really use: CPU sharing, measured usage, OOM on working sets -------------------


def _with_usage(data: dict, **usage: dict) -> dict:
    for job in data["jobs"]:
        if job["id"] in usage:
            job["usage"] = usage[job["id"]]
    return data


def test_a_job_using_more_cpus_than_it_asked_slows_its_neighbour_until_it_ends():
    # Both fit by reservation (1 + 1 CPU of 2), but a uses 3 CPUs: 4 in use on 2, both at half
    # speed. b (4 s of work) ends at 8; a has 6 s left and, alone with 3 CPUs' use on 2, runs
    # at 2/3: it ends at 17.
    data = _with_usage(
        trace(ONE_NODE, [("a", 0, 10, 1, 1), ("b", 0, 4, 1, 1)]), a={"cpus": 3}
    )
    result = simulate(data, "spread")
    assert result.over_commits == 0
    assert result.per_job["b"]["end"] == pytest.approx(8)
    assert result.per_job["a"]["end"] == pytest.approx(17)
    assert result.mean_stretch == pytest.approx((1.7 + 2.0) / 2)


def test_jobs_using_less_than_they_asked_never_slow_down():
    data = _with_usage(
        trace(ONE_NODE, [("a", 0, 10, 1, 1), ("b", 0, 10, 1, 1)]),
        a={"cpus": 0.5}, b={"cpus": 1.5},  # 2 in use on 2 CPUs: no sharing
    )
    result = simulate(data, "spread")
    assert result.mean_jct == 10 and result.mean_stretch == 1


def test_a_trace_without_usage_replays_as_if_every_job_used_its_request():
    jobs = [("a", 0, 10, 2, 1), ("b", 0, 10, 2, 1), ("c", 3, 5, 1, 3)]
    plain = trace(ONE_NODE, jobs)
    explicit = copy.deepcopy(plain)
    for job in explicit["jobs"]:
        job["usage"] = {"cpus": job["resources"]["cpus"], "memory": job["resources"]["memory"]}
    for policy in ("spread", "seed"):
        assert simulate(plain, policy).per_job == simulate(explicit, policy).per_job


def test_placement_sees_measured_usage_once_the_next_report_shows_it():
    # n1 holds `busy` (asked 0.5 CPU, uses 2), n2 holds `calm` (asked 1, uses 0.2). By
    # reservations n1 is the emptier; by what the nodes report, n2 is. `probe` arrives at 5 s:
    # spread sends it to n2 (full speed, ends at 15) once the reports show the usage, and to n1
    # (2.5 CPUs in use on 2: 0.8 speed, ends at 17.5) when they do not yet.
    nodes = [{"name": "n1", "cpus": 2, "memory": "4Gi"}, {"name": "n2", "cpus": 2, "memory": "4Gi"}]
    jobs = [("busy", 0, 100, 0.5, 1), ("calm", 0, 100, 1, 1), ("probe", 5, 10, 0.5, 1)]
    data = _with_usage(trace(nodes, jobs), busy={"cpus": 2}, calm={"cpus": 0.2})
    seen = simulate(data, "spread", report_delay=1.0)
    assert seen.per_job["probe"]["end"] == pytest.approx(15)
    stale = simulate(data, "spread", report_delay=10.0)
    assert stale.per_job["probe"]["end"] == pytest.approx(17.5)


def test_seed_over_commits_reservations_but_the_oom_killer_counts_working_sets():
    # Two 3Gi requests on a 4Gi node, each using 1.5Gi: memory over-committed on paper only.
    jobs = [("a", 0, 10, 1, 3), ("b", 0, 10, 1, 3)]
    small = {"memory": "1536Mi"}
    result = simulate(_with_usage(trace(ONE_NODE, jobs), a=small, b=small), "seed")
    assert result.over_commits == 1 and result.kills == 0 and result.mean_jct == 10


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"cpus": -1}, "jobs[0].usage.cpus"),
        ({"memory": "lots"}, "jobs[0].usage.memory"),
        ({"cpu": 1}, "jobs[0].usage.cpu"),
        (3, "jobs[0].usage"),
    ],
)
def test_bad_usage_names_the_field(usage, field):
    data = trace(ONE_NODE, [("a", 0, 1, 1, 1)])
    data["jobs"][0]["usage"] = usage
    with pytest.raises(SpecError) as info:
        parse_trace(data)
    assert info.value.field == field


def test_jobs_bigger_than_every_node_are_rejected_not_simulated():
    result = simulate(trace(ONE_NODE, [("ok", 0, 1, 1, 1), ("huge", 0, 1, 1, 64)]), "spread")
    assert (result.jobs, result.rejected) == (1, 1)


def test_waiting_forever_ends_the_run_instead_of_hanging():
    data = trace(ONE_NODE, [("a", 0, 1, 1, 1)])
    data["jobs"][0]["node_selector"] = {"zone": "mars"}
    assert simulate(data, "spread").unplaced == 1


def test_no_policy_beats_the_mean_duration_floor():
    data = make_trace(nodes=4, jobs=80, load=0.9, seed=3)
    for row in compare(data, list(POLICIES)):
        assert row["mean_jct"] >= row["mean_duration"] - 1e-9, row["policy"]


def test_same_trace_and_seed_give_the_same_result():
    data = make_trace(nodes=4, jobs=60, seed=5)
    first, second = simulate(data, "p2c", seed=7), simulate(data, "p2c", seed=7)
    assert first.per_job == second.per_job


def test_release_aware_lower_bound():
    # 2 CPUs; a 10 s job at t=0 and a 2-CPU, 10 s job arriving at t=100: the work bound (15 s)
    # ignores that nothing can finish before 110.
    tr = parse_trace(trace(ONE_NODE, [("a", 0, 10, 1, 1), ("b", 100, 10, 2, 1)]))
    bound, work = lower_bound(tr)
    assert (bound, work) == (110.0, 15.0)


# -- the trace format -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["jobs"][1]["resources"].update(memory="lots"), "jobs[1].resources.memory"),
        (lambda d: d["jobs"][0].update(duration=0), "jobs[0].duration"),
        (lambda d: d["jobs"][0].update(submit_at="soon"), "jobs[0].submit_at"),
        (lambda d: d["jobs"][1].update(id="a"), "jobs[1].id"),
        (lambda d: d["jobs"][0].update(priority=1.5), "jobs[0].priority"),
        (lambda d: d["jobs"][0].update(policy="fastest"), "jobs[0].policy"),
        (lambda d: d["jobs"][0].pop("resources"), "jobs[0].resources"),
        (lambda d: d["nodes"][0].update(cpus=-1), "nodes[0].cpus"),
        (lambda d: d.update(nodes=[]), "nodes"),
        (lambda d: d.pop("jobs"), "jobs"),
    ],
)
def test_bad_traces_name_the_field(mutate, field):
    data = trace(ONE_NODE, [("a", 0, 1, 1, 1), ("b", 0, 1, 1, 1)])
    mutate(data)
    with pytest.raises(SpecError) as info:
        parse_trace(data)
    assert info.value.field == field


def test_trace_nodes_take_memory_units_labels_and_gpus():
    tr = parse_trace(
        {
            "nodes": [{"name": "g", "cpus": 4, "memory": "8Gi", "gpus": 2, "labels": {"a": "b"}}],
            "jobs": [],
        }
    )
    assert tr.nodes.capacity.tolist() == [[4, 8 * GI, 2, 0]]
    assert tr.nodes.labels == ({"a": "b"},)


# -- the generator ----------------------------------------------------------------------------


def test_make_trace_is_seeded_uneven_and_fits():
    a = make_trace(nodes=16, jobs=400, load=0.8, gpus=True, seed=11)
    assert a == make_trace(nodes=16, jobs=400, load=0.8, gpus=True, seed=11)
    assert a != make_trace(nodes=16, jobs=400, load=0.8, gpus=True, seed=12)
    shapes = {(n["cpus"], n["memory"], n["gpus"]) for n in a["nodes"]}
    assert len(a["nodes"]) == 16 and len(shapes) >= 4
    tr = parse_trace(a)
    assert all(j.submit_at >= 0 and j.duration > 0 for j in tr.jobs)
    assert simulate(tr, "spread").rejected == 0  # every job fits some node
    gpus = [j["resources"]["gpus"] for j in a["jobs"] if j["resources"]["gpus"]]
    assert set(gpus) <= {1, 2, 4, 8} and gpus.count(1) > len(gpus) / 2  # Philly: 70% 1-GPU


def test_make_trace_offers_the_load_asked_for():
    data = make_trace(nodes=16, jobs=3000, load=0.8, seed=2)
    tr = parse_trace(data)
    span = tr.jobs[-1].submit_at - tr.jobs[0].submit_at
    work = sum(j.request.vector()[:2] * j.duration for j in tr.jobs)
    offered = work / tr.nodes.capacity[:, :2].sum(axis=0) / span
    assert offered.max() == pytest.approx(0.8, rel=0.1)


def test_make_trace_draws_usage_from_its_own_stream():
    with_usage = make_trace(nodes=16, jobs=2000, load=0.8, gpus=True, seed=4)
    without = make_trace(nodes=16, jobs=2000, load=0.8, gpus=True, seed=4, usage=False)
    assert "usage" not in without["jobs"][0]
    # The same trace but for the usage fields: turning usage off changes nothing else.
    assert [{k: v for k, v in j.items() if k != "usage"} for j in with_usage["jobs"]] == without["jobs"]
    cpu = np.array([j["usage"]["cpus"] / j["resources"]["cpus"] for j in with_usage["jobs"]])
    mem = np.array([j["usage"]["memory"] / j["resources"]["memory"] for j in with_usage["jobs"]])
    assert np.median(cpu) == pytest.approx(0.7, rel=0.05)  # the documented log-normal
    assert 0.15 < (cpu > 1).mean() < 0.35  # a minority uses more CPU than it asked for
    assert cpu.min() >= 0.05 and cpu.max() <= 4.0
    assert mem.max() <= 1.0 and np.median(mem) == pytest.approx(0.8, rel=0.05)
    # The live benchmark's --shapes traces get none unless asked.
    shapes = [{"name": "n1", "cpus": 1, "memory": GI, "gpus": 0}]
    assert "usage" not in make_trace(jobs=3, shapes=shapes, scale=0.1)["jobs"][0]
    assert "usage" in make_trace(jobs=3, shapes=shapes, scale=0.1, usage=True)["jobs"][0]


def test_make_trace_cli_writes_a_file(tmp_path):
    out = tmp_path / "t.json"
    assert _load_script("make_trace").main(["--nodes", "3", "--jobs", "5", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["nodes"]) == 3 and len(data["jobs"]) == 5


# -- `fleet sim` ------------------------------------------------------------------------------


def _cli():
    from fleet.cli.sim_cmd import sim

    app = typer.Typer()
    app.command()(sim)
    return app


def test_fleet_sim_prints_one_row_per_policy(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(make_trace(nodes=4, jobs=30, seed=1)))
    result = CliRunner().invoke(_cli(), [str(path), "-p", "spread", "-p", "seed"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "spread" in result.output and "seed" in result.output
    as_json = CliRunner().invoke(_cli(), [str(path), "--policy", "pack", "--json"])
    rows = json.loads(as_json.output)["results"]
    assert [r["policy"] for r in rows] == ["pack"] and rows[0]["jobs"] == 30


def test_fleet_sim_names_the_bad_field(tmp_path):
    path = tmp_path / "trace.json"
    data = trace(ONE_NODE, [("a", 0, 1, 1, 1)])
    data["jobs"][0]["resources"]["memory"] = "a lot"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(_cli(), [str(path)])
    assert isinstance(result.exception, SpecError)
    assert result.exception.field == "jobs[0].resources.memory"
    missing = CliRunner().invoke(_cli(), [str(tmp_path / "nope.json")])
    assert isinstance(missing.exception, SpecError) and missing.exception.field == "trace"
    unknown = CliRunner().invoke(_cli(), [str(path), "-p", "fastest"])
    assert isinstance(unknown.exception, SpecError) and unknown.exception.field == "--policy"


# -- the policies compared on 1,000 jobs, 16 uneven nodes ---------------------------------------


@pytest.fixture(scope="module")
def acceptance() -> dict:
    """≥1,000 jobs on 16 uneven nodes at load 0.8: CPU and GPU jobs (Philly mix), generator seed 0.

    Jobs use what make_trace's usage model draws (CPUs log-normal around 0.7 of the request,
    memory below it): placement sees it only through the nodes' measured usage.
    """
    data = make_trace(nodes=16, jobs=1000, load=0.8, gpus=True, seed=0)
    tr = parse_trace(data)
    assert len(tr.jobs) >= 1000 and len(tr.nodes) >= 16
    assert len({tuple(row) for row in tr.nodes.capacity.tolist()}) > 3  # uneven
    assert all(j.usage is not None for j in tr.jobs)
    return {p: simulate(tr, p) for p in (DEFAULT_POLICY, "random", "seed")}


def test_acceptance_default_policy_is_safe_work_conserving_and_near_the_bound(acceptance):
    best = acceptance[DEFAULT_POLICY]
    assert best.jobs == 1000 and best.failed == best.unplaced == best.rejected == 0
    assert best.over_commits == 0
    assert best.idle_while_waiting == 0
    assert best.makespan <= 1.10 * best.makespan_lower_bound
    assert best.mean_jct < acceptance["random"].mean_jct
    assert best.mean_jct < acceptance["seed"].mean_jct
    assert best.mean_stretch <= acceptance["random"].mean_stretch
    assert acceptance["seed"].over_commits > 0 and acceptance["seed"].kills > 0


@pytest.mark.xfail(
    strict=True,
    reason=(
        "out of reach for any policy on this trace, measured with jobs using what they really "
        "use (CPU processor sharing per node, placement on measured usage): mean duration 493 s, "
        "random 550 s, the default 536 s (0.97x random; 0.96-1.00x over generator seeds 0-4). "
        "At load 0.8 random waits 53 s on average and CPU sharing stretches its jobs by 0.8%, "
        "so even zero wait and zero sharing (493 s) is 0.90x random. Seed (over-commits, OOM "
        "and GPU kills) gets 592 s: the default is 0.91x seed (0.74-0.92x over seeds 0-4), not "
        "0.6x. docs/placement.md has the tables and a sensitivity study of the usage model"
    ),
)
def test_acceptance_jct_ratios_of_issue_3(acceptance):
    best = acceptance[DEFAULT_POLICY]
    assert best.mean_jct <= 0.8 * acceptance["random"].mean_jct
    assert best.mean_jct <= 0.6 * acceptance["seed"].mean_jct
