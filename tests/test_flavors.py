"""MLflow's built-in flavors, as MLflow itself writes them, scored in both scopes.

``mlflow.sklearn`` (MLflow 3 serialises with skops by default) and ``mlflow.lightgbm`` models
are loaded through their own loader module, in the model host (one copy per executor) or in
each worker; the results must equal the library's own predict. A loader module that is not
importable on the driver fails ``spark_udf`` before Spark is touched, saying what to install.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import lightgbm
import mlflow.lightgbm
import mlflow.sklearn
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from support.processes import wait_exited

from spark_pyfunc import MissingDependencyError, spark_udf
from spark_pyfunc._format import read_metadata

pytestmark = pytest.mark.mlflow

COLUMNS = ["x1", "x2", "x3"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(11)
    x = pd.DataFrame(rng.normal(size=(400, 3)), columns=COLUMNS)
    y = (x["x1"] - 0.5 * x["x2"] + 0.1 * rng.normal(size=400) > 0).astype(np.int64)
    return x, y.to_numpy()


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory, data) -> tuple[Path, LogisticRegression]:
    x, y = data
    estimator = LogisticRegression().fit(x, y)
    path = tmp_path_factory.mktemp("flavors") / "sklearn"
    mlflow.sklearn.save_model(estimator, str(path), input_example=x.head(5))
    return path, estimator


@pytest.fixture(scope="module")
def lightgbm_model(tmp_path_factory, data) -> tuple[Path, lightgbm.LGBMRegressor]:
    x, y = data
    target = x["x1"] * 2.0 + y
    estimator = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(x, target)
    path = tmp_path_factory.mktemp("flavors") / "lightgbm"
    mlflow.lightgbm.save_model(estimator, str(path), input_example=x.head(5))
    return path, estimator


def test_mlflow_writes_sklearn_models_with_skops(sklearn_model):
    """What the sklearn cases below exercise: MLflow 3's default format, not a pickle."""
    metadata = read_metadata(sklearn_model[0])
    assert metadata.loader_module == "mlflow.sklearn"
    assert metadata.flavors["sklearn"]["serialization_format"] == "skops"


@pytest.mark.parametrize("scope", ["executor", "process"])
@pytest.mark.parametrize("flavor", ["sklearn", "lightgbm"])
def test_builtin_flavors_score_like_their_library(spark, data, request, flavor, scope):
    path, estimator = request.getfixturevalue(f"{flavor}_model")
    x, _ = data
    df = spark.createDataFrame(x).repartition(4)
    predict = spark_udf(spark, path, scope=scope)
    out = df.select(*COLUMNS, predict().alias("pred")).toPandas()  # signature's columns
    np.testing.assert_allclose(out["pred"], estimator.predict(out[COLUMNS]), err_msg=scope)


class _NoSpark:
    """A session that fails the test if spark_udf touches it."""

    def __getattr__(self, name):
        raise AssertionError(f"spark_udf used the session ({name}) before its checks")


def test_a_loader_module_missing_on_the_driver_fails_before_spark(sklearn_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(sklearn_model[0], path)
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["loader_module"] = "no_such_flavor_pkg.loader"
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(
        MissingDependencyError,
        match=rf"model '{path}' is loaded by its loader_module no_such_flavor_pkg\.loader.*"
        r"pip install no_such_flavor_pkg \(on the driver and the executors\)",
    ):
        spark_udf(_NoSpark(), str(path))


def test_mlflow_missing_on_the_driver_says_install_mlflow(sklearn_model, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(MissingDependencyError, match=r"mlflow\.sklearn.*pip install mlflow") as e:
        spark_udf(_NoSpark(), sklearn_model[0])
    assert e.value.install == "mlflow"


def _hosts_of(text: str) -> list[psutil.Process]:
    """Live model hosts whose command line names ``text``; a prefork host's serving
    processes are forks with the same command line, so a host is one whose parent is not."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
        cmd = proc.info["cmdline"] or []
        if (
            "spark_pyfunc._host" in cmd
            and any(text in part for part in cmd)
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.info["ppid"] not in pids]


@pytest.mark.slow
def test_one_sklearn_host_per_executor_on_a_cluster(cluster_spark, sklearn_model, data):
    path, estimator = sklearn_model
    x, _ = data
    big = pd.concat([x] * 10, ignore_index=True)
    df = cluster_spark.createDataFrame(big).repartition(8)
    predict = spark_udf(cluster_spark, path, scope="executor")
    # The executors unpack the model into the machine's cache, under its sha256: that names
    # this model's hosts on every executor.
    stem = predict._plan.shipped.sha256
    try:
        out = df.select(*COLUMNS, predict(*COLUMNS).alias("pred")).toPandas()
        np.testing.assert_array_equal(out["pred"], estimator.predict(out[COLUMNS]))
        hosts = _hosts_of(stem)  # they outlive the job until their idle timeout
        # local-cluster[2,2,1024]: two executors, one host each, none per worker; both on
        # the one unpacked copy of the machine's cache.
        assert len(hosts) == 2, [h.info["cmdline"] for h in hosts]
        model_dirs = {h.info["cmdline"][h.info["cmdline"].index("--model-dir") + 1] for h in hosts}
        assert len(model_dirs) == 1, model_dirs
    finally:
        hosts = _hosts_of(stem)
        for host in hosts:
            with contextlib.suppress(psutil.NoSuchProcess):
                host.terminate()
        wait_exited(hosts, timeout=60)
