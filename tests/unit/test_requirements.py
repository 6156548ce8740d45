"""A job's `requirements`: checked and normalized at submit, read from a bundle's requirements.txt,
recorded on the job for its node."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from fleet.client import Client
from fleet.errors import SpecError
from fleet.master.intake import Ingest
from fleet.requirements import MAX_REQUIREMENTS, check_requirement, parse_file
from fleet.settings import Settings
from fleet.spec import parse_spec
from fleet.store.protocol import Store
from tests.unit.test_store_round import node_report

BASE = {"name": "job", "entrypoint": "workers.jobs.synthetic:noop"}


def spec_error(requirements: object) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec({**BASE, "requirements": requirements}, allowlist=["workers.jobs"])
    return str(caught.value)


@pytest.mark.parametrize(("written", "kept"), [
    ("numpy", "numpy"),
    ("  Foo_Bar.baz >= 1.0, <2 ", "foo-bar-baz<2,>=1.0"),
    ("rich[jupyter,Extra]==13.*", "rich[extra,jupyter]==13.*"),
    ('tomli; python_version < "3.11"', 'tomli; python_version < "3.11"'),
])
def test_a_requirement_is_kept_in_one_normal_form(written: str, kept: str) -> None:
    assert check_requirement(written) == kept


@pytest.mark.parametrize(("entry", "why"), [
    ("", "empty requirement"),
    ("-e .", "pip options (-e) are refused"),
    ("--index-url=https://elsewhere/simple", "pip options (--index-url=https://elsewhere/simple)"),
    ("-r other.txt", "pip options (-r)"),
    ("https://example.com/pkg.whl", "URLs are refused"),
    ("git+https://example.com/repo", "URLs are refused"),
    ("pkg @ https://example.com/pkg.whl", "URLs are refused"),
    ("./mypkg", "file paths are refused"),
    ("/abs/pkg.whl", "file paths are refused"),
    ("dir/pkg", "file paths are refused"),
    ("two words", "not a pip requirement"),
    ("numpy\nscipy", "one printable line"),
    ("x" * 300, "at most 200 characters"),
])
def test_what_would_not_come_from_the_nodes_index_is_refused(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_requirement(entry)


def test_the_spec_names_the_bad_entry_and_keeps_a_sorted_set() -> None:
    spec = parse_spec({**BASE, "requirements": ["scipy", "NumPy>=1", "numpy >= 1", "scipy"]},
                      allowlist=["workers.jobs"])
    assert spec.requirements == ["numpy>=1", "scipy"]
    assert parse_spec(BASE, allowlist=["workers.jobs"]).requirements is None
    assert spec_error(["numpy", 3]) == "requirements.1: should be a valid string, got 3"
    assert spec_error(["numpy", "--pre"]).startswith("requirements.1: pip options (--pre)")
    assert spec_error("numpy") == "requirements: should be a valid list, got 'numpy'"
    too_many = [f"pkg{i}" for i in range(MAX_REQUIREMENTS + 1)]
    assert spec_error(too_many) == (f"requirements: {MAX_REQUIREMENTS + 1} entries; "
                                    f"at most {MAX_REQUIREMENTS} are allowed")


def test_a_requirements_file_is_read_line_by_line() -> None:
    text = b"# training deps\nnumpy>=1.24  # the node has it\n\nFleetProbe_Pkg==1.0\n"
    assert parse_file(text) == ["fleetprobe-pkg==1.0", "numpy>=1.24"]
    with pytest.raises(SpecError, match=r"^requirements.txt: line 2: pip options \(--extra"):
        parse_file(b"numpy\n--extra-index-url https://elsewhere/\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        parse_file(b"\xff\xfe")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def test_a_bundles_requirements_txt_is_recorded_on_the_job_unless_the_spec_has_its_own(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "mycode"
    folder.mkdir()
    (folder / "mytrain.py").write_text("def train(ctx):\n    return {}\n")
    (folder / "requirements.txt").write_text("Requests\nnumpy\n")
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    client = Client(settings, store=store)
    spec = {"name": "mine", "entrypoint": "mytrain:train"}
    from_file = client.submit(spec, code=folder)
    own = client.submit({**spec, "requirements": []}, code=folder)
    Ingest(store, settings).run(time.time())
    assert store.get(from_file)["spec"]["requirements"] == ["numpy", "requests"]  # type: ignore[index]
    assert store.get(own)["spec"]["requirements"] == []  # type: ignore[index]
    (folder / "requirements.txt").write_text("numpy\n./vendored/pkg\n")
    with pytest.raises(SpecError, match=r"^requirements.txt: line 2: file paths are refused"):
        client.submit(spec, code=folder)
