"""scripts/chaos_check.py's verdicts on made-up attempts: what counts as doubled (work that
counted, done twice), what only as redone (steps whose checkpoint never committed: a node cut
off or killed first), and two attempts at once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_check", ROOT / "scripts" / "chaos_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chaos_check", module)
    spec.loader.exec_module(module)
    return module


cc = _load()


def run(node: str, steps: range, start: float, step_s: float = 1.0, done: bool = False
        ) -> dict[str, Any]:
    times = [start + i * step_s for i in range(len(steps))]
    return {"node": node, "start": times[0] if times else None, "end": times[-1] if times else None,
            "done": done, "last_step": max(steps, default=0), "steps": set(steps)}


def test_steps_redone_after_an_uncommitted_checkpoint_are_not_doubled() -> None:
    # attempt 1 (cut off) logged 1-7 but committed only 5; attempt 2 resumed from 5
    attempts = [{"attempt": 1, "committed_step": 5, "end_reason": "NODE_LOST"},
                {"attempt": 2, "resumed_from_step": 5, "end_reason": "SUCCEEDED"}]
    runs = [run("far-1", range(1, 8), 0.0), run("near-1", range(6, 11), 20.0, done=True)]
    assert not cc.committed_run_again(attempts, runs)
    assert cc.steps_run_twice(runs) == 2
    assert cc.resumed_after(attempts, runs, 0)
    assert not cc.overlap(runs)


def test_a_committed_step_run_again_is_doubled() -> None:
    attempts = [{"attempt": 1, "committed_step": 5, "end_reason": "NODE_LOST"},
                {"attempt": 2, "resumed_from_step": 3, "end_reason": "SUCCEEDED"}]
    runs = [run("far-1", range(1, 6), 0.0), run("near-1", range(4, 11), 20.0, done=True)]
    assert cc.committed_run_again(attempts, runs)


def test_an_attempt_that_started_from_zero_did_not_resume() -> None:
    attempts = [{"attempt": 1, "committed_step": 2, "end_reason": "NODE_LOST"},
                {"attempt": 2, "resumed_from_step": None, "end_reason": "SUCCEEDED"}]
    runs = [run("a", range(1, 3), 0.0), run("b", range(1, 6), 10.0, done=True)]
    assert not cc.resumed_after(attempts, runs, 0)
    assert cc.committed_run_again(attempts, runs)


def test_steps_of_two_nodes_interleaving_in_time_are_two_at_once() -> None:
    assert cc.overlap([run("far-1", range(1, 8), 0.0), run("near-1", range(6, 11), 5.0)])
    assert not cc.overlap([run("a", range(1, 3), 0.0), run("a", range(3, 5), 1.0)])  # one node


def test_the_witness_reads_each_attempts_log() -> None:
    logs = {1: "step 1 attempt 1 at 10.0\nstep 2 attempt 1 at 11.5\nnoise\n",
            2: "step 3 attempt 2 at 20.0\ndone attempt 2 at 20.5\n"}
    runs = cc.witness(lambda job, attempt, node: logs[attempt], "j",
                      [{"attempt": 1, "node": "a"}, {"attempt": 2, "node": "b"}])
    assert [(r["start"], r["end"], r["last_step"], r["done"], r["steps"]) for r in runs] == [
        (10.0, 11.5, 2, False, {1, 2}), (20.0, 20.5, 3, True, {3})]


def test_an_attempt_cut_off_before_its_first_commit_had_nothing_to_resume_from() -> None:
    attempts = [{"attempt": 1, "end_reason": "NODE_LOST"},
                {"attempt": 2, "resumed_from_step": None, "end_reason": "SUCCEEDED"}]
    runs = [run("far-1", range(1, 4), 0.0), run("near-1", range(1, 5), 10.0, done=True)]
    verdict = cc.judge(attempts, runs)
    assert not verdict["interrupted"] and verdict["before_commit"] and not verdict["doubled"]


def test_a_tail_finished_while_cut_off_runs_again_but_counts_once() -> None:
    # attempt 1 logged every step and `done` after the cut, having committed step 4 only
    attempts = [{"attempt": 1, "committed_step": 4, "end_reason": "NODE_LOST"},
                {"attempt": 2, "resumed_from_step": 4, "end_reason": "SUCCEEDED",
                 "committed_step": 6}]
    runs = [run("far-1", range(1, 7), 0.0, done=True), run("near-1", range(5, 7), 10.0, done=True)]
    verdict = cc.judge(attempts, runs)
    assert verdict["finished_uncounted"] and verdict["resumed"] and not verdict["doubled"]
    assert (verdict["steps_lost"], verdict["steps_redone"]) == (2, 2)
    two = [dict(attempts[0], end_reason="SUCCEEDED"), attempts[1]]
    assert cc.judge(two, runs)["doubled"]  # counted twice
