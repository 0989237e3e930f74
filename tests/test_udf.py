"""spark_udf semantics on a real local[2] Spark: binding, result types, params, scopes.

Every behaviour runs in both scopes: ``scope="process"`` (a pandas UDF scoring in the worker)
and ``scope="executor"`` (on PySpark 4.1+ an Arrow UDF relaying to the model host, or a
pandas UDF for dates, timestamps and maps): a bug of one path must not hide behind the other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StructType
from support.processes import alive_pid
from support.wait import wait_until
from udf_models import (
    FEATURES,
    Blocking,
    Broken,
    Describe,
    Echo,
    Linear,
    Probe,
    Shapes,
    Typed,
    records,
    save,
    typed_values,
)

from spark_pyfunc import load_model, spark_udf
from spark_pyfunc.errors import InvalidArgumentError, SchemaEnforcementError, SparkPyfuncError
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, ParamSchema, ParamSpec, Schema

BOTH_SCOPES = pytest.mark.parametrize("scope", ["process", "executor"])


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


@BOTH_SCOPES
def test_positional_columns_bind_to_signature_names(spark, linear_model, features, scope):
    renamed = features.rename(columns={f: f"col_{f}" for f in FEATURES})
    df = spark.createDataFrame(renamed).repartition(3)
    predict = spark_udf(spark, linear_model, scope=scope)
    assert predict.result_type == DoubleType()
    out = df.withColumn("pred", predict(*[f"col_{f}" for f in FEATURES])).toPandas()
    expected = _local(linear_model, out[[f"col_{f}" for f in FEATURES]].set_axis(FEATURES, axis=1))
    np.testing.assert_allclose(out["pred"].to_numpy(), expected)


@BOTH_SCOPES
def test_no_arguments_use_signature_names_and_struct_passes_fields(
    spark, linear_model, features, scope
):
    df = spark.createDataFrame(features)
    predict = spark_udf(spark, linear_model, scope=scope)
    out = df.select(
        "*",
        predict().alias("by_name"),
        predict(F.struct(*reversed(FEATURES))).alias("by_struct"),
    ).toPandas()
    expected = _local(linear_model, out[FEATURES])
    np.testing.assert_allclose(out["by_name"].to_numpy(), expected)
    np.testing.assert_allclose(out["by_struct"].to_numpy(), expected)


@BOTH_SCOPES
def test_params_model_config_and_method(spark, linear_model, features, scope):
    df = spark.createDataFrame(features)
    base = spark_udf(spark, linear_model, scope=scope)
    scaled = spark_udf(spark, linear_model, params={"scale": 4}, scope=scope)
    other_bias = spark_udf(spark, linear_model, model_config={"bias": 10.0}, scope=scope)
    logits = spark_udf(spark, linear_model, method="logits", scope=scope)
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


@BOTH_SCOPES
def test_an_unknown_method_is_refused_on_the_driver_before_any_job(
    spark, linear_model, features, scope
):
    sc = spark.sparkContext
    group = f"method-check-{scope}"
    files_before = set(sc.listFiles)
    sc.setJobGroup(group, "spark_udf with a typo in method=")
    try:
        with pytest.raises(InvalidArgumentError) as caught:
            spark_udf(spark, linear_model, method="logitz", scope=scope)
        assert sc.statusTracker().getJobIdsForGroup(group) == []
        assert set(sc.listFiles) == files_before  # not even shipped
        message = str(caught.value)
        assert f"'{linear_model}'" in message and "'logitz'" in message
        assert "its methods are logits, predict" in message
        # the method the model declares scores, and the group does see the jobs it runs
        logits = spark_udf(spark, linear_model, method="logits", scope=scope)
        out = spark.createDataFrame(features.head(20)).select(logits().alias("l")).toPandas()
        assert sc.statusTracker().getJobIdsForGroup(group) != []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    expected = -(features.head(20).to_numpy() @ np.arange(1, 9) + 0.5)
    np.testing.assert_allclose(np.sort(out["l"]), np.sort(expected))


@BOTH_SCOPES
def test_a_model_that_lists_no_methods_names_the_users_uri_when_a_task_fails(
    spark, linear_model, features, tmp_path, scope
):
    undeclared = tmp_path / "saved-by-mlflow"
    shutil.copytree(linear_model, undeclared)
    mlmodel = undeclared / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    del doc["flavors"]["python_function"]["spark_pyfunc_methods"]  # as MLflow writes it
    mlmodel.write_text(yaml.safe_dump(doc))
    typo = spark_udf(spark, undeclared, method="logitz", scope=scope)  # cannot be known here
    with pytest.raises(Exception, match="no inference method 'logitz'") as caught:
        spark.createDataFrame(features.head(4)).select(typo()).collect()
    assert f"the model '{undeclared}'" in str(caught.value)


@BOTH_SCOPES
def test_params_are_checked_on_the_driver(spark, linear_model, scope):
    with pytest.raises(SchemaEnforcementError, match="scale"):
        spark_udf(spark, linear_model, params={"scale": "not a number"}, scope=scope)


@BOTH_SCOPES
def test_bad_arguments_are_refused_when_the_udf_is_built(spark, linear_model, tmp_path, scope):
    with pytest.raises(SparkPyfuncError, match="extra_env"):
        spark_udf(spark, linear_model, extra_env={"X": 1}, scope=scope)
    with pytest.raises(SparkPyfuncError, match="scope"):
        spark_udf(spark, linear_model, scope="everywhere")
    with pytest.raises(SparkPyfuncError, match="env_manager"):
        spark_udf(spark, linear_model, env_manager="pyenv", scope=scope)  # not MLflow's
    with pytest.raises(SparkPyfuncError, match="batch_size"):
        spark_udf(spark, linear_model, batch_size=0, scope=scope)
    with pytest.raises(SparkPyfuncError, match=str(tmp_path / "nowhere")):
        spark_udf(spark, tmp_path / "nowhere", scope=scope)
    with pytest.raises(SparkPyfuncError, match="not a valid Spark type"):
        spark_udf(spark, linear_model, result_type="vector<of<nothing", scope=scope)


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


@BOTH_SCOPES
def test_struct_result_type_from_signature_batch_size_and_nulls(spark, probe_model, scope):
    rows = [(float(i) if i % 7 else None, None if i % 5 == 0 else f"s{i}") for i in range(1000)]
    df = spark.createDataFrame(rows, "a double, b string").coalesce(1)
    predict = spark_udf(spark, probe_model, params={"tag": "t"}, batch_size=64, scope=scope)
    assert isinstance(predict.result_type, StructType)
    assert [f.name for f in predict.result_type.fields] == ["pid", "rows", "nulls", "tag"]
    out = df.select("a", "b", predict("a", "b").alias("p")).select("a", "b", "p.*").toPandas()
    assert out["rows"].max() == 64
    assert set(out["tag"]) == {"t"}
    expected_nulls = out["a"].isna().astype(int) + out["b"].isna().astype(int)
    assert (out["nulls"] == expected_nulls).all()


@BOTH_SCOPES
def test_empty_partitions_never_load_the_model(spark, probe_model, tmp_path, scope):
    counter, calls = tmp_path / "loads.txt", tmp_path / "calls.txt"
    config = {"counter": str(counter), "calls": str(calls)}
    predict = spark_udf(spark, probe_model, model_config=config, scope=scope)
    df = spark.range(0, 96, numPartitions=8).selectExpr("cast(id as double) as a", "'x' as b")
    # Every partition empty: the UDF column is collected (not counted, which Spark may answer
    # without running the UDF), and nothing is loaded or started.
    assert df.where("a < 0").select(predict("a", "b").alias("p")).collect() == []
    assert records(counter) == [] and records(calls) == []
    # One partition with rows, seven empty: exactly the rows are scored, and every process
    # that loaded the model also scored rows (a worker that only met empty partitions, as the
    # second of local[2]'s workers does, never loads it).
    out = df.where("a < 12").select(predict("a", "b").alias("p")).collect()
    assert len(out) == 12
    scored = [(pid, int(event.split(":")[1])) for event, pid, _ in records(calls)]
    assert sum(n for _, n in scored) == 12
    [(_, loader, _)] = records(counter, "load")
    # The loader scored them, or (a prefork host) its serving children did.
    serving = {loader} | {child.pid for child in psutil.Process(loader).children()}
    assert {pid for pid, _ in scored} <= serving, (loader, scored)


def test_executor_scope_uses_one_host_for_all_workers(spark, probe_model, tmp_path):
    """Two Python workers (local[2], 8 partitions) share one host: one load, in the host."""
    counter = tmp_path / "loads.txt"
    predict = spark_udf(
        spark, probe_model, model_config={"counter": str(counter)}, scope="executor"
    )
    df = spark.range(0, 4000, numPartitions=8).selectExpr("cast(id as double) as a", "'x' as b")
    out = df.select(predict("a", "b").alias("p")).select("p.*").toPandas()
    assert len(out) == 4000
    pids = set(out["pid"])
    loads = records(counter, "load")
    assert len(pids) == 1, pids
    assert loads == [(e, p, "spark_pyfunc._host") for e, p, _ in loads]
    assert [pid for _, pid, _ in loads] == list(pids)


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
@BOTH_SCOPES
def test_result_types(spark, shapes_model, kind, result_type, expected, scope):
    df = spark.range(0, 50, numPartitions=2).selectExpr("cast(id as double) as x")
    predict = spark_udf(
        spark, shapes_model, result_type=result_type, params={"kind": kind}, scope=scope
    )
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
@BOTH_SCOPES
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


@BOTH_SCOPES
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


@BOTH_SCOPES
def test_a_single_huge_partition_is_scored_in_batch_size_chunks(spark, probe_model, scope):
    df = spark.range(0, 200_000, numPartitions=1).selectExpr(
        "cast(id as double) as a", "cast(id as string) as b"
    )
    predict = spark_udf(spark, probe_model, batch_size=5000, scope=scope)
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
    # Without a signature the model sees the columns by position, "0", "1", ... (as MLflow):
    # t is "2", i is "0".
    assert any("2:datetime64[" in f and "Timestamp('2024-03-10 01:30:00')" in f for f in flat)
    assert any(f.startswith("0:float64:") and "nan" in f.split(" | ")[0] for f in flat), flat


# ------------------------------------------------------- every result type, both scopes

# (what Typed returns, the result type): on PySpark 4.1+ the executor scope relays the first
# eleven as Arrow, and returns dates, timestamps and maps through the host's pandas path.
TYPED = [
    ("long", "bigint"),
    ("int", "int"),
    ("float", "float"),
    ("double", "double"),
    ("boolean", "boolean"),
    ("string", "string"),
    ("binary", "binary"),
    ("array<double>", "array<double>"),
    ("array<string>", "array<string>"),
    ("struct", "n bigint, s string"),
    ("array<struct>", "array<struct<n:bigint,s:string>>"),
    ("date", "date"),
    ("timestamp", "timestamp"),
    ("map", "map<string,double>"),
]


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory) -> Path:
    sig = ModelSignature(
        inputs=Schema([ColSpec(DataType.long, "x")]),
        params=ParamSchema([ParamSpec("kind", DataType.string, "long")]),
    )
    return save(Typed(), tmp_path_factory.mktemp("typed") / "model", signature=sig)


def _plain_value(value):
    """A collected Spark value or a model's value as plain, comparable Python."""
    if hasattr(value, "asDict"):
        return {k: _plain_value(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain_value(v) for v in value]
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_result_types(spark, model: Path, scope: str, table: list[tuple[str, str]]) -> None:
    """Score each (kind, result type) of ``table`` in one job, as the column itself and as
    the field of a struct, and compare with what the model returned (timestamps as
    wall-clock text in the session time zone)."""
    df = spark.range(0, 60, numPartitions=3).withColumnRenamed("id", "x")
    columns, labels = [], []
    for kind, ddl in table:
        predict = spark_udf(spark, model, result_type=ddl, params={"kind": kind}, scope=scope)
        candidates = [(predict("x"), kind)]
        if kind != "struct":  # a struct is one already
            wrapped = spark_udf(
                spark, model, result_type=f"v {ddl}", params={"kind": kind}, scope=scope
            )
            candidates.append((wrapped("x").v, f"{kind} as a struct field"))
        for column, label in candidates:
            if kind == "timestamp":
                column = F.date_format(column, "yyyy-MM-dd HH:mm:ss")
            columns.append(column.alias(f"c{len(columns)}"))
            labels.append((kind, label))
    rows = sorted(df.select("x", *columns).collect())
    x = np.array([r[0] for r in rows])
    wrong = {}
    for position, (kind, label) in enumerate(labels, start=1):
        got = [_plain_value(r[position]) for r in rows]
        want = _plain_value(list(typed_values(kind, x)))
        if got != want:
            wrong[label] = (got[:2], want[:2])
    assert wrong == {}, wrong


@pytest.mark.slow
@BOTH_SCOPES
def test_every_result_type_through_spark(spark, typed_model, scope):
    """One job per scope scores all of TYPED (on 4.1+ the executor scope relays the Arrow
    types and takes the pandas path for dates, timestamps and maps). A map comes back from
    the host as a map because the request tells the host the result type.

    Slow: Spark runs each of the job's 27 iterator UDFs in a Python worker of its own, so
    the job starts 27 workers per task (54 on local[2]), each importing pandas and pyarrow:
    40-90 s on a 2-core machine. The fast tier checks the same table kind by kind (below)."""
    _check_result_types(spark, typed_model, scope, TYPED)


@BOTH_SCOPES
def test_every_result_type_through_spark_kind_by_kind(spark, typed_model, scope):
    """TYPED as above, one job per kind: the jobs reuse their few Python workers (and, with
    scope="process", the model each worker keeps)."""
    for row in TYPED:
        _check_result_types(spark, typed_model, scope, [row])


# ---------------------------------------------------------------------- model URIs


@BOTH_SCOPES
def test_file_uris_name_the_local_directory(
    spark, linear_model, features, monkeypatch, tmp_path, scope
):
    monkeypatch.chdir(tmp_path)  # a file: URI read as a relative path would miss the model
    df = spark.createDataFrame(features.head(40))
    expected = _local(linear_model, features.head(40))
    for uri in (f"file:{linear_model}", linear_model.as_uri(), f"file://localhost{linear_model}"):
        predict = spark_udf(spark, uri, scope=scope)
        out = df.select(predict().alias("p")).toPandas()
        np.testing.assert_allclose(out["p"].to_numpy(), expected, err_msg=uri)
    # runs:/, models:/ and store URIs: tests/test_uris.py, against real servers.


# ------------------------------------------------ the spark.pyfunc.* settings, observed

# The keys as the README documents them (not _config.py's: a renamed key must fail).
CONF_AUTO_THRESHOLD = "spark.pyfunc.scope.autoThresholdBytes"
CONF_IDLE_TIMEOUT = "spark.pyfunc.host.idleTimeout"
CONF_START_TIMEOUT = "spark.pyfunc.host.startTimeout"
CONF_HOST_MODE = "spark.pyfunc.host.mode"


@pytest.fixture
def spark_conf(spark):
    """Set Spark conf keys for one test; the previous values come back afterwards."""
    previous: dict[str, str | None] = {}

    def set_conf(key: str, value: str) -> None:
        previous.setdefault(key, spark.conf.get(key, None))
        spark.conf.set(key, value)

    yield set_conf
    for key, value in previous.items():
        if value is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, value)


