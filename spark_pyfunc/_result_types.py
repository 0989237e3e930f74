"""Spark result types for a model's predictions, and fitting predictions into them.

The driver maps the signature's outputs to a Spark type (``result_type_from_signature``) or
parses the user's (``parse_result_type``); the workers fit each batch's prediction to it,
refusing lossy casts: in pandas (``fit_prediction``) for the pandas UDF, and in Arrow where
that gives the same array (``fit_arrow_result``) for the Arrow relay of ``scope="executor"``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from spark_pyfunc._wire import table_to_frame
from spark_pyfunc.errors import InvalidArgumentError, ResultTypeError, SparkPyfuncError

if TYPE_CHECKING:
    from spark_pyfunc import schema as sch


__all__ = [
    "arrow_type",
    "fit_arrow_result",
    "fit_prediction",
    "parse_result_type",
    "relayable",
    "result_type_from_signature",
    "to_arrow",
]


_SCALARS: dict[str, DataType] = {
    "boolean": BooleanType(),
    "integer": IntegerType(),
    "long": LongType(),
    "float": FloatType(),
    "double": DoubleType(),
    "string": StringType(),
    "binary": BinaryType(),
    "datetime": TimestampType(),
}


def _spark_type_of(dtype: Any, what: str) -> DataType:
    """Map one MLflow column type (scalar or nested) to a Spark type."""
    from spark_pyfunc import schema as sch

    if isinstance(dtype, sch.DataType):
        return _SCALARS[dtype.value]
    if isinstance(dtype, sch.Array):
        return ArrayType(_spark_type_of(dtype.item, what))
    if isinstance(dtype, sch.Object):
        return StructType(
            [
                StructField(p.name, _spark_type_of(p.dtype, f"{what}.{p.name}"), True)
                for p in dtype.properties
            ]
        )
    if isinstance(dtype, sch.Map):
        return MapType(StringType(), _spark_type_of(dtype.values, what))
    raise SparkPyfuncError(
        f"the output schema gives {what} the type {dtype!r}, which has no Spark equivalent; "
        "pass result_type= to spark_udf"
    )


def _spark_type_of_tensor(spec: sch.TensorSpec, what: str) -> DataType:
    """MLflow's rule for a tensor output: an array per row of its element type, nested once
    more for a 2-D shape (``(-1,)`` and ``(2,)`` -> ``array<t>``, ``(-1, 3)`` ->
    ``array<array<t>>``). Beyond MLflow: a 0-D shape gives the scalar type, and int8/int16,
    unsigned and object dtypes map to the nearest Spark type instead of failing."""
    kind = np.dtype(spec.dtype)
    if kind == np.bool_:
        element: DataType = BooleanType()
    elif kind.kind in "iu":
        element = LongType() if kind.itemsize > 4 else IntegerType()
    elif kind.kind == "f":
        element = DoubleType() if kind.itemsize > 4 else FloatType()
    elif kind.kind in "US":
        element = StringType() if kind.kind == "U" else BinaryType()
    elif kind.kind == "O":
        element = StringType()
    elif kind.kind == "M":
        element = TimestampType()
    else:
        raise SparkPyfuncError(f"tensor output {what} has dtype {kind}; pass result_type=")
    if len(spec.shape) > 2:
        raise SparkPyfuncError(
            f"tensor output {what} has shape {tuple(spec.shape)}: only 1-D or 2-D tensors have "
            "a Spark result type (as in MLflow); pass result_type="
        )
    for _ in range(len(spec.shape)):
        element = ArrayType(element)
    return element


def result_type_from_signature(outputs: sch.Schema | None) -> DataType:
    """Spark result type from an output schema: one output -> its type, several -> a struct.

    A model without an output schema gets ``double``, as with ``mlflow.pyfunc.spark_udf``.
    """
    if outputs is None or len(outputs) == 0:
        return DoubleType()
    specs = list(outputs.inputs)
    names = [str(n) for n in outputs.input_names()]
    if outputs.is_tensor_spec():
        types = [
            _spark_type_of_tensor(s, f"output {n!r}") for s, n in zip(specs, names, strict=True)
        ]
    else:
        types = [_spark_type_of(s.type, f"output {n!r}") for s, n in zip(specs, names, strict=True)]
    if len(types) == 1:
        return types[0]
    return StructType([StructField(n, t, True) for n, t in zip(names, types, strict=True)])


def parse_result_type(result_type: str | DataType) -> DataType:
    """A DataType, or a DDL string: ``"double"``, ``"array<float>"``, ``"a int, b string"``."""
    if isinstance(result_type, DataType):
        return result_type
    if not isinstance(result_type, str):
        raise InvalidArgumentError(
            f"result_type must be a pyspark DataType or a DDL string, not {type(result_type)}"
        )
    from pyspark.sql.types import _parse_datatype_string

    try:
        return _parse_datatype_string(result_type)
    except Exception as exc:  # pyspark raises its own ParseException types
        raise InvalidArgumentError(
            f"result_type {result_type!r} is not a valid Spark type: {exc}"
        ) from exc


@functools.lru_cache(maxsize=64)
def arrow_type(dtype: DataType) -> pa.DataType:
    """Spark's Arrow type for ``dtype``; cached, as it is asked for on every batch."""
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(dtype)


