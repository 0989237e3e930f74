"""Property tests: a prediction fitted to a result type comes out as the Arrow array Spark expects.

With ``scope="executor"`` on PySpark 4.1+ the worker hands Spark Arrow arrays it built itself
(udf.to_arrow) instead of pandas: for every result type that path takes, the array must have
Spark's Arrow type for it and hold the predicted values, nulls where pandas has missing values
(NaN included, as a pandas UDF returns them).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import example, given
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

from spark_pyfunc._result_types import (
    _fit_arrow,
    fit_arrow_result,
    fit_prediction,
    relayable,
    to_arrow,
)
from spark_pyfunc._wire import arrow_bytes_to_table, frame_to_arrow_bytes, table_to_frame
from spark_pyfunc.errors import ResultTypeError

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


@given(columns())
def test_every_relayed_scalar_and_array_type(column) -> None:
    kind, cells = column
    dtype, _, as_series = _KINDS[kind]
    assert relayable(dtype)
    fitted = fit_prediction(pd.DataFrame({"0": as_series(cells)}), dtype, len(cells))
    array = to_arrow(fitted, dtype)
    assert array.type == to_arrow_type(dtype)
    assert array.to_pylist() == _expected(cells, dtype)


@given(columns("double"), columns("string"), st.data())
def test_struct_results(score, label, data) -> None:
    n = min(len(score[1]), len(label[1]))
    scores, labels = score[1][:n], label[1][:n]
    dtype = StructType(
        [StructField("score", DoubleType(), True), StructField("label", StringType(), True)]
    )
    pred = pd.DataFrame({"label": pd.Series(labels, dtype=object), "score": scores})
    array = to_arrow(fit_prediction(pred, dtype, n), dtype)
    assert array.type == to_arrow_type(dtype)
    assert array.to_pylist() == [
        {"score": s, "label": lab}
        for s, lab in zip(_expected(scores, DoubleType()), labels, strict=True)
    ]


def test_types_with_pandas_specific_conversions_keep_the_pandas_udf() -> None:
    from pyspark.sql.types import DateType, MapType, TimestampType

    assert not relayable(TimestampType())
    assert not relayable(DateType())
    assert not relayable(MapType(StringType(), DoubleType()))
    assert not relayable(ArrayType(TimestampType()))
    assert relayable(StructType([StructField("a", ArrayType(LongType()), True)]))
    assert isinstance(to_arrow(pd.Series([], dtype=np.float64), DoubleType()), pa.Array)


# ------------------------------------------------- the relay fits the host's Arrow in Arrow

# Columns as a model may return them, each a function of drawn Python floats/ints.
_SOURCES = {
    "float64": lambda v: pd.Series(v, dtype=np.float64),
    "float32": lambda v: pd.Series(v, dtype=np.float64).astype(np.float32),
    "int64": lambda v: pd.Series([0 if x is None else x for x in v], dtype=np.int64),
    "int32": lambda v: pd.Series([0 if x is None else x for x in v], dtype=np.int64).astype(
        np.int32
    ),
    "uint8": lambda v: pd.Series([0 if x is None else x for x in v], dtype=np.int64).astype(
        np.uint8
    ),
    "uint64": lambda v: pd.Series([0 if x is None else x for x in v], dtype=np.int64).astype(
        np.uint64
    ),
    "Int64": lambda v: pd.Series(v, dtype="Int64"),
    "bool": lambda v: pd.Series([bool((x or 0) % 2) for x in v], dtype=bool),
    "object_bool": lambda v: pd.Series([None if x is None else bool(x % 2) for x in v]),
    "string": lambda v: pd.Series([None if x is None else f"s{x}" for x in v], dtype=object),
}
_TARGETS = [DoubleType(), FloatType(), IntegerType(), LongType(), BooleanType(), StringType()]
_NUMBERS = st.one_of(
    st.none(),
    st.integers(-(2**62), 2**62),
    st.integers(-300, 300),
    st.sampled_from([math.nan, math.inf, -math.inf, 1.5, 2**53 + 1, 1e300]),
)


def _host_result(frame: pd.DataFrame) -> pa.Table:
    """What the relay receives: the frame as the host serialises it, read back."""
    return arrow_bytes_to_table(frame_to_arrow_bytes(frame))


def _pandas_path(table: pa.Table, dtype, rows: int):
    """The relay before it fitted in Arrow: an array, or the error it raised."""
    try:
        return to_arrow(fit_prediction(table_to_frame(table), dtype, rows), dtype)
    except Exception as exc:  # ResultTypeError, or Arrow's own for an object column
        return exc


@given(
    st.sampled_from(sorted(_SOURCES)),
    st.sampled_from(_TARGETS),
    st.lists(_NUMBERS, min_size=1, max_size=12),
)
# Integers that no float holds exactly: both paths round them, as MLflow (issue 28).
@example("Int64", DoubleType(), [2**53 + 1])
@example("Int64", FloatType(), [2**53 + 1, None])
@example("int64", FloatType(), [2**24 + 1])
@example("uint64", DoubleType(), [2**53 + 1])
def test_arrow_fitting_gives_the_pandas_paths_array_or_error(source, dtype, cells) -> None:
    try:
        frame = pd.DataFrame({"y": _SOURCES[source](cells)})
    except (OverflowError, TypeError, ValueError):
        return  # not a column this source dtype can hold
    table = _host_result(frame)
    want = _pandas_path(table, dtype, len(frame))
    if isinstance(want, Exception):
        with pytest.raises(type(want)) as info:
            fit_arrow_result(table, dtype, len(frame))
        assert type(info.value) is type(want) and str(info.value) == str(want)
        return
    got = fit_arrow_result(table, dtype, len(frame))
    assert got.type == want.type == to_arrow_type(dtype)
    assert got.equals(want), (got.to_pylist(), want.to_pylist())


def test_common_results_skip_pandas() -> None:
    """The hot cases are fitted in Arrow (the fallback is for what pandas must decide)."""
    rows = 5
    doubles = _host_result(pd.DataFrame({"y": np.array([1.0, np.nan, 3.0, 4.0, 5.0])}))
    fitted = _fit_arrow(doubles, DoubleType(), rows)
    assert fitted is not None and fitted.to_pylist() == [1.0, None, 3.0, 4.0, 5.0]
    ints = _host_result(pd.DataFrame({"y": np.arange(rows, dtype=np.int32)}))
    assert _fit_arrow(ints, LongType(), rows).type == pa.int64()
    struct = StructType(
        [StructField("score", DoubleType(), True), StructField("label", StringType(), True)]
    )
    both = _host_result(pd.DataFrame({"label": list("abcde"), "score": np.ones(rows)}))
    assert _fit_arrow(both, struct, rows).to_pylist()[0] == {"score": 1.0, "label": "a"}
    # a lossy cast, and a row-count mismatch, are left to the pandas path and its messages
    assert _fit_arrow(_host_result(pd.DataFrame({"y": [1.5] * rows})), LongType(), rows) is None
    assert _fit_arrow(doubles, DoubleType(), rows + 1) is None
    with pytest.raises(ResultTypeError, match="returned 5 rows for a batch of 6 rows"):
        fit_arrow_result(doubles, DoubleType(), rows + 1)


# ----------------------------------------------- MLflow's rules (issue 12), without Spark

_MIXED = pd.DataFrame(
    {
        "label": ["a", "b"],
        "p": np.array([0.5, 1.5]),
        "n": np.array([1, 2], dtype=np.int64),
        "i": np.array([3, 4], dtype=np.int32),
    }
)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (ArrayType(DoubleType()), [[0.5, 1.0, 3.0], [1.5, 2.0, 4.0]]),
        (ArrayType(LongType()), [[1, 3], [2, 4]]),  # MLflow: every signed integer
        (ArrayType(IntegerType()), [[3], [4]]),
        (ArrayType(StringType()), [["a", "0.5", "1", "3"], ["b", "1.5", "2", "4"]]),
        (DoubleType(), [0.5, 1.5]),  # the first output that converts
        (LongType(), [1, 2]),
    ],
)
def test_several_outputs_keep_those_that_convert(dtype, expected) -> None:
    """Both paths (pandas and the Arrow relay) pick MLflow's outputs for several columns."""
    fitted = to_arrow(fit_prediction(_MIXED, dtype, 2), dtype)
    assert fitted.to_pylist() == expected
    assert fit_arrow_result(_host_result(_MIXED), dtype, 2).to_pylist() == expected


