"""Traces for the simulator: parsed and checked, every error naming its place in the file.

Trace format (JSON): `{"nodes": [{"name", "cpus", "memory", "gpus", "gpu_memory", "labels"}],
"jobs": [{"id", "submit_at", "duration", "resources": {"cpus", "memory", "gpus", "gpu_memory"},
"usage": {"cpus", "memory"}, "priority", "node_selector", "policy"}]}`; memory as bytes or
`2Gi`; `usage` and each of its keys optional (default: the request).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleet.errors import SpecError
from fleet.placement import RESOURCES, NodeView, Request, get_policy
from fleet.placement.nodes import CPUS, MEMORY, quantity

USAGE_KEYS = ("cpus", "memory")


@dataclass(frozen=True)
class TraceJob:
    id: str
    submit_at: float
    duration: float
    request: Request
    priority: int = 0
    policy: str | None = None
    #: (CPUs, memory bytes) the job really uses; None: exactly its request.
    usage: tuple[float, float] | None = None

    def used(self) -> tuple[float, float]:
        """(CPUs, memory) the job uses while it runs."""
        if self.usage is None:
            return self.request.amount("cpus"), self.request.amount("memory")
        return self.usage


@dataclass(frozen=True)
class Trace:
    nodes: NodeView  # empty: nothing reserved, nothing used
    jobs: tuple[TraceJob, ...]


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(where, f"expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise SpecError(where, f"expected a {'positive' if positive else 'non-negative'} number")
    return float(value)


def _resources(entry: Mapping[str, Any], where: str) -> list[float]:
    out = []
    for name in RESOURCES:
        try:
            out.append(quantity(name, entry.get(name)))
        except ValueError as exc:
            raise SpecError(f"{where}.{name}", str(exc)) from None
    return out


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(where, "expected a mapping of label to value")
    return {str(k): str(v) for k, v in value.items()}


def _usage(value: Any, request: list[float], where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError(where, "expected an object with cpus and/or memory")
    unknown = sorted(set(value) - set(USAGE_KEYS))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}", f"unknown usage key; use {', '.join(USAGE_KEYS)}")
    used = []
    for name, asked in zip(USAGE_KEYS, (request[CPUS], request[MEMORY]), strict=True):
        try:
            used.append(asked if value.get(name) is None else quantity(name, value[name]))
        except ValueError as exc:
            raise SpecError(f"{where}.{name}", str(exc)) from None
    return used[0], used[1]


def _named(items: list[Any], kind: str, key: str) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """(where, entry, name) of each entry of the `kind` list; names default to `node-3` etc.
    and must be unique."""
    seen: set[str] = set()
    for k, item in enumerate(items):
        where = f"{kind}[{k}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, "expected an object")
        name = str(item.get(key, f"{kind[:-1]}-{k}"))
        if name in seen:
            raise SpecError(f"{where}.{key}", f"duplicate {kind[:-1]} {key} {name!r}")
        seen.add(name)
        yield where, item, name


def parse_trace(data: Any) -> Trace:
    """Validate a trace; SpecError names the culprit, e.g. `jobs[3].resources.memory`."""
    if not isinstance(data, Mapping):
        raise SpecError("trace", "expected a JSON object with nodes and jobs")
    raw_nodes, raw_jobs = data.get("nodes"), data.get("jobs")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise SpecError("nodes", "expected a non-empty list of nodes")
    if not isinstance(raw_jobs, list):
        raise SpecError("jobs", "expected a list of jobs")
    names, capacity, labels = [], [], []
    for where, node, name in _named(raw_nodes, "nodes", "name"):
        names.append(name)
        capacity.append(_resources(node, where))
        labels.append(_labels(node.get("labels"), f"{where}.labels"))
    cap = np.array(capacity, dtype=np.float64)
    nodes = NodeView(tuple(names), cap, np.zeros_like(cap), np.zeros_like(cap), tuple(labels))
    jobs = []
    for where, job, job_id in _named(raw_jobs, "jobs", "id"):
        resources = job.get("resources")
        if not isinstance(resources, Mapping):
            raise SpecError(f"{where}.resources", "expected an object with cpus, memory, gpus")
        vec = _resources(resources, f"{where}.resources")
        priority = job.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise SpecError(f"{where}.priority", f"expected an integer, got {priority!r}")
        policy = job.get("policy")
        if policy is not None:
            try:
                get_policy(policy)
            except ValueError as exc:
                raise SpecError(f"{where}.policy", str(exc)) from None
        selector = _labels(job.get("node_selector"), f"{where}.node_selector")
        jobs.append(
            TraceJob(
                job_id,
                _number(job.get("submit_at", 0), f"{where}.submit_at"),
                _number(job.get("duration"), f"{where}.duration", positive=True),
                Request(*vec, node_selector=selector),
                priority,
                policy,
                _usage(job.get("usage"), vec, f"{where}.usage"),
            )
        )
    jobs.sort(key=lambda j: j.submit_at)
    return Trace(nodes, tuple(jobs))
