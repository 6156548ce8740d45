"""Placement: which node a job goes to, as pure functions over arrays of node reports.

Filter (`feasible`), score (`score`), choose (`choose`), and the pending queue's scheduling round
(`schedule_round`). No I/O: the master reads reports and reserves around these calls, and the
simulator drives the very same functions in simulated time.
"""

from fleet.placement.nodes import (
    RESOURCES,
    NodeView,
    Request,
    feasible,
    has_room,
    never_fits,
    unfit_reason,
)
from fleet.placement.policies import (
    DEFAULT_POLICY,
    POLICIES,
    Decision,
    Policy,
    PolicyState,
    choose,
    get_policy,
    score,
)
from fleet.placement.queue import PendingJob, RoundResult, RunningJob, schedule_round

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "RESOURCES",
    "Decision",
    "NodeView",
    "PendingJob",
    "Policy",
    "PolicyState",
    "Request",
    "RoundResult",
    "RunningJob",
    "choose",
    "feasible",
    "get_policy",
    "has_room",
    "never_fits",
    "schedule_round",
    "score",
    "unfit_reason",
]
