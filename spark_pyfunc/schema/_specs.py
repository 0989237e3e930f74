"""Specs: ColSpec, TensorSpec, Schema, ParamSpec, ParamSchema, ModelSignature, and their JSON.

The classes read and write exactly the JSON that MLflow stores under ``signature`` in an
MLmodel file, so a model saved by either side loads on the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import numpy as np

from spark_pyfunc.errors import SchemaEnforcementError, SchemaError
from spark_pyfunc.schema._coerce import coerce_param
from spark_pyfunc.schema._types import (
    ColType,
    DataType,
    Object,
    as_type,
    type_from_dict,
    type_to_dict,
)


@dataclass(frozen=True)
class ColSpec:
    """One column of a column-based schema; unnamed columns are matched by position.

    A name may also be an int: MLflow keeps pandas' integer column labels as names.
    """

    type: ColType
    name: str | None = None
    required: bool = True

    def __post_init__(self) -> None:
        if self.name is not None and (
            isinstance(self.name, bool) or not isinstance(self.name, (str, int)) or self.name == ""
        ):
            raise SchemaError(f"ColSpec name must be a non-empty string or None: {self.name!r}")
        object.__setattr__(self, "type", as_type(self.type, f"column {self.name!r}"))
        object.__setattr__(self, "required", bool(self.required))

    def to_dict(self) -> dict[str, Any]:
        d = type_to_dict(self.type)
        if self.name is not None:
            d["name"] = self.name
        d["required"] = self.required
        return d

    def simple_string(self) -> str:
        """The column's type as one short string (``array<long>``).

        The name and ``required`` stay out of it, as Spark's ``simpleString`` of a column's
        type leaves out the column's name and nullability.
        """
        return self.type.simple_string()

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "column") -> ColSpec:
        return cls(type_from_dict(d, what), d.get("name"), d.get("required", True))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a tensor-based schema; ``-1`` in ``shape`` is a free dimension."""

    dtype: np.dtype
    shape: tuple[int, ...]
    name: str | None = None

    def __post_init__(self) -> None:
        what = f"TensorSpec {self.name!r}" if self.name is not None else "TensorSpec"
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as e:
            raise SchemaError(f"{what}: {self.dtype!r} is not a numpy dtype ({e})") from None
        if dtype.kind in "US" and dtype.itemsize:
            # MLflow refuses sized strings ("<U5"): the size says nothing about the model.
            raise SchemaError(
                f"{what}: dtype {dtype} carries a size; use np.dtype({dtype.kind!r}) instead"
            )
        if not isinstance(self.shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in self.shape
        ):
            raise SchemaError(f"{what}: shape must be a tuple of ints, got {self.shape!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise SchemaError(f"TensorSpec name must be a non-empty string or None: {self.name!r}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def required(self) -> bool:
        """Tensors are always required (MLflow has no optional tensors)."""
        return True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {} if self.name is None else {"name": self.name}
        d["type"] = "tensor"
        d["tensor-spec"] = {"dtype": self.dtype.name, "shape": list(self.shape)}
        return d

    def simple_string(self) -> str:
        """The tensor's dtype and shape as one short string: ``tensor<float64>(-1, 3)``."""
        return f"tensor<{self.dtype.name}>({', '.join(str(d) for d in self.shape)})"

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "tensor") -> TensorSpec:
        info = d.get("tensor-spec")
        if not isinstance(info, dict) or not {"dtype", "shape"} <= info.keys():
            raise SchemaError(f"{what}: a tensor needs 'tensor-spec' with 'dtype' and 'shape'")
        return cls(info["dtype"], tuple(info["shape"]), d.get("name"))


