"""Model signatures: column, tensor and param specs, their JSON form, inference and enforcement.

The classes read and write exactly the JSON that MLflow stores under ``signature`` in an
MLmodel file, so a model saved by either side loads on the other. Enforcement reproduces
MLflow's rules (what is converted, what is refused) so that a model scores the same here as
under ``mlflow.pyfunc``; the few places where it is deliberately stricter or more lenient
are marked in the docstrings.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import json
import logging
import numbers
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spark_pyfunc.errors import SchemaEnforcementError, SchemaError

logger = logging.getLogger(__package__)

__all__ = [
    "AnyType",
    "Array",
    "ColSpec",
    "DataType",
    "Map",
    "ModelSignature",
    "Object",
    "ParamSchema",
    "ParamSpec",
    "Property",
    "Schema",
    "SparkMLVector",
    "TensorSpec",
    "enforce_params",
    "enforce_schema",
    "infer_schema",
    "infer_signature",
]


# --------------------------------------------------------------------------- types


class DataType(enum.Enum):
    """MLflow's scalar column types; the values are the names MLflow writes in JSON."""

    boolean = "boolean"
    integer = "integer"
    long = "long"
    float = "float"
    double = "double"
    string = "string"
    binary = "binary"
    datetime = "datetime"

    def __repr__(self) -> str:
        return f"DataType.{self.name}"

    def to_numpy(self) -> np.dtype:
        """The numpy dtype a pandas column of this type has (object for string and binary)."""
        return _NUMPY_DTYPES[self]

    def to_pandas(self) -> np.dtype:
        """The pandas dtype of a column of this type (numpy dtypes, as MLflow uses)."""
        return _NUMPY_DTYPES[self]


_NUMPY_DTYPES: dict[DataType, np.dtype] = {
    DataType.boolean: np.dtype("bool"),
    DataType.integer: np.dtype("int32"),
    DataType.long: np.dtype("int64"),
    DataType.float: np.dtype("float32"),
    DataType.double: np.dtype("float64"),
    DataType.string: np.dtype("object"),
    DataType.binary: np.dtype("object"),
    DataType.datetime: np.dtype("datetime64[ns]"),
}

_DATETIME_NS = np.dtype("datetime64[ns]")
_OBJECT = np.dtype("O")


def _as_type(value: Any, what: str) -> ColType:
    """Accept a type object or a DataType name ("double"), as MLflow's constructors do."""
    if isinstance(value, str):
        try:
            return DataType(value)
        except ValueError:
            raise SchemaError(
                f"{what}: unknown type {value!r}; expected one of "
                f"{[t.value for t in DataType]}, 'array', 'object', 'map' or 'any'"
            ) from None
    if not isinstance(value, (DataType, Array, Object, Map, AnyType)):
        raise SchemaError(
            f"{what}: expected a DataType, Array, Object, Map or AnyType, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class AnyType:
    """Any JSON-like value, None included; MLflow does no validation for it."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "any"}


@dataclass(frozen=True)
class Array:
    """A list (or 1-D numpy array) whose elements all have type ``item``."""

    item: ColType

    def __post_init__(self) -> None:
        object.__setattr__(self, "item", _as_type(self.item, "Array item"))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "array", "items": _type_to_dict(self.item)}


@dataclass(frozen=True)
class SparkMLVector(Array):
    """A Spark ML vector column; MLflow treats it as an array of doubles."""

    item: ColType = field(default=DataType.double, init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "sparkml_vector"}


@dataclass(frozen=True)
class Property:
    """One named field of an :class:`Object`."""

    name: str
    dtype: ColType
    required: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"Property name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "dtype", _as_type(self.dtype, f"Property {self.name!r}"))
        object.__setattr__(self, "required", bool(self.required))


@dataclass(frozen=True)
class Object:
    """A dict with string keys and typed fields; properties are kept sorted by name (MLflow)."""

    properties: tuple[Property, ...]

    def __post_init__(self) -> None:
        props = list(self.properties) if isinstance(self.properties, Sequence) else None
        if not props or not all(isinstance(p, Property) for p in props):
            raise SchemaError(f"Object needs a non-empty list of Property, got {self.properties!r}")
        names = [p.name for p in props]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise SchemaError(f"Object has duplicated property names {dupes}")
        object.__setattr__(self, "properties", tuple(sorted(props, key=lambda p: p.name)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                p.name: {**_type_to_dict(p.dtype), "required": p.required} for p in self.properties
            },
        }


@dataclass(frozen=True)
class Map:
    """A dict with string keys whose values all have type ``values``."""

    values: ColType

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _as_type(self.values, "Map values"))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "map", "values": _type_to_dict(self.values)}


ColType = DataType | Array | Object | Map | AnyType


def _type_to_dict(t: ColType) -> dict[str, Any]:
    return {"type": t.value} if isinstance(t, DataType) else t.to_dict()


def _type_from_dict(d: Any, what: str) -> ColType:
    """Parse MLflow's JSON form of a column type; ``what`` locates it in error messages."""
    if not isinstance(d, dict) or "type" not in d:
        raise SchemaError(f"{what}: expected a JSON object with a 'type' key, got {d!r}")
    kind = d["type"]
    try:
        if kind == "array":
            return Array(_type_from_dict(d["items"], f"{what} items"))
        if kind == "map":
            return Map(_type_from_dict(d["values"], f"{what} values"))
        if kind == "object":
            props = d["properties"]
            if not isinstance(props, dict):
                raise SchemaError(f"{what}: 'properties' must be a JSON object, got {props!r}")
            return Object(
                [
                    Property(
                        name,
                        _type_from_dict(p, f"{what} property {name!r}"),
                        p.get("required", True),
                    )
                    for name, p in props.items()
                ]
            )
    except KeyError as e:
        raise SchemaError(f"{what}: type {kind!r} needs the key {e.args[0]!r}") from None
    if kind == "any":
        return AnyType()
    if kind == "sparkml_vector":
        return SparkMLVector()
    return _as_type(kind, what)


# --------------------------------------------------------------------------- specs


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
        object.__setattr__(self, "type", _as_type(self.type, f"column {self.name!r}"))
        object.__setattr__(self, "required", bool(self.required))

    def to_dict(self) -> dict[str, Any]:
        d = _type_to_dict(self.type)
        if self.name is not None:
            d["name"] = self.name
        d["required"] = self.required
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "column") -> ColSpec:
        return cls(_type_from_dict(d, what), d.get("name"), d.get("required", True))


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
        dtype = _as_type(self.dtype, f"param {self.name!r}")
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
            default = _enforce_param(self.name, self.default, dtype, shape)
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
            **_type_to_dict(self.dtype),
        }

    @classmethod
    def from_dict(cls, d: Any, what: str = "param") -> ParamSpec:
        if not isinstance(d, dict) or not {"name", "default"} <= d.keys():
            raise SchemaError(f"{what}: expected a JSON object with 'name', 'type', 'default'")
        kind = d.get("type", d.get("dtype"))  # old MLflow versions wrote "dtype"
        dtype = _type_from_dict({**d, "type": kind}, f"{what} ({d['name']!r})")
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


