"""Column and param types (DataType ... Map) and MLflow's JSON form of them.

The bottom layer of ``spark_pyfunc.schema``: what a type is and how MLflow writes it, and
nothing about values, so that every other schema module can build on it without a cycle.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_pyfunc.errors import SchemaError


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

    def simple_string(self) -> str:
        """The type in one short string, in the style of Spark's ``DataType.simpleString``.

        Types keep MLflow's names (``long``, not Spark's ``bigint``), since they are MLflow's.

        Example:
            >>> from spark_pyfunc.schema import Array, DataType, Map
            >>> DataType.long.simple_string()
            'long'
            >>> Array(Map(DataType.double)).simple_string()
            'array<map<string, double>>'
        """
        return self.value

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


def as_type(value: Any, what: str) -> ColType:
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

    def simple_string(self) -> str:
        return "any"


@dataclass(frozen=True)
class Array:
    """A list (or 1-D numpy array) whose elements all have type ``item``."""

    item: ColType

    def __post_init__(self) -> None:
        object.__setattr__(self, "item", as_type(self.item, "Array item"))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "array", "items": type_to_dict(self.item)}

    def simple_string(self) -> str:
        return f"array<{self.item.simple_string()}>"


@dataclass(frozen=True)
class SparkMLVector(Array):
    """A Spark ML vector column; MLflow treats it as an array of doubles."""

    item: ColType = field(default=DataType.double, init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "sparkml_vector"}

    def simple_string(self) -> str:
        return "sparkml_vector"


@dataclass(frozen=True)
class Property:
    """One named field of an :class:`Object`."""

    name: str
    dtype: ColType
    required: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"Property name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "dtype", as_type(self.dtype, f"Property {self.name!r}"))
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
                p.name: {**type_to_dict(p.dtype), "required": p.required} for p in self.properties
            },
        }

    def simple_string(self) -> str:
        """``struct<a: long, b?: string>``: ``?`` marks a property that may be missing."""
        fields = (
            f"{p.name}{'' if p.required else '?'}: {p.dtype.simple_string()}"
            for p in self.properties
        )
        return f"struct<{', '.join(fields)}>"


@dataclass(frozen=True)
class Map:
    """A dict with string keys whose values all have type ``values``."""

    values: ColType

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", as_type(self.values, "Map values"))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "map", "values": type_to_dict(self.values)}

    def simple_string(self) -> str:
        return f"map<string, {self.values.simple_string()}>"


ColType = DataType | Array | Object | Map | AnyType


def type_to_dict(t: ColType) -> dict[str, Any]:
    """MLflow's JSON form of a column type (a DataType is an enum, so it has no ``to_dict``)."""
    return {"type": t.value} if isinstance(t, DataType) else t.to_dict()


def type_from_dict(d: Any, what: str) -> ColType:
    """Parse MLflow's JSON form of a column type; ``what`` locates it in error messages."""
    if not isinstance(d, dict) or "type" not in d:
        raise SchemaError(f"{what}: expected a JSON object with a 'type' key, got {d!r}")
    kind = d["type"]
    try:
        if kind == "array":
            return Array(type_from_dict(d["items"], f"{what} items"))
        if kind == "map":
            return Map(type_from_dict(d["values"], f"{what} values"))
        if kind == "object":
            props = d["properties"]
            if not isinstance(props, dict):
                raise SchemaError(f"{what}: 'properties' must be a JSON object, got {props!r}")
            return Object(
                [
                    Property(
                        name,
                        type_from_dict(p, f"{what} property {name!r}"),
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
    return as_type(kind, what)