def _probe_frame(spark, rows: int = 200, partitions: int = 2):
    return spark.range(0, rows, numPartitions=partitions).selectExpr(
        "cast(id as double) as a", "'x' as b"
    )


def _host_log(spark, pid: int) -> str:
    """The log of the host with this pid, from the executor's directory (local[2]: the
    driver's SparkFiles root)."""
    from pyspark import SparkFiles

    logs = Path(SparkFiles.getRootDirectory()).glob("spark_pyfunc-host-*.log")
    texts = [p.read_text() for p in logs if f"pid={pid} " in p.read_text()]
    assert len(texts) == 1, f"no single log names host pid {pid}"
    return texts[0]


def test_auto_scope_uses_the_host_from_the_threshold_on(spark, probe_model, spark_conf, tmp_path):
    size = spark_udf(spark, probe_model, scope="process").shipped.model_size
    for threshold, scope in ((size, "executor"), (size + 1, "process"), (size - 1, "executor")):
        spark_conf(CONF_AUTO_THRESHOLD, str(threshold))
        calls = tmp_path / f"calls-{threshold}.txt"
        predict = spark_udf(spark, probe_model, model_config={"calls": str(calls)})
        assert predict.scope == scope, threshold
        assert len(_probe_frame(spark).select(predict("a", "b")).collect()) == 200
        where = {main for _, _, main in records(calls)}
        # The model ran in the host at and above the threshold, in Spark's workers below it.
        assert (where == {"spark_pyfunc._host"}) == (scope == "executor"), (threshold, where)