def test_no_output_that_converts_names_the_outputs() -> None:
    strings = pd.DataFrame({"label": ["a"], "other": ["b"]})
    with pytest.raises(ResultTypeError, match=r"none of the model's outputs .*'label': 'object'"):
        fit_prediction(strings, ArrayType(DoubleType()), 1)


def test_one_value_per_row_as_an_array_and_arrays_as_they_are() -> None:
    scalars = pd.DataFrame({"0": np.array([1.0, 2.0])})
    assert to_arrow(fit_prediction(scalars, ArrayType(DoubleType()), 2), ArrayType(DoubleType()))
    assert fit_prediction(scalars, ArrayType(DoubleType()), 2).tolist() == [[1.0], [2.0]]
    arrays = pd.DataFrame({"0": [np.array([1.0, 2.0]), None]})
    fitted = to_arrow(fit_prediction(arrays, ArrayType(DoubleType()), 2), ArrayType(DoubleType()))
    assert fitted.to_pylist() == [[1.0, 2.0], None]


def test_missing_arrays_are_null_arrays() -> None:
    """None or NaN in place of an array (here in a struct field) is a null array, and NaN
    inside one is a null element, as MLflow gives them (mlflow#8986)."""
    dtype = StructType([StructField("a", ArrayType(DoubleType()), True)])
    frame = pd.DataFrame({"a": [[1.0, math.nan], None, math.nan]})
    fitted = fit_prediction(frame, dtype, 3)
    assert to_arrow(fitted, dtype).to_pylist() == [{"a": [1.0, None]}, {"a": None}, {"a": None}]


