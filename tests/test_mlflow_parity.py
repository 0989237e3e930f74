"""The same call through mlflow.pyfunc.spark_udf and spark_pyfunc.spark_udf, in both scopes.

Each test scores an MLflow-written model (``mlflow.pyfunc.save_model``) with MLflow's own
spark_udf and with spark_pyfunc's in ``scope="process"`` and ``scope="executor"``, on the
same local[2] Spark, and asserts that all three give the same result type and the same rows
(or all three fail), and that the rows are what MLflow's rule says. Issue 12, items 1-8.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Object, Property
from parity_models import ENV_NAME, Parity
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType

from spark_pyfunc import spark_udf
from spark_pyfunc.errors import InvalidArgumentError

SCORERS = ("mlflow", "process", "executor")
ROWS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``models(case, **save_kwargs)``: the Parity model of ``case`` saved by MLflow."""
    root = tmp_path_factory.mktemp("parity")
    saved: list[Path] = []

    def save(case: str, **kwargs) -> Path:
        path = root / f"{case}-{len(saved)}"
        mlflow.pyfunc.save_model(
            str(path), python_model=Parity(case), pip_requirements=[], **kwargs
        )
        saved.append(path)
        return path

    return save


@pytest.fixture
def frame(spark):
    """Rows 0..5 over two partitions: x, y doubles, u long, s string, id for the order."""
    return spark.range(0, ROWS, numPartitions=2).selectExpr(
        "id",
        "cast(id as double) as x",
        "cast(id * 10 as double) as y",
        "id as u",
        "cast(id as string) as s",
    )


def _plain(value):
    """A collected value as plain Python (Rows as dicts, NaN kept apart from None)."""
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _score(spark, who: str, model: Path, frame, columns, **kwargs):
    """(result type, rows in id order) of one scorer, or ("error", the exception's type)."""
    if who == "mlflow":
        udf = mlflow.pyfunc.spark_udf(spark, str(model), env_manager="local", **kwargs)
    else:
        udf = spark_udf(spark, model, scope=who, **kwargs)
    try:
        out = frame.select("id", udf(*columns).alias("r")).orderBy("id")
        return out.schema["r"].dataType.simpleString(), [_plain(r["r"]) for r in out.collect()]
    except Exception as exc:  # noqa: BLE001 - compared across scorers
        return "error", type(exc).__name__


def _same_everywhere(spark, model: Path, frame, columns, **kwargs):
    """Score with all three; assert they agree; return MLflow's (type, rows)."""
    got = {who: _score(spark, who, model, frame, columns, **kwargs) for who in SCORERS}
    assert got["process"] == got["mlflow"], got
    assert got["executor"] == got["mlflow"], got
    return got["mlflow"]


# 1 --------------------------------------------------------------------------------------


def test_without_a_signature_columns_are_named_by_position(spark, models, frame):
    model = models("columns")
    assert _same_everywhere(spark, model, frame, ["x", "y"], result_type="string") == (
        "string",
        ["0,1"] * ROWS,
    )
    # A lone struct keeps its meaning: its fields are the inputs, by name.
    lone = _same_everywhere(spark, model, frame, [F.struct("y", "s")], result_type="string")
    assert lone == ("string", ["y,s"] * ROWS)


# 2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result_type", "expected"),
    [
        ("array<double>", lambda v: [v / 10, 2.0 * v]),
        ("array<float>", lambda v: [float(np.float32(v / 10)), 2.0 * v]),
        ("array<bigint>", lambda v: [2 * v]),
        ("array<string>", lambda v: [f"class{v % 2}", str(v / 10), str(2 * v)]),
        ("double", lambda v: v / 10),  # the first output that is a number
    ],
)
def test_several_outputs_keep_those_of_the_element_type(
    spark, models, frame, result_type, expected
):
    kind, rows = _same_everywhere(spark, models("mixed"), frame, ["x"], result_type=result_type)
    assert kind == result_type
    assert rows == [expected(i) for i in range(ROWS)]


def test_no_output_of_the_element_type_fails_in_every_scorer(spark, models, frame):
    # Only int32 outputs convert to int (MLflow's rule): none here, so all three fail.
    got = _same_everywhere(spark, models("mixed"), frame, ["x"], result_type="array<int>")
    assert got[0] == "error"


# 3 --------------------------------------------------------------------------------------


def test_tensor_outputs_give_mlflows_result_types(spark, models, frame):
    pairs = models(
        "pairs",
        signature=ModelSignature(
            inputs=Schema([ColSpec("double", "x")]),
            outputs=Schema([TensorSpec(np.dtype("int64"), (2,))]),
        ),
    )
    assert spark_udf(spark, pairs).result_type == ArrayType(LongType())
    got = _same_everywhere(spark, pairs, frame, ["x"])
    assert got == ("array<bigint>", [[i, 2 * i] for i in range(ROWS)])

    example = pd.DataFrame({"x": [1.0, 2.0]})
    inferred = models("vector", signature=infer_signature(example, np.array([1.5, 3.0])))
    one_element = ("array<double>", [[1.5 * i] for i in range(ROWS)])
    assert _same_everywhere(spark, inferred, frame, ["x"]) == one_element

    unsigned = models("vector")  # no signature: result_type says array, one value per row
    assert _same_everywhere(spark, unsigned, frame, ["x"], result_type="array<double>") == (
        one_element
    )


