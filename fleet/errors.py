"""Errors a user sees: one line, naming what is wrong and how to fix it.

A `FleetError` is turned into a one-line message and a non-zero exit by the CLI; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class FleetError(Exception):
    """An error meant for the user, not a bug."""

    exit_code = 1


class SpecError(FleetError):
    """A job spec (or another user input) is invalid. `field` is the dotted path of the culprit."""

    exit_code = 2

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(FleetError):
    """A job, node or fleet that does not exist."""


class ConnectionFailed(FleetError):
    """Redis (the fleet) cannot be reached or refused our credentials."""

    exit_code = 3


class RedisUnavailable(ConnectionFailed):
    """Redis did not answer (down, restarting, loading its data): retrying later is the fix;
    what was acknowledged before is kept (append-only file)."""


class WaitTimedOut(FleetError):
    """A wait for a job ran out of time; the job itself goes on."""