def test_the_result_type_types_the_hosts_nested_outputs() -> None:
    """A column of dicts is a map when the result type says so (inferred, it would be a
    struct of every key seen); a column that does not convert keeps Arrow's inference."""
    frame = pd.DataFrame({"m": [{"a": 1.0}, {"b": None}], "x": [1.0, 2.0]})
    hint = pa.struct([pa.field("m", pa.map_(pa.string(), pa.float64())), pa.field("x", pa.int8())])
    table = arrow_bytes_to_table(frame_to_arrow_bytes(frame, result_type=hint))
    assert table.schema.field("m").type == pa.map_(pa.string(), pa.float64())
    assert table.schema.field("x").type == pa.float64()  # scalars are the worker's to fit
    assert table_to_frame(table)["m"].tolist() == [{"a": 1.0}, {"b": None}]
    inferred = arrow_bytes_to_table(frame_to_arrow_bytes(frame))
    assert pa.types.is_struct(inferred.schema.field("m").type)
    wrong = pa.map_(pa.string(), pa.float64())
    strings = pd.DataFrame({"m": ["not", "maps"]})
    kept = arrow_bytes_to_table(frame_to_arrow_bytes(strings, result_type=wrong))
    assert kept.schema.field("m").type == pa.string()


def test_float_outputs_for_an_integer_array_must_be_whole_numbers() -> None:
    """Beyond MLflow (which keeps no float output for bigint and fails): a homogeneous float
    prediction fits array<bigint> when every value is whole; a fraction fails, named."""
    dtype = ArrayType(LongType())
    whole = pd.DataFrame({"0": [1.0, 3.0], "1": [2.0, 4.0]})
    assert to_arrow(fit_prediction(whole, dtype, 2), dtype).to_pylist() == [[1, 2], [3, 4]]
    with pytest.raises(ResultTypeError, match="output '0': .* do not fit the result type bigint"):
        fit_prediction(pd.DataFrame({"0": [1.5, 3.0], "1": [2.0, 4.0]}), dtype, 2)


@pytest.mark.parametrize("dtype", [DoubleType(), FloatType()], ids=["double", "float"])
@pytest.mark.parametrize(
    "column",
    [
        pd.Series([2**53 + 1, -(2**63), 2**24 + 1], dtype=np.int64),
        pd.Series([2**53 + 1, None, 2**24 + 1], dtype="Int64"),
        pd.Series([2**64 - 1, 2**53 + 1, 3], dtype=np.uint64),
    ],
    ids=["int64", "Int64", "uint64"],
)
def test_integers_no_float_holds_round_to_the_nearest_as_mlflow(column, dtype) -> None:
    """MLflow's spark_udf converts any number to a float or double result with ``astype``:
    2**53 + 1 becomes 2**53 (2**24 + 1 becomes 2**24 for float), a missing value null. The
    pandas path and the Arrow relay give that same array (issue 28)."""
    numpy = np.float64 if isinstance(dtype, DoubleType) else np.float32
    rounded = column.astype(numpy)  # MLflow: result.select_dtypes(np.number).astype(...)
    want = [None if math.isnan(v) else float(v) for v in rounded]
    assert want[0] != 2**53 + 1  # the value is not exactly representable: it is rounded
    frame = pd.DataFrame({"y": column})
    assert to_arrow(fit_prediction(frame, dtype, 3), dtype).to_pylist() == want
    assert fit_arrow_result(_host_result(frame), dtype, 3).to_pylist() == want
    # the same rule inside arrays: a column of integer arrays for array<double> / array<float>
    arrays = ArrayType(dtype)
    integers = column.dropna().to_numpy(np.uint64 if column.dtype == np.uint64 else np.int64)
    cells = pd.DataFrame({"y": [integers, integers.tolist()]})  # numpy arrays and lists
    kept = [v for v in want if v is not None]
    assert to_arrow(fit_prediction(cells, arrays, 2), arrays).to_pylist() == [kept, kept]
