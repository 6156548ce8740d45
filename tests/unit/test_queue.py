"""The pending queue's scheduling round: order, no head-of-line blocking, no starvation."""

from __future__ import annotations

import numpy as np

from fleet.placement import NodeView, PendingJob, PolicyState, Request, RunningJob, schedule_round

GI = 2**30


def nodes(*cpus: float, memory: float = 64) -> NodeView:
    n = len(cpus)
    capacity = np.array([[c, memory * GI, 0, 0] for c in cpus], dtype=float)
    return NodeView(tuple(f"node-{i + 1}" for i in range(n)), capacity, np.zeros((n, 4)), np.zeros((n, 4)))


def busy(view: NodeView, running: list[RunningJob]) -> NodeView:
    """`view` with the running jobs' reservations on their nodes."""
    for job in running:
        view = view.with_reserved(view.index(job.node), job.request)
    return view


def job(
    name: str,
    cpus: float,
    *,
    seq: int,
    priority: int = 0,
    at: float = 0.0,
    duration: float | None = 10.0,
    policy: str | None = None,
) -> PendingJob:
    return PendingJob(name, Request(cpus, GI), priority, seq, at, policy, duration)


def run(view, pending, running=(), *, now=0.0, policy="spread", starvation_after=300.0, seed=0):
    return schedule_round(
        view,
        pending,
        list(running),
        policy=policy,
        state=PolicyState.seeded(seed),
        now=now,
        starvation_after=starvation_after,
    )


def placed(result) -> list[tuple[str, str]]:
    return [(j.id, d.node) for j, d in result.placements]


def test_jobs_go_by_priority_then_submit_order():
    pending = [
        job("late-low", 1, seq=3),
        job("early-low", 1, seq=1),
        job("high", 1, seq=2, priority=5),
    ]
    result = run(nodes(2), pending)
    assert [j for j, _ in placed(result)] == ["high", "early-low"]
    assert list(result.waiting) == ["late-low"]
    assert result.positions == {"late-low": 1}


def test_each_placement_counts_before_the_next_decision():
    result = run(nodes(2, 2), [job(f"j{k}", 2, seq=k) for k in range(3)])
    assert placed(result) == [("j0", "node-1"), ("j1", "node-2")]
    assert result.waiting["j2"] == "needs 2 cpus; largest free is 0 cpus on node-1"


def test_small_jobs_pass_a_large_job_that_does_not_fit_while_it_is_young():
    running = [RunningJob("r", "node-1", Request(2, GI), est_end=100.0)]
    view = busy(nodes(4), running)
    pending = [job("large", 4, seq=0, at=0.0), job("small", 1, seq=1), job("small2", 1, seq=2)]
    result = run(view, pending, running, now=10.0)
    assert [j for j, _ in placed(result)] == ["small", "small2"]
    assert "large" in result.waiting and not result.holds


def test_a_starving_job_holds_the_node_where_it_fits_soonest():
    running = [
        RunningJob("r1", "node-1", Request(2, GI), est_end=500.0),
        RunningJob("r2", "node-2", Request(3, GI), est_end=400.0),
    ]
    view = busy(nodes(4, 4), running)
    pending = [
        job("large", 4, seq=0, at=0.0),
        # Ends at 400, before `large` can start on node-2: backfilled there (pack goes there).
        job("short", 1, seq=1, duration=50.0, policy="pack"),
        # Would delay `large`: node-2 is closed to it, node-1 takes it.
        job("long", 1, seq=2, duration=1000.0, policy="pack"),
    ]
    result = run(view, pending, running, now=350.0)
    hold = result.holds["large"]
    assert (hold.node, hold.start) == ("node-2", 400.0)
    assert dict(placed(result)) == {"short": "node-2", "long": "node-1"}
    assert "node-2 is held for it (expected to start in 50s)" in result.waiting["large"]


def test_a_hold_blocks_jobs_that_would_delay_it_and_says_so():
    running = [RunningJob("r", "node-1", Request(3, GI), est_end=400.0)]
    view = busy(nodes(4), running)
    pending = [job("large", 4, seq=0), job("long", 1, seq=1, duration=1000.0)]
    result = run(view, pending, running, now=350.0)
    assert not result.placements
    assert result.waiting["long"].startswith("fits only on nodes held for jobs waiting longer")
    assert "held for large" in result.waiting["long"]


