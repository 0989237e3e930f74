"""Safe casts of values to a schema type: what MLflow converts, and what it refuses.

Both the specs (a ParamSpec's default is checked like a param passed at inference time) and
enforcement (columns, nested values, params) apply these rules, so they sit between the two:
they need only the types, and the specs need them while being constructed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import numbers
from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd

from spark_pyfunc.errors import SchemaEnforcementError, SchemaError
from spark_pyfunc.schema._types import AnyType, Array, ColType, DataType, Map, Object

_DATETIME_NS = np.dtype("datetime64[ns]")
OBJECT_DTYPE = np.dtype("O")


def is_none_or_nan(x: Any) -> bool:
    """A missing value as pandas writes one (None, NaN, NA, NaT): optional fields may hold it."""
    if isinstance(x, float):
        return bool(np.isnan(x))
    return x is None or x is pd.NA or x is pd.NaT


# --------------------------------------------------------------------------- columns and values


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
    if dtype.kind == "M" or dtype == OBJECT_DTYPE:
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
        if not is_none_or_nan(v)
        and (isinstance(v, bool) or not isinstance(v, (decimal.Decimal, numbers.Real)))
    ]
    if bad:
        raise SchemaEnforcementError(
            f"{where}: cannot safely convert object to float64 "
            f"(it holds {type(bad[0]).__name__} values such as {bad[0]!r})"
        )
    return pd.to_numeric(values).astype(np.float64)


def coerce_series(values: pd.Series, t: DataType, where: str) -> pd.Series:
    """Check one column against a scalar type; convert only where no value can change."""
    if values.dtype == OBJECT_DTYPE and t not in (DataType.string, DataType.binary):
        values = values.infer_objects()
    dtype = values.dtype
    if t is DataType.string and (dtype == OBJECT_DTYPE or isinstance(dtype, pd.StringDtype)):
        return values  # any object passes, None included (MLflow does not cast strings)
    if t is DataType.binary and (
        dtype == OBJECT_DTYPE or isinstance(dtype, pd.StringDtype) or dtype.kind == "S"
    ):
        return values
    if t is DataType.boolean and dtype == OBJECT_DTYPE:
        return values  # casting would turn None into False
    if t is DataType.datetime:
        return _to_datetime(values, where)
    if t is DataType.double and dtype == OBJECT_DTYPE:
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


def object_array(items: list[Any]) -> np.ndarray:
    """A 1-D object array of ``items`` even when they are equal-length lists or arrays."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _coerce_scalar(value: Any, t: DataType, required: bool, where: str) -> Any:
    if not required and is_none_or_nan(value):
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
        return coerce_series(pd.Series([value]), t, where).iloc[0]
    except SchemaEnforcementError:
        raise SchemaEnforcementError(
            f"{where}: cannot safely convert {type(value).__name__} {value!r} to {t.value}"
        ) from None


def _coerce_array_items(value: list[Any] | np.ndarray, t: DataType, where: str) -> Any:
    if isinstance(value, list):
        return coerce_series(pd.Series(value), t, where).tolist()
    if value.ndim != 1:
        raise SchemaEnforcementError(f"{where}: expected a 1-D array, got shape {value.shape}")
    if value.dtype != OBJECT_DTYPE:  # Spark's array columns: check the dtype, not each element
        target = t.to_numpy()
        if value.dtype == target:
            return value
        if target != OBJECT_DTYPE and _is_safe_cast(value.dtype, target):
            return value.astype(target)
    elif t in (DataType.string, DataType.binary):
        return value
    return coerce_series(pd.Series(value), t, where).to_numpy()


def coerce_value(value: Any, t: ColType, required: bool, where: str) -> Any:
    """Validate one value of a nested column (or of an Object param), recursively."""
    if isinstance(t, AnyType):
        return value
    if isinstance(t, DataType):
        return _coerce_scalar(value, t, required, where)
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
            return _coerce_array_items(value, t.item, where) if len(value) else value
        items = [
            coerce_value(v, t.item, required, f"{where}, item {i}") for i, v in enumerate(value)
        ]
        return items if isinstance(value, list) else object_array(items)
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
            k: coerce_value(v, props[k].dtype, props[k].required, f"{where}, key {k!r}")
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
            k: coerce_value(v, t.values, required, f"{where}, key {k!r}") for k, v in value.items()
        }
    raise SchemaError(f"{where}: unsupported type {t!r}")


# --------------------------------------------------------------------------- params


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


def coerce_param(name: str, value: Any, t: DataType | Object, shape: tuple | None) -> Any:
    """A param value checked and converted to its type and shape.

    One rule for a ParamSpec's default and for a param passed at inference time, so that a
    default is accepted exactly when the same value passed later would be.
    """
    if shape == (-1,):
        if not isinstance(value, (list, np.ndarray)) or np.ndim(value) != 1:
            raise SchemaEnforcementError(
                f"param {name!r}: expected a 1-D list of {_type_label(t)}, "
                f"got {type(value).__name__} {value!r}"
            )
        return [coerce_param(name, v, t, None) for v in value]
    if isinstance(t, Object):
        # Validate a copy but hand the model the value it was given, as MLflow does.
        coerce_value(deepcopy(value), t, True, f"param {name!r}")
        return value
    return _param_scalar(name, value, t)


def _type_label(t: ColType) -> str:
    return t.value if isinstance(t, DataType) else repr(t)