def test_idle_timeout_from_spark_conf_stops_the_host(spark, probe_model, spark_conf, tmp_path):
    spark_conf(CONF_IDLE_TIMEOUT, "2.5")
    counter = tmp_path / "loads.txt"
    predict = spark_udf(
        spark, probe_model, model_config={"counter": str(counter)}, scope="executor"
    )
    _probe_frame(spark).select(predict("a", "b")).collect()
    (host,) = {pid for _, pid, _ in records(counter, "load")}
    assert wait_until(lambda: not alive_pid(host), 120), f"host {host} still running"
    log = _host_log(spark, host)
    assert "'--idle-timeout', '2.5'" in log
    assert "no connection for 2.5s: exiting" in log


@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_host_mode_from_spark_conf(spark, probe_model, spark_conf, tmp_path, mode):
    spark_conf(CONF_HOST_MODE, mode)
    counter, calls = tmp_path / "loads.txt", tmp_path / "calls.txt"
    config = {"counter": str(counter), "calls": str(calls)}
    predict = spark_udf(spark, probe_model, model_config=config, scope="executor")
    _probe_frame(spark, partitions=4).select(predict("a", "b")).collect()
    (host,) = {pid for _, pid, _ in records(counter, "load")}
    serving = {pid for _, pid, _ in records(calls)}
    # thread: the host's own process answers; fork: a child forked per connection does.
    assert (serving == {host}) == (mode == "thread"), (host, serving)
    assert f"in {mode} mode" in _host_log(spark, host)


