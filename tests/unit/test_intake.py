"""An intake entry is untrusted input: what the master accepts from it, and what it refuses."""

from __future__ import annotations

import json

import pytest

from fleet.master import intake
from fleet.settings import Settings
from fleet.spec import JobSpec

SETTINGS = Settings(max_job_timeout=2 * 86400)
NOOP = JobSpec(name="ok", entrypoint="workers.jobs.synthetic:noop")


def raw(fields: dict[str, str]) -> dict[bytes, bytes]:
    """As redis-py returns an entry's fields."""
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_a_client_s_entries_parse_back_to_the_same_request() -> None:
    request = intake.parse(raw(intake.entry("submit", "ok-1234abcd", NOOP)), SETTINGS)
    assert (request.op, request.job_id, request.spec) == ("submit", "ok-1234abcd", NOOP)
    cancel = intake.parse(raw(intake.entry("cancel", "ok-1234abcd")), SETTINGS)
    assert (cancel.op, cancel.job_id, cancel.spec) == ("cancel", "ok-1234abcd", None)


@pytest.mark.parametrize("fields, job_id, says", [
    ({"op": "submit", "job_id": "../etc", "spec": "{}"}, None, "job_id"),
    ({"op": "submit"}, None, "job_id"),
    ({"op": "submit", "job_id": "x" * 81}, None, "job_id"),
    ({f"f{i}": "v" for i in range(9)}, None, "fields"),
    ({"op": "rm", "job_id": "a-1"}, "a-1", "op"),
    ({"op": "submit", "job_id": "a-1", "spec": "{nope"}, "a-1", "not JSON"),
    ({"op": "submit", "job_id": "a-1", "spec": "[" * 50_000 + "]" * 50_000}, "a-1", "not JSON"),
    ({"op": "submit", "job_id": "a-1", "spec": " " * (intake.MAX_SPEC_BYTES + 1)}, "a-1", "bytes"),
    ({"op": "submit", "job_id": "a-1", "spec": "[]"}, "a-1", "spec"),
    ({"op": "submit", "job_id": "a-1",
      "spec": json.dumps({"name": "x", "entrypoint": "os:system"})}, "a-1", "allowlist"),
    ({"op": "submit", "job_id": "a-1", "spec": json.dumps({**NOOP.payload(), "timeout": 3 * 86400})},
     "a-1", "timeout"),
])
def test_a_bad_entry_is_refused_naming_its_job_when_it_has_a_usable_one(
        fields: dict[str, str], job_id: str | None, says: str) -> None:
    with pytest.raises(intake.BadEntry) as err:
        intake.parse(raw(fields), SETTINGS)
    assert err.value.job_id == job_id
    assert says in str(err.value) and "\n" not in str(err.value)