# 4 --------------------------------------------------------------------------------------


def test_a_struct_beside_other_columns_is_one_column_of_dicts(spark, models, frame):
    obj = Object([Property("u", "long"), Property("s", "string")])
    model = models(
        "struct_input",
        signature=ModelSignature(inputs=Schema([ColSpec("double", "x"), ColSpec(obj, "obj")])),
    )
    kind, rows = _same_everywhere(
        spark, model, frame, [F.col("x"), F.struct("u", "s")], result_type="string"
    )
    assert kind == "string"
    assert rows == [f"dict:{float(i)}:{np.int64(i)!r}:{i}" for i in range(ROWS)]


# 5 --------------------------------------------------------------------------------------


def test_columns_beyond_the_signature_are_ignored(spark, models, frame):
    model = models("columns", signature=ModelSignature(inputs=Schema([ColSpec("double", "x")])))
    got = _same_everywhere(spark, model, frame, ["x", "y", "s"], result_type="string")
    assert got == ("string", ["x"] * ROWS)


# 6 --------------------------------------------------------------------------------------


def test_missing_arrays_in_a_struct_result_are_null(spark, models, frame):
    kind, rows = _same_everywhere(
        spark, models("nan_arrays"), frame, ["x"], result_type="a array<double>, b double"
    )
    assert kind == "struct<a:array<double>,b:double>"
    cells = [[1.0, None], None, None]
    assert rows == [{"a": cells[i % 3], "b": float(i)} for i in range(ROWS)]


# 7 --------------------------------------------------------------------------------------


def test_datetime_inputs_in_both_scopes(spark, models, frame):
    model = models("datetime", signature=ModelSignature(inputs=Schema([ColSpec("datetime", "t")])))
    timed = frame.selectExpr(
        "id", "timestamp'2024-03-10 01:30:00' + make_interval(0, 0, 0, 0, cast(id as int)) as t"
    )
    kind, rows = _same_everywhere(spark, model, timed, ["t"], result_type="string")
    start = dt.datetime(2024, 3, 10, 1, 30)
    assert rows == [f"Timestamp:{start + dt.timedelta(hours=i)}" for i in range(ROWS)]


@pytest.fixture
def new_york(spark):
    """A session time zone with an offset, so that a timestamp left in UTC shows."""
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    yield
    spark.conf.set("spark.sql.session.timeZone", before)


@pytest.mark.parametrize(
    ("column", "shape"),
    [
        (lambda: F.struct("t", "u"), "{{t: Timestamp:{t}, u: int:{i}}}"),
        (
            lambda: F.array("t", F.lit(None).cast("timestamp")),
            "ndarray[Timestamp:{t}, NaTType:NaT]",
        ),
        (lambda: F.create_map(F.lit("k"), "t"), "{{k: Timestamp:{t}}}"),
        (lambda: F.array(F.struct("t", "u")), "ndarray[{{t: Timestamp:{t}, u: int:{i}}}]"),
        (
            lambda: F.struct(F.array("t").alias("a"), "u"),
            "{{a: ndarray[Timestamp:{t}], u: int:{i}}}",
        ),
    ],
    ids=["struct", "array", "map", "array-of-structs", "struct-of-arrays"],
)
def test_timestamps_nested_in_inputs_in_both_scopes(spark, models, frame, new_york, column, shape):
    # Arrow hands nested timestamps over as UTC instants; PySpark gives the model wall-clock
    # Timestamps of the session time zone, and so must the host.
    timed = frame.selectExpr(
        "id",
        "x",
        "u",
        "timestamp'2024-03-10 01:30:00' + make_interval(0, 0, 0, 0, cast(id as int)) as t",
    )
    kind, rows = _same_everywhere(
        spark, models("described"), timed, [F.col("x"), column()], result_type="string"
    )
    start = pd.Timestamp("2024-03-10 01:30", tz="America/New_York")  # the DST change at 02:00
    stamps = [(start + pd.Timedelta(hours=i)).tz_localize(None) for i in range(ROWS)]
    assert rows == [shape.format(t=stamps[i], i=i) for i in range(ROWS)]


def test_arrays_of_structs_and_maps_as_results_in_both_scopes(spark, models, frame):
    kind, rows = _same_everywhere(
        spark, models("array_struct"), frame, ["x"], result_type="array<struct<n:bigint,s:string>>"
    )
    assert rows == [[{"n": i, "s": f"s{float(i)}"}, {"n": -i, "s": None}] for i in range(ROWS)]
    kind, rows = _same_everywhere(
        spark, models("map"), frame, ["x"], result_type="map<string,double>"
    )
    assert rows == [{f"k{i}": float(i), "z": None} for i in range(ROWS)]


