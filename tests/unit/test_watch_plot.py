"""Plots: curves come from the recorded reports, resumes are marked, the PNG decodes."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from fleet.observe.plot import draw_fleet, draw_job, job_series, node_series


def report(attempt: int, step: int, **metrics: float) -> dict:
    return {"type": "progress", "step": step, "metrics": metrics, "time": 0.0, "attempt": attempt}


REPORTS = [report(1, 1, loss=1.0, accuracy=0.5), report(1, 2, loss=0.8, accuracy=0.6),
           report(2, 3, loss=0.6, accuracy=0.7), report(2, 4, loss=0.5, accuracy=0.8)]
ATTEMPTS = [{"attempt": 1, "resumed_from_step": None}, {"attempt": 2, "resumed_from_step": 2}]


def test_series_split_by_attempt_with_the_resume_marked() -> None:
    series = job_series("j", REPORTS, ATTEMPTS)
    assert series.metrics == ["loss", "accuracy"]
    assert [(c.metric, c.attempt, c.steps, c.values) for c in series.curves] == [
        ("loss", 1, [1, 2], [1.0, 0.8]), ("loss", 2, [3, 4], [0.6, 0.5]),
        ("accuracy", 1, [1, 2], [0.5, 0.6]), ("accuracy", 2, [3, 4], [0.7, 0.8])]
    assert [(b.attempt, b.step, b.resumed_from_step) for b in series.boundaries] == [(2, 2.0, 2)]


def test_an_attempt_that_restarted_from_zero_is_marked_before_its_first_step() -> None:
    reports = [report(1, 1, loss=1.0), report(1, 2, loss=0.9), report(2, 1, loss=1.0)]
    series = job_series("j", reports, [{"attempt": 2, "resumed_from_step": None}])
    assert [(b.attempt, b.step) for b in series.boundaries] == [(2, 0.0)]


def test_draw_job_returns_what_it_drew_and_the_png_decodes(tmp_path: Path) -> None:
    out = tmp_path / "job.png"
    drawn = draw_job(job_series("j", REPORTS, ATTEMPTS), out)
    assert drawn["panels"]["loss"] == [{"attempt": 1, "x": [1.0, 2.0], "y": [1.0, 0.8]},
                                       {"attempt": 2, "x": [3.0, 4.0], "y": [0.6, 0.5]}]
    assert drawn["boundaries"] == [2.0]
    assert matplotlib.image.imread(out).ndim == 3


def test_node_series_share_one_time_axis_and_draw(tmp_path: Path) -> None:
    histories = {
        "node-2": [{"time": 12.0, "usage": {"cpus": 0.5, "memory": 10}, "reserved": {"cpus": 1}}],
        "node-1": [{"time": 10.0, "usage": {"cpus": 0.1, "memory": 5}, "reserved": {}},
                   {"time": 11.0, "usage": {"cpus": 0.9, "memory": 7}, "reserved": {"cpus": 1}}],
    }
    series = node_series(histories)
    assert [s.node for s in series] == ["node-1", "node-2"]
    assert series[0].times == [0.0, 1.0] and series[1].times == [2.0]
    drawn = draw_fleet(series, tmp_path / "fleet.png")
    assert drawn["cpus"]["node-1"] == {"used": [0.1, 0.9], "reserved": [0.0, 1.0]}
    assert matplotlib.image.imread(tmp_path / "fleet.png").ndim == 3
