"""Resource quantities: parsing what users write (`512Mi`, `2Gi`, `1.5`) and printing it back.

Memory is held as an int of bytes everywhere inside fleet; CPUs as a float of cores.
"""

from __future__ import annotations

import re

# Kubernetes-style suffixes: binary (Ki, Mi, Gi, Ti) and decimal (k, M, G, T); Docker-style
# lowercase single letters (b, k, m, g, t) mean binary units, as `docker run --memory` does.
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_DOCKER = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]{0,3})\s*$")


def parse_memory(value: str | int | float) -> int:
    """Bytes from `512Mi`, `2Gi`, `1g`, `1.5G` or a plain number of bytes.

    Raises ValueError with a message fit to show a user.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size like 512Mi or 2Gi, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"expected a non-negative size, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size like 512Mi or 2Gi, got {type(value).__name__}")
    match = _PATTERN.match(value)
    if not match:
        raise ValueError(f"expected a size like 512Mi or 2Gi, got {value!r}")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "":
        factor = 1
    elif suffix.lower() in _BINARY and suffix[0].isupper() and suffix[1:] == "i":
        factor = _BINARY[suffix.lower()]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    elif suffix.lower() in _DOCKER and len(suffix) == 1:
        factor = _DOCKER[suffix.lower()]
    elif suffix.lower() in {"kb", "mb", "gb", "tb"}:
        factor = _DOCKER[suffix[0].lower()]
    else:
        raise ValueError(f"unknown unit {suffix!r} in {value!r}; use Ki, Mi, Gi or Ti")
    return int(number * factor)


def format_memory(n_bytes: float) -> str:
    """`2Gi`, `512Mi`, `1.5Gi`: the shortest binary form a person reads at a glance."""
    n = float(n_bytes)
    for unit, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if abs(n) >= factor:
            scaled = n / factor
            text = f"{scaled:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{int(n)}B"


def format_cpus(cpus: float) -> str:
    return f"{cpus:.2f}".rstrip("0").rstrip(".") or "0"
