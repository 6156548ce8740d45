"""fleet: a message-queue driven worker fleet that trains models on resource-limited nodes.

The control plane. Importing it never imports torch or tensorflow.
"""

from typing import TYPE_CHECKING

from fleet.errors import FleetError, SpecError

if TYPE_CHECKING:  # mypy sees the class; at run time `__getattr__` imports it on first use
    from fleet.client import Client

__all__ = ["Client", "FleetError", "SpecError", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:  # lazy: `import fleet` stays cheap for the CLI and the workers
    if name == "Client":
        from fleet.client import Client

        return Client
    raise AttributeError(name)