# --------------------------------------------------------------------------- inference


def _is_none_or_nan(x: Any) -> bool:
    if isinstance(x, float):
        return bool(np.isnan(x))
    return x is None or x is pd.NA or x is pd.NaT


_SCALAR_TYPES: dict[type, DataType] = {
    bool: DataType.boolean,
    np.bool_: DataType.boolean,
    int: DataType.long,
    np.int64: DataType.long,
    np.int32: DataType.integer,
    float: DataType.double,
    np.float64: DataType.double,
    np.float32: DataType.float,
    str: DataType.string,
    np.str_: DataType.string,
    bytes: DataType.binary,
    np.bytes_: DataType.binary,
    bytearray: DataType.binary,
}


def _infer_value_type(value: Any) -> ColType | None:
    """Type of one value: dict -> Object, list -> Array, None/empty -> AnyType.

    None means undetermined (an empty numpy array), which MLflow skips in lists.
    """
    if _is_none_or_nan(value) or (isinstance(value, (list, dict)) and not value):
        return AnyType()
    if isinstance(value, dict):
        props = []
        for k, v in value.items():
            t = _infer_value_type(v)
            if t is None:
                raise SchemaError(f"dict value for key {k!r} is an empty numpy array")
            if not isinstance(k, str):
                raise SchemaError(f"dict keys must be strings to infer an Object, got {k!r}")
            props.append(Property(k, t, required=not isinstance(t, AnyType)))
        return Object(props)
    if isinstance(value, (list, np.ndarray)):
        return _infer_list_type(value)
    if (t := _SCALAR_TYPES.get(type(value))) is not None:
        return t
    if isinstance(value, (dt.date, np.datetime64)):
        return DataType.datetime
    raise SchemaError(f"cannot infer a type for {type(value).__name__} value {value!r}")


def _infer_list_type(values: Sequence[Any] | np.ndarray) -> Array | None:
    """Array of the common element type; nested Objects merge (missing keys -> optional)."""
    result: ColType | None = None
    for v in values:
        t = _infer_value_type(v)
        if t is None:
            continue
        result = t if result is None else _merge_types(result, t)
    return None if result is None else Array(result)


