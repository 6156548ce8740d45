"""A Celery consumer that moves refused messages to fleet's dead-letter list.

Celery already refuses what fleet must never run: `accept_content=["json"]` makes kombu raise
ContentDisallowed for a pickle *before* deserializing it, and unknown tasks are rejected. By
default it then logs and drops the message; fleet keeps it, with the reason, in the
dead-letter list (`fleet dead-letters` / an operator can inspect it), and the worker serves on.
The body is stored as received, never decoded.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import redis
from celery.worker.consumer import Consumer

from fleet.store import keys

log = logging.getLogger("fleet.consumer")

DEAD_LETTER_CAP = 10_000
BODY_PREVIEW = 4096  # bytes of the raw body kept


def dead_letter(client: redis.Redis, message: Any, reason: str) -> None:
    """Record a refused kombu message as received (its body is never decoded)."""
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    headers = message.headers or {}
    dead_letter_record(
        client, reason, queue=(message.delivery_info or {}).get("routing_key"),
        task=headers.get("task"), task_id=headers.get("id"), body=body,
        content_type=message.content_type, content_encoding=message.content_encoding,
    )


def dead_letter_record(
    client: redis.Redis, reason: str, *, queue: str | None, task: Any, task_id: Any, body: bytes,
    content_type: str | None = None, content_encoding: str | None = None,
) -> None:
    """Push one record to the dead-letter list. Never raises: the worker must keep serving."""
    try:
        record = {
            "time": time.time(), "reason": reason[:500], "queue": queue,
            "content_type": content_type, "content_encoding": content_encoding,
            "task": str(task)[:200] if task is not None else None,
            "id": str(task_id)[:200] if task_id is not None else None,
            "size": len(body), "body_b64": base64.b64encode(body[:BODY_PREVIEW]).decode(),
        }
        pipe = client.pipeline(transaction=False)
        pipe.lpush(keys.DEAD_LETTER, json.dumps(record))
        pipe.ltrim(keys.DEAD_LETTER, 0, DEAD_LETTER_CAP - 1)
        pipe.execute()
        log.warning("dead-lettered a message from %s: %s", queue, reason)
    except Exception:  # noqa: BLE001
        log.exception("could not dead-letter a message")


class DeadLetterConsumer(Consumer):  # type: ignore[misc]  # celery is untyped: Consumer is Any
    """Celery's consumer, with refused messages kept instead of dropped."""

    def _dead_letters(self) -> redis.Redis:
        client = getattr(self, "_fleet_redis", None)
        if client is None:
            client = self._fleet_redis = redis.Redis.from_url(self.app.conf.broker_url)
        return client

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter(self._dead_letters(), message, f"refused content: {type(exc).__name__}: {exc}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter(self._dead_letters(), message, "not a task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter(self._dead_letters(), message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter(self._dead_letters(), message, f"invalid task: {exc}")
        super().on_invalid_task(body, message, exc)
