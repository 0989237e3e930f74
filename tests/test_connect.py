"""spark_udf on a Spark Connect session: the model ships as a session artifact and the
executor-side host works as on a classic session, one load for two UDFs over the same model.

The Connect application runs in its own interpreter (see connect_app.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from udf_models import save_linear

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory) -> Path:
    return save_linear(tmp_path_factory.mktemp("connect-linear"))


def test_connect_session_scores_with_one_host(linear_model, tmp_path):
    pytest.importorskip("grpc", reason="the connect extra (pyspark[connect]) is not installed")
    counter = tmp_path / "loads.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CONNECT")}
    proc = subprocess.run(
        [sys.executable, str(HERE / "connect_app.py"), str(linear_model), str(counter)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["session_type"].startswith("pyspark.sql.connect")
    assert result["rows"] == [2000, 2000]
    assert max(result["max_abs_diff"]) < 1e-9
    loads = Counter(line.split()[1] for line in counter.read_text().splitlines())
    # One host served both UDFs: exactly one load_context, in a process other than the driver.
    assert len(loads) == 1 and list(loads.values()) == [1], loads
    assert str(result["driver_pid"]) not in loads


def test_host_report_on_a_connect_session(linear_model):
    pytest.importorskip("grpc", reason="the connect extra (pyspark[connect]) is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CONNECT")}
    proc = subprocess.run(
        [sys.executable, str(HERE / "connect_report_app.py"), str(linear_model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["session_type"].startswith("pyspark.sql.connect")
    # Connect has no SparkContext to count executors with: the report says it cannot tell.
    assert result["answered"] == 1 and result["expected"] is None
    assert result["rows"] == [{"state": "serving", "rows": 2000, "model_uri": str(linear_model)}]
