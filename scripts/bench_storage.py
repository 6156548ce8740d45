"""The embedded S3 server's cost and speed: start time, memory, and a 64 MiB file through it.

    python scripts/bench_storage.py [--mib 64] [--rounds 3]

Starts SeaweedFS (fleet.drivers.s3_server) in a fresh temp folder and reports: seconds from
exec to ready (bucket made, a probe written), the process's RSS when ready and after the
transfers, a restart's time on the same folder, and the median put_file / get_file throughput
of a `--mib` MiB file of random bytes, for S3Storage and for FileStorage (the same file system)
as the reference. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fleet.drivers.s3_server import S3Server
from fleet.storage import FileStorage, Storage

MiB = 1 << 20


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(store: Storage, src: Path, out: Path, rounds: int) -> dict[str, float]:
    mib = src.stat().st_size / MiB
    puts, gets = [], []
    for i in range(rounds):
        began = time.monotonic()
        store.put_file(f"bench/{i}", src)
        puts.append(mib / (time.monotonic() - began))
        began = time.monotonic()
        store.get_file(f"bench/{i}", out)
        gets.append(mib / (time.monotonic() - began))
    return {"put_mib_s": round(statistics.median(puts)), "get_mib_s": round(statistics.median(gets))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src = base / "src"
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        server = S3Server(base / "s3").start()
        try:
            assert server.process is not None
            result: dict[str, object] = {"start_s": round(server.started_in or 0, 2),
                                         "rss_ready_mib": round(rss_mib(server.process.pid))}
            result["s3"] = throughput(server.storage(), src, base / "out", args.rounds)
            result["rss_after_mib"] = round(rss_mib(server.process.pid))
            result["file"] = throughput(FileStorage(base / "files"), src, base / "out", args.rounds)
            began = time.monotonic()
            server.stop()
            result["stop_s"] = round(time.monotonic() - began, 2)
            server.start()
            result["restart_s"] = round(server.started_in or 0, 2)
        finally:
            server.stop()
    result["mib"] = args.mib
    print(json.dumps(result))


if __name__ == "__main__":
    main()
