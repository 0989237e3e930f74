"""Property tests: a prediction fitted to a result type comes out as the Arrow array Spark expects.

With ``scope="executor"`` on PySpark 4.1+ the worker hands Spark Arrow arrays it built itself
(udf._to_arrow) instead of pandas: for every result type that path takes, the array must have
Spark's Arrow type for it and hold the predicted values, nulls where pandas has missing values
(NaN included, as a pandas UDF returns them).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from spark_pyfunc.udf import _relayable, _to_arrow, fit_prediction

_INT32 = st.integers(-(2**31), 2**31 - 1)
_INT64 = st.integers(-(2**63), 2**63 - 1)
_DOUBLES = st.floats(allow_nan=False, width=64)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=32)

# result type -> (value strategy, how a model would return a column of such values)
_KINDS = {
    "boolean": (BooleanType(), st.booleans(), lambda v: pd.Series(v, dtype=object)),
    "int": (IntegerType(), _INT32, lambda v: pd.Series(v, dtype="Int32")),
    "long": (LongType(), _INT64, lambda v: pd.Series(v, dtype="Int64")),
    "float": (FloatType(), _FLOATS, lambda v: pd.Series(v, dtype=np.float32)),
    "double": (DoubleType(), _DOUBLES, lambda v: pd.Series(v, dtype=np.float64)),
    "string": (StringType(), st.text(max_size=6), lambda v: pd.Series(v, dtype=object)),
    "binary": (BinaryType(), st.binary(max_size=6), lambda v: pd.Series(v, dtype=object)),
    "array<double>": (
        ArrayType(DoubleType()),
        st.lists(_DOUBLES, max_size=3),
        lambda v: pd.Series([None if x is None else np.array(x) for x in v], dtype=object),
    ),
    "array<long>": (
        ArrayType(LongType()),
        st.lists(_INT64, max_size=3),
        lambda v: pd.Series(v, dtype=object),
    ),
}


def _expected(values: list, dtype) -> list:
    """What Spark should receive: pandas' missing values (None, NaN) become nulls."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(dtype, FloatType):
            out.append(float(np.float32(v)))
        else:
            out.append(v)
    return out


@st.composite
def columns(draw, kind: str | None = None):
    kind = kind or draw(st.sampled_from(sorted(_KINDS)))
    dtype, values, as_series = _KINDS[kind]
    n = draw(st.integers(1, 20))
    cells = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
    return kind, cells


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
def test_every_relayed_scalar_and_array_type(column) -> None:
    kind, cells = column
    dtype, _, as_series = _KINDS[kind]
    assert _relayable(dtype)
    fitted = fit_prediction(pd.DataFrame({"0": as_series(cells)}), dtype, len(cells))
    array = _to_arrow(fitted, dtype)
    assert array.type == to_arrow_type(dtype)
    assert array.to_pylist() == _expected(cells, dtype)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns("double"), columns("string"), st.data())
def test_struct_results(score, label, data) -> None:
    n = min(len(score[1]), len(label[1]))
    scores, labels = score[1][:n], label[1][:n]
    dtype = StructType(
        [StructField("score", DoubleType(), True), StructField("label", StringType(), True)]
    )
    pred = pd.DataFrame({"label": pd.Series(labels, dtype=object), "score": scores})
    array = _to_arrow(fit_prediction(pred, dtype, n), dtype)
    assert array.type == to_arrow_type(dtype)
    assert array.to_pylist() == [
        {"score": s, "label": lab}
        for s, lab in zip(_expected(scores, DoubleType()), labels, strict=True)
    ]


def test_types_with_pandas_specific_conversions_keep_the_pandas_udf() -> None:
    from pyspark.sql.types import DateType, MapType, TimestampType

    assert not _relayable(TimestampType())
    assert not _relayable(DateType())
    assert not _relayable(MapType(StringType(), DoubleType()))
    assert not _relayable(ArrayType(TimestampType()))
    assert _relayable(StructType([StructField("a", ArrayType(LongType()), True)]))
    assert isinstance(_to_arrow(pd.Series([], dtype=np.float64), DoubleType()), pa.Array)
