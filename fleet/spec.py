"""The job spec: what a producer asks for, validated before anything is written to Redis.

A `JobSpec` is the one contract between producers, the master and the workers. It is checked here,
at submit, so that a bad spec is refused with the field and the reason (invariant 5) and nothing
downstream ever sees one. Only JSON crosses the broker and only allowlisted entry points run
(invariant 4): `params` is a JSON object, `entrypoint` a `module:function` whose module lies under
the allowlist. Pure: no I/O except reading the file in `load_spec`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from fleet.entrypoints import (  # noqa: F401 - re-exported for callers of fleet.spec
    check_entrypoint,
    check_identifier,
    check_job_function,
    check_name,
    is_job_id,
    split_entrypoint,
)
from fleet.errors import SpecError
from fleet.requirements import Requirements
from fleet.resources import KINDS, Kind, Resources
from fleet.units import parse_memory

SPEC_VERSION = 1  # of a job spec (its `schema_version` field)
MAX_PARAMS_BYTES = 64 * 1024
MAX_SPEC_BYTES = 1024 * 1024  # a job file or a spec mapping, read or walked before parsing
MAX_DEPTH = 32  # nesting of mappings and lists anywhere in a spec
MAX_LABELS = 64
MAX_LABEL_CHARS = 128
# Bytes above 2**53 lose precision as the doubles that JSON readers and Redis Lua compare.
MAX_BYTES = 2**53


def _no_bool(value: Any) -> Any:
    """YAML's `yes`/`true` is a bool, and Python's bool is an int: refuse it where a number goes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _size(value: Any) -> int:
    """`512Mi`, `2Gi`, `1g` or bytes; a size too large for a float is a user error, not a crash."""
    try:
        return parse_memory(value)
    except OverflowError:
        raise ValueError(f"size {_short(value)} is too large") from None


Number = Annotated[float, BeforeValidator(_no_bool)]
Integer = Annotated[int, BeforeValidator(_no_bool)]
Size = Annotated[int, BeforeValidator(_size), Field(gt=0, le=MAX_BYTES)]


class _DeclaredResources(BaseModel):
    """The spec's `resources`, checked: what a job reserves on its node; the master never
    places it where these do not fit. `value()` is the one resource value everything else uses.

    The kinds here have limits of their own; every other kind of `fleet.resources.KINDS` is
    added as an optional field by `_every_kind` (see `ResourceSpec`)."""

    model_config = ConfigDict(extra="forbid")

    cpus: Number = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False)
    memory: Size = 512 * 2**20
    gpus: Integer = Field(default=0, ge=0, le=64)
    gpu_memory: Size | None = None  # bytes per GPU

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_memory_needs_gpus(cls, gpu_memory: int | None, info: ValidationInfo) -> int | None:
        # Asking for GPU memory without a GPU is a mistake the user wants to hear about.
        if gpu_memory is not None and info.data.get("gpus") == 0:
            raise ValueError("gpu_memory needs gpus > 0")
        return gpu_memory

    def value(self) -> Resources:
        """These amounts as the one resource value (milli-CPUs, bytes, whole GPUs inside)."""
        return Resources.parse(self.model_dump())


def _kind_amount(kind: Kind) -> Callable[[Any], float | None]:
    def check(value: Any) -> float | None:
        if value is None:
            return None
        amount = kind.parse(value)
        if amount * kind.scale > min(kind.limit, MAX_BYTES):
            raise ValueError(f"at most {kind.amount(min(kind.limit, MAX_BYTES) / kind.scale)}")
        return amount

    return check


def _every_kind(base: type[_DeclaredResources]) -> type[_DeclaredResources]:
    """`base` with an optional field for each kind it does not declare: a non-negative amount in
    the units people write (a size for a size), so that a new kind needs no edit here."""
    fields: dict[str, Any] = {
        k.name: (Annotated[float | None, BeforeValidator(_kind_amount(k))], None)
        for k in KINDS if k.name not in base.model_fields
    }
    if not fields:
        return base
    return create_model("ResourceSpec", __base__=base, __module__=__name__, **fields)


if TYPE_CHECKING:
    ResourceSpec = _DeclaredResources
else:
    ResourceSpec = _every_kind(_DeclaredResources)


