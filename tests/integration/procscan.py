"""Read every /proc/<pid>/cmdline and /proc/<pid>/environ this process may read.

Used two ways by tests/integration/test_secrets.py: as a job (`scan`, allowlisted for that test
only), so the reading is done by a job process with the job's own user and environment, and as
a script run by an unprivileged user (`python procscan.py`, JSON on stdout). Standard library
only: the script runs with -I as `nobody`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def read_proc() -> dict[str, dict[str, Any]]:
    """{pid: {"ppid", "cmdline", "environ"}} of every process; a field is None where this
    process may not read it (another user's environ), so the caller sees what was covered."""
    found: dict[str, dict[str, Any]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        record: dict[str, Any] = {}
        for field in ("cmdline", "environ"):
            try:
                with open(f"/proc/{name}/{field}", "rb") as f:
                    record[field] = f.read().replace(b"\0", b"\n").decode(errors="replace")
            except OSError:
                record[field] = None
        try:
            with open(f"/proc/{name}/stat") as f:
                record["ppid"] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        found[name] = record
    return found


def scan(ctx: Any, out: str) -> dict[str, Any]:
    """A job that reads /proc as itself and leaves what it read in `out` (the test's folder)."""
    found = read_proc()
    with open(out, "w") as f:
        json.dump({"self": os.getpid(), "uid": os.geteuid(), "proc": found}, f)
    return {"processes": len(found)}


if __name__ == "__main__":
    json.dump({"self": os.getpid(), "uid": os.geteuid(), "proc": read_proc()}, sys.stdout)