def _merge_types(a: ColType, b: ColType) -> ColType:
    """Combine the types of two elements of one list, as MLflow's inference does."""
    if a == b:
        return a
    if isinstance(a, AnyType):
        a, b = b, a
    if isinstance(b, AnyType):
        if isinstance(a, Object):
            return Object([Property(p.name, p.dtype, False) for p in a.properties])
        return a
    if isinstance(a, Object) and isinstance(b, Object):
        left = {p.name: p for p in a.properties}
        right = {p.name: p for p in b.properties}
        merged = []
        for name in left.keys() | right.keys():
            if name in left and name in right:
                t = _merge_types(left[name].dtype, right[name].dtype)
                merged.append(Property(name, t, left[name].required and right[name].required))
            else:
                merged.append(Property(name, (left.get(name) or right[name]).dtype, False))
        return Object(merged)
    if type(a) is Array and type(b) is Array:
        return Array(_merge_types(a.item, b.item))
    if isinstance(a, Map) and isinstance(b, Map):
        return Map(_merge_types(a.values, b.values))
    raise SchemaError(
        f"values of different types ({a!r} and {b!r}) in one list; declare the signature "
        "by hand with Array(AnyType()) for mixed lists"
    )


def _infer_numpy_type(dtype: Any) -> DataType:
    kind, size = dtype.kind, getattr(dtype, "itemsize", 0)
    if kind == "b":
        return DataType.boolean
    if kind in "iu" and (size < 4 or (kind == "i" and size == 4)):
        return DataType.integer
    if kind in "iu" and (size < 8 or (kind == "i" and size == 8)):
        return DataType.long
    if kind == "f" and size <= 8:
        return DataType.float if size <= 4 else DataType.double
    if kind in "USM":
        return {"U": DataType.string, "S": DataType.binary, "M": DataType.datetime}[kind]
    raise SchemaError(f"dtype {dtype} has no MLflow column type")


def _infer_column_type(col: pd.Series) -> ColType:
    if col.dtype.kind == "O":
        col = col.infer_objects()
    if col.dtype.kind != "O":
        return _infer_numpy_type(col.dtype)
    arr = _infer_list_type(col.to_list())
    if arr is None:
        raise SchemaError(f"column {col.name!r} holds only empty numpy arrays")
    return arr.item


def _infer_required(value: Any) -> bool:
    if isinstance(value, (list, pd.Series)):
        return not any(_is_none_or_nan(x) for x in value)
    return not _is_none_or_nan(value)


def _tensor_spec_of(name: str | None, arr: np.ndarray) -> TensorSpec:
    if arr.ndim == 0:
        raise SchemaError(f"cannot infer a tensor spec from a 0-d array {arr!r}")
    dtype = arr.dtype
    if dtype.kind in "US":
        dtype = np.dtype(dtype.kind)  # drop the size, as MLflow's schema does
    return TensorSpec(dtype, (-1, *arr.shape[1:]), name)


def _element_type(values: list[Any]) -> ColType:
    arr = _infer_list_type(values)
    if arr is None:
        raise SchemaError("cannot infer a type from empty numpy arrays only")
    return arr.item


def infer_schema(data: Any) -> Schema:
    """Infer a Schema from example data, with MLflow's rules.

    DataFrame/Series/dict/list data gives ColSpecs (a column with None/NaN values is
    optional); a numpy array gives an unnamed TensorSpec and a dict of arrays named ones,
    with the first dimension free (-1).
    """
    if isinstance(data, list) and not data:
        schema = Schema([ColSpec(DataType.string)])  # MLflow's historical choice
    elif isinstance(data, list) and all(isinstance(v, dict) for v in data):
        columns: dict[Any, list[Any]] = {}
        for row in data:
            for k, v in row.items():
                columns.setdefault(k, []).append(v)
        schema = Schema(
            [
                ColSpec(
                    _element_type(values),
                    name,
                    required=all(row.get(name) is not None for row in data),
                )
                for name, values in columns.items()
            ]
        )
    elif isinstance(data, dict) and data and all(isinstance(v, np.ndarray) for v in data.values()):
        schema = Schema([_tensor_spec_of(name, arr) for name, arr in data.items()])
    elif isinstance(data, dict):
        if bad := [k for k in data if not isinstance(k, str)]:
            raise SchemaError(f"dict keys must be strings to infer a schema, got {bad}")
        specs = []
        for name, value in data.items():
            t = _infer_value_type(value)
            if t is None:
                raise SchemaError(f"key {name!r} holds an empty numpy array")
            specs.append(ColSpec(t, name, required=_infer_required(value)))
        schema = Schema(specs)
    elif isinstance(data, pd.Series):
        schema = Schema([ColSpec(_infer_column_type(data), data.name, _infer_required(data))])
    elif isinstance(data, pd.DataFrame):
        schema = Schema(
            [
                ColSpec(_infer_column_type(data[c]), c, _infer_required(data[c]))
                for c in data.columns
            ]
        )
    elif isinstance(data, np.ndarray):
        schema = Schema([_tensor_spec_of(None, data)])
    elif isinstance(data, list):
        schema = Schema([ColSpec(_element_type(data))])
    else:
        schema = Schema([ColSpec(_infer_value_type(data))])  # a scalar: never undetermined
    if not schema.is_tensor_spec() and any(
        s.type in (DataType.integer, DataType.long) for s in schema.inputs
    ):
        logger.warning(
            "The inferred schema has integer column(s). pandas stores integer columns that "
            "hold missing values as float64, which the signature will then refuse; infer the "
            "signature from data with missing values, or declare such columns as double."
        )
    return schema


