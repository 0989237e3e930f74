"""Enforcement: model input and params checked against a signature before predict.

This module shapes the input (a DataFrame, dict, list or array) into the columns or tensors
a signature describes; the per-value rules come from ``_coerce``. Spark scores every batch
through here, so the common cases are kept cheap.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd

from spark_pyfunc.errors import SchemaEnforcementError, SchemaError
from spark_pyfunc.schema._coerce import (
    OBJECT_DTYPE,
    coerce_param,
    coerce_series,
    coerce_value,
    object_array,
)
from spark_pyfunc.schema._specs import ColSpec, ParamSchema, Schema, TensorSpec
from spark_pyfunc.schema._types import AnyType, Array, DataType, Object

# Records keep the public module's logger name, as before the package was split.
logger = logging.getLogger(__package__)


def _enforce_column(col: pd.Series | pd.DataFrame, spec: ColSpec, where: str) -> pd.Series:
    if isinstance(col, pd.DataFrame):
        raise SchemaEnforcementError(f"{where} appears more than once in the input")
    if isinstance(spec.type, DataType):
        return coerce_series(col, spec.type, where)
    if isinstance(spec.type, AnyType):
        return col
    items = [
        coerce_value(v, spec.type, spec.required, f"{where}, row {i}") for i, v in enumerate(col)
    ]
    return pd.Series(object_array(items), index=col.index, name=col.name)


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


def _already_enforced(frame: pd.DataFrame, specs: list[ColSpec]) -> bool:
    """Whether ``frame`` holds exactly the signature's columns, in its order, each already of
    the numpy dtype its scalar type converts to (what Spark's batches of numeric features
    are): enforcement would return every column unchanged, so it need not look at them."""
    if list(frame.columns) != [s.name for s in specs]:
        return False
    return all(
        isinstance(s.type, DataType)
        and s.type is not DataType.datetime
        and dtype != OBJECT_DTYPE
        and dtype == s.type.to_numpy()
        for s, dtype in zip(specs, frame.dtypes, strict=True)
    )


def _enforce_columns(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    specs: list[ColSpec] = schema.inputs  # type: ignore[assignment]
    if schema.has_input_names() and _already_enforced(frame, specs):
        return frame.copy(deep=False)
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


def _clean_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype.kind) if dtype.kind in "US" else dtype


def _check_tensor(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    shape = spec.shape
    # Ragged data (an object array of rows) passes when the spec allows it, as in MLflow.
    if shape == (-1,) and spec.dtype == OBJECT_DTYPE:
        return arr
    if len(shape) > 1 and -1 in shape[1:] and arr.ndim == 1 and arr.dtype == OBJECT_DTYPE:
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

    Numbers are only widened (``int32 -> int64``, ``float32 -> float64``, never
    ``float64 -> int64``), as MLflow does before ``predict``.

    Args:
        data: model input: a DataFrame, Series, dict, list or numpy array, or for named
            tensors a dict of numpy arrays.
        schema: the signature's input schema.

    Returns:
        For column signatures, a DataFrame with the signature's columns in its order (extra
        columns dropped with a warning, missing optional ones left out); for tensor
        signatures, a numpy array, or a dict of them for named tensors.

    Raises:
        SchemaEnforcementError: a required input is missing (all are named), or a value
            cannot be converted safely (naming the column or input and both types).
        SchemaError: ``schema`` is not a Schema.

    Example:
        >>> import numpy as np
        >>> import pandas as pd
        >>> from spark_pyfunc.schema import ColSpec, Schema, enforce_schema
        >>> frame = pd.DataFrame({"a": np.array([1, 2], np.int32), "b": ["x", "y"]})
        >>> enforce_schema(frame, Schema([ColSpec("double", "a")])).dtypes.to_dict()
        {'a': dtype('float64')}
    """
    if not isinstance(schema, Schema):
        raise SchemaError(f"enforce_schema needs a Schema, got {type(schema).__name__}")
    if isinstance(data, pd.Series):
        data = data.to_frame()
    if schema.is_tensor_spec():
        return _enforce_tensors(data, schema)
    return _enforce_columns(_as_frame(data, schema), schema)


def enforce_params(
    params: dict[str, Any] | None, schema: ParamSchema | None
) -> dict[str, Any] | None:
    """Fill in defaults and convert params safely (int -> long/float/double, float -> double).

    Following MLflow, params the schema does not know, and any params given to a model
    without a params schema, are dropped with a warning on the ``spark_pyfunc`` logger
    rather than refused.

    Args:
        params: the params passed at inference time, or None.
        schema: the signature's params schema, or None.

    Returns:
        Every param of ``schema``: the given ones converted, the others at their defaults;
        ``{}`` when params are given to a model without a params schema, and ``params``
        itself when neither has any.

    Raises:
        SchemaEnforcementError: ``params`` is not a dict, or values cannot be converted
            (naming each such param, the value's type and the expected type, all at once).
        SchemaError: ``schema`` is neither a ParamSchema nor None.

    Example:
        >>> from spark_pyfunc.schema import ParamSchema, ParamSpec, enforce_params
        >>> schema = ParamSchema([ParamSpec("scale", "double", 1.0), ParamSpec("k", "long", 5)])
        >>> enforce_params({"scale": 2}, schema)
        {'scale': 2.0, 'k': 5}
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
            out[spec.name] = coerce_param(spec.name, params[spec.name], spec.dtype, spec.shape)
        except SchemaEnforcementError as e:
            errors.append(str(e))
    if errors:
        raise SchemaEnforcementError("invalid params: " + "; ".join(errors))
    return out
