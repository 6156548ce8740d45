"""Shared pieces of the benchmark scripts: machine details, statistics, result files.

Every figure a benchmark reports is a ratio against a baseline measured in the same run (the
machines these run on are shared and noisy); the absolute numbers are kept beside the ratios,
with the machine's details (CPU, cores, load average at start and end, versions, git commit)
and the exact command, in `bench/results/<name>-<timestamp>.json` and a `.md` table.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a missing package is just "not installed"
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (load average is sampled again at the end)."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "redis_py": _version("redis"),
        "torch": _version("torch"),
        "tensorflow": _version("tensorflow") or _version("tensorflow-cpu"),
        "git_commit": git_commit(),
        "loadavg_start": list(os.getloadavg()),
    }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


class Recorder:
    """Collects one benchmark's rows and writes them, with the machine and the command."""

    def __init__(self, name: str, args: Any) -> None:
        self.name = name
        self.started = time.time()
        self.stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        self.doc: dict[str, Any] = {
            "benchmark": name,
            "command": shlex.join([sys.executable, *sys.argv]),
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "started_at": self.started,
            "machine": machine(),
            "rows": [],
            "targets": [],
            "notes": [],
        }

    def row(self, **fields: Any) -> None:
        self.doc["rows"].append(fields)

    def target(self, what: str, value: float, limit: float, op: str) -> bool:
        held = value >= limit if op == ">=" else value <= limit
        self.doc["targets"].append({"target": what, "value": value, "limit": limit, "op": op,
                                    "held": held})
        return held

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)

    def set(self, key: str, value: Any) -> None:
        self.doc[key] = value

    def write(self, out_dir: Path = RESULTS, columns: Sequence[str] | None = None) -> Path:
        self.doc["machine"]["loadavg_end"] = list(os.getloadavg())
        self.doc["wall_s"] = round(time.time() - self.started, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}-{self.stamp}.json"
        path.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        md = self.markdown(columns)
        path.with_suffix(".md").write_text(md)
        print(md)
        print(f"results: {path} (+ .md)")
        return path

    def markdown(self, columns: Sequence[str] | None = None) -> str:
        rows = self.doc["rows"]
        cols = list(columns or [])
        for r in rows:
            cols += [k for k in r if k not in cols]
        m = self.doc["machine"]
        lines = [
            f"# {self.name} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(self.started))})",
            "",
            f"`{self.doc['command']}`",
            "",
            f"{m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), "
            f"load {_load(m['loadavg_start'])} → {_load(m.get('loadavg_end'))}; "
            f"python {m['python']}, celery {m['celery']}, torch {m['torch']}, "
            f"tensorflow {m['tensorflow']}; commit {m['git_commit']}",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
        if self.doc["targets"]:
            lines += ["", "| target | value | limit | held |", "|---|---|---|---|"]
            for t in self.doc["targets"]:
                lines.append(f"| {t['target']} | {_cell(t['value'])} | {t['op']} {_cell(t['limit'])} "
                             f"| {'yes' if t['held'] else '**no**'} |")
        if self.doc["notes"]:
            lines += [""] + [f"- {n}" for n in self.doc["notes"]]
        return "\n".join(lines) + "\n"


def _load(values: Sequence[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.2f}" for v in values)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def venv_python() -> str:
    return sys.executable


def fleet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: this repo importable, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env.update(extra or {})
    return env
