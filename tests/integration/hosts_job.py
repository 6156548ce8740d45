"""A job that leaves a file in its output directory, for the two-host tests: where does what a
job made on the second host end up? The test's settings put this module on the allowlist."""

from __future__ import annotations

from typing import Any

from workers.context import JobContext


def writes_output(ctx: JobContext, text: str = "weights") -> dict[str, Any]:
    (ctx.output_dir / "model.txt").write_text(text)
    return {"wrote": "model.txt"}
