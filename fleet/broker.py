"""The Celery app: a small factory that takes settings and returns an app with safe defaults.

What the defaults buy (see DESIGN.md, "Known traps of Celery on Redis"):
- JSON only, both ways: nothing from the broker is ever unpickled.
- acks_late + reject_on_worker_lost + prefetch 1: a message is acknowledged only once its job
  ended, and a worker holds no job it has not started. fleet's own attempt fencing makes a
  second delivery harmless, and caps attempts so a poison job cannot loop.
- A visibility timeout above the longest job a user may ask for: kombu would otherwise hand an
  unacknowledged long job to a second worker (celery#5935).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery

from fleet.settings import Settings
from fleet.statefile import redis_url as resolve_redis_url

RUN_TASK = "fleet.run"  # the one task: run attempt N of a job on this node
TASK_VERSION = 1  # of the task's JSON arguments


def make_app(settings: Settings, redis_url: str | None = None) -> Celery:
    url = redis_url or resolve_redis_url(settings)
    visibility = settings.broker_visibility_timeout
    transport: dict[str, int] = {"visibility_timeout": visibility}
    if visibility < 600:  # kombu sweeps every ~100 s by default: keep pace with a short timeout
        transport |= {"unacked_restore_interval": max(1, visibility // 2),
                      "unacked_restore_throttle": 1}
    app = Celery("fleet", broker=url, backend=url, set_as_current=False)
    tls = tls_options(url)
    if tls is not None:
        app.conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_expires=settings.result_expires,
        result_extended=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep trying through a Redis restart
        worker_hijack_root_logger=False,
        task_default_queue="fleet.default",
        worker_enable_remote_control=True,
    )
    return app


def tls_options(url: str) -> dict[str, Any] | None:
    """kombu's TLS options from a `rediss://...?ssl_cert_reqs=required&ssl_ca_certs=...` URL,
    the form redis-py reads too, so one URL configures every client. None for `redis://`."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    options: dict[str, Any] = {"ssl_cert_reqs": reqs.get(query.get("ssl_cert_reqs", "required").lower(),
                                               ssl.CERT_REQUIRED)}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(key):
            options[key] = query[key]
    return options


def task_payload(job_id: str, attempt: int, node: str, incarnation: str) -> dict[str, Any]:
    """The task's only argument: ids, never code or pickles. Versioned, new fields get defaults."""
    return {
        "schema_version": TASK_VERSION,
        "job_id": job_id,
        "attempt": attempt,
        "node": node,
        "incarnation": incarnation,
    }


def task_id(job_id: str, attempt: int) -> str:
    """One Celery task id per attempt: Flower lists attempts apart, duplicates share an id."""
    return f"{job_id}.{attempt}"