class Schema:
    """The inputs (or outputs) of a model: all ColSpec or all TensorSpec, all named or none."""

    def __init__(self, inputs: list[ColSpec] | list[TensorSpec]) -> None:
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise SchemaError(f"Schema needs a non-empty list of ColSpec or TensorSpec: {inputs!r}")
        if not (
            all(isinstance(x, ColSpec) for x in inputs)
            or all(isinstance(x, TensorSpec) for x in inputs)
        ):
            raise SchemaError(
                "a Schema cannot mix ColSpec and TensorSpec (or hold other objects): "
                f"{list(inputs)!r}"
            )
        names = [x.name for x in inputs]
        if any(n is None for n in names) and any(n is not None for n in names):
            raise SchemaError(f"a Schema cannot mix named and unnamed inputs: names {names}")
        if dupes := sorted({n for n in names if n is not None and names.count(n) > 1}):
            raise SchemaError(f"a Schema has duplicated input names {dupes}")
        if names[0] is None:
            if isinstance(inputs[0], TensorSpec) and len(inputs) > 1:
                raise SchemaError("a Schema with several TensorSpecs must name each of them")
            if any(not x.required for x in inputs):
                raise SchemaError("unnamed inputs cannot be optional; name the columns")
        self._inputs: list[ColSpec | TensorSpec] = list(inputs)

    @property
    def inputs(self) -> list[ColSpec | TensorSpec]:
        return self._inputs

    def __len__(self) -> int:
        return len(self._inputs)

    def __iter__(self) -> Iterator[ColSpec | TensorSpec]:
        return iter(self._inputs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self._inputs == other._inputs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Schema({self._inputs!r})"

    def is_tensor_spec(self) -> bool:
        return isinstance(self._inputs[0], TensorSpec)

    def has_input_names(self) -> bool:
        return self._inputs[0].name is not None

    def input_names(self) -> list[str | int]:
        """Names, or positions for an unnamed schema."""
        return [x.name if x.name is not None else i for i, x in enumerate(self._inputs)]

    def required_input_names(self) -> list[str | int]:
        return [n for n, x in zip(self.input_names(), self._inputs, strict=True) if x.required]

    def optional_input_names(self) -> list[str | int]:
        return [n for n, x in zip(self.input_names(), self._inputs, strict=True) if not x.required]

    def to_dict(self) -> list[dict[str, Any]]:
        return [x.to_dict() for x in self._inputs]

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> Schema:
        entries = _load_json_list(s, "schema")
        specs = []
        for i, d in enumerate(entries):
            what = f"schema entry {i}"
            if not isinstance(d, dict):
                raise SchemaError(f"{what}: expected a JSON object, got {d!r}")
            specs.append(
                TensorSpec.from_dict(d, what)
                if d.get("type") == "tensor"
                else ColSpec.from_dict(d, what)
            )
        return cls(specs)


def _load_json_list(s: Any, what: str) -> list[Any]:
    if not isinstance(s, (str, bytes)):
        raise SchemaError(f"{what}: expected a JSON string, got {type(s).__name__}")
    try:
        value = json.loads(s)
    except ValueError as e:
        raise SchemaError(f"{what}: invalid JSON ({e}): {s!r}") from None
    if not isinstance(value, list):
        raise SchemaError(f"{what}: expected a JSON list, got {value!r}")
    return value


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class ParamSpec:
    """An inference parameter: a scalar (``shape=None``) or a 1-D list (``shape=(-1,)``).

    The default is validated and converted like a value passed at inference time.
    """

    name: str
    dtype: DataType | Object
    default: Any
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"ParamSpec name must be a non-empty string, got {self.name!r}")
        dtype = as_type(self.dtype, f"param {self.name!r}")
        if not isinstance(dtype, (DataType, Object)) or dtype is DataType.binary:
            raise SchemaError(
                f"param {self.name!r}: type {dtype!r} is not allowed for params "
                "(a DataType other than binary, or an Object)"
            )
        shape = None if self.shape is None else tuple(self.shape)
        if shape not in (None, (-1,)):
            raise SchemaError(f"param {self.name!r}: shape must be None or (-1,), got {shape}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", shape)
        try:
            default = coerce_param(self.name, self.default, dtype, shape)
        except SchemaEnforcementError as e:
            raise SchemaError(f"invalid default for {e}") from None
        object.__setattr__(self, "default", default)

    def to_dict(self) -> dict[str, Any]:
        default = self.default
        if self.dtype is DataType.datetime and default is not None:
            default = (
                [v if v is None else v.isoformat() for v in default]
                if self.shape
                else default.isoformat()
            )
        return {
            "name": self.name,
            "default": default,
            "shape": None if self.shape is None else list(self.shape),
            **type_to_dict(self.dtype),
        }

    @classmethod
    def from_dict(cls, d: Any, what: str = "param") -> ParamSpec:
        if not isinstance(d, dict) or not {"name", "default"} <= d.keys():
            raise SchemaError(f"{what}: expected a JSON object with 'name', 'type', 'default'")
        kind = d.get("type", d.get("dtype"))  # old MLflow versions wrote "dtype"
        dtype = type_from_dict({**d, "type": kind}, f"{what} ({d['name']!r})")
        return cls(str(d["name"]), dtype, d["default"], d.get("shape"))


