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
    verdicts: dict[str, Job] = {}
    lost, not_resumed, details = [], [], []
    for job_id in ids:
        final = finals.get(job_id)
        if final is None or final["state"] != "SUCCEEDED":
            lost.append(job_id)
        attempts = client.status(job_id)["attempts"] if final else []
        runs = witness(read_log, job_id, attempts)
        verdicts[job_id] = v = judge(attempts, runs)
        if v["doubled"]:
            details.append({"job": job_id, "attempts": attempts, "runs": runs})
        if v["interrupted"] and not v["resumed"]:
            not_resumed.append({"job": job_id, "attempts": attempts, "runs": runs})

    def jobs(flag: str) -> list[str]:
        return [j for j, v in verdicts.items() if v[flag]]

    interrupted = len(jobs("interrupted"))
    assert client.r is not None
    leaked = {s["node"]: list(s["alloc"]) for s in registry.node_states(client.r) if s["alloc"]}
    return {
        "lost": len(lost), "doubled": len(jobs("doubled")),
        "two_nodes_at_once": len(jobs("concurrent")), "interrupted": interrupted,
        "resumed_from_checkpoint": len(jobs("resumed")),
        "resumed_ratio": round(len(jobs("resumed")) / interrupted, 3) if interrupted else None,
        "interrupted_before_commit": len(jobs("before_commit")),
        "finished_uncounted": len(jobs("finished_uncounted")),
        "steps_lost": sum(v["steps_lost"] for v in verdicts.values()),
        "steps_redone": sum(v["steps_redone"] for v in verdicts.values()),
        "leaked_reservations": sum(len(v) for v in leaked.values()),
        "lost_ids": lost, "doubled_ids": jobs("doubled"), "concurrent_ids": jobs("concurrent"),
        "finished_uncounted_ids": jobs("finished_uncounted"), "not_resumed": not_resumed,
        "doubled_details": details,
    }


def judge(attempts: list[Job], runs: list[Job]) -> Job:
    """*Pure*: one job's verdict from its attempt records and what each attempt logged."""
    ended = [i for i, a in enumerate(attempts[:-1]) if a.get("end_reason") != "SUCCEEDED"]
    # Interrupted: an attempt ended by a fault after it had committed a checkpoint (one that
    # only logged steps had nothing to resume from: its node was cut off or killed before the
    # first upload and commit). An attempt lost while still queued had no work to lose.
    cut = [i for i in ended if int(attempts[i].get("committed_step") or 0) > 0]
    return {
        "doubled": sum(a.get("end_reason") == "SUCCEEDED" for a in attempts) > 1
        or committed_run_again(attempts, runs),
        "finished_uncounted": any(r["done"] and a.get("end_reason") != "SUCCEEDED"
                                  for a, r in zip(attempts, runs, strict=True)),
        "concurrent": overlap(runs),
        "interrupted": bool(cut),
        "resumed": bool(cut) and all(resumed_after(attempts, runs, i) for i in cut),
        "before_commit": any(runs[i]["last_step"] > 0 for i in ended if i not in cut),
        "steps_lost": sum(max(0, runs[i]["last_step"] - (attempts[i + 1].get("resumed_from_step") or 0))
                          for i in range(len(attempts) - 1)),
        "steps_redone": steps_run_twice(runs),
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