def test_a_hold_lets_in_what_fits_beside_the_held_job():
    running = [RunningJob("r", "node-1", Request(4, GI), est_end=400.0)]
    view = busy(nodes(8), running)
    pending = [job("large", 6, seq=0), job("side", 2, seq=1, duration=None)]
    result = run(view, pending, running, now=350.0)
    assert placed(result) == [("side", "node-1")]  # 8 − 6 = 2 CPUs stay free beside it
    assert result.holds["large"].spare[0] == 0


def test_a_job_with_no_known_end_never_counts_as_backfill():
    running = [RunningJob("r", "node-1", Request(3, GI), est_end=None)]
    view = busy(nodes(4), running)
    pending = [job("large", 4, seq=0), job("open-ended", 1, seq=1, duration=None)]
    result = run(view, pending, running, now=350.0)
    assert not result.placements
    assert "start unknown" in result.waiting["large"]


def test_a_large_job_runs_under_an_endless_stream_of_small_ones():
    """Drive rounds by hand: small 1-CPU jobs every 3 s, each for 10 s, on one 4-CPU node."""
    view0 = nodes(4)
    state = PolicyState.seeded(0)
    pending = {"large": job("large", 4, seq=0, at=5.0, duration=10.0)}
    running: dict[str, RunningJob] = {}
    started: dict[str, float] = {}
    seq = 1
    for tick in range(0, 1200):
        now = float(tick)
        for name in [n for n, r in running.items() if r.est_end <= now]:
            del running[name]
        if tick % 3 == 0:
            pending[f"s{seq}"] = job(f"s{seq}", 1, seq=seq, at=now, duration=10.0)
            seq += 1
        if tick < 5:
            pending_now = {k: v for k, v in pending.items() if k != "large"}
        else:
            pending_now = pending
        result = schedule_round(
            busy(view0, list(running.values())),
            list(pending_now.values()),
            list(running.values()),
            policy="spread",
            state=state,
            now=now,
            starvation_after=60.0,
        )
        for pjob, decision in result.placements:
            del pending[pjob.id]
            started[pjob.id] = now
            running[pjob.id] = RunningJob(pjob.id, decision.node, pjob.request, now + 10.0)
        if "large" in started:
            break
    # It waits its 60 s, then the node drains (≤ 10 s) and it starts.
    assert 65.0 <= started["large"] <= 80.0
    # Small jobs kept the node busy all along until the hold.
    assert seq > 20


def test_a_job_bigger_than_every_node_waits_with_the_reason():
    result = run(nodes(2, 4), [job("huge", 64, seq=0, at=-1000.0)], now=0.0)
    assert result.waiting["huge"] == "needs 64 cpus; the largest node has 4 cpus (node-2)"
    assert not result.holds  # holding a node for it would help nobody


def test_the_job_policy_overrides_the_fleet_policy():
    view = busy(nodes(4, 4), [RunningJob("r", "node-1", Request(2, GI), est_end=None)])
    pending = [job("packed", 1, seq=0, policy="pack"), job("spread", 1, seq=1)]
    assert dict(placed(run(view, pending))) == {"packed": "node-1", "spread": "node-2"}


def test_seed_places_everything_at_once_fit_or_not():
    result = run(nodes(1), [job(f"j{k}", 2, seq=k) for k in range(3)], policy="seed")
    assert len(result.placements) == 3 and not result.waiting


def test_no_nodes_means_everything_waits():
    empty = NodeView.empty()
    result = run(empty, [job("a", 1, seq=0)])
    assert result.waiting == {"a": "no live nodes"}


def test_rounds_explain_or_stay_quiet():
    pending = [job("big", 8, seq=0)]
    quiet = schedule_round(
        nodes(4),
        pending,
        [],
        policy="spread",
        state=PolicyState.seeded(0),
        now=0.0,
        explain=False,
    )
    assert quiet.waiting == {"big": "waits for capacity"}
