"""kombu's Redis transport, hardened: a list item that is not a kombu envelope is dead-lettered.

Anyone who can write to a node's queue could otherwise stop its worker: kombu decodes each
item it pops as JSON and lets the error escape its event loop, which Celery treats as
unrecoverable (the worker exits). This channel checks the envelope first and moves a bad item,
as received, to fleet's dead-letter list; well-formed envelopes go on to Celery unchanged,
where `accept_content=["json"]` refuses a pickle body before it is ever deserialized.

`install()` points the `redis` and `rediss` URL schemes at this transport, in the worker
process only.
"""

from __future__ import annotations

import json
import logging
from queue import Empty
from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from workers.consumer import dead_letter_record

log = logging.getLogger("fleet.transport")

ENVELOPE_KEYS = ("body", "headers", "properties")
MAX_MESSAGE_BYTES = 1 << 20  # fleet's task messages are a few hundred bytes


def check_envelope(item: bytes | str) -> tuple[dict[str, Any] | None, str]:
    """(envelope, "") when `item` is a kombu message envelope, else (None, why not)."""
    if len(item) > MAX_MESSAGE_BYTES:
        return None, f"message of {len(item)} bytes is over the {MAX_MESSAGE_BYTES} byte limit"
    try:
        envelope = json.loads(bytes_to_str(item))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # too deep: not ours either
        return None, f"not a JSON envelope: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(envelope, dict) or not all(k in envelope for k in ENVELOPE_KEYS):
        return None, "not a kombu envelope (body, headers, properties)"
    if not isinstance(envelope["properties"], dict):
        return None, "envelope properties are not an object"
    return envelope, ""


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        """kombu restores a closing channel's unacked messages through that channel's
        connection; when the broker connection was lost first, that connection is already
        gone and kombu raises AttributeError, which Celery treats as unrecoverable: the worker
        exits on a Redis restart (the celery#8030 family). Here the messages stay in Redis's
        unacked index instead: the master republishes a placed job nobody claimed, and
        claim.lua drops a duplicate delivery, so nothing is lost or run twice."""
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]  # kombu's, unannotated
        except AttributeError as exc:
            log.warning("not restoring unacked messages of a closed connection (%s)", exc)

    def ack(self, delivery_tag: Any) -> None:
        """The same trap when a task that outlived a lost connection is acknowledged: the
        message stays unacked in Redis, to be swept back after the visibility timeout and
        dropped by claim.lua, since its job has ended."""
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]  # kombu's, unannotated
        except AttributeError as exc:
            log.warning("cannot ack %s on a closed connection (%s)", delivery_tag, exc)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]  # kombu's
        except AttributeError as exc:
            log.warning("cannot reject %s on a closed connection (%s)", delivery_tag, exc)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own method, with the envelope checked before delivery.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()  # the one kombu's redis transport raises (it imports queue's)
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            envelope, why = check_envelope(item)
            if envelope is None:
                raw = item if isinstance(item, bytes) else str(item).encode()
                dead_letter_record(self.client, why, queue=dest, task=None, task_id=None, body=raw)
                return True
            self.connection._deliver(envelope, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu resets it to None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    path = f"{__name__}:Transport"
    kombu_transport.TRANSPORT_ALIASES["redis"] = path
    kombu_transport.TRANSPORT_ALIASES["rediss"] = path

