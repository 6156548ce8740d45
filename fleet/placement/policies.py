"""The score stage and the choice: which feasible node a job goes to, and why.

A policy scores every node (higher is better, −inf where the job does not fit) and `choose`
takes the best, breaking ties by the lowest index so that a decision is reproducible. Only the
policies whose point is randomness (`p2c`, `random`, `seed`) use the state's generator.

Load is measured *after* placing the job, as Kubernetes' NodeResourcesFit does: a 2-CPU job is
half of a 4-CPU node but an eighth of a 16-CPU one, and a score that ignored that would treat the
two nodes alike. Fractions are taken over the resources a node has (a node without GPUs has no
GPU fraction), on the allocated columns: CPUs, memory, GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from fleet.placement.nodes import (
    EPS,
    GPUS,
    RESOURCES,
    NodeView,
    Request,
    amount,
    describe,
    feasible,
    selector_text,
    unfit_reason,
)
from fleet.resources import KIND, RESERVED

#: spread's blend of what is promised (reservations) and what is measured (usage).
RESERVED_WEIGHT = 0.7
USAGE_WEIGHT = 0.3
#: Weight of the mean fraction in spread's load: it only separates nodes whose busiest resource
#: is equally busy.
TIE_WEIGHT = 0.01
#: Scores are sums of keys scaled apart so that a higher key always wins: tier >> GPU fit >> load.
TIER = 1e6
GPU_FIT = 1e2
DEFAULT_POLICY = "spread"


@dataclass
class PolicyState:
    """Per-fleet state a policy may use: the random generator and the round-robin cursor."""

    rng: np.random.Generator
    cursor: int = 0

    @classmethod
    def seeded(cls, seed: int | None = None) -> PolicyState:
        return cls(np.random.default_rng(seed))


ScoreFn = Callable[[NodeView, Request, PolicyState, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Policy:
    name: str
    summary: str
    score: ScoreFn = field(repr=False)
    #: False only for `seed`, the baseline that places without looking at what fits.
    checks_fit: bool = True


def _after(nodes: NodeView, req: Request, blend_usage: bool) -> np.ndarray:
    """(n, k) fractions of each node's reserved kinds (CPUs, memory, GPUs) in use once `req` is
    placed there; 0 on the other columns."""
    used = nodes.reserved
    if blend_usage:
        used = RESERVED_WEIGHT * used + USAGE_WEIGHT * nodes.usage
    frac: np.ndarray = (used + req.vector()) * nodes.inverse_capacity()
    return frac


def _counts(nodes: NodeView) -> np.ndarray:
    """How many of the reserved kinds each node has (at least 1, to divide by)."""
    return nodes.cached(
        "counts", lambda: np.maximum((nodes.inverse_capacity() > 0).sum(axis=1), 1)
    )


def _masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, values, -np.inf)


def _gpu_nodes(nodes: NodeView) -> np.ndarray:
    return nodes.cached("gpu_nodes", lambda: nodes.capacity[:, GPUS] > 0)


def keep_gpus(nodes: NodeView, req: Request) -> np.ndarray | float:
    """(n,) 1 where a job that asks for no GPU would take CPUs and memory from a GPU node.

    GPU nodes are few and their GPUs are useless without the CPUs and memory beside them, so the
    scoring policies send a CPU-only job there only when no other node fits it (the effect of a
    Kubernetes PreferNoSchedule taint on GPU nodes). 0 for a GPU job.
    """
    if req.amount("gpus") > 0:
        return 0.0
    return _gpu_nodes(nodes).astype(np.float64)


def spread_load(nodes: NodeView, req: Request) -> np.ndarray:
    """(n,) the load of each node once `req` is on it: what `spread` minimises.

    Per resource, load = 0.7 × reserved/capacity + 0.3 × measured usage/capacity (both counting
    the new job). Reservations are what fleet promised and cannot be taken back, so they weigh
    most; measured usage catches what reservations miss (a job busier than it asked, a process
    outside fleet) and moves as soon as the next report does.

    Across resources we take the MAX, plus a hundredth of the mean: a node is as loaded as its
    busiest resource, since a node with 95% of its memory promised is nearly full for the next
    job however idle its CPUs. The mean hides exactly that. The small mean term only orders nodes
    whose busiest resource is equally busy.
    """
    frac = _after(nodes, req, blend_usage=True)
    load: np.ndarray = frac.max(axis=1) + TIE_WEIGHT * frac.sum(axis=1) / _counts(nodes)
    return load


def spread_key(nodes: NodeView, req: Request) -> np.ndarray:
    """(n,) what `spread` minimises: tier, then GPUs left over, then load.

    Spreading is right for what is divisible (CPUs, memory): a job on a less loaded node has
    more headroom and fewer neighbours to contend with. It is wrong for GPUs: they
    are whole, and a 4- or 8-GPU job needs them on ONE node, so 1-GPU jobs scattered across the
    big GPU nodes would starve it. So a GPU job goes where the fewest GPUs stay free after it
    (best fit on GPUs, as the Kubernetes docs advise for extended resources), and only among
    equal fits to the least loaded node; a CPU-only job avoids GPU nodes (`keep_gpus`).
    """
    load = np.clip(spread_load(nodes, req), 0.0, GPU_FIT - 1)
    gpus = req.amount("gpus")
    if gpus > 0:
        left = nodes.capacity[:, GPUS] - nodes.reserved[:, GPUS] - gpus
        key: np.ndarray = TIER * keep_gpus(nodes, req) + GPU_FIT * left + load
    else:
        key = TIER * keep_gpus(nodes, req) + load
    return key


def _spread(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    return _masked(-spread_key(nodes, req), mask)


def _pack(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    """Most allocated after placing (mean reserved fraction): best fit, leaves big holes whole.

    Reservations only: packing is about what is promised, and usage noise would unpack it.
    """
    frac = _after(nodes, req, blend_usage=False)
    return _masked(frac.sum(axis=1) / _counts(nodes) - TIER * keep_gpus(nodes, req), mask)


def _balanced(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    """Least spread between a node's resource fractions after placing (k8s BalancedAllocation).

    A node left with CPUs used up and memory idle strands the memory; one whose resources fill
    together does not. Ties go to the less allocated node.
    """
    frac = _after(nodes, req, blend_usage=False)
    has = nodes.inverse_capacity() > 0
    counts = _counts(nodes)
    mean = (frac * has).sum(axis=1) / counts
    std = np.sqrt((((frac - mean[:, None]) ** 2) * has).sum(axis=1) / counts)
    return _masked(-std - TIE_WEIGHT * mean - TIER * keep_gpus(nodes, req), mask)


def _p2c(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    """The less loaded (spread's load) of two feasible nodes drawn at random.

    Every placer picking THE least loaded node on the same stale reports sends everything to one
    node; two random choices keep almost all of the benefit and none of the herding
    (Mitzenmacher, "How useful is old information?"). Nodes not drawn score −inf.
    """
    idx = np.flatnonzero(mask)
    out = np.full(len(nodes), -np.inf)
    if len(idx) > 2:
        a = int(state.rng.integers(len(idx)))
        b = int(state.rng.integers(len(idx) - 1))
        idx = idx[[a, b + (b >= a)]]
    if len(idx):
        sub = NodeView(
            tuple(nodes.names[i] for i in idx),
            nodes.capacity[idx],
            nodes.reserved[idx],
            nodes.usage[idx],
        )
        out[idx] = -spread_key(sub, req)
    return out


def _random(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    """Uniform among the feasible nodes (a baseline)."""
    return _masked(state.rng.random(len(nodes)), mask)


def _round_robin(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    """The first feasible node at or after the cursor, wrapping (a baseline)."""
    n = len(nodes)
    distance = (np.arange(n) - state.cursor) % max(n, 1)
    return _masked(-distance.astype(np.float64), mask)


def _seed(nodes: NodeView, req: Request, state: PolicyState, mask: np.ndarray) -> np.ndarray:
    """The design this project started from: a random "load" per node, the least wins.

    It looks neither at reports nor at what fits: kept as the baseline to beat, and the only
    policy that can over-commit a node.
    """
    return -state.rng.random(len(nodes))


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("spread", "least loaded (reserved + measured, busiest resource); GPUs best fit", _spread),
        Policy("pack", "most allocated: best fit, keeps big holes for big jobs", _pack),
        Policy("balanced", "even use of CPUs, memory and GPUs on the node", _balanced),
        Policy("p2c", "less loaded of two random feasible nodes: no herding", _p2c),
        Policy("random", "uniform among feasible nodes (baseline)", _random),
        Policy("round_robin", "next feasible node after the last one (baseline)", _round_robin),
        Policy("seed", "random load, least picked, no fit check (original baseline)", _seed, False),
    )
}


def get_policy(name: str) -> Policy:
    """The policy called `name`; ValueError listing the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ValueError(f"unknown placement policy {name!r}; choose one of {known}") from None


def _allowed(nodes: NodeView, req: Request, blocked: Mapping[int, str] | None) -> np.ndarray:
    mask = feasible(nodes, req)
    if blocked:
        mask = mask.copy()
        mask[list(blocked)] = False
    return mask


def score(
    policy: str,
    nodes: NodeView,
    req: Request,
    state: PolicyState,
    *,
    blocked: Mapping[int, str] | None = None,
) -> np.ndarray:
    """(n,) float, higher is better, −inf where infeasible (`seed` scores every node).

    `blocked` maps node indices the job may not use this time to the reason (a node held for a
    starving job): they count as infeasible.
    """
    return get_policy(policy).score(nodes, req, state, _allowed(nodes, req, blocked))


def choose(
    policy: str,
    nodes: NodeView,
    req: Request,
    state: PolicyState,
    *,
    blocked: Mapping[int, str] | None = None,
) -> Decision:
    """Filter, score, pick the best; the decision keeps what it needs to explain itself."""
    chosen = get_policy(policy)
    mask = _allowed(nodes, req, blocked)
    scores = chosen.score(nodes, req, state, mask)
    if len(nodes) == 0:
        return Decision(policy, None, None, "no live nodes", req, nodes, mask, scores, blocked)
    index = int(np.argmax(scores))
    if chosen.checks_fit and not mask[index]:
        if blocked and feasible(nodes, req).any():
            reason = "fits only on nodes held for jobs waiting longer: " + "; ".join(
                f"{nodes.names[i]} ({why})" for i, why in sorted(blocked.items())[:3]
            )
        else:
            reason = unfit_reason(nodes, req)
        return Decision(policy, None, None, reason, req, nodes, mask, scores, blocked)
    if policy == "round_robin":
        state.cursor = (index + 1) % len(nodes)
    return Decision(policy, nodes.names[index], index, None, req, nodes, mask, scores, blocked)


def _round(x: float) -> float | None:
    return round(float(x), 6) if np.isfinite(x) else None


@dataclass(frozen=True, eq=False)
class Decision:
    """Where a job goes (or why nowhere), with every node's verdict on demand.

    `candidates` is built when read, not when choosing: at 10,000 nodes a list of dicts costs
    more than the choice itself.
    """

    policy: str
    node: str | None
    index: int | None
    reason: str | None
    request: Request | None = field(default=None, repr=False)
    view: NodeView | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    scores: np.ndarray | None = field(default=None, repr=False)
    blocked: Mapping[int, str] | None = field(default=None, repr=False)

    def _why_not(self, i: int, free: np.ndarray) -> str | None:
        assert self.view is not None and self.request is not None and self.mask is not None
        if self.blocked and i in self.blocked:
            return self.blocked[i]
        selector = self.view.selector_mask(self.request.node_selector)
        if selector is not None and not selector[i]:
            return f"labels do not match {selector_text(self.request.node_selector)}"
        need = self.request.vector()
        for r, name in enumerate(RESOURCES):
            if free[r] + EPS[r] < need[r]:
                return f"needs {describe(name, need[r])}; {amount(name, max(free[r], 0.0))} free"
        return None

    def _candidate(self, i: int) -> dict[str, Any]:
        assert self.view is not None and self.mask is not None and self.scores is not None
        free = self.view.free()[i]
        if self.mask[i]:
            why = None if np.isfinite(self.scores[i]) else "not drawn (p2c compares two at random)"
        else:
            why = self._why_not(i, free)
        return {
            "node": self.view.names[i],
            "feasible": bool(self.mask[i]),
            "score": _round(self.scores[i]),
            "free": {k.name: _json_amount(k.name, free[RESOURCES.index(k.name)]) for k in RESERVED},
            "why_not": why,
        }

    @cached_property
    def candidates(self) -> list[dict[str, Any]]:
        """One per node, in node order: feasible, score (None for −inf), free, why not."""
        if self.view is None:
            return []
        return [self._candidate(i) for i in range(len(self.view))]

    def ranked(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Candidates best first: the chosen node, the other scored ones, then the rest."""
        if self.view is None or self.scores is None:
            return []
        n = len(self.view)
        order = np.lexsort((np.arange(n), -np.nan_to_num(self.scores, neginf=-1e300)))
        if self.index is not None:
            order = np.concatenate(([self.index], order[order != self.index]))
        if limit is not None:
            order = order[:limit]
        return [self._candidate(int(i)) for i in order]

    def as_dict(self, limit: int | None = 20) -> dict[str, Any]:
        """JSON-safe: the placement record. Candidates best first, at most `limit` of them."""
        n = 0 if self.view is None else len(self.view)
        shown = self.ranked(limit)
        return {
            "policy": self.policy,
            "node": self.node,
            "reason": self.reason,
            "request": None if self.request is None else _request_dict(self.request),
            "nodes": n,
            "feasible": 0 if self.mask is None else int(self.mask.sum()),
            "candidates": shown,
            "candidates_omitted": n - len(shown),
        }


def _json_amount(name: str, value: float) -> float:
    """An amount for a JSON record: whole bytes for a size, else rounded to 6 places."""
    return int(value) if KIND[name].size else round(float(value), 6)


def _request_dict(req: Request) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: int(a) if KIND[name].size else a for name, a in zip(RESOURCES, req.amounts, strict=True)
    }
    out["node_selector"] = dict(req.node_selector)
    return out
