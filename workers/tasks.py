"""The Celery task a node runs: `fleet.run`, with JSON ids as its only argument.

Malformed arguments are refused (and never executed); the real work is the supervisor's.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery, Task
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.broker import RUN_TASK, TASK_VERSION
from fleet.entrypoints import is_job_id
from workers.attempt.supervisor import Supervisor
from workers.consumer import dead_letter_record


class TaskPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int
    job_id: str
    attempt: int = Field(gt=0)
    node: str = Field(max_length=100)
    incarnation: str = Field(max_length=64)

    @field_validator("job_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not is_job_id(value):
            raise ValueError("not a fleet job id")
        return value


def register(app: Celery, supervisor: Supervisor) -> None:
    @app.task(  # type: ignore[untyped-decorator]  # celery is untyped
        name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run(self: Task, payload: Any = None, **_: Any) -> dict[str, Any]:
        try:
            args = TaskPayload.model_validate(payload)
        except ValidationError as exc:
            reason = f"malformed payload: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
            dead_letter_record(supervisor.r, reason, queue=self.request.delivery_info.get(
                "routing_key") if self.request.delivery_info else None,
                task=RUN_TASK, task_id=self.request.id,
                body=json.dumps(payload, default=str).encode()[:4096])
            return {"discarded": reason}
        if args.schema_version > TASK_VERSION:
            return {"discarded": f"unknown schema_version {args.schema_version}"}

        def on_progress(report: dict[str, Any]) -> None:
            meta = {
                "job": args.job_id, "attempt": args.attempt, "node": args.node,
                "step": report.get("step"), **(report.get("metrics") or {}),
            }
            self.update_state(state="PROGRESS", meta=meta)
            # Flower's task view is built from events only: state PROGRESS, progress as result
            self.send_event("task-progress", result=json.dumps(meta))

        return supervisor.run(args.model_dump(), on_progress=on_progress)
