"""What a driver does. Drivers are idempotent where they can be: `up` on a running fleet is an
error that says so, `scale` converges to its target, `down` on a stopped fleet does nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class NodeShape:
    """The limits each new node is started with."""

    cpus: float
    memory: int  # bytes


@dataclass(frozen=True)
class UpResult:
    redis_url: str
    flower_url: str | None
    flower_user: str | None
    flower_password_file: str | None
    nodes: tuple[str, ...]


class Driver(Protocol):
    name: str

    def up(self, workers: int, shape: NodeShape, *, flower: bool = True) -> UpResult: ...

    def scale(self, target: int, *, wait: float | None = None) -> tuple[list[str], list[str]]:
        """(added, draining) node ids."""
        ...

    def down(self) -> None: ...
