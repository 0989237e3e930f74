"""spark_pyfunc/score_job.py (the spark-submit entry point the package ships) under
spark-submit on a multi-process local-cluster.

The job runs in its own driver process launched by the pip PySpark's ``spark-submit``, with
executors in their own JVM and Python processes, as it would on a cluster; its output must equal
local ``load_model(...).predict``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyspark
import pytest
from udf_models import FailsOnSomeRows

import spark_pyfunc.score_job
from spark_pyfunc import load_model, save_model
from spark_pyfunc._demo import FEATURES, build_model, example_features

#: The entry point as the README gives it: the file of the package's module, not scripts/.
SCORE_JOB = Path(spark_pyfunc.score_job.__file__)
SPARK_SUBMIT = Path(pyspark.__file__).parent / "bin" / "spark-submit"
# local-cluster keeps each application's executor directory (with the unpacked model) under
# $SPARK_HOME/work, whatever spark.worker.dir says.
SPARK_WORK = Path(os.environ.get("SPARK_HOME", Path(pyspark.__file__).parent)) / "work"
MARKER = f"-Dpyfunc_test_marker={uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def _remove_executor_dirs() -> Iterator[None]:
    """Remove the work dirs of this module's applications, found by MARKER in their command."""
    yield
    for app in SPARK_WORK.glob("app-*"):
        logs = app.glob("*/stderr")
        if any(MARKER in log.read_text(errors="replace") for log in logs):
            shutil.rmtree(app, ignore_errors=True)


def spark_submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [
        str(SPARK_SUBMIT),
        "--master", "local-cluster[1,2,1024]",
        "--conf", "spark.executor.memory=512m",
        "--conf", f"spark.executor.extraJavaOptions={MARKER}",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.local.dir={cwd / 'spark-local'}",
        str(SCORE_JOB),
        *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_score_job_under_spark_submit_matches_local_predict(tmp_path):
    model = build_model(tmp_path / "model", seed=5)
    features = example_features(2_000, seed=6)
    features.insert(0, "id", np.arange(len(features)))
    source = tmp_path / "features.csv"
    features.to_csv(source, index=False)
    out = tmp_path / "scored.parquet"

    done = spark_submit(
        str(model), str(source), str(out), "--param", "threshold=0.7", "--scope", "executor",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    assert "rows      2,000" in done.stdout and f"output    {out} (parquet)" in done.stdout

    got = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[features.columns], features, check_dtype=False)
    predicted = pd.DataFrame(list(got["prediction"]))
    want = load_model(model).predict(features[list(FEATURES)], params={"threshold": 0.7})
    np.testing.assert_allclose(predicted["probability"], want["probability"])
    np.testing.assert_array_equal(predicted["label"], want["label"])

    # Errors are one line and the job's exit status, as for the console script (spark-submit's
    # PythonRunner merges the driver's stderr into its stdout).
    again = spark_submit(str(model), str(source), str(out), cwd=tmp_path)
    assert again.returncode == 1
    errors = [line for line in again.stdout.splitlines() if "error" in line.lower()]
    assert errors == [
        f"spark-pyfunc: error: OUTPUT {str(out)!r} already exists; pass --mode "
        "overwrite to replace it or --mode append to add to it"
    ]

    # A failed overwrite on the cluster keeps the previous output byte for byte and leaves no
    # staging directory beside it.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failing = tmp_path / "failing"
    save_model(failing, python_model=FailsOnSomeRows(), input_example=example_features(3))
    assert (features["f0"] > 2.0).any()
    broken = spark_submit(
        str(failing), str(source), str(out), "--mode", "overwrite", "--output-column", "doubled",
        cwd=tmp_path,
    )  # fmt: skip
    assert broken.returncode == 1
    errors = [line for line in broken.stdout.splitlines() if line.startswith("spark-pyfunc:")]
    hint = "spark-pyfunc: run with --verbose for details"  # before the error, which ends it
    assert errors[-1].startswith("spark-pyfunc: error: ") and set(errors[:-1]) <= {hint}
    assert errors[-1].endswith("ValueError: f0 above 2.0: refusing to score this batch")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
