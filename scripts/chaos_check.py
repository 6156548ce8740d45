"""The chaos run's verdict (scripts/chaos.py): every job judged from two witnesses, what Redis
recorded (state, attempts) and what the jobs themselves logged (`step S attempt A at T` and
`done attempt A at T` lines of workers.jobs.synthetic.steps, in each attempt's log).

Apart from `check` (which reads Redis) and `witness` (the logs, through the reader it is
given), this is pure: tests/unit/test_chaos_check.py runs it on made-up attempts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fleet.client import Client
from fleet.store import registry

STEP_LINE = re.compile(r"^step (\d+) attempt (\d+) at ([\d.]+)$")
DONE_LINE = re.compile(r"^done attempt (\d+) at ([\d.]+)$")
Job = dict[str, Any]
LogReader = Callable[[str, int, "str | None"], str]  # (job, attempt, node) -> the attempt's log


def check(client: Client, read_log: LogReader, ids: list[str], finals: dict[str, Job]) -> Job:
    """Every job judged from Redis's record and from its attempts' own logs (`read_log`)."""
    lost, doubled, concurrent, interrupted, resumed = [], [], [], [], []
    not_resumed: list[Job] = []
    details: list[Job] = []
    steps_lost = steps_redone = 0
    for job_id in ids:
        final = finals.get(job_id)
        if final is None or final["state"] != "SUCCEEDED":
            lost.append(job_id)
        attempts = client.status(job_id)["attempts"] if final else []
        runs = witness(read_log, job_id, attempts)
        counted = sum(a.get("end_reason") == "SUCCEEDED" for a in attempts)
        if counted > 1 or sum(r["done"] for r in runs) > 1 or committed_run_again(attempts, runs):
            doubled.append(job_id)
            details.append({"job": job_id, "attempts": attempts, "runs": runs})
        steps_redone += steps_run_twice(runs)
        if overlap(runs):
            concurrent.append(job_id)
        # Interrupted: an attempt ended by a fault after it had done (and checkpointed) a step.
        # An attempt lost while still queued, or before its first step, had no work to lose.
        cut = [i for i, a in enumerate(attempts[:-1])
               if a.get("end_reason") != "SUCCEEDED" and runs[i]["last_step"] > 0]
        if cut:
            interrupted.append(job_id)
            if all(resumed_after(attempts, runs, i) for i in cut):
                resumed.append(job_id)
            else:
                not_resumed.append({"job": job_id, "attempts": attempts, "runs": runs})
        for i in range(len(attempts) - 1):
            steps_lost += max(0, runs[i]["last_step"] - (attempts[i + 1].get("resumed_from_step") or 0))
    assert client.r is not None
    leaked = {s["node"]: list(s["alloc"]) for s in registry.node_states(client.r) if s["alloc"]}
    return {
        "lost": len(lost), "doubled": len(doubled), "two_nodes_at_once": len(concurrent),
        "interrupted": len(interrupted), "resumed_from_checkpoint": len(resumed),
        "resumed_ratio": round(len(resumed) / len(interrupted), 3) if interrupted else None,
        "steps_lost": steps_lost, "steps_redone": steps_redone,
        "leaked_reservations": sum(len(v) for v in leaked.values()),
        "lost_ids": lost, "doubled_ids": doubled, "concurrent_ids": concurrent,
        "not_resumed": not_resumed, "doubled_details": details,
    }


def resumed_after(attempts: list[Job], runs: list[Job], i: int) -> bool:
    """The next attempt that really ran (one lost while queued did not) resumed from a step."""
    for j in range(i + 1, len(attempts)):
        if attempts[j].get("resumed_from_step"):
            return True
        if runs[j]["last_step"] > 0 or attempts[j].get("end_reason") == "SUCCEEDED":
            return False
    return False


def committed_run_again(attempts: list[Job], runs: list[Job]) -> bool:
    """A step run by an attempt after an earlier one had committed its checkpoint: work that
    counted, done twice (the later attempt had to resume after it)."""
    committed = 0
    for a, r in zip(attempts, runs, strict=True):
        if any(s <= committed for s in r["steps"]):
            return True
        committed = max(committed, int(a.get("committed_step") or 0))
    return False


def steps_run_twice(runs: list[Job]) -> int:
    """Steps logged by more than one attempt (a step is logged after its checkpoint is saved,
    which counts once it is committed)."""
    seen: set[int] = set()
    twice = 0
    for r in runs:
        twice += len(seen & r["steps"])
        seen |= r["steps"]
    return twice


def witness(read_log: LogReader, job_id: str, attempts: list[Job]) -> list[Job]:
    """Per attempt: the node, the first and last logged step time, whether it logged `done`."""
    runs = []
    for a in attempts:
        times, last_step, done, steps = [], 0, False, set()
        for line in read_log(job_id, int(a["attempt"]), a.get("node")).splitlines():
            if m := STEP_LINE.match(line):
                last_step = int(m.group(1))
                steps.add(last_step)
                times.append(float(m.group(3)))
            elif m := DONE_LINE.match(line):
                done = True
                times.append(float(m.group(2)))
        runs.append({"node": a.get("node"), "start": min(times, default=None),
                     "end": max(times, default=None), "done": done, "last_step": last_step,
                     "steps": steps})
    return runs


def overlap(runs: list[Job]) -> bool:
    spans = sorted((r["start"], r["end"], r["node"]) for r in runs if r["start"] is not None)
    return any(b[0] < a[1] and a[2] != b[2] for a, b in zip(spans, spans[1:], strict=False))