_NULLABLE_INTS = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
}


def _fit_column(values: pd.Series, dtype: DataType, output: str) -> pd.Series:
    """Convert one predicted column to what Spark expects for ``dtype``, refusing lossy casts.

    Common exact matches return at once (the hot path); everything else goes through Arrow's
    safe casts, which refuse truncation (1.5 -> int) and overflow.
    """
    kind = values.dtype
    numpy = isinstance(kind, np.dtype)  # nullable pandas dtypes (Int64, ...) go through Arrow
    if isinstance(dtype, (DoubleType, FloatType)) and _is_number(kind):
        # MLflow's rule (``astype``): any number converts, rounded to the nearest float, as
        # 2**53 + 1 -> 2**53 for double; a missing value (pd.NA) becomes null.
        wanted = np.float64 if isinstance(dtype, DoubleType) else np.float32
        return values.astype(wanted, copy=False)
    if isinstance(dtype, BooleanType) and kind == np.bool_:
        return values
    if isinstance(dtype, (IntegerType, LongType)) and numpy and kind.kind in "iu":
        wanted = np.int64 if isinstance(dtype, LongType) else np.int32
        if np.can_cast(kind, wanted):
            return values.astype(wanted, copy=False)
    if isinstance(dtype, StringType):
        if kind == np.dtype(object) or pd.api.types.is_string_dtype(kind):
            return values
        return values.map(lambda v: None if pd.isna(v) else str(v))
    if isinstance(dtype, TimestampType) and pd.api.types.is_datetime64_any_dtype(kind):
        return values
    if isinstance(dtype, DateType) and pd.api.types.is_datetime64_any_dtype(kind):
        return values.dt.date
    target = arrow_type(dtype)
    nested = isinstance(dtype, (ArrayType, MapType, StructType))
    if isinstance(dtype, ArrayType) and kind == np.dtype(object):
        # A missing array (None or NaN) is a null array, as in MLflow (mlflow#8986).
        values = values.map(lambda v: None if _is_none_or_nan(v) else v)
        if isinstance(dtype.elementType, (DoubleType, FloatType)):
            values = values.map(functools.partial(_floats, dtype.elementType))
    try:
        if nested:
            pa.array(_plain(values), type=target, from_pandas=True)  # validates every element
        else:
            array = pa.array(values, from_pandas=True).cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ResultTypeError(
            f"output {output!r}: values of type {kind} do not fit the result type "
            f"{dtype.simpleString()}: {exc}"
        ) from exc
    if nested:
        return values
    return pd.Series(array.to_pandas(types_mapper=_NULLABLE_INTS.get), index=values.index)


def _is_number(kind: Any) -> bool:
    """Integers and floats, numpy's or pandas' nullable ones (not booleans, not complex)."""
    return pd.api.types.is_integer_dtype(kind) or pd.api.types.is_float_dtype(kind)