def _infer_param_spec(name: str, value: Any) -> ParamSpec:
    if isinstance(value, (list, np.ndarray)):
        if any(isinstance(v, (list, np.ndarray, dict)) for v in value) or np.ndim(value) != 1:
            raise SchemaError(f"param {name!r}: only scalars and 1-D lists are supported")
        if all(isinstance(v, (dt.date, np.datetime64)) for v in value):  # [] too, as MLflow
            return ParamSpec(name, DataType.datetime, deepcopy(value), (-1,))
        return ParamSpec(name, _infer_numpy_type(np.asarray(value).dtype), deepcopy(value), (-1,))
    if isinstance(value, (dt.date, np.datetime64)):
        return ParamSpec(name, DataType.datetime, deepcopy(value))
    if isinstance(value, dict):
        t = _infer_value_type(value)
        return ParamSpec(name, t, deepcopy(value))  # type: ignore[arg-type]
    if np.isscalar(value):
        return ParamSpec(name, _infer_numpy_type(np.asarray(value).dtype), deepcopy(value))
    raise SchemaError(
        f"param {name!r}: cannot infer a type for {type(value).__name__}; "
        "params are scalars, 1-D lists or dicts"
    )


def infer_signature(
    model_input: Any = None, model_output: Any = None, params: dict[str, Any] | None = None
) -> ModelSignature:
    """Infer a ModelSignature; params become a ParamSchema whose defaults are the values given.

    As in MLflow, input or output data whose schema cannot be inferred gets
    ``Schema([ColSpec(AnyType())])`` and a warning instead of an error.
    """
    schemas: dict[str, Schema | None] = {}
    for key, data in (("inputs", model_input), ("outputs", model_output)):
        schemas[key] = None
        if data is not None:
            try:
                schemas[key] = infer_schema(data)
            except SchemaError as e:
                logger.warning("Could not infer the %s schema (%s); using AnyType.", key, e)
                schemas[key] = Schema([ColSpec(AnyType())])
    param_schema = None
    if params:
        if not isinstance(params, dict):
            raise SchemaError(f"params must be a dict, got {type(params).__name__}")
        param_schema = ParamSchema([_infer_param_spec(str(k), v) for k, v in params.items()])
    return ModelSignature(schemas["inputs"], schemas["outputs"], param_schema)


# --------------------------------------------------------------------------- column enforcement


_MISSING_VALUES_HINT = (
    " Hint: the values are whole numbers with missing values, which pandas stores as float64 "
    "because integer columns cannot hold them. Declare this column as double in the signature, "
    "or infer the signature from data that has missing values."
)


def _is_safe_cast(src: Any, dst: np.dtype) -> bool:
    """MLflow's widening rules: same kind not narrower, uint to a wider int, small int to double."""
    if src.kind == dst.kind:
        return src.itemsize <= dst.itemsize
    if src.kind == "u" and dst.kind == "i":
        return src.itemsize < dst.itemsize
    return src.kind in "iu" and dst == np.float64 and src.itemsize <= 4


def _whole_numbers_with_nans(values: pd.Series) -> bool:
    if values.dtype.kind not in "fiu" or not values.hasnans:
        return False
    present = values.dropna().to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.all(np.isfinite(present) & (present == np.floor(present))))


def _to_datetime(values: pd.Series, where: str) -> pd.Series:
    dtype = values.dtype
    if dtype.kind == "M" or dtype == _OBJECT:
        try:
            return values.astype(_DATETIME_NS)
        except (TypeError, ValueError, OverflowError) as e:
            tz = " (timezone-aware values must be made naive first)" if dtype.kind == "M" else ""
            raise SchemaEnforcementError(
                f"{where}: cannot convert {dtype} values to datetime64[ns]{tz}: {e}"
            ) from None
    raise SchemaEnforcementError(f"{where}: cannot safely convert {dtype} to datetime64[ns]")


def _decimal_to_double(values: pd.Series, where: str) -> pd.Series:
    """Spark decimals reach pandas as Decimal objects; MLflow reads them as doubles.

    Stricter than MLflow, which also parses strings here: only numbers are converted.
    """
    bad = [
        v
        for v in values
        if not _is_none_or_nan(v)
        and (isinstance(v, bool) or not isinstance(v, (decimal.Decimal, numbers.Real)))
    ]
    if bad:
        raise SchemaEnforcementError(
            f"{where}: cannot safely convert object to float64 "
            f"(it holds {type(bad[0]).__name__} values such as {bad[0]!r})"
        )
    return pd.to_numeric(values).astype(np.float64)


