"""The README's architecture section is a map of the tree: one list item per module or package,
its path in backticks, a dash (—), what it is. A module that moves or goes away must take its
line with it and a new package must be put on the map; a new module's line is asked for in
review, not here (its package's line already places it)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^\s*- `((?:fleet|workers)/[^`]*)` — \S")


def architecture_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Architecture\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def named_paths() -> list[str]:
    return [m.group(1) for line in architecture_section().splitlines() if (m := ENTRY.match(line))]


def packages() -> set[str]:
    return {str(init.parent.relative_to(REPO)) + "/"
            for root in ("fleet", "workers") for init in (REPO / root).rglob("__init__.py")}


def test_the_map_names_paths_one_line_each() -> None:
    paths = named_paths()
    assert len(paths) > 40, "no map found in the README's architecture section"
    assert len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)


def test_every_path_on_the_map_exists() -> None:
    def exists(path: str) -> bool:  # `dir/` names a folder, anything else a file
        return (REPO / path).is_dir() if path.endswith("/") else (REPO / path).is_file()

    missing = [p for p in named_paths() if not exists(p)]
    assert missing == [], f"the README's map names what is not in the tree: {missing}"


def test_every_package_is_on_the_map() -> None:
    named = set(named_paths())
    unnamed = sorted(p for p in packages() if p not in named and f"{p}__init__.py" not in named)
    assert unnamed == [], f"packages missing from the README's map: {unnamed}"