def _floats(element: DataType, cell: Any) -> Any:
    """A cell's integers as floats, rounded as MLflow's ``np.array(cell, dtype=...)`` rounds
    them (2**53 + 1 -> 2**53 for double); anything else as it is, for Arrow to validate."""
    wanted = np.float64 if isinstance(element, DoubleType) else np.float32
    if isinstance(cell, np.ndarray) and cell.dtype.kind in "iu":
        return cell.astype(wanted)
    if isinstance(cell, (list, tuple)) and any(_is_int(v) for v in cell):
        return [np.asarray(v).astype(wanted).item() if _is_int(v) else v for v in cell]
    return cell


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_none_or_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _plain(values: pd.Series) -> list:
    """Python values for nested Arrow validation (numpy arrays become lists)."""
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def fit_prediction(pred: pd.DataFrame, dtype: DataType, rows: int) -> pd.Series | pd.DataFrame:
    """Shape a normalised prediction frame into the UDF's result type for ``rows`` input rows."""
    if len(pred) != rows:
        raise ResultTypeError(
            f"the model returned {len(pred)} rows for a batch of {rows} rows; "
            "predict must return one prediction per input row"
        )
    pred = pred.reset_index(drop=True)
    if isinstance(dtype, StructType):
        names = [f.name for f in dtype.fields]
        columns = [str(c) for c in pred.columns]
        if all(n in columns for n in names):
            picked = [pred[pred.columns[columns.index(n)]] for n in names]
        elif len(columns) == len(names):
            picked = [pred[c] for c in pred.columns]
        else:
            raise ResultTypeError(
                f"the result type {dtype.simpleString()} has fields {names} but the model "
                f"returned columns {columns}"
            )
        return pd.DataFrame(
            {
                f.name: _fit_column(s, f.dataType, f.name)
                for f, s in zip(dtype.fields, picked, strict=True)
            }
        )
    if len(pred.columns) == 0:
        raise ResultTypeError("the model returned no output columns")
    if isinstance(dtype, ArrayType) and not isinstance(dtype.elementType, (ArrayType, MapType)):
        if len(pred.columns) == 1 and _holds_sequences(pred[pred.columns[0]]):
            return _fit_column(pred[pred.columns[0]], dtype, str(pred.columns[0]))
        # The outputs that convert to the element type, one array of them per row (MLflow).
        kept = _compatible_outputs(pred, dtype.elementType)
        return _fit_column(pd.Series(kept.to_numpy().tolist()), dtype, "array of the outputs")
    if len(pred.columns) > 1:
        pred = _compatible_outputs(pred, dtype)  # the first output of the type, as MLflow
    return _fit_column(pred[pred.columns[0]], dtype, str(pred.columns[0]))


def _holds_sequences(values: pd.Series) -> bool:
    """Whether a column's cells are arrays (one array per row, or all missing) rather than
    scalars."""
    if values.dtype != np.dtype(object):
        return False
    first = next((v for v in values if not _is_none_or_nan(v)), None)
    return first is None or isinstance(first, (list, tuple, np.ndarray))


def _compatible_outputs(pred: pd.DataFrame, dtype: DataType) -> pd.DataFrame:
    """mlflow.pyfunc.spark_udf's rule for several outputs and a scalar (or array of scalar)
    type: keep the outputs of the dtypes MLflow selects for it (int8, uint8, int16, uint16
    and int32 for int; those and every signed integer for bigint; any number for float and
    double; booleans for boolean), converted with ``astype``;
    every output as text for string; all outputs for other types. Beyond MLflow, which
    fails there: float outputs alone, for an integer type, are all kept for the safe cast."""
    if isinstance(dtype, StringType):
        return pred.map(str)
    if isinstance(dtype, IntegerType):
        kept = pred.select_dtypes([np.int8, np.uint8, np.int16, np.uint16, np.int32])
        wanted: Any = np.int32
    elif isinstance(dtype, LongType):
        # MLflow's ``select_dtypes([..., int])``: ``int`` selects every signed integer.
        kept = pred.select_dtypes([np.int8, np.uint8, np.int16, np.uint16, np.signedinteger])
        wanted = np.int64
    elif isinstance(dtype, (FloatType, DoubleType)):
        kept = pred.select_dtypes(include=(np.number,))
        wanted = np.float32 if isinstance(dtype, FloatType) else np.float64
    elif isinstance(dtype, BooleanType):
        kept, wanted = pred.select_dtypes([np.bool_]), np.bool_
    else:
        return pred
    if len(kept.columns) == 0 and wanted in (np.int32, np.int64):
        if all(kind.kind == "f" for kind in pred.dtypes):
            return _whole_numbers(pred, wanted, dtype)
    if len(kept.columns) == 0:
        outputs = {str(c): str(t) for c, t in pred.dtypes.items()}
        raise ResultTypeError(
            f"none of the model's outputs {outputs} converts to the result type "
            f"{dtype.simpleString()}; ask for string or array<string> to get them as text"
        )
    return kept.astype(wanted)


def _whole_numbers(pred: pd.DataFrame, wanted: Any, dtype: DataType) -> pd.DataFrame:
    """Float outputs as integers where every value is a whole number in range (beyond
    MLflow, which fails); a fraction, NaN or overflow fails naming the output."""
    for name in pred.columns:
        try:
            pa.array(pred[name].to_numpy()).cast(pa.from_numpy_dtype(wanted), safe=True)
            if pred[name].isna().any():
                raise ValueError("a missing value (NaN) has no integer form")
        except (pa.ArrowInvalid, ValueError) as exc:
            raise ResultTypeError(
                f"output {str(name)!r}: values of type {pred[name].dtype} do not fit the "
                f"result type {dtype.simpleString()}: {exc}"
            ) from exc
    return pred.astype(wanted)


