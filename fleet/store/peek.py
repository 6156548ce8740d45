"""Bounded reads of intake streams: an entry's large values are measured in Redis, not sent.

An intake entry is written by a producer, so its size is the producer's choice: a code bundle
holds up to the cap, a hostile one more. XRANGE would hand all of it to the reader. The fleet's
read-only Redis function (`LIBRARY`, loaded by the operator's credential on first use) reads a
stream one entry at a time and returns each value over its cap as its length alone
(`Oversize`), keeps at most `max_fields + 1` fields of an entry and `max_name + 1` characters
of a field name (enough for the reader to refuse it), and stops once the values it returned
pass `budget` bytes (always returning the first entry, so a reader makes progress): the master
holds at most about one bundle per round, whatever waits in the intakes, and `fleet status`
never receives a bundle's bytes (unless no function was ever loaded, which `fleet up` does: a
producer then reads plainly). `bound` is the same reading over entries held in Python (the
in-memory store), so both stores answer alike.

A producer may call the function (FCALL_RO; it is flagged no-writes, and runs with the
caller's key permissions) but never load one (fleet.acl).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fleet.store import keys

FUNCTION = "fleet_intake_peek_v1"
DATA_FIELD = "data"  # the one field allowed `Caps.data` bytes (a bundle's archive)

BODY = f"""
local function peek(keys, args)
  local newest_first = args[1] == 'desc'
  local count, budget = tonumber(args[2]), tonumber(args[3])
  local data_cap, other_cap = tonumber(args[4]), tonumber(args[5])
  local max_fields, max_name = tonumber(args[6]), tonumber(args[7])
  local used, any, out = 0, false, {{}}
  for k = 1, #keys do
    local found, failed = {{}}, nil
    local cursor = newest_first and '+' or '-'
    local taken = 0
    while taken < count and (used < budget or not any) do
      local got
      if newest_first then
        got = redis.pcall('XREVRANGE', keys[k], cursor, '-', 'COUNT', 1)
      else
        got = redis.pcall('XRANGE', keys[k], cursor, '+', 'COUNT', 1)
      end
      if type(got) == 'table' and got['err'] then failed = got['err'] break end
      if #got == 0 then break end
      local id, fields = got[1][1], got[1][2]
      cursor = '(' .. id
      local flat, over, size = {{}}, {{}}, 0
      for j = 1, math.min(#fields, 2 * max_fields + 2), 2 do
        local name, value = fields[j], fields[j + 1]
        if #name > max_name then name = string.sub(name, 1, max_name + 1) end
        local cap = (name == '{DATA_FIELD}') and data_cap or other_cap
        if #value > cap then
          over[#over + 1] = name
          over[#over + 1] = #value
          value = ''
        end
        size = size + #name + #value
        flat[#flat + 1] = name
        flat[#flat + 1] = value
      end
      if any and used + size > budget then break end
      used, any, taken = used + size, true, taken + 1
      found[#found + 1] = {{id, flat, over}}
    end
    if failed then out[k] = {{-1, failed}} else out[k] = {{0, found}} end
  end
  return out
end
"""
LIBRARY = (f"#!lua name=fleet_intake_v1\n{BODY}\n"
           f"redis.register_function{{function_name='{FUNCTION}', callback=peek, "
           "flags={'no-writes'}}\n")
SCRIPT = f"{BODY}\nreturn peek(KEYS, ARGV)\n"  # for a server without functions (Redis 6)


def load(r: redis.Redis) -> bool:
    """Load the function (the operator's credential): `fleet up` does, before any producer
    reads; a master loads it on first use too, should it be missing. False on a server
    without functions (Redis 6, which has no producer credential either: fleet.acl), whose
    operator runs the same Lua as a script."""
    try:
        r.function_load(LIBRARY, replace=True)
    except redis.exceptions.ResponseError as exc:
        if not unknown_command(exc):
            raise
        return False
    return True


def unknown_command(exc: Exception) -> bool:
    return "unknown command" in str(exc).lower()


class Oversize(int):
    """A value the read left in Redis: its length in bytes."""


@dataclass(frozen=True)
class Caps:
    """What one read may return: per value (`data` for the bundle field, `other` for the
    rest), per entry (fields, name length) and in all (`budget`, over every stream)."""

    data: int
    other: int
    budget: int
    max_fields: int = 8
    max_name: int = 16

    def args(self, order: str, count: int) -> list[Any]:
        return [order, count, self.budget, self.data, self.other, self.max_fields, self.max_name]


Fields = dict[Any, Any]
Found = list[tuple[str, Mapping[Any, Any]]]  # a stream's entries (fleet.store.protocol.RawEntry)
# What `intake_newest` (`fleet status` of a job the master has not taken) reads: a spec, never
# a bundle's bytes.
NEWEST = Caps(data=0, other=256 * 1024, budget=16 * 2**20)


def bound(streams: Sequence[Iterable[tuple[str, Mapping[Any, Any]]]], count: int,
          caps: Caps) -> list[Found]:
    """The function's reading over entries held in Python, in the order given."""
    used, anything = 0, False
    out: list[Found] = []
    for entries in streams:
        found: Found = []
        for entry_id, fields in entries:
            if len(found) >= count or (anything and used >= caps.budget):
                break
            kept: Fields = {}
            size = 0
            for name, value in list(fields.items())[:caps.max_fields + 1]:
                text = name if isinstance(name, str) else keys.decode(name)
                if len(text) > caps.max_name:
                    text = text[:caps.max_name + 1]
                cap = caps.data if text == DATA_FIELD else caps.other
                length = len(value.encode() if isinstance(value, str) else value)
                size += len(text)
                if length > cap:
                    kept[text] = Oversize(length)
                else:
                    kept[text] = value
                    size += length
            if anything and used + size > caps.budget:
                break
            used, anything = used + size, True
            found.append((entry_id, kept))
        out.append(found)
    return out


def decode_reply(reply: Any) -> list[Found | Exception]:
    """The function's reply as (id, fields) entries per stream, oversize values as Oversize."""
    out: list[Found | Exception] = []
    for status, found in reply:
        if int(status) < 0:
            out.append(redis.exceptions.ResponseError(keys.decode(found)))
            continue
        entries: Found = []
        for entry_id, flat, over in found:
            fields: Fields = {keys.decode(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
            for i in range(0, len(over), 2):
                fields[keys.decode(over[i])] = Oversize(int(over[i + 1]))
            entries.append((keys.decode(entry_id), fields))
        out.append(entries)
    return out
