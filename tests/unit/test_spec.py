"""The job spec refuses every bad value with its field and a reason, and nothing else escapes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import SpecError
from fleet.placement import POLICIES
from fleet.spec import (
    JobSpec,
    apply_overrides,
    check_entrypoint,
    load_spec,
    parse_spec,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALLOW = ["workers.jobs"]
GOOD: dict[str, Any] = {
    "name": "digits-torch",
    "entrypoint": "workers.jobs.digits_torch:train",
    "framework": "torch",
    "params": {"epochs": 12, "lr": 0.01, "batch_size": 64, "layers": [64, 32], "tag": None},
    "resources": {"cpus": 1.5, "memory": "1Gi", "gpus": 1, "gpu_memory": "8Gi"},
    "priority": 5,
    "timeout": 1800,
    "stall_timeout": 120,
    "max_retries": 3,
    "policy": "pack",
    "node_selector": {"zone": "a"},
}


def parse(data: Any, **kw: Any) -> JobSpec:
    return parse_spec(data, allowlist=ALLOW, **kw)


def with_value(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    return data


def refused(data: Any, **kw: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(data, **kw)
    return info.value


# -- good specs -------------------------------------------------------------------------------


def test_good_spec_round_trips_through_its_json_payload() -> None:
    spec = parse(GOOD)
    assert spec.resources.memory == 2**30
    assert spec.resources.gpu_memory == 8 * 2**30
    assert spec.resources.cpus == 1.5
    payload = spec.payload()
    assert json.loads(json.dumps(payload)) == payload
    assert parse(json.loads(json.dumps(payload))) == spec
    assert JobSpec(**payload) == spec


def test_defaults_fill_a_minimal_spec() -> None:
    spec = parse({"name": "x", "entrypoint": "workers.jobs.synthetic:sleep"})
    assert spec.schema_version == 1
    assert spec.framework == "none"
    assert spec.params == {}
    assert spec.resources.cpus == 1.0
    assert spec.resources.memory == 512 * 2**20
    assert spec.resources.gpus == 0 and spec.resources.gpu_memory is None
    assert (spec.priority, spec.timeout, spec.stall_timeout, spec.max_retries) == (0, 86400, None, 2)
    assert spec.policy is None and spec.node_selector == {}


@pytest.mark.parametrize("memory, expected", [("512Mi", 512 * 2**20), ("1g", 2**30), (4096, 4096)])
def test_memory_accepts_sizes_and_bytes(memory: Any, expected: int) -> None:
    assert parse(with_value("resources.memory", memory)).resources.memory == expected


@pytest.mark.parametrize("policy", POLICIES)
def test_every_placement_policy_is_accepted(policy: str) -> None:
    assert parse(with_value("policy", policy)).policy == policy


# -- each bad value names its field -----------------------------------------------------------


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("resources.cpu", 2, "resources.cpu"),
        ("colour", "red", "colour"),
        ("resources.memory", "lots", "resources.memory"),
        ("resources.memory", 0, "resources.memory"),
        ("resources.memory", "9" * 400 + "Gi", "resources.memory"),
        ("resources.cpus", 0, "resources.cpus"),
        ("resources.cpus", -1, "resources.cpus"),
        ("resources.cpus", "x", "resources.cpus"),
        ("resources.cpus", float("nan"), "resources.cpus"),
        ("resources.cpus", True, "resources.cpus"),
        ("resources.gpus", 1.5, "resources.gpus"),
        ("resources.gpus", True, "resources.gpus"),
        ("resources.gpus", 65, "resources.gpus"),
        ("name", "../etc", "name"),
        ("name", "a..b", "name"),
        ("name", "a/b", "name"),
        ("name", "a\\b", "name"),
        ("name", "Digits", "name"),
        ("name", "", "name"),
        ("name", "a" * 64, "name"),
        ("schema_version", 2, "schema_version"),
        ("framework", "jax", "framework"),
        ("params", [1, 2], "params"),
        ("params", {"not an identifier": 1}, "params"),
        ("params", {"ctx": 1}, "params"),
        ("params", {"x": float("inf")}, "params"),
        ("params", {"blob": "x" * (64 * 1024)}, "params"),
        ("params", {"x": {"y": [1, {2: 3}]}}, "params.x.y.1.2"),
        ("priority", 1001, "priority"),
        ("timeout", 0, "timeout"),
        ("stall_timeout", -5, "stall_timeout"),
        ("max_retries", 101, "max_retries"),
        ("policy", "fastest", "policy"),
        ("node_selector", {"zone": 1}, "node_selector.zone"),
        ("node_selector", {"a\nb": 1}, "node_selector.'a\\nb'"),
    ],
)
def test_bad_value_names_its_field(path: str, value: Any, field: str) -> None:
    error = refused(with_value(path, value))
    assert error.field == field
    assert error.reason and "\n" not in error.reason


def test_unknown_field_reason_says_so() -> None:
    error = refused(with_value("resources.cpu", 2))
    assert (error.field, error.reason) == ("resources.cpu", "unknown field")


def test_memory_lots_says_what_a_size_looks_like() -> None:
    error = refused(with_value("resources.memory", "lots"))
    assert error.reason == "expected a size like 512Mi or 2Gi, got 'lots'"


def test_gpu_memory_without_gpus_is_refused() -> None:
    data = with_value("resources.gpus", 0)
    assert refused(data).field == "resources.gpu_memory"


def test_missing_required_field_is_named() -> None:
    data = copy.deepcopy(GOOD)
    del data["entrypoint"]
    assert (refused(data).field, refused(data).reason) == ("entrypoint", "required")


@pytest.mark.parametrize("data", [None, [GOOD], "name: x", 42])
def test_non_mapping_spec_is_refused_as_spec(data: Any) -> None:
    assert refused(data).field == "spec"


@pytest.mark.parametrize(
    "entrypoint",
    [
        "os:system",
        "builtins:eval",
        "workers.jobs.x:__init__",
        "os:__dict__",
        "__import__",
        "../x",
        ".workers.jobs.x:train",
        "workers.jobs..x:train",
        "workers.jobs.__init__:train",
        "workers.jobs.x",
        "workers.jobs.x:",
        "workers.jobs.x:a:b",
        "workers.jobs.x:train()",
        "workers.jobs.x:class",
        "workers.jobsX.x:train",
        "workers:train",
        "workers.jobs.x:tráin",
    ],
)
def test_entrypoint_outside_the_allowlist_or_badly_shaped_is_refused(entrypoint: str) -> None:
    error = refused(with_value("entrypoint", entrypoint))
    assert error.field == "entrypoint"
    with pytest.raises(SpecError) as info:
        check_entrypoint(entrypoint, ALLOW)
    assert info.value.field == "entrypoint"


def test_entrypoint_module_must_be_under_an_allowlisted_module() -> None:
    assert check_entrypoint("workers.jobs.digits_torch:train", ALLOW) == (
        "workers.jobs.digits_torch",
        "train",
    )
    assert check_entrypoint("workers.jobs:train", ALLOW) == ("workers.jobs", "train")
    assert check_entrypoint("mylab.jobs:fit", ["workers.jobs", "mylab"]) == ("mylab.jobs", "fit")
    with pytest.raises(SpecError, match="allowlist"):
        check_entrypoint("mylab.jobs:fit", ALLOW)
    with pytest.raises(SpecError):
        check_entrypoint("workers.jobs.x:train", [])


def test_timeout_over_the_fleet_limit_is_refused() -> None:
    assert parse(GOOD, max_timeout=1800).timeout == 1800
    error = refused(GOOD, max_timeout=600)
    assert error.field == "timeout" and "600" in error.reason


# -- overrides --------------------------------------------------------------------------------


def test_overrides_are_typed_like_yaml_scalars() -> None:
    data = apply_overrides(
        GOOD,
        [
            "params.epochs=5",
            "params.lr=0.1",
            "params.shuffle=true",
            "resources.memory=2Gi",
            "params.note=hello world",
            "params.since=2024-01-01",
            "stall_timeout=",
        ],
    )
    assert data["params"]["epochs"] == 5
    assert data["params"]["lr"] == 0.1
    assert data["params"]["shuffle"] is True
    assert data["resources"]["memory"] == "2Gi"
    assert data["params"]["note"] == "hello world"
    assert data["params"]["since"] == "2024-01-01"  # a date stays a string: params are JSON
    assert data["stall_timeout"] is None
    assert parse(data).resources.memory == 2 * 2**30


def test_overrides_create_nested_keys_and_leave_the_input_alone() -> None:
    original = {"name": "x", "entrypoint": "workers.jobs.x:f"}
    data = apply_overrides(original, ["resources.gpus=2", "node_selector.zone=b", "a=b=c"])
    assert data["resources"] == {"gpus": 2}
    assert data["node_selector"] == {"zone": "b"}
    assert data["a"] == "b=c"
    assert original == {"name": "x", "entrypoint": "workers.jobs.x:f"}


@pytest.mark.parametrize(
    "override", ["epochs", "=5", "params..epochs=5", "name.inner=1", "params.x=[1,"]
)
def test_bad_override_is_refused(override: str) -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(GOOD, [override])
    assert info.value.field == "--set"


# -- files ------------------------------------------------------------------------------------


def test_example_digits_torch_loads() -> None:
    spec = load_spec(EXAMPLES / "digits-torch.yaml", allowlist=ALLOW)
    assert spec.name == "digits-torch"
    assert spec.entrypoint == "workers.jobs.digits_torch:train"
    assert spec.framework == "torch"
    assert spec.params == {"epochs": 12, "lr": 0.01, "batch_size": 64}
    assert (spec.resources.cpus, spec.resources.memory) == (1.0, 2**30)
    assert (spec.max_retries, spec.timeout) == (2, 1800)


def test_example_digits_tf_loads_with_overrides() -> None:
    spec = load_spec(
        str(EXAMPLES / "digits-tf.yaml"), ["params.epochs=3"], allowlist=ALLOW, max_timeout=3600
    )
    assert (spec.name, spec.entrypoint) == ("digits-tf", "workers.jobs.digits_tf:train")
    assert spec.framework == "tensorflow"
    assert spec.params == {"epochs": 3, "batch_size": 64}
    assert (spec.resources.cpus, spec.resources.memory, spec.timeout) == (1.0, 2 * 2**30, 1800)


@pytest.mark.parametrize(
    "file, field",
    [
        ("unknown-field.yaml", "resources.cpu"),
        ("memory-lots.yaml", "resources.memory"),
        ("forbidden-entrypoint.yaml", "entrypoint"),
    ],
)
def test_bad_example_files_are_refused_with_their_field(file: str, field: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(EXAMPLES / "bad" / file, allowlist=ALLOW)
    assert info.value.field == field


def test_json_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(GOOD))
    assert load_spec(path, allowlist=ALLOW) == parse(GOOD)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "name: [unclosed\n",
        "name: a\nname: b\nentrypoint: workers.jobs.x:f\n",
        "base: &b {x: 1}\nparams: *b\n",
        "\tname: x\n",
    ],
)
def test_unreadable_file_is_one_line_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path, allowlist=ALLOW)
    assert info.value.field == "file"
    assert str(path) in info.value.reason and "\n" not in str(info.value)


def test_missing_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path, allowlist=ALLOW)
    assert info.value.field == "file" and str(path) in info.value.reason


def test_yaml_list_file_is_refused_as_spec(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("- name: x\n")
    with pytest.raises(SpecError) as info:
        load_spec(path, ["params.x=1"], allowlist=ALLOW)
    assert info.value.field == "spec"


# -- nothing but a JobSpec or a SpecError, whatever comes in ----------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["512Mi", "1g", "x", "", "../x", "os:system", "workers.jobs.a:f", "-1"])
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4),
    max_leaves=20,
)
paths = st.sampled_from(
    [*GOOD, "resources.cpus", "resources.memory", "resources.gpus", "resources.gpu_memory",
     "params.epochs", "params.ctx", "node_selector.zone", "extra", "resources.extra"]
)


def mutate(changes: list[tuple[str, Any, bool]]) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    for path, value, delete in changes:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            if not isinstance(target, dict) or not isinstance(target.get(part), dict):
                break
            target = target[part]
        else:
            if delete:
                target.pop(last, None)
            else:
                target[last] = value
    return data


def only_spec_or_spec_error(data: Any) -> None:
    try:
        result = parse(data, max_timeout=7 * 86400)
    except SpecError as exc:
        assert isinstance(exc.field, str) and exc.field
        assert isinstance(exc.reason, str) and exc.reason
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, JobSpec)
        assert parse(result.payload()) == result


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "x"]) | st.text(max_size=8), json_like) | json_like)
def test_arbitrary_json_gives_a_spec_or_a_spec_error(data: Any) -> None:
    only_spec_or_spec_error(data)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(paths, json_like, st.booleans()), min_size=1, max_size=3))
def test_mutated_spec_gives_a_spec_or_a_spec_error(changes: list[tuple[str, Any, bool]]) -> None:
    only_spec_or_spec_error(mutate(changes))


# -- caps before parsing, and entry points that are job functions --------------------------------
def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [33, 10_000])
def test_params_nested_too_deep_are_refused_not_a_recursion_error(depth: int) -> None:
    error = refused(with_value("params", {"x": _nested(depth)}))
    assert error.field == "params" and "deeper than" in error.reason


def test_params_nested_within_the_limit_are_accepted() -> None:
    assert parse(with_value("params", {"x": _nested(20)})).params["x"] == _nested(20)


@pytest.mark.parametrize("text", [
    "params: {x: " + "[" * 10_000 + "]" * 10_000 + "}",
    '{"params": {"x": ' + "[" * 10_000 + "]" * 10_000 + "}}",
])
def test_a_deep_yaml_or_json_file_is_refused_naming_the_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: a\nentrypoint: workers.jobs.synthetic:sleep\n" + text + "\n"
                    if text.startswith("params") else text)
    with pytest.raises(SpecError) as info:
        load_spec(path, allowlist=ALLOW)
    assert info.value.field == "file" and "deeper than" in info.value.reason


def test_a_file_over_the_size_cap_is_refused_before_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: a\n#" + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(SpecError, match="over"):
        load_spec(path, allowlist=ALLOW)


@pytest.mark.parametrize("labels, says", [
    ({"k" * 10_000_000: "v"}, "over"),
    ({"k" * 129: "v"}, "at most 128"),
    ({"zone": "v" * 129}, "at most 128"),
    ({f"k{i}": "v" for i in range(65)}, "at most 64"),
    ({"zone": "a\x00b"}, "printable"),
])
def test_node_selector_labels_are_few_short_and_printable(labels: dict, says: str) -> None:
    error = refused(with_value("node_selector", labels))
    assert error.field == "node_selector" and says in error.reason
    assert len(str(error)) < 300


@pytest.mark.parametrize("entrypoint, says", [
    ("workers.jobs.synthetic:_fault", "private"),
    ("workers.jobs.synthetic:Path", "defines no function"),
    ("workers.jobs.synthetic:os", "defines no function"),
    ("workers.jobs.synthetic:json", "defines no function"),
    ("workers.jobs.nosuchmodule:train", "not found"),
    ("workers.jobs.synthetic:" + "x" * 300, "at most 200"),
])
def test_an_entrypoint_must_name_a_public_function_defined_in_its_module(
        entrypoint: str, says: str) -> None:
    error = refused(with_value("entrypoint", entrypoint))
    assert error.field == "entrypoint" and says in str(error)


def test_an_entrypoint_whose_package_is_not_here_is_left_to_the_node() -> None:
    spec = parse_spec(with_value("entrypoint", "mylab.train:fit"), allowlist=["workers.jobs", "mylab"])
    assert spec.entrypoint == "mylab.train:fit"