def relayable(dtype: DataType) -> bool:
    """Result types whose Arrow form Spark builds the same way from pandas and from Arrow.

    Dates, timestamps and maps have pandas-specific conversions in Spark: UDFs returning
    them keep the pandas path.
    """
    if isinstance(dtype, ArrayType):
        return relayable(dtype.elementType)
    if isinstance(dtype, StructType):
        return all(relayable(f.dataType) for f in dtype.fields)
    return isinstance(
        dtype,
        (BooleanType, IntegerType, LongType, FloatType, DoubleType, StringType, BinaryType),
    )


def to_arrow(fitted: pd.Series | pd.DataFrame, dtype: DataType) -> pa.Array:
    """A fitted prediction as the Arrow array Spark expects for ``dtype``."""
    target = arrow_type(dtype)
    if isinstance(fitted, pd.DataFrame):
        arrays = [
            pa.array(fitted[f.name], type=target.field(i).type, from_pandas=True)
            for i, f in enumerate(dtype.fields)  # type: ignore[attr-defined]
        ]
        return pa.StructArray.from_arrays(arrays, fields=list(target))
    return pa.array(fitted, type=target, from_pandas=True)


def _fit_arrow_column(values: pa.Array, dtype: DataType) -> pa.Array | None:
    """:func:`_fit_column` followed by :func:`to_arrow`, in Arrow, for the common exact
    cases; None where the result could differ in any way (the pandas path then decides,
    with its error messages). NaN becomes null, as Arrow's pandas conversion makes it."""
    source = values.type
    if isinstance(dtype, (DoubleType, FloatType)):
        target = pa.float64() if isinstance(dtype, DoubleType) else pa.float32()
        floating = source in (pa.float32(), pa.float64())
        if floating or pa.types.is_integer(source):
            fitted = values.cast(target, safe=False)  # numpy's astype: same rounding
            if floating:
                nan = pc.is_nan(fitted)
                if pc.any(nan).as_py():
                    fitted = pc.if_else(nan, pa.scalar(None, target), fitted)
            return fitted
        return None
    if isinstance(dtype, (IntegerType, LongType)):
        wanted = np.int64 if isinstance(dtype, LongType) else np.int32
        if (
            pa.types.is_integer(source)
            and values.null_count == 0  # pandas holds those as floats
            and np.can_cast(source.to_pandas_dtype(), wanted)
        ):
            return values.cast(arrow_type(dtype))
        return None
    if isinstance(dtype, BooleanType):
        return values if pa.types.is_boolean(source) and values.null_count == 0 else None
    if isinstance(dtype, StringType):
        if pa.types.is_string(source) or pa.types.is_large_string(source):
            return values.cast(pa.string())
        return None
    return None


def _fit_arrow(table: pa.Table, dtype: DataType, rows: int) -> pa.Array | None:
    """The host's Arrow result as the Arrow array Spark expects for ``dtype``, without
    pandas, where every column allows it; None sends it through :func:`fit_prediction`."""
    if table.num_rows != rows or table.num_columns == 0:
        return None
    columns = [c.combine_chunks() for c in table.columns]
    if isinstance(dtype, StructType):
        names = [f.name for f in dtype.fields]
        given = table.column_names
        if all(n in given for n in names):
            picked = [columns[given.index(n)] for n in names]
        elif len(given) == len(names):
            picked = columns
        else:
            return None
        arrays = [
            _fit_arrow_column(c, f.dataType) for c, f in zip(picked, dtype.fields, strict=True)
        ]
        if any(a is None for a in arrays):
            return None
        return pa.StructArray.from_arrays(arrays, fields=list(arrow_type(dtype)))
    if isinstance(dtype, ArrayType) or len(columns) > 1:
        return None  # fit_prediction picks the outputs, as MLflow
    return _fit_arrow_column(columns[0], dtype)


def fit_arrow_result(table: pa.Table, dtype: DataType, rows: int) -> pa.Array:
    """The host's result table as Spark's Arrow array for ``dtype``: the same array and the
    same errors as fitting it in pandas (:func:`fit_prediction`), in Arrow where it can."""
    fitted = _fit_arrow(table, dtype, rows)
    if fitted is not None:
        return fitted
    return to_arrow(fit_prediction(table_to_frame(table), dtype, rows), dtype)
