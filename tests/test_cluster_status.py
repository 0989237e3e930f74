"""host_report on a real multi-process cluster: 2 executors (separate JVMs), 2 cores each,
one host per executor, each reported once, by its own executor."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from udf_models import FEATURES, LINEAR_WEIGHTS, save_linear

from spark_pyfunc import host_report, spark_udf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory) -> Path:
    return save_linear(tmp_path_factory.mktemp("cluster-status"))


@pytest.mark.parametrize("scope", ["executor", "process"])
def test_host_report_has_one_row_per_executor(cluster_spark, linear_model, scope):
    predict = spark_udf(cluster_spark, str(linear_model), scope=scope)
    frame = cluster_spark.range(0, 20000, numPartitions=16).selectExpr(
        *[f"cast(id as double) * {i} as f{i}" for i in range(8)]
    )
    total = frame.select(predict(*FEATURES).alias("p")).groupBy().sum("p").collect()[0][0]
    assert total == pytest.approx(np.arange(20000).sum() * (np.arange(8) @ LINEAR_WEIGHTS))
    report = host_report(cluster_spark, since=time.time())
    assert report.attrs["executors_answered"] == report.attrs["executors_expected"] == 2
    assert report.attrs["coverage"] == "2 of 2 executors answered"
    ours = report[(report["model_uri"] == str(linear_model)) & (report["state"] == "serving")]
    if scope == "process":  # the workers hold the model: no host runs
        assert ours.empty, ours
        return
    assert len(ours) == 2, report
    assert ours["executor_dir"].nunique() == 2  # one per executor, each from its own
    assert ours["rows"].sum() == 20000 and (ours["rows"] > 0).all()
    assert (ours["load_seconds"] >= 0).all() and (ours["pss_mib"] > 0).all()