def _enforce_series(values: pd.Series, t: DataType, where: str) -> pd.Series:
    """Check one column against a scalar type; convert only where no value can change."""
    if values.dtype == _OBJECT and t not in (DataType.string, DataType.binary):
        values = values.infer_objects()
    dtype = values.dtype
    if t is DataType.string and (dtype == _OBJECT or isinstance(dtype, pd.StringDtype)):
        return values  # any object passes, None included (MLflow does not cast strings)
    if t is DataType.binary and (
        dtype == _OBJECT or isinstance(dtype, pd.StringDtype) or dtype.kind == "S"
    ):
        return values
    if t is DataType.boolean and dtype == _OBJECT:
        return values  # casting would turn None into False
    if t is DataType.datetime:
        return _to_datetime(values, where)
    if t is DataType.double and dtype == _OBJECT:
        return _decimal_to_double(values, where)
    target = t.to_numpy()
    if dtype == target:
        return values
    hint = _MISSING_VALUES_HINT if target.kind in "iu" and _whole_numbers_with_nans(values) else ""
    if _is_safe_cast(dtype, target) or (
        # MLflow lets 0/1 int64 columns (boolean flags) through to float and double.
        dtype == np.int64 and target.kind == "f" and bool(values.isin([0, 1]).all())
    ):
        try:
            return values.astype(target)
        except (TypeError, ValueError) as e:  # nullable (Int64, boolean) columns holding NA
            raise SchemaEnforcementError(
                f"{where}: cannot convert {dtype} to {target} ({t.value}): {e}.{hint}"
            ) from None
    raise SchemaEnforcementError(
        f"{where}: cannot safely convert {dtype} to {target} "
        f"(the signature declares {t.value}).{hint}"
    )