def test_start_timeout_from_spark_conf_fails_the_task(spark, spark_conf, tmp_path):
    model = save(Blocking(), tmp_path / "blocking")
    loading, release = tmp_path / "loading.pid", tmp_path / "release"
    spark_conf(CONF_START_TIMEOUT, "3")
    predict = spark_udf(
        spark,
        model,
        model_config={"loading": str(loading), "release": str(release)},
        scope="executor",
    )
    try:
        # The load waits for `release`, which only comes after the job: it cannot finish
        # within any start timeout, so this fails by the 3 s from the Spark conf (on a busy
        # machine the host may not even have started its load by then: "did not start").
        with pytest.raises(Exception, match=r"(not ready|did not start) within 3\.0s"):
            _probe_frame(spark, partitions=1).select(predict("a", "b")).collect()
    finally:
        release.touch()
    host = int(loading.read_text())
    assert wait_until(lambda: not alive_pid(host), 120), (
        f"the timed-out host {host} was left running"
    )


def test_a_host_that_cannot_start_fails_the_task_with_its_log(spark, tmp_path):
    model = save(Broken(), tmp_path / "broken")
    predict = spark_udf(spark, model, scope="executor")
    with pytest.raises(Exception, match="last lines of the model host log") as failure:
        _probe_frame(spark, partitions=1).select(predict("a", "b")).collect()
    assert "weights-are-corrupt: this model cannot load" in str(failure.value)
    assert "before it was ready; loading the model failed" in str(failure.value)
