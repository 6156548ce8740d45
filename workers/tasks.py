"""The Celery task a node runs: `fleet.run`, with JSON ids as its only argument.

Malformed arguments are refused (and never executed); the real work is the supervisor's.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from pydantic import BaseModel, ConfigDict, ValidationError

from fleet.broker import RUN_TASK, SCHEMA_VERSION
from workers.supervisor import Supervisor


class TaskPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int
    job_id: str
    attempt: int
    node: str
    incarnation: str


def register(app: Celery, supervisor: Supervisor) -> None:
    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run(self: Task, payload: Any = None, **_: Any) -> dict:
        try:
            order = TaskPayload.model_validate(payload)
        except ValidationError as exc:
            return {"discarded": f"malformed payload: {exc.errors()[0]['msg']}"}
        if order.schema_version > SCHEMA_VERSION:
            return {"discarded": f"unknown schema_version {order.schema_version}"}

        def on_progress(report: dict) -> None:
            self.update_state(state="PROGRESS", meta={
                "job": order.job_id, "attempt": order.attempt, "node": order.node,
                "step": report.get("step"), **(report.get("metrics") or {}),
            })

        return supervisor.run(order.model_dump(), on_progress=on_progress)