class JobSpec(BaseModel):
    """A training job as submitted. New fields get defaults, so older payloads stay readable."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Integer = SPEC_VERSION
    name: Annotated[str, Field(min_length=1, max_length=63), AfterValidator(check_name)]
    entrypoint: str = Field(max_length=200)
    framework: Literal["torch", "tensorflow", "none"] = "none"
    params: dict[str, JsonValue] = Field(default_factory=dict)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    priority: Integer = Field(default=0, ge=-1000, le=1000)  # higher runs first
    timeout: Integer = Field(default=86400, gt=0)  # seconds, wall clock of one attempt
    stall_timeout: Integer | None = Field(default=None, gt=0)  # seconds without a progress report
    max_retries: Integer = Field(default=2, ge=0, le=100)  # retries of the job's own failures
    keep_checkpoints: Integer = Field(default=2, ge=1, le=1000)  # committed ones kept, newest
    policy: str | None = Field(default=None, max_length=32)  # placement override for this job
    node_selector: dict[str, str] = Field(default_factory=dict)  # labels the node must have
    code: str | None = Field(default=None, max_length=4096)  # a folder the Client packs
    bundle: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")  # its digest
    requirements: Requirements = None  # pip packages for the job's env (fleet.requirements)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != SPEC_VERSION:
            raise ValueError(f"unsupported version {version}; this fleet reads {SPEC_VERSION}")
        return version

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_shape(cls, entrypoint: str) -> str:
        split_entrypoint(entrypoint)  # the allowlist is the caller's: see `check_entrypoint`
        return entrypoint

    @field_validator("params")
    @classmethod
    def _params_are_kwargs(cls, params: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """Params become `function(ctx, **params)`: keys are identifiers, and the JSON stays small
        enough to live in the job's Redis hash."""
        for key in params:
            check_identifier(key, "parameter")
            if key == "ctx":
                raise ValueError("parameter 'ctx' is refused: the job's context takes that name")
        try:
            size = len(json.dumps(params, allow_nan=False).encode())
        except ValueError:
            raise ValueError("NaN and Infinity are not JSON; use null or a number") from None
        if size > MAX_PARAMS_BYTES:
            raise ValueError(f"{size} bytes as JSON; at most {MAX_PARAMS_BYTES} are allowed")
        return params

    @field_validator("node_selector")
    @classmethod
    def _labels_are_small(cls, labels: dict[str, str]) -> dict[str, str]:
        """Labels live in the job's Redis hash and are compared on every placement round: a
        few short printable strings, as a node's labels are."""
        if len(labels) > MAX_LABELS:
            raise ValueError(f"{len(labels)} labels; at most {MAX_LABELS} are allowed")
        for key, value in labels.items():
            for what, text in (("label", key), (f"label {_cut(key, 40)!r}'s value", value)):
                if not text.isprintable() or len(text) > MAX_LABEL_CHARS:
                    raise ValueError(f"{what} must be printable and at most {MAX_LABEL_CHARS} "
                                     f"characters, got {_short(text)}")
        return labels

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str | None) -> str | None:
        # Imported here, not at the top: the spec stays a leaf (placement, or a module it
        # imports, may import the spec without a cycle) and reading one needs no numpy.
        from fleet.placement.policies import POLICIES

        if policy is not None and policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        return policy

    def payload(self) -> dict[str, Any]:
        """The JSON-safe form stored in Redis and sent to workers; `JobSpec(**payload)` reads it."""
        return self.model_dump(mode="json")


def parse_spec(
    data: Any, *, allowlist: Sequence[str], max_timeout: int | None = None
) -> JobSpec:
    """Validate a mapping into a JobSpec, or raise SpecError naming the first bad field."""
    if not isinstance(data, Mapping):
        raise SpecError("spec", f"expected a mapping of fields, got {type(data).__name__}")
    check_shape(data)
    try:
        spec = JobSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise _spec_error(exc) from None
    if spec.code is None and spec.bundle is None:  # a bundle's entry point: fleet.bundles.entry
        check_job_function(*check_entrypoint(spec.entrypoint, allowlist))
    if max_timeout is not None and spec.timeout > max_timeout:
        raise SpecError("timeout", f"{spec.timeout} s is over the fleet's limit of {max_timeout} s")
    return spec


