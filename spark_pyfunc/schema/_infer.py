"""Signature inference from example data and params, with MLflow's rules."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd

from spark_pyfunc.errors import SchemaError
from spark_pyfunc.schema._coerce import is_none_or_nan
from spark_pyfunc.schema._specs import (
    ColSpec,
    ModelSignature,
    ParamSchema,
    ParamSpec,
    Schema,
    TensorSpec,
)
from spark_pyfunc.schema._types import AnyType, Array, ColType, DataType, Map, Object, Property

# Records keep the public module's logger name, as before the package was split.
logger = logging.getLogger(__package__)


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
    if is_none_or_nan(value) or (isinstance(value, (list, dict)) and not value):
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
        return not any(is_none_or_nan(x) for x in value)
    return not is_none_or_nan(value)


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

    Args:
        data: a DataFrame, Series, dict, list (of values, or of dicts as rows), numpy array,
            dict of numpy arrays, or scalar.

    Returns:
        The Schema of ``data``.

    Raises:
        SchemaError: a value has no MLflow type (an unsupported object, a dict with
            non-string keys, values of different types in one list), naming it.

    Example:
        >>> import numpy as np
        >>> from spark_pyfunc.schema import infer_schema
        >>> infer_schema(np.zeros((2, 3), np.float32)).inputs[0].simple_string()
        'tensor<float32>(-1, 3)'
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

    Args:
        model_input: example input, of any kind :func:`infer_schema` takes; None for none.
        model_output: example output, likewise.
        params: example params by name: scalars, 1-D lists or dicts.

    Returns:
        A ModelSignature with the parts that were given.

    Raises:
        SchemaError: ``params`` is not a dict or holds a value of no param type (naming the
            param), or nothing was given at all.

    Example:
        >>> import pandas as pd
        >>> from spark_pyfunc.schema import infer_signature
        >>> signature = infer_signature(pd.DataFrame({"a": [0.5], "b": ["x"]}), params={"k": 3})
        >>> [spec.simple_string() for spec in signature.inputs], signature.params.defaults()
        (['double', 'string'], {'k': 3})
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