class ParamSchema:
    """The inference parameters a model accepts, with their defaults."""

    def __init__(self, params: list[ParamSpec]) -> None:
        if not isinstance(params, (list, tuple)) or not all(
            isinstance(p, ParamSpec) for p in params
        ):
            raise SchemaError(f"ParamSchema needs a list of ParamSpec, got {params!r}")
        names = [p.name for p in params]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise SchemaError(f"ParamSchema has duplicated params {dupes}")
        self._params = list(params)

    @property
    def params(self) -> list[ParamSpec]:
        return self._params

    def __len__(self) -> int:
        return len(self._params)

    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self._params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSchema) and self._params == other._params

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ParamSchema({self._params!r})"

    def defaults(self) -> dict[str, Any]:
        return {p.name: deepcopy(p.default) for p in self._params}

    def to_dict(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self._params]

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> ParamSchema:
        entries = _load_json_list(s, "params schema")
        return cls(
            [ParamSpec.from_dict(d, f"params schema entry {i}") for i, d in enumerate(entries)]
        )


# --------------------------------------------------------------------------- signature


@dataclass
class ModelSignature:
    """A model's input, output and params schemas; at least one must be given (as MLflow)."""

    inputs: Schema | None = None
    outputs: Schema | None = None
    params: ParamSchema | None = None

    def __post_init__(self) -> None:
        for what, value, kind in (
            ("inputs", self.inputs, Schema),
            ("outputs", self.outputs, Schema),
            ("params", self.params, ParamSchema),
        ):
            if value is not None and not isinstance(value, kind):
                raise SchemaError(
                    f"ModelSignature {what} must be a {kind.__name__} or None, "
                    f"got {type(value).__name__}"
                )
        if self.inputs is None and self.outputs is None and self.params is None:
            raise SchemaError("a ModelSignature needs at least one of inputs, outputs or params")

    def to_dict(self) -> dict[str, str | None]:
        """MLflow's MLmodel form: each part as a JSON string, a missing part as None."""
        return {
            "inputs": self.inputs.to_json() if self.inputs is not None else None,
            "outputs": self.outputs.to_json() if self.outputs is not None else None,
            "params": self.params.to_json() if self.params is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSignature:
        if not isinstance(d, dict):
            raise SchemaError(f"signature: expected a mapping, got {type(d).__name__}")

        def part(key: str, parse: Any) -> Any:
            value = d.get(key)
            if value is None:
                return None
            try:
                return parse(value)
            except SchemaError as e:
                raise SchemaError(f"signature field {key!r}: {e}") from None

        return cls(
            part("inputs", Schema.from_json),
            part("outputs", Schema.from_json),
            part("params", ParamSchema.from_json),
        )
