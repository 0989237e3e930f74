"""spark_udf semantics on a real local[2] Spark: binding, result types, params, scopes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StructType
from udf_models import FEATURES, Describe, Echo, Linear, Probe, Shapes, save

from spark_pyfunc.errors import SchemaEnforcementError, SparkPyfuncError
from spark_pyfunc.loading import load_model
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, ParamSchema, ParamSpec, Schema
from spark_pyfunc.udf import spark_udf


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(rng.normal(size=(400, 8)), columns=FEATURES)


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory, features) -> Path:
    root = tmp_path_factory.mktemp("linear")
    weights = root / "w.npy"
    np.save(weights, np.arange(1, 9, dtype=np.float64))
    return save(
        Linear(),
        root / "model",
        artifacts={"weights": str(weights)},
        input_example=(features.head(5), {"scale": 1.0}),
        model_config={"bias": 0.5},
    )


def _local(model_dir: Path, frame: pd.DataFrame, **kwargs) -> np.ndarray:
    return np.asarray(load_model(model_dir, **kwargs).predict(frame)).ravel()


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_positional_columns_bind_to_signature_names(spark, linear_model, features, scope):
    renamed = features.rename(columns={f: f"col_{f}" for f in FEATURES})
    df = spark.createDataFrame(renamed).repartition(3)
    predict = spark_udf(spark, linear_model, scope=scope)
    assert predict.result_type == DoubleType()
    out = df.withColumn("pred", predict(*[f"col_{f}" for f in FEATURES])).toPandas()
    expected = _local(linear_model, out[[f"col_{f}" for f in FEATURES]].set_axis(FEATURES, axis=1))
    np.testing.assert_allclose(out["pred"].to_numpy(), expected)


def test_no_arguments_use_signature_names_and_struct_passes_fields(spark, linear_model, features):
    df = spark.createDataFrame(features)
    predict = spark_udf(spark, linear_model, scope="process")
    out = df.select(
        "*",
        predict().alias("by_name"),
        predict(F.struct(*reversed(FEATURES))).alias("by_struct"),
    ).toPandas()
    expected = _local(linear_model, out[FEATURES])
    np.testing.assert_allclose(out["by_name"].to_numpy(), expected)
    np.testing.assert_allclose(out["by_struct"].to_numpy(), expected)


def test_params_model_config_and_method(spark, linear_model, features):
    df = spark.createDataFrame(features)
    base = spark_udf(spark, linear_model, scope="process")
    scaled = spark_udf(spark, linear_model, params={"scale": 4}, scope="process")
    other_bias = spark_udf(spark, linear_model, model_config={"bias": 10.0}, scope="executor")
    logits = spark_udf(spark, linear_model, method="logits", scope="process")
    out = df.select(
        base().alias("base"),
        scaled().alias("scaled"),
        other_bias().alias("bias10"),
        logits().alias("logits"),
    ).toPandas()
    xw = features.to_numpy() @ np.arange(1, 9)
    np.testing.assert_allclose(np.sort(out["base"]), np.sort(xw + 0.5))
    np.testing.assert_allclose(np.sort(out["scaled"]), np.sort(xw + 0.5 * 4))
    np.testing.assert_allclose(np.sort(out["bias10"]), np.sort(xw + 10.0))
    np.testing.assert_allclose(np.sort(out["logits"]), np.sort(-(xw + 0.5)))


def test_params_are_checked_on_the_driver(spark, linear_model):
    with pytest.raises(SchemaEnforcementError, match="scale"):
        spark_udf(spark, linear_model, params={"scale": "not a number"})


def test_bad_arguments_are_refused_when_the_udf_is_built(spark, linear_model, tmp_path):
    with pytest.raises(SparkPyfuncError, match="scope"):
        spark_udf(spark, linear_model, scope="everywhere")
    with pytest.raises(SparkPyfuncError, match="env_manager"):
        spark_udf(spark, linear_model, env_manager="conda")
    with pytest.raises(SparkPyfuncError, match="batch_size"):
        spark_udf(spark, linear_model, batch_size=0)
    with pytest.raises(SparkPyfuncError, match=str(tmp_path / "nowhere")):
        spark_udf(spark, tmp_path / "nowhere")
    with pytest.raises(SparkPyfuncError, match="not a valid Spark type"):
        spark_udf(spark, linear_model, result_type="vector<of<nothing")
    predict = spark_udf(spark, linear_model)
    with pytest.raises(SparkPyfuncError, match="8 inputs"):
        predict(*FEATURES, "f0")


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory) -> Path:
    sig = ModelSignature(
        inputs=Schema(
            [ColSpec(DataType.double, "a"), ColSpec(DataType.string, "b", required=False)]
        ),
        outputs=Schema(
            [
                ColSpec(DataType.long, "pid"),
                ColSpec(DataType.long, "rows"),
                ColSpec(DataType.long, "nulls"),
                ColSpec(DataType.string, "tag"),
            ]
        ),
        params=ParamSchema([ParamSpec("tag", DataType.string, "none")]),
    )
    return save(Probe(), tmp_path_factory.mktemp("probe") / "model", signature=sig)


def test_struct_result_type_from_signature_batch_size_and_nulls(spark, probe_model):
    rows = [(float(i) if i % 7 else None, None if i % 5 == 0 else f"s{i}") for i in range(1000)]
    df = spark.createDataFrame(rows, "a double, b string").coalesce(1)
    predict = spark_udf(spark, probe_model, params={"tag": "t"}, batch_size=64, scope="process")
    assert isinstance(predict.result_type, StructType)
    assert [f.name for f in predict.result_type.fields] == ["pid", "rows", "nulls", "tag"]
    out = df.select("a", "b", predict("a", "b").alias("p")).select("a", "b", "p.*").toPandas()
    assert out["rows"].max() == 64
    assert set(out["tag"]) == {"t"}
    expected_nulls = out["a"].isna().astype(int) + out["b"].isna().astype(int)
    assert (out["nulls"] == expected_nulls).all()


def test_empty_partitions_never_load_the_model(spark, probe_model, tmp_path):
    counter = tmp_path / "loads.txt"
    predict = spark_udf(spark, probe_model, model_config={"counter": str(counter)}, scope="process")
    df = spark.range(0, 100, numPartitions=4).selectExpr("cast(id as double) as a", "'x' as b")
    assert df.where("a < 0").select(predict("a", "b")).count() == 0
    assert df.where("a < 0").select(predict("a", "b")).collect() == []
    assert not counter.exists()


def test_executor_scope_uses_one_host_for_all_workers(spark, probe_model, tmp_path):
    counter = tmp_path / "loads.txt"
    predict = spark_udf(
        spark, probe_model, model_config={"counter": str(counter)}, scope="executor"
    )
    df = spark.range(0, 4000, numPartitions=8).selectExpr("cast(id as double) as a", "'x' as b")
    out = df.select(predict("a", "b").alias("p")).select("p.*").toPandas()
    assert len(out) == 4000
    pids = set(out["pid"])
    loads = counter.read_text().split("\n")[:-1]
    assert len(pids) == 1, pids
    assert [line.split()[1] for line in loads] == [str(p) for p in pids]


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory) -> Path:
    sig = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "x")]),
        params=ParamSchema([ParamSpec("kind", DataType.string, "double")]),
    )
    return save(Shapes(), tmp_path_factory.mktemp("shapes") / "model", signature=sig)


@pytest.mark.parametrize(
    ("kind", "result_type", "expected"),
    [
        ("double", None, lambda x: x * 1.5),
        ("int", "long", lambda x: (x * 2).astype(np.int64)),
        ("int", "int", lambda x: (x * 2).astype(np.int32)),
        ("int", "double", lambda x: x * 2.0),
        ("array", "array<double>", lambda x: [[v, 2 * v, 3 * v] for v in x]),
        ("array", ArrayType(LongType()), lambda x: [[int(v), int(2 * v), int(3 * v)] for v in x]),
        ("string", "string", lambda x: [f"row-{v:g}" for v in x]),
        ("double", "string", lambda x: [str(v * 1.5) for v in x]),
    ],
)
def test_result_types(spark, shapes_model, kind, result_type, expected):
    df = spark.range(0, 50, numPartitions=2).selectExpr("cast(id as double) as x")
    predict = spark_udf(spark, shapes_model, result_type=result_type, params={"kind": kind})
    out = df.select("x", predict("x").alias("y")).toPandas().sort_values("x")
    got = [list(v) if isinstance(v, np.ndarray) else v for v in out["y"]]
    want = expected(out["x"].to_numpy())
    want = [list(v) for v in want] if kind == "array" else list(want)
    assert got == want


@pytest.mark.parametrize(
    ("kind", "result_type", "message"),
    [
        ("fraction", "int", "do not fit the result type int"),
        ("string", "double", "do not fit the result type double"),
        ("too_few", "double", "returned 24 rows for a batch of 25 rows"),
        ("raise", "double", "the model refused this batch"),
    ],
)
@pytest.mark.parametrize("scope", ["process", "executor"])
def test_bad_predictions_name_the_problem(spark, shapes_model, kind, result_type, message, scope):
    df = spark.range(0, 50, numPartitions=2).selectExpr("cast(id as double) as x")
    predict = spark_udf(
        spark, shapes_model, result_type=result_type, params={"kind": kind}, scope=scope
    )
    with pytest.raises(Exception, match=message):
        df.select(predict("x")).collect()


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory) -> Path:
    columns = [ColSpec(DataType.string, "s"), ColSpec(DataType.binary, "b")]
    columns.append(ColSpec(DataType.double, "x"))
    sig = ModelSignature(inputs=Schema(columns), outputs=Schema(columns))
    return save(Echo(), tmp_path_factory.mktemp("echo") / "model", signature=sig)


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_unicode_binary_nulls_and_nan_round_trip(spark, echo_model, scope):
    rows = [
        ("héllo wörld ✓", b"\x00\xff\x10", 1.5),
        ("日本語テキスト", b"", float("nan")),
        ("emoji 🚀🎉", b"\xde\xad\xbe\xef" * 50, None),
        (None, None, -0.0),
        ("", b"bytes", float("inf")),
    ]
    df = spark.createDataFrame(rows * 40, "s string, b binary, x double").repartition(3)
    predict = spark_udf(spark, echo_model, scope=scope)
    out = df.select("s", "b", "x", predict().alias("p")).select(
        "s", "b", "x", F.col("p.s").alias("ps"), F.col("p.b").alias("pb"), F.col("p.x").alias("px")
    )
    got = out.toPandas()
    assert (got["ps"].fillna("<null>") == got["s"].fillna("<null>")).all()
    assert [None if v is None else bytes(v) for v in got["pb"]] == [
        None if v is None else bytes(v) for v in got["b"]
    ]
    # pandas has one missing marker for doubles: a null and a NaN both reach the model as NaN,
    # and a NaN the model returns comes back to Spark as null (as with any pandas UDF).
    finite = got["x"].notna()
    np.testing.assert_array_equal(got.loc[finite, "px"], got.loc[finite, "x"])
    assert got.loc[~finite, "px"].isna().all()
    assert out.where("px is null").count() == out.where("x is null or isnan(x)").count()


def test_a_single_huge_partition_is_scored_in_batch_size_chunks(spark, probe_model):
    df = spark.range(0, 200_000, numPartitions=1).selectExpr(
        "cast(id as double) as a", "cast(id as string) as b"
    )
    predict = spark_udf(spark, probe_model, batch_size=5000, scope="executor")
    sizes = df.select(predict("a", "b").alias("p")).select("p.rows").toPandas()["rows"]
    assert len(sizes) == 200_000
    assert sizes.max() == 5000  # no predict call ever saw more than batch_size rows


def test_the_model_sees_the_same_pandas_in_every_scope(spark, tmp_path):
    """scope="executor" relays Arrow to the host (an Arrow UDF on PySpark 4.1+), where the
    model gets pandas: it must be what a pandas UDF gives, nulls, dates, time zones and
    struct fields included. (Not tested: integer fields of a struct that also has string
    fields, which PySpark 4.x itself converts to Int64 where it gives float64 elsewhere; the
    README lists it under limitations.)"""
    model = save(Describe(), tmp_path / "describe")
    rows = [
        (1, 1.5, "2024-03-10 01:30:00", "2024-03-10", "a", True),
        (None, None, None, None, None, None),
        (3, float("nan"), "2024-11-03 01:30:00", "1999-12-31", "ü", False),
    ]
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        schema = "i long, x double, t string, d string, s string, b boolean"
        df = spark.createDataFrame(rows * 10, schema)
        df = df.selectExpr(
            "i",
            "x",
            "cast(t as timestamp) as t",
            "cast(d as date) as d",
            "s",
            "b",
            "if(i is null, null, named_struct('u', i, 'v', x)) as st",
        ).repartition(2)
        seen = {}
        for scope in ("process", "executor"):
            predict = spark_udf(spark, model, result_type="string", scope=scope)
            out = df.select(
                "i",
                "x",
                "t",
                predict("i", "x", "t", "d", "s", "b").alias("flat"),
                predict(F.col("st")).alias("struct"),
            ).toPandas()
            seen[scope] = sorted(zip(out["flat"], out["struct"], strict=True))
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert seen["executor"] == seen["process"]
    flat = {f for f, _ in seen["process"]}
    # Wall-clock time in the session time zone (the unit is PySpark's: ns on 4.x, us on 3.5).
    assert any("t:datetime64[" in f and "Timestamp('2024-03-10 01:30:00')" in f for f in flat)
    assert any(f.startswith("i:float64:") and "nan" in f.split(" | ")[0] for f in flat), flat