def _object_array(items: list[Any]) -> np.ndarray:
    """A 1-D object array of ``items`` even when they are equal-length lists or arrays."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _enforce_scalar(value: Any, t: DataType, required: bool, where: str) -> Any:
    if not required and _is_none_or_nan(value):
        return None
    if (t is DataType.string and isinstance(value, str)) or (
        t is DataType.binary and isinstance(value, (bytes, bytearray))
    ):
        return value  # what the pandas route below returns too, without building a Series
    if not (np.isscalar(value) or isinstance(value, dt.date)):
        raise SchemaEnforcementError(
            f"{where}: expected a {t.value} value, got {type(value).__name__} {value!r}"
        )
    try:
        return _enforce_series(pd.Series([value]), t, where).iloc[0]
    except SchemaEnforcementError:
        raise SchemaEnforcementError(
            f"{where}: cannot safely convert {type(value).__name__} {value!r} to {t.value}"
        ) from None


def _enforce_array_items(value: list[Any] | np.ndarray, t: DataType, where: str) -> Any:
    if isinstance(value, list):
        return _enforce_series(pd.Series(value), t, where).tolist()
    if value.ndim != 1:
        raise SchemaEnforcementError(f"{where}: expected a 1-D array, got shape {value.shape}")
    if value.dtype != _OBJECT:  # Spark's array columns: check the dtype, not each element
        target = t.to_numpy()
        if value.dtype == target:
            return value
        if target != _OBJECT and _is_safe_cast(value.dtype, target):
            return value.astype(target)
    elif t in (DataType.string, DataType.binary):
        return value
    return _enforce_series(pd.Series(value), t, where).to_numpy()


def _enforce_value(value: Any, t: ColType, required: bool, where: str) -> Any:
    """Validate one value of a nested column (or of an Object param), recursively."""
    if isinstance(t, AnyType):
        return value
    if isinstance(t, DataType):
        return _enforce_scalar(value, t, required, where)
    if isinstance(t, Array):
        if (not required or isinstance(t.item, AnyType)) and (
            value is None or (isinstance(value, (list, np.ndarray)) and len(value) == 0)
        ):
            return value
        if not isinstance(value, (list, np.ndarray)):
            raise SchemaEnforcementError(
                f"{where}: expected a list or numpy array, got {type(value).__name__} {value!r}"
            )
        if isinstance(t.item, DataType):
            return _enforce_array_items(value, t.item, where) if len(value) else value
        items = [
            _enforce_value(v, t.item, required, f"{where}, item {i}") for i, v in enumerate(value)
        ]
        return items if isinstance(value, list) else _object_array(items)
    if isinstance(value, tuple) and hasattr(value, "asDict"):  # a pyspark Row
        value = value.asDict(True) or None
    if isinstance(t, Object):
        if not required and (value is None or (isinstance(value, dict) and not value)):
            return value
        if not isinstance(value, dict):
            raise SchemaEnforcementError(
                f"{where}: expected a dict, got {type(value).__name__} {value!r}"
            )
        props = {p.name: p for p in t.properties}
        problems = []
        if missing := [n for n, p in props.items() if p.required and n not in value]:
            problems.append(f"missing required key(s) {missing}")
        if unknown := [k for k in value if k not in props]:
            problems.append(f"key(s) {unknown} not in the signature")
        if problems:
            raise SchemaEnforcementError(
                f"{where}: {'; '.join(problems)} (expected keys {list(props)})"
            )
        return {
            k: _enforce_value(v, props[k].dtype, props[k].required, f"{where}, key {k!r}")
            for k, v in value.items()
        }
    if isinstance(t, Map):
        if (not required or isinstance(t.values, AnyType)) and (
            value is None or (isinstance(value, dict) and not value)
        ):
            return value
        if not isinstance(value, dict):
            raise SchemaEnforcementError(
                f"{where}: expected a dict, got {type(value).__name__} {value!r}"
            )
        if bad := [k for k in value if not isinstance(k, str)]:
            raise SchemaEnforcementError(f"{where}: map keys must be strings, got {bad}")
        return {
            k: _enforce_value(v, t.values, required, f"{where}, key {k!r}")
            for k, v in value.items()
        }
    raise SchemaError(f"{where}: unsupported type {t!r}")


def _enforce_column(col: pd.Series | pd.DataFrame, spec: ColSpec, where: str) -> pd.Series:
    if isinstance(col, pd.DataFrame):
        raise SchemaEnforcementError(f"{where} appears more than once in the input")
    if isinstance(spec.type, DataType):
        return _enforce_series(col, spec.type, where)
    if isinstance(spec.type, AnyType):
        return col
    items = [
        _enforce_value(v, spec.type, spec.required, f"{where}, row {i}") for i, v in enumerate(col)
    ]
    return pd.Series(_object_array(items), index=col.index, name=col.name)


@functools.lru_cache(maxsize=64)
def _warn_extra_inputs(extra: tuple[Any, ...]) -> None:
    """Warn once per process and set of columns: Spark scores many batches alike."""
    logger.warning("Input columns %s are not in the model signature; they are ignored.", extra)


def _check_names(actual: Sequence[Any], schema: Schema) -> None:
    """All required inputs present (naming every missing one); extras are dropped."""
    present = set(actual)
    missing = [n for n in schema.required_input_names() if n not in present]
    known = set(schema.input_names())
    extra = [n for n in actual if n not in known]
    if missing:
        message = f"model input is missing required input(s) {missing}"
        if extra:
            message += f"; it has input(s) the signature does not declare: {extra}"
        raise SchemaEnforcementError(f"{message} (the signature expects {schema.input_names()})")
    if extra:
        _warn_extra_inputs(tuple(extra))


def _as_frame(data: Any, schema: Schema) -> pd.DataFrame:
    """Turn pyfunc input into the DataFrame a column-based signature describes (MLflow's rules).

    A dict of scalars (or of lists of strings, or any dict when the signature has Array or
    Object columns) is ONE row; other dicts are columns.
    """
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict):
        if any(isinstance(s.type, (Array, Object)) for s in schema.inputs) or all(
            np.isscalar(v)
            or v is None
            or (isinstance(v, list) and all(isinstance(i, str) for i in v))
            for v in data.values()
        ):
            return pd.DataFrame([data])
        if all(
            isinstance(v, np.ndarray) and v.shape == () and v.dtype.kind == "U"
            for v in data.values()
        ):
            return pd.DataFrame([data])
        columns = {
            k: v.tolist() if isinstance(v, np.ndarray) and v.ndim > 1 else v
            for k, v in data.items()
        }
        try:
            return pd.DataFrame(columns)
        except (ValueError, TypeError) as e:
            raise SchemaEnforcementError(
                f"cannot turn the input dict into a DataFrame for the column-based signature: {e}"
            ) from None
    if isinstance(data, (list, np.ndarray)):
        return pd.DataFrame(data)
    if np.isscalar(data):
        return pd.DataFrame([data])
    raise SchemaEnforcementError(
        f"a column-based signature needs a DataFrame, dict, list or array, "
        f"got {type(data).__name__}"
    )


def _enforce_columns(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    specs: list[ColSpec] = schema.inputs  # type: ignore[assignment]
    if schema.has_input_names():
        _check_names(list(frame.columns), schema)
        out = {
            s.name: _enforce_column(frame[s.name], s, f"column {s.name!r}")
            for s in specs
            if s.name in frame.columns
        }
    else:
        if frame.shape[1] < len(specs):
            raise SchemaEnforcementError(
                f"model input has {frame.shape[1]} column(s) but the signature declares "
                f"{len(specs)} unnamed input(s) (matched by position)"
            )
        out = {
            frame.columns[i]: _enforce_column(frame.iloc[:, i], s, f"column {frame.columns[i]!r}")
            for i, s in enumerate(specs)
        }
    # Spark scores every batch through here, so the common cases cost microseconds: input
    # already as the signature wants it is returned as a shallow copy, anything else is
    # assembled from the column arrays without aligning indexes or consolidating blocks.
    if list(out) == list(frame.columns) and all(v is frame[k] for k, v in out.items()):
        return frame.copy(deep=False)
    return pd.DataFrame(
        {k: _column_values(v) for k, v in out.items()}, index=frame.index, copy=False
    )


def _column_values(values: pd.Series) -> Any:
    """The array behind a column: numpy for numpy dtypes (no copy), else the extension array."""
    if isinstance(values.dtype, np.dtype):
        return values.to_numpy(copy=False)
    return values.array


# --------------------------------------------------------------------------- tensor enforcement


def _clean_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype.kind) if dtype.kind in "US" else dtype


def _check_tensor(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    shape = spec.shape
    # Ragged data (an object array of rows) passes when the spec allows it, as in MLflow.
    if shape == (-1,) and spec.dtype == _OBJECT:
        return arr
    if len(shape) > 1 and -1 in shape[1:] and arr.ndim == 1 and arr.dtype == _OBJECT:
        return arr
    if arr.ndim != len(shape) or any(
        e not in (-1, a) for e, a in zip(shape, arr.shape, strict=True)
    ):
        raise SchemaEnforcementError(
            f"{where}: shape {arr.shape} does not match the signature's {shape}"
        )
    if _clean_dtype(arr.dtype) != spec.dtype:
        raise SchemaEnforcementError(
            f"{where}: dtype {arr.dtype} does not match the signature's {spec.dtype}"
        )
    return arr


def _column_to_tensor(col: pd.Series, spec: TensorSpec, where: str) -> np.ndarray:
    """Rows of a DataFrame column -> one tensor, reshaped and cast to the spec (MLflow's rule).

    Rows that are numpy arrays are cast too (MLflow passes them uncast, though its docs
    promise the cast), so a Spark array<double> column feeds a float32 tensor.
    """
    shape = spec.shape
    if not shape or shape[0] != -1 or -1 in shape[1:]:
        raise SchemaEnforcementError(
            f"{where}: a DataFrame column can only feed a tensor whose first dimension is -1 "
            f"and whose others are fixed; the signature's shape is {shape}"
        )
    if len(col) == 0:
        return np.empty((0, *shape[1:]), dtype=spec.dtype)
    first = col.iloc[0]
    try:
        if np.isscalar(first):
            if shape not in ((-1,), (-1, 1)):
                raise SchemaEnforcementError(
                    f"{where} holds scalars, which fit a tensor of shape (-1,) or (-1, 1), "
                    f"not the signature's {shape}"
                )
            return np.asarray(col, dtype=spec.dtype).reshape(shape)
        if isinstance(first, (list, np.ndarray)):
            rows = np.stack([np.asarray(v) for v in col])
            return rows.reshape((len(col), *shape[1:])).astype(spec.dtype)
    except (ValueError, TypeError) as e:
        raise SchemaEnforcementError(
            f"{where}: values cannot be shaped into {shape} of {spec.dtype}; every row needs "
            f"the same number of elements, convertible to {spec.dtype} ({e})"
        ) from None
    raise SchemaEnforcementError(
        f"{where}: a tensor input column must hold scalars, lists or numpy arrays, "
        f"got {type(first).__name__}"
    )


def _enforce_tensors(data: Any, schema: Schema) -> np.ndarray | dict[str, np.ndarray]:
    specs: list[TensorSpec] = schema.inputs  # type: ignore[assignment]
    if schema.has_input_names():
        if isinstance(data, np.ndarray) and len(specs) == 1:
            data = {specs[0].name: data}
        if isinstance(data, dict):
            _check_names(list(data), schema)
            out = {}
            for s in specs:
                value = data[s.name]
                if not isinstance(value, np.ndarray):
                    raise SchemaEnforcementError(
                        f"input {s.name!r}: a named tensor needs a numpy array, "
                        f"got {type(value).__name__}"
                    )
                out[s.name] = _check_tensor(value, s, f"input {s.name!r}")
            return out
        if isinstance(data, pd.DataFrame):
            _check_names(list(data.columns), schema)
            return {s.name: _column_to_tensor(data[s.name], s, f"column {s.name!r}") for s in specs}
        raise SchemaEnforcementError(
            "a signature of named tensors needs a dict of numpy arrays or a DataFrame, "
            f"got {type(data).__name__}"
        )
    spec = specs[0]
    if isinstance(data, np.ndarray):
        return _check_tensor(data, spec, "input")
    if isinstance(data, pd.DataFrame):
        if data.shape[1] == 1:
            return _column_to_tensor(data.iloc[:, 0], spec, f"column {data.columns[0]!r}")
        if spec.shape != (-1, data.shape[1]):
            raise SchemaEnforcementError(
                f"a DataFrame of {data.shape[1]} columns feeds a tensor of shape "
                f"(-1, {data.shape[1]}), but the signature's shape is {spec.shape}"
            )
        return _check_tensor(data.to_numpy(), spec, "input")
    raise SchemaEnforcementError(
        f"an unnamed tensor signature needs a numpy array or a DataFrame, got {type(data).__name__}"
    )


def enforce_schema(data: Any, schema: Schema) -> pd.DataFrame | np.ndarray | dict:
    """Check model input against the input schema and convert it where that is safe.

    Column signatures: input becomes a DataFrame with the signature's columns in its order
    (extra columns dropped, missing optional ones left out); numbers are only widened.
    Tensor signatures: a numpy array (or a dict of them for named tensors).
    Raises SchemaEnforcementError naming the column (or input), and types, at fault.
    """
    if not isinstance(schema, Schema):
        raise SchemaError(f"enforce_schema needs a Schema, got {type(schema).__name__}")
    if isinstance(data, pd.Series):
        data = data.to_frame()
    if schema.is_tensor_spec():
        return _enforce_tensors(data, schema)
    return _enforce_columns(_as_frame(data, schema), schema)


# --------------------------------------------------------------------------- param enforcement


_PARAM_TYPES: dict[DataType, tuple[type, ...]] = {
    DataType.boolean: (bool, np.bool_),
    DataType.integer: (int, np.int32),
    DataType.long: (int, np.int64),
    DataType.float: (float, np.float32),
    DataType.double: (float, np.float64),
    DataType.string: (str, np.str_),
}
_PARAM_WIDENING: dict[DataType, tuple[DataType, ...]] = {
    DataType.long: (DataType.integer,),
    DataType.float: (DataType.integer, DataType.long),
    DataType.double: (DataType.integer, DataType.long, DataType.float),
}
_PARAM_PYTHON: dict[DataType, type] = {
    DataType.boolean: bool,
    DataType.integer: int,
    DataType.long: int,
    DataType.float: float,
    DataType.double: float,
    DataType.string: str,
}


def _param_scalar(name: str, value: Any, t: DataType) -> Any:
    """One param value as a Python builtin of type ``t``; exact types only (bool is no int)."""
    if value is None:
        return None
    if t is DataType.datetime:
        if isinstance(value, dt.date):
            return value
        try:
            out = np.datetime64(value).item()
        except (ValueError, TypeError):
            out = None
        if not isinstance(out, dt.date):
            raise SchemaEnforcementError(
                f"param {name!r}: cannot convert {type(value).__name__} {value!r} to datetime"
            )
        return out
    accepted = [t, *_PARAM_WIDENING.get(t, ())]
    if np.isscalar(value) and any(type(value) in _PARAM_TYPES[a] for a in accepted):
        return _PARAM_PYTHON[t](value)
    raise SchemaEnforcementError(
        f"param {name!r}: cannot safely convert {type(value).__name__} {value!r} to {t.value}"
    )


def _enforce_param(name: str, value: Any, t: DataType | Object, shape: tuple | None) -> Any:
    if shape == (-1,):
        if not isinstance(value, (list, np.ndarray)) or np.ndim(value) != 1:
            raise SchemaEnforcementError(
                f"param {name!r}: expected a 1-D list of {_type_label(t)}, "
                f"got {type(value).__name__} {value!r}"
            )
        return [_enforce_param(name, v, t, None) for v in value]
    if isinstance(t, Object):
        # Validate a copy but hand the model the value it was given, as MLflow does.
        _enforce_value(deepcopy(value), t, True, f"param {name!r}")
        return value
    return _param_scalar(name, value, t)


def _type_label(t: ColType) -> str:
    return t.value if isinstance(t, DataType) else repr(t)


def enforce_params(
    params: dict[str, Any] | None, schema: ParamSchema | None
) -> dict[str, Any] | None:
    """Fill in defaults and convert params safely (int -> long/float/double, float -> double).

    Following MLflow, params the schema does not know, and any params given to a model
    without a params schema, are dropped with a warning on the ``spark_pyfunc`` logger
    rather than refused. A value that cannot be converted raises SchemaEnforcementError
    naming the param, the value's type and the expected type (all bad params at once).
    """
    if schema is None:
        if not params:
            return params
        logger.warning(
            "The model's signature has no params schema, so the params %s are ignored.",
            list(params) if isinstance(params, dict) else type(params).__name__,
        )
        return {}
    if not isinstance(schema, ParamSchema):
        raise SchemaError(f"enforce_params needs a ParamSchema, got {type(schema).__name__}")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise SchemaEnforcementError(f"params must be a dict, got {type(params).__name__}")
    if any(not isinstance(k, str) for k in params):
        logger.warning("Param names must be strings; converting %s.", list(params))
        params = {str(k): v for k, v in params.items()}
    known = {p.name for p in schema.params}
    if unknown := [k for k in params if k not in known]:
        logger.warning(
            "Params %s are not in the model's params schema and are ignored; it accepts %s.",
            unknown,
            sorted(known),
        )
    out: dict[str, Any] = {}
    errors = []
    for spec in schema.params:
        if spec.name not in params:
            out[spec.name] = deepcopy(spec.default)
            continue
        try:
            out[spec.name] = _enforce_param(spec.name, params[spec.name], spec.dtype, spec.shape)
        except SchemaEnforcementError as e:
            errors.append(str(e))
    if errors:
        raise SchemaEnforcementError("invalid params: " + "; ".join(errors))
    return out