def test_params_in_both_scopes(spark, models, frame):
    params = ParamSchema(
        [
            ParamSpec("k", "long", 1),
            ParamSpec("when", "datetime", dt.datetime(2024, 1, 1)),
            ParamSpec("v", "double", [1.0], (-1,)),
        ]
    )
    model = models(
        "params",
        signature=ModelSignature(inputs=Schema([ColSpec("double", "x")]), params=params),
    )
    kind, rows = _same_everywhere(
        spark, model, frame, ["x"], result_type="string", params={"k": 3, "v": [1.0, 2.0]}
    )
    expected = [("k", 3), ("v", [1.0, 2.0]), ("when", dt.datetime(2024, 1, 1))]
    assert rows == [repr(expected)] * ROWS


# 8 --------------------------------------------------------------------------------------


def test_extra_env_reaches_the_model_in_both_scopes(spark, models, frame):
    model = models("env")
    env = {ENV_NAME: "from extra_env"}
    for who in SCORERS:
        if who == "mlflow":
            with_env = mlflow.pyfunc.spark_udf(
                spark, str(model), result_type="string", env_manager="local", extra_env=env
            )
            plain = mlflow.pyfunc.spark_udf(
                spark, str(model), result_type="string", env_manager="local"
            )
        else:
            with_env = spark_udf(spark, model, result_type="string", extra_env=env, scope=who)
            plain = spark_udf(spark, model, result_type="string", scope=who)
        out = frame.select(with_env("x").alias("env"), plain("x").alias("plain")).collect()
        # The variable is the model's only: a UDF without it, in the same job, does not see it.
        assert {(r["env"], r["plain"]) for r in out} == {("from extra_env", "<unset>")}, who


def test_extra_env_must_be_strings(spark, models):
    model = models("env")
    with pytest.raises(InvalidArgumentError, match="extra_env: 'N'"):
        spark_udf(spark, model, extra_env={"N": 1})
    with pytest.raises(InvalidArgumentError, match="extra_env must be a dict"):
        spark_udf(spark, model, extra_env=["N=1"])


# Issue 22: MLflow's rules in the cases still left ----------------------------------------


@pytest.mark.parametrize(
    ("result_type", "expected"),
    [
        # MLflow keeps the int32 outputs (and smaller) for int, every signed integer for
        # bigint, every number for float and double, the booleans for boolean.
        ("array<int>", lambda v: [v]),
        ("array<bigint>", lambda v: [v, 2 * v]),
        ("array<float>", lambda v: [v, 2 * v, float(np.float32(v / 4)), float(np.float32(v / 10))]),
        ("array<double>", lambda v: [v, 2 * v, float(np.float32(v / 4)), v / 10]),
        ("array<boolean>", lambda v: [v % 2 == 1]),
        (
            "array<string>",
            lambda v: [str(v), str(2 * v), f"s{v}", str(v / 4), str(v / 10), str(v % 2 == 1)],
        ),
    ],
)
def test_an_array_over_outputs_of_every_dtype_keeps_mlflows_columns(
    spark, models, frame, result_type, expected
):
    kind, rows = _same_everywhere(spark, models("dtypes"), frame, ["x"], result_type=result_type)
    assert kind == result_type
    assert rows == [expected(i) for i in range(ROWS)]


def test_a_list_of_pandas_indexes_gives_string_arrays(spark, models, frame):
    got = _same_everywhere(
        spark, models("index_list"), frame, ["x", "y", "s"], result_type="array<string>"
    )
    assert got == ("array<string>", [["0", "1", "2"]] * ROWS)


def test_a_list_of_2d_arrays_under_a_2d_tensor_spec(spark, models, frame):
    model = models(
        "matrices",
        signature=ModelSignature(
            inputs=Schema([ColSpec("double", "x")]),
            outputs=Schema([TensorSpec(np.dtype("float64"), (2, 3))]),
        ),
    )
    got = _same_everywhere(spark, model, frame, ["x"])
    matrix = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert got == ("array<array<double>>", [(matrix * i).tolist() for i in range(ROWS)])


@pytest.mark.parametrize("result_type", ["double", "float", "array<double>"])
def test_integers_no_float_holds_are_rounded_as_mlflow_rounds_them(
    spark, models, frame, result_type
):
    # Issue 28: 2**53 + 1 (and the odd numbers above it) convert to the nearest float.
    kind, rows = _same_everywhere(spark, models("big_ints"), frame, ["x"], result_type=result_type)
    width = np.float32 if result_type == "float" else np.float64
    values = [float(width(np.int64(2**53 + 1 + 2 * i))) for i in range(ROWS)]
    assert rows == ([[v] for v in values] if result_type.startswith("array") else values)
    assert values[0] != 2**53 + 1
