"""Validation of every record fleet reads back from Redis: pure, no I/O.

Redis holds what the fleet's own atomic steps wrote, but also whatever anyone holding the
operator credential (or a bug, or a half-written upgrade) put there. A reader never trusts a
record's shape: each decoder here takes the raw value (bytes, str, or a hash as a mapping),
returns a plain, normalized record, or raises `BadRecord` naming the field and the reason. The
reader then skips, repairs or quarantines the record (the master, `fleet.store.quarantine`) and
serves the rest of the fleet.

Numbers are checked for type, finiteness and range: a negative reservation would make a node
look emptier than it is (invariant 3), NaN compares false with everything, and a huge value
would overflow an array or a score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fleet.errors import FleetError
from fleet.resources import KIND, NAMES, RESERVED
from fleet.states import JobState

# Bounds a record the fleet wrote never exceeds (spec caps: cpus <= 1024, gpus <= 64).
MAX_CPUS_M = KIND["cpus"].limit  # a node may have many CPUs; a job at most 1024
MAX_BYTES = KIND["memory"].limit
MAX_GPUS = KIND["gpus"].limit
MAX_INT = 2**53  # integers JSON and Lua doubles keep exactly
MAX_ID = 200  # characters in an id (job, node, incarnation, master)
JOB_STATES = frozenset(s.value for s in JobState)
ALLOC_FIELDS = tuple(k.wire for k in RESERVED)


class BadRecord(FleetError):
    """A record read from Redis is malformed: `kind` of record, `field`, and why."""

    def __init__(self, kind: str, field: str, reason: str) -> None:
        super().__init__(f"unreadable {kind} record: {field}: {reason}")
        self.kind, self.field, self.reason = kind, field, reason


def text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_json(kind: str, field: str, raw: Any) -> Any:
    """JSON text (bytes or str) as Python, or BadRecord (bad UTF-8, bad JSON, too deep)."""
    if not isinstance(raw, (bytes, str)):
        raise BadRecord(kind, field, f"expected JSON text, got {type(raw).__name__}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRecord(kind, field, f"not JSON ({type(exc).__name__})") from None


def json_object(kind: str, field: str, raw: Any) -> dict[str, Any]:
    value = parse_json(kind, field, raw)
    if not isinstance(value, dict):
        raise BadRecord(kind, field, f"expected a JSON object, got {type(value).__name__}")
    return value


def number(kind: str, field: str, value: Any, low: float = 0.0, high: float = MAX_BYTES,
           text_ok: bool = False) -> float:
    """A finite real number in [low, high]. Bools are not numbers; numeric text is accepted
    only with `text_ok` (a hash field is text; a JSON record's numbers are JSON numbers, as
    the Lua steps that sum them need)."""
    if isinstance(value, (bytes, str)) and text_ok:
        try:
            value = float(text(value))
        except ValueError:
            raise BadRecord(kind, field, f"not a number: {text(value)[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRecord(kind, field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise BadRecord(kind, field, f"not finite: {value!r}")
    if not low <= value <= high:
        raise BadRecord(kind, field, f"{value!r} is outside [{low:g}, {high:g}]")
    return float(value)


def integer(kind: str, field: str, value: Any, low: int = 0, high: int = MAX_INT,
            text_ok: bool = False) -> int:
    """An integer in [low, high]; integral floats (1e3, as Lua's cjson may write) are accepted;
    text as for `number`."""
    if isinstance(value, (bytes, str)) and text_ok:
        try:
            value = int(text(value))
        except ValueError:
            raise BadRecord(kind, field, f"not an integer: {text(value)[:40]!r}") from None
    x = number(kind, field, value, low, high)
    if x != int(x):
        raise BadRecord(kind, field, f"not an integer: {value!r}")
    return int(x)


def optional_number(kind: str, field: str, value: Any, low: float = 0.0,
                    high: float = MAX_BYTES, text_ok: bool = False) -> float | None:
    if value is None or value == "" or value == b"":
        return None
    return number(kind, field, value, low, high, text_ok)


def string(kind: str, field: str, value: Any, limit: int = MAX_ID, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BadRecord(kind, field, f"expected a string, got {type(value).__name__}")
    if len(value) > limit or (not value and not empty):
        raise BadRecord(kind, field, f"length {len(value)} is outside [{0 if empty else 1}, {limit}]")
    return value


def optional_string(kind: str, field: str, value: Any, limit: int = 10_000) -> str | None:
    return None if value is None else string(kind, field, value, limit, empty=True)


# -- node records ---------------------------------------------------------------------------
def alloc_entry(raw: Any) -> dict[str, Any]:
    """One value of a node's allocation hash: {attempt, incarnation, and the wire amounts}."""
    kind = "alloc"
    a = json_object(kind, "value", raw)
    entry: dict[str, Any] = {
        "attempt": integer(kind, "attempt", a.get("attempt"), low=1),
        "incarnation": string(kind, "incarnation", a.get("incarnation")),
    }
    # cpus_m and memory are always written (reserve.lua): one missing is not "0 reserved"
    for k in RESERVED:
        value = a.get(k.wire) if k.always else a.get(k.wire, 0)
        entry[k.wire] = integer(kind, k.wire, value, 0, k.limit)
    return entry


def _resources(kind: str, field: str, value: Any, required: tuple[str, ...] = ()) -> dict[str, float]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise BadRecord(kind, field, f"expected an object, got {type(value).__name__}")
    out = dict(value)
    for r in NAMES:
        if r in value or r in required:
            out[r] = number(kind, f"{field}.{r}", value.get(r), 0.0,
                            MAX_CPUS_M / 1000 if r == "cpus" else MAX_BYTES)
    return out


def node_report(raw: Any, node: str) -> dict[str, Any]:
    """A node's heartbeat report (the `report` field of its hash), as renderers and placement
    read it. The fields they use are checked; others pass through."""
    kind = "node_report"
    report = json_object(kind, "report", raw)
    if report.get("node") != node:
        raise BadRecord(kind, "node", f"names {str(report.get('node'))[:40]!r}, not {node!r}")
    string(kind, "incarnation", report.get("incarnation"))
    report["time"] = number(kind, "time", report.get("time"), 0.0, 1e11)
    report["capacity"] = _resources(kind, "capacity", report.get("capacity"), ("cpus", "memory"))
    report["usage"] = _resources(kind, "usage", report.get("usage") or {})
    for r in ("cpus", "memory"):
        report["usage"].setdefault(r, 0.0)
    labels = report.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise BadRecord(kind, "labels", "expected an object of strings")
    report["labels"] = labels
    jobs = report.get("jobs") or []
    if not isinstance(jobs, list) or not all(
        isinstance(j, dict) and isinstance(j.get("job"), str) for j in jobs
    ):
        raise BadRecord(kind, "jobs", "expected a list of {job, ...} objects")
    report["jobs"] = jobs
    for f in ("container", "host", "queue"):
        optional_string(kind, f, report.get(f), 1000)
    report["draining"] = bool(report.get("draining"))
    return report


# -- job records ----------------------------------------------------------------------------
JOB_JSON = ("spec", "request", "placement", "progress", "result")
JOB_INTS = ("attempt", "retries", "infra_retries", "max_retries", "seq", "priority")
JOB_TIMES = ("submitted_at", "placed_at", "started_at", "finished_at", "updated_at", "not_before")


def job_record(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A job hash as plain Python: JSON fields parsed and shaped, numbers as numbers."""
    kind = "job"
    job: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
    string(kind, "id", job.get("id"))
    if job.get("state") not in JOB_STATES:
        raise BadRecord(kind, "state", f"{str(job.get('state'))[:40]!r} is not a job state")
    for field in JOB_JSON:
        job[field] = json_object(kind, field, job[field]) if job.get(field) else None
    if job["spec"] is not None:
        job["spec"] = job_spec(job["spec"])
    elif job["state"] != "FAILED":  # a submission the master refused has no valid spec to keep
        raise BadRecord(kind, "spec", "missing")
    if job["request"] is not None:
        job["request"] = {k.wire: integer(kind, f"request.{k.wire}", job["request"].get(k.wire, 0),
                                          0, k.limit) for k in RESERVED}
    if job["placement"] is not None:
        job["placement"] = placement(job["placement"])
    if job["progress"] is not None:
        job["progress"] = metric_report(job["progress"], kind="job", field="progress")
    for field in JOB_INTS:
        job[field] = integer(kind, field, job.get(field) or 0, -MAX_INT, MAX_INT, text_ok=True)
    for field in JOB_TIMES:
        job[field] = optional_number(kind, field, job.get(field), 0.0, 1e11, text_ok=True)
    job["terminal"] = job["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"}
    return job


def job_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored spec the master and the renderers use (the worker validates the
    whole spec again before running it)."""
    kind = "job"
    res = spec.get("resources")
    if not isinstance(res, dict):
        raise BadRecord(kind, "spec.resources", "expected an object")
    cpus = number(kind, "spec.resources.cpus", res.get("cpus"), 0.0, 1024.0)
    if cpus <= 0:
        raise BadRecord(kind, "spec.resources.cpus", "must be > 0")
    number(kind, "spec.resources.memory", res.get("memory", 0))
    integer(kind, "spec.resources.gpus", res.get("gpus", 0), 0, MAX_GPUS)
    optional_number(kind, "spec.resources.gpu_memory", res.get("gpu_memory"))
    selector = spec.get("node_selector") or {}
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise BadRecord(kind, "spec.node_selector", "expected an object of strings")
    if not isinstance(spec.get("params") or {}, dict):
        raise BadRecord(kind, "spec.params", "expected an object")
    string(kind, "spec.entrypoint", spec.get("entrypoint"), 1000)
    optional_string(kind, "spec.policy", spec.get("policy"), 100)
    optional_number(kind, "spec.timeout", spec.get("timeout"), 0.0, 1e9)
    return spec


def placement(value: dict[str, Any]) -> dict[str, Any]:
    kind = "job"
    optional_string(kind, "placement.node", value.get("node"), MAX_ID)
    candidates = value.get("candidates") or []
    if not isinstance(candidates, list):
        raise BadRecord(kind, "placement.candidates", "expected a list")
    for i, c in enumerate(candidates):
        if not isinstance(c, dict) or not isinstance(c.get("node"), str):
            raise BadRecord(kind, f"placement.candidates[{i}]", "expected {node, score, ...}")
        if c.get("score") is not None:
            number(kind, f"placement.candidates[{i}].score", c["score"], -MAX_INT, MAX_INT)
    return value


def metric_report(value: Any, kind: str = "metrics", field: str = "report") -> dict[str, Any]:
    """One progress report (`ctx.report`): {step, metrics: {name: value}, ...}."""
    if not isinstance(value, dict):
        raise BadRecord(kind, field, f"expected an object, got {type(value).__name__}")
    if value.get("step") is not None:
        integer(kind, f"{field}.step", value["step"], -MAX_INT, MAX_INT)
    metrics = value.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise BadRecord(kind, f"{field}.metrics", "expected an object")
    return value


def metric_entry(raw: Any) -> dict[str, Any]:
    """One element of a job's metrics list."""
    return metric_report(json_object("metrics", "report", raw))


ATTEMPT_TIMES = ("placed_at", "started_at", "ended_at")


def attempt_record(raw: Any) -> dict[str, Any]:
    """One value of a job's attempts hash."""
    kind = "attempt"
    a = json_object(kind, "value", raw)
    a["attempt"] = integer(kind, "attempt", a.get("attempt"), low=1)
    for f in ATTEMPT_TIMES:
        a[f] = optional_number(kind, f, a.get(f), 0.0, 1e11)
    for f in ("node", "incarnation", "end_reason", "error"):
        optional_string(kind, f, a.get(f))
    if a.get("resumed_from_step") is not None:
        integer(kind, "resumed_from_step", a["resumed_from_step"], -MAX_INT, MAX_INT)
    if a.get("peak_memory") is not None:
        number(kind, "peak_memory", a["peak_memory"])
    return a


def history_sample(raw: Any) -> dict[str, Any]:
    """One load sample of a node's history list."""
    kind = "history"
    s = json_object(kind, "sample", raw)
    s["time"] = number(kind, "time", s.get("time"), 0.0, 1e11)
    s["usage"] = _resources(kind, "usage", s.get("usage") or {})
    s["reserved"] = _resources(kind, "reserved", s.get("reserved") or {})
    return s


# -- the master ------------------------------------------------------------------------------
def lease_holder(raw: Any) -> str:
    """The master lease's value: a master id (host:pid:hex)."""
    if not isinstance(raw, (bytes, str)):
        raise BadRecord("lease", "value", f"expected a string, got {type(raw).__name__}")
    return string("lease", "value", text(raw))


def timestamp(kind: str, raw: Any) -> float:
    """A time stamp (seconds since the epoch) stored as text."""
    return number(kind, "value", raw, 0.0, 1e11, text_ok=True)
