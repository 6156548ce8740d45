"""The stable JSON shapes the Client returns, built from the store's records (pure: no I/O).

Documented in docs/json.md and parsed by scripts: fields are only ever added. Apart from the
Client so that the shape is one value, read by every command and test, and the Client holds
the reads only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def job_view(job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The stable JSON shape of a job (documented in docs/json.md; scripts parse it)."""
    spec = job.get("spec") or {}
    view = {
        "id": job["id"],
        "name": job.get("name"),
        "state": job.get("state"),
        "phase": job.get("phase") or None if job.get("state") == "RUNNING" else None,
        "terminal": job.get("terminal", False),
        "node": job.get("node") or None,
        "attempt": job.get("attempt", 0),
        "retries": job.get("retries", 0),
        "infra_retries": job.get("infra_retries", 0),
        "priority": job.get("priority", 0),
        "resources": spec.get("resources"),
        "entrypoint": spec.get("entrypoint"),
        "framework": spec.get("framework"),
        "params": spec.get("params"),
        "submitted_at": job.get("submitted_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "updated_at": job.get("updated_at"),
        "reason": job.get("reason") or None,
        "error": job.get("error") or None,
        "waiting": job.get("waiting") or None,
        "progress": job.get("progress"),
        "result": job.get("result"),
        "placement": job.get("placement"),
    }
    if attempts is not None:
        fields = ("attempt", "node", "incarnation", "placed_at", "started_at", "ended_at",
                  "end_reason", "error", "counted", "resumed_from_step", "peak_memory",
                  "env", "env_built", "env_seconds")
        view["attempts"] = [{**{f: None for f in fields}, **a} for a in attempts]
    return view
