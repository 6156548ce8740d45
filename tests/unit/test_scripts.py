"""The Lua steps are called by name: each declares its KEYS and ARGV once, and reads only those."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from fleet.store.scripts import Script, declared

LUA = resources.files("fleet.store") / "lua"
SCRIPTS = sorted(p.name[:-4] for p in LUA.iterdir()
                 if p.name.endswith(".lua") and p.name != "prelude.lua")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_reads_only_the_names_it_declares(name: str) -> None:
    script = declared(name)
    body = (LUA / f"{name}.lua").read_text()
    code = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
    assert not re.search(r"KEYS\[|ARGV\[(?!REST\])", code), "a position instead of a name"
    assert set(re.findall(r"\bK\.(\w+)", code)) <= set(script.keys)  # an unknown one is nil
    assert set(re.findall(r"\bA\.(\w+)", code)) <= set(script.args)
    assert ("REST" in code) == script.variadic


class _Client:
    """Stands in for redis-py: records what a registered script was called with."""

    def register_script(self, source: str) -> object:
        def call(keys: list[str], args: list[object]) -> tuple[list[str], list[object]]:
            return keys, args

        return call


def test_names_are_laid_out_in_the_declared_order_and_checked() -> None:
    script = Script(_Client(), "claim")  # type: ignore[arg-type]
    keys = {"placing": "p", "events": "e", "attempts": "a", "job": "j"}
    args = {"now": 1.0, "incarnation": "i", "node": "n", "attempt": 2, "job_id": "x"}
    assert script(keys, args) == (["j", "a", "e", "p"], ["x", 2, "n", "i", 1.0])
    with pytest.raises(TypeError, match=r"missing \['placing'\], unknown \['placed'\]"):
        script({**{k: v for k, v in keys.items() if k != "placing"}, "placed": "p"}, args)
    with pytest.raises(TypeError, match="no values after"):
        script(keys, args, rest=["extra"])
    progress = Script(_Client(), "progress")  # type: ignore[arg-type]
    laid = progress({"job": "j", "metrics": "m", "attempts": "a", "events": "e"},
                    {"job_id": "x", "attempt": 1, "now": 0, "kind": "progress", "cap": 5},
                    rest=["r1", "r2"])
    assert laid[1][-2:] == ["r1", "r2"]
    assert "local REST = 6" in progress.declared.source
