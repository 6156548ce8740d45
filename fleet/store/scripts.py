"""The fleet's Lua steps, called with named keys and arguments instead of positions.

Each script under fleet/store/lua/ declares its names in two header lines, the one place their
order is written:

    --- KEYS job attempts alloc
    --- ARGV job_id attempt now ...

(`...` ends an argument list that takes any number of values after the named ones). Loading a
script prepends the shared prelude and then `local K = {job = KEYS[1], ...}`,
`local A = {job_id = ARGV[1], ...}` and `local REST = <index of the first extra value>`, so the
script reads `K.job`, `A.now`. A caller passes dicts (`script(keys={...}, args={...})`), which
`Script.__call__` checks against the declaration and lays out in its order: a name missing,
extra or misspelt on either side fails at once instead of shifting every value after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Declared:
    """A script's source, ready to load, and the names it declares."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    variadic: bool
    source: str


def _names(body: str, which: str, script: str) -> list[str]:
    found = re.findall(rf"^--- {which}\b(.*)$", body, flags=re.MULTILINE)
    if len(found) != 1:
        raise ValueError(f"{script}.lua: expected one '--- {which}' line, found {len(found)}")
    names: list[str] = found[0].split()
    for n in names:
        if n != "..." and not _NAME.match(n):
            raise ValueError(f"{script}.lua: {n!r} is not a Lua name")
    return names


@cache
def declared(name: str, prelude: bool = True) -> Declared:
    """Script `name` (fleet/store/lua/<name>.lua), with the prelude unless told otherwise."""
    lua = resources.files("fleet.store") / "lua"
    body = (lua / f"{name}.lua").read_text()
    key_names, arg_names = _names(body, "KEYS", name), _names(body, "ARGV", name)
    variadic = arg_names[-1:] == ["..."]
    arg_names = arg_names[:-1] if variadic else arg_names
    if "..." in key_names or "..." in arg_names:
        raise ValueError(f"{name}.lua: '...' may only end the ARGV line")
    table = "\n".join([
        "local K = {" + ", ".join(f"{k} = KEYS[{i}]" for i, k in enumerate(key_names, 1)) + "}",
        "local A = {" + ", ".join(f"{a} = ARGV[{i}]" for i, a in enumerate(arg_names, 1)) + "}",
        f"local REST = {len(arg_names) + 1}",
    ])
    head = (lua / "prelude.lua").read_text() + "\n" if prelude else ""
    return Declared(name, tuple(key_names), tuple(arg_names), variadic,
                    f"{head}{table}\n{body}")


class Script:
    """One declared script registered on a connection; call it with named keys and args."""

    def __init__(self, client: redis.Redis, name: str, prelude: bool = True) -> None:
        self.declared = declared(name, prelude)
        self._script = client.register_script(self.declared.source)

    def __call__(self, keys: Mapping[str, str], args: Mapping[str, Any],
                 rest: Sequence[Any] = ()) -> Any:
        return self._script(keys=self.keys(keys), args=self.args(args, rest))

    def keys(self, given: Mapping[str, str]) -> list[str]:
        return _laid_out(self.declared.name, "KEYS", self.declared.keys, given)

    def args(self, given: Mapping[str, Any], rest: Sequence[Any] = ()) -> list[Any]:
        if rest and not self.declared.variadic:
            raise TypeError(f"{self.declared.name}.lua takes no values after its named ARGV")
        return _laid_out(self.declared.name, "ARGV", self.declared.args, given) + list(rest)


def _laid_out(script: str, which: str, order: tuple[str, ...], given: Mapping[str, Any]) -> list[Any]:
    if given.keys() != set(order):
        missing, extra = set(order) - set(given), set(given) - set(order)
        raise TypeError(f"{script}.lua {which}: missing {sorted(missing)}, unknown {sorted(extra)}")
    return [given[name] for name in order]
