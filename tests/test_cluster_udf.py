"""spark_udf on a real multi-process cluster: 2 executors (separate JVMs), 2 cores each.

Checks what only a cluster shows: the model reaches executors through Spark's file
distribution, there is exactly one model host (and one ``load_context``) per executor with
scope="executor", one copy per Python worker with scope="process", model_config reaches
executors, and results equal local ``load_model(...).predict``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from udf_models import FEATURES, Probe, save, save_linear

from spark_pyfunc import load_model, spark_udf
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, Schema

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory) -> Path:
    return save_linear(tmp_path_factory.mktemp("cluster-linear"), model_config={"bias": 0.0})


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory) -> Path:
    sig = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "a"), ColSpec(DataType.string, "b")]),
        outputs=Schema([ColSpec(DataType.long, "pid"), ColSpec(DataType.long, "rows")]),
    )
    return save(Probe(), tmp_path_factory.mktemp("cluster-probe") / "model", signature=sig)


def _loads(counter: Path) -> Counter:
    return Counter(line.split()[1] for line in counter.read_text().splitlines())


def test_results_equal_local_predict_with_model_config(cluster_spark, linear_model):
    rng = np.random.default_rng(3)
    data = pd.DataFrame(rng.normal(size=(3000, 8)), columns=FEATURES)
    df = cluster_spark.createDataFrame(data).repartition(8)
    for scope in ("executor", "process"):
        predict = spark_udf(cluster_spark, linear_model, model_config={"bias": 2.5}, scope=scope)
        out = df.withColumn("pred", predict(*FEATURES)).toPandas()
        local = load_model(linear_model, model_config={"bias": 2.5}).predict(out[FEATURES])
        np.testing.assert_allclose(out["pred"].to_numpy(), np.asarray(local), err_msg=scope)


def test_one_host_and_one_load_per_executor(cluster_spark, probe_model, tmp_path):
    counter = tmp_path / "loads.txt"
    predict = spark_udf(
        cluster_spark, probe_model, model_config={"counter": str(counter)}, scope="executor"
    )
    df = cluster_spark.range(0, 20000, numPartitions=16).selectExpr(
        "cast(id as double) as a", "'x' as b"
    )
    first = df.select(predict("a", "b").alias("p")).select("p.*").toPandas()
    # A second job and a second UDF over the same model reuse the same hosts.
    again = spark_udf(
        cluster_spark, probe_model, model_config={"counter": str(counter)}, scope="executor"
    )
    second = df.select(again("a", "b").alias("p")).select("p.*").toPandas()
    hosts = set(first["pid"]) | set(second["pid"])
    loads = _loads(counter)
    assert len(hosts) == 2, f"expected one host per executor, got {hosts}"
    assert set(loads) == {str(p) for p in hosts}
    assert all(n == 1 for n in loads.values()), loads


def test_process_scope_loads_one_copy_per_worker(cluster_spark, probe_model, tmp_path):
    counter = tmp_path / "loads.txt"
    predict = spark_udf(
        cluster_spark, probe_model, model_config={"counter": str(counter)}, scope="process"
    )
    df = cluster_spark.range(0, 20000, numPartitions=16).selectExpr(
        "cast(id as double) as a", "'x' as b"
    )
    out = df.select(predict("a", "b").alias("p")).select("p.*").toPandas()
    workers = set(out["pid"])
    loads = _loads(counter)
    # Each Python worker that scored rows loaded its own copy, exactly once.
    assert set(loads) == {str(p) for p in workers}
    assert all(n == 1 for n in loads.values()), loads
    assert len(workers) > 2