def check_shape(data: Mapping[str, Any]) -> None:
    """Refuse a spec too deep or too large before anything recursive reads it: pydantic, json
    and repr all recurse, and a 10,000-deep `params` would end in a RecursionError instead of
    an answer. Walks with a stack of its own, so any depth is safe to look at; counts what the
    spec would weigh as JSON (roughly: strings and keys by length, everything else a few
    bytes), and stops at the first excess. The field named is the top-level one it is in."""
    stack: list[tuple[str, int, Any]] = [(str(k), 1, v) for k, v in data.items()]
    weight = 0
    while stack:
        field, depth, value = stack.pop()
        weight += len(value) + 2 if isinstance(value, (str, bytes)) else 8
        if weight > MAX_SPEC_BYTES:
            raise SpecError(_cut(field, 60), f"the spec is over {MAX_SPEC_BYTES} bytes")
        if isinstance(value, Mapping):
            children = list(value.items())
        elif isinstance(value, (list, tuple)):
            children = list(enumerate(value))
        else:
            continue
        if depth >= MAX_DEPTH:
            raise SpecError(_cut(field, 60), f"nested deeper than {MAX_DEPTH} levels")
        for key, child in children:
            weight += len(key) + 3 if isinstance(key, str) else 8
            stack.append((field, depth + 1, child))


_JSON_TAGS = {"list", "dict", "str", "int", "float", "bool"}
_REASONS = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "dict_type": "expected a mapping (key: value)",
    "model_type": "expected a mapping (key: value)",
    "model_attributes_type": "expected a mapping (key: value)",
}


def _spec_error(exc: ValidationError) -> SpecError:
    """Pydantic's first error as one line: a dotted field path and a short reason."""
    error = exc.errors(include_url=False)[0]
    loc = [part for part in error["loc"] if part != "[key]"]
    if loc[:1] == ["params"] and len(loc) > 3:
        # JsonValue puts a type tag before each nested key/index: params.a.dict.b -> params.a.b
        loc = loc[:2] + [part for i, part in enumerate(loc[2:]) if i % 2 or part not in _JSON_TAGS]
    field = ".".join(str(p) if str(p).isprintable() else repr(p) for p in loc) or "spec"
    kind = error["type"]
    if kind in _REASONS:
        reason = _REASONS[kind]
    elif kind == "value_error":
        reason = str(error["ctx"]["error"])
    else:
        reason = error["msg"].replace("Input should", "should")
        if "got" not in reason and not isinstance(error.get("input"), (dict, list)):
            reason += f", got {_short(error.get('input'))}"
    return SpecError(_cut(field, 200), _cut(reason.replace("\n", " "), 200))


def _cut(text: str, limit: int) -> str:
    """Errors stay one readable line, whatever the user sent."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    return _cut(repr(value), 60)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply CLI `--set key=value` overrides; dotted keys reach into nested mappings.

    The value is read as YAML (`5` is an int, `0.1` a float, `true` a bool, `1Gi` a string,
    `[64, 32]` a list, an empty value null), so an override means what it would in the file.
    The input is not changed (and is checked for depth and size before it is copied).
    """
    check_shape(data)
    result = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError("--set", f"expected key=value (like params.epochs=5), got {item!r}")
        try:
            value = yaml.load(text, Loader=_SpecLoader)
        except yaml.YAMLError as exc:
            raise SpecError("--set", f"{item!r}: {_yaml_reason(exc)}") from None
        target = result
        for depth, part in enumerate(parts[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError("--set", f"{item!r}: {where} is not a mapping")
            target = child
        target[parts[-1]] = value
    return result


def load_spec(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    allowlist: Sequence[str],
    max_timeout: int | None = None,
) -> JobSpec:
    """Read a YAML or JSON job file (YAML is a superset of JSON), apply overrides, validate."""
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError("file", f"{path}: over {MAX_SPEC_BYTES} bytes; a job file is small")
        data = yaml.load(raw.decode("utf-8"), Loader=_SpecLoader)
    except OSError as exc:
        raise SpecError("file", f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SpecError("file", f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise SpecError("file", f"{path}: {_yaml_reason(exc)}") from None
    if data is None:
        raise SpecError("file", f"{path}: the file is empty")
    if overrides and isinstance(data, dict):
        data = apply_overrides(data, overrides)
    if isinstance(data, dict) and isinstance(data.get("code"), str):  # relative to the file
        data["code"] = str(Path(path).parent / Path(data["code"]).expanduser())
    return parse_spec(data, allowlist=allowlist, max_timeout=max_timeout)


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML that yields only JSON values: dates stay strings, a repeated key is an error
    (the second would silently win), and aliases are refused (a few lines could expand to
    gigabytes of params)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Composing recurses once per level: refuse depth here, before Python's own limit."""
        peek: Callable[[], Any] = self.peek_event  # typeshed leaves it untyped
        if self.check_event(yaml.AliasEvent):
            mark = peek().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        if self._depth > MAX_DEPTH:
            mark = peek().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's message spans several lines; users get one: the problem and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem
