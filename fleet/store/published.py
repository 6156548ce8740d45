"""The fleet-wide settings in the store: written by the operator, read by nodes and Clients.

`keys.SETTINGS` holds `Settings.published()` as one JSON object. It is written with the
operator's credential only (`fleet up` before anything starts; the leading master on taking the
lead, which is how Compose and Swarm, which have no `fleet up`, publish theirs): a producer may
read it and Redis refuses its write (fleet.acl). A reader overlays it on its own settings
(`Settings.with_published`), so no node or producer needs the operator's environment.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from fleet.settings import BadSetting, Settings
from fleet.store import keys

if TYPE_CHECKING:
    from fleet.storage import Storage
    from fleet.store.protocol import Store

log = logging.getLogger("fleet.settings")
FRESH_S = 1.0  # how long a Client trusts what it read


def encode(settings: Settings) -> str:
    return json.dumps(settings.published(), sort_keys=True)


def decode(raw: Any) -> dict[str, Any] | None:
    """The published values (None when none are), BadSetting when they are not JSON."""
    if raw is None:
        return None
    try:
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadSetting("published settings", "not JSON") from None
    if not isinstance(values, dict):
        raise BadSetting("published settings", f"expected a JSON object, got "
                                               f"{type(values).__name__}")
    return values


def write(r: redis.Redis, settings: Settings) -> None:
    """Publish `settings`' fleet-wide values (the operator's credential)."""
    r.set(keys.SETTINGS, encode(settings))


def read(r: redis.Redis) -> dict[str, Any] | None:
    """The published values, None when none are; BadSetting when they are unreadable (a key
    of another type counts as unreadable)."""
    try:
        return decode(r.get(keys.SETTINGS))
    except redis.exceptions.ResponseError as exc:  # WRONGTYPE
        raise BadSetting("published settings", str(exc)) from None


def effective(r: redis.Redis, settings: Settings) -> Settings:
    """`settings` with the fleet's published values over them."""
    return settings.with_published(read(r))



def for_node(r: redis.Redis, settings: Settings) -> Settings:
    """What a node checks an attempt against, read for each attempt: one GET against an
    attempt start of milliseconds buys a change that reaches the next attempt with no watcher
    to keep. Unreadable values (the leading master writes them again within a second) leave
    the node's own, with a warning; a node of a fleet that published none keeps its own."""
    try:
        return effective(r, settings)
    except BadSetting as exc:
        log.warning("the fleet's published settings are unreadable, using this node's: %s", exc)
        return settings


class Reader:
    """A Client's view: its own settings with the fleet's published ones over them, read at
    most once per FRESH_S (a burst of submits costs one read), so that a submit is checked
    against what the nodes will check. Unreadable values raise BadSetting (one line)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.own = settings
        self._read: tuple[float, Settings] | None = None
        self._storage: tuple[dict[str, Any], Storage] | None = None

    def settings(self) -> Settings:
        now = time.monotonic()
        if self._read is None or not 0 <= now - self._read[0] < FRESH_S:
            self._read = (now, self.own.with_published(self.store.published_settings()))
        return self._read[1]

    def storage(self) -> Storage:
        """The fleet's store (logs, artifacts) as `settings()` names it: the published URL and
        endpoint, this reader's own S3 credentials. Opened again only when those change."""
        from fleet.storage import open_storage

        fleet = self.settings()
        if self._storage is None or self._storage[0] != fleet.published():
            self._storage = (fleet.published(), open_storage(fleet))
        return self._storage[1]
