"""SECURITY.md names the test that proves each line of its credential table: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"((?:tests/[\w/]+/)?test_\w+\.py)(?:::(test_\w+))?")


def _test_file(name: str) -> Path:
    if "/" in name:
        return REPO / name
    found = sorted(REPO.glob(f"tests/**/{name}"))
    assert len(found) == 1, f"SECURITY.md names {name}: found {found}"
    return found[0]


def test_every_test_security_md_names_exists() -> None:
    text = (REPO / "SECURITY.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= 10  # the table is there and names its tests
    for file, test in references:
        path = _test_file(file)
        assert path.is_file(), f"SECURITY.md names {file}, which does not exist"
        if test:
            assert re.search(rf"^def {test}\(", path.read_text(), re.M), \
                f"SECURITY.md names {file}::{test}, which does not exist"
