"""env_manager on real executors that have nothing installed but PySpark's own requirements.

A standalone Master and Worker on 127.0.0.1 (scripts/standalone.py) run two 1-core executors
whose Python (``spark.pyspark.python``) is a venv made with uv holding only pyarrow, pandas
and numpy: no spark_pyfunc, psutil, filelock, PyYAML or cloudpickle, no six. The executors'
PATH holds uv and the system's tools only. The model pins ``six==1.15.0`` and reports the
version its host imports. spark_udf must ship spark_pyfunc itself, build the model's
environment once for the machine, run one host per executor in it, and a second application
must reuse the environment (0 builds); a third, on a fresh cache and without uv, unpacks a
prebuilt archive instead. The same on a Spark Connect session whose Python workers use the
bare venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import stop_active_session
from test_environments import PINNED, builds, six_model

from spark_pyfunc import spark_udf
from spark_pyfunc._env_prebuilt import pack_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

RESULT = "six string, python string, pid long"


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).is_file():
        pytest.fail("uv is not installed: pip install -e '.[test]' (it is in the test extra)")
    return found


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A venv of this Python with only PySpark's requirements (this machine's versions)."""
    import numpy
    import pandas
    import pyarrow

    venv = tmp_path_factory.mktemp("bare") / "venv"
    uv = _uv()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    pins = [f"pyarrow=={pyarrow.__version__}", f"pandas=={pandas.__version__}"]
    pins.append(f"numpy=={numpy.__version__}")
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *pins], check=True
    )
    python = str(venv / "bin" / "python")
    for missing in ("spark_pyfunc", "psutil", "filelock", "yaml", "cloudpickle", "six"):
        probe = subprocess.run([python, "-c", f"import {missing}"], capture_output=True, cwd=venv)
        assert probe.returncode != 0, f"the bare venv can import {missing}"
    return python


@pytest.fixture(scope="module")
def tools_path(tmp_path_factory) -> str:
    """A PATH for the executors: uv and the system's tools, nothing of the test venv."""
    tools = tmp_path_factory.mktemp("tools")
    (tools / "uv").symlink_to(_uv())
    return os.pathsep.join([str(tools), "/usr/bin", "/bin"])


def _wait_for_executors(spark, count: int, timeout: float = 180) -> int:
    """How many executors registered, waiting up to ``timeout`` for ``count``: under load one
    can come up after the other has taken every task."""
    tracker = spark.sparkContext._jsc.sc()
    deadline = time.monotonic() + timeout
    while tracker.getExecutorMemoryStatus().size() < count + 1:  # + the driver's
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return tracker.getExecutorMemoryStatus().size() - 1


def _application(
    cluster,
    bare_python: str,
    tools_path: str,
    cache: Path,
    model: Path,
    loads: Path,
    prebuilt: Path | None = None,
):
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    # Defined here, so that it is pickled by value (the executors cannot import this module).
    def _probe(ids: pd.Series) -> pd.DataFrame:
        """Where a Python worker finds spark_pyfunc, and whether it has psutil."""
        import importlib.util

        import spark_pyfunc

        return pd.DataFrame(
            {
                "package": [spark_pyfunc.__file__] * len(ids),
                "psutil": [importlib.util.find_spec("psutil") is not None] * len(ids),
            }
        )

    # getOrCreate() would hand back the suite's shared local[2] session (keeping its master
    # and ignoring the static settings below): stop it first.
    stop_active_session()
    spark = (
        SparkSession.builder.master(cluster.master_url)
        .appName("spark_pyfunc-envs")
        .config("spark.ui.enabled", "false")
        .config("spark.executor.cores", "1")
        .config("spark.cores.max", "2")
        .config("spark.executor.memory", "768m")
        .config("spark.task.maxFailures", "1")
        .config("spark.pyspark.python", bare_python)
        .config("spark.executorEnv.PATH", tools_path)
        # Executors that forbid bytecode: the hosts in the model's environment write it anyway
        .config("spark.executorEnv.PYTHONDONTWRITEBYTECODE", "1")
        .config("spark.pyfunc.env.cacheDir", str(cache))
        .config("spark.pyfunc.host.idleTimeout", "60")
        .getOrCreate()
    )
    assert spark.sparkContext.master == cluster.master_url, spark.sparkContext.master
    try:
        executors = _wait_for_executors(spark, 2)
        config = {"loads": str(loads)}
        if prebuilt is None:
            udf = spark_udf(spark, str(model), RESULT, "uv", model_config=config)
        else:
            udf = spark_udf(
                spark, str(model), RESULT, model_config=config, prebuilt_env_uri=prebuilt
            )
        df = spark.range(0, 400, numPartitions=8)
        out = df.select(udf("id").alias("r")).select("r.*").toPandas()
        probe = pandas_udf(_probe, "package string, psutil boolean")
        workers = df.select(probe("id").alias("p")).select("p.*").distinct().toPandas()
    finally:
        spark.stop()
    return out, workers, executors


# Three applications on a standalone cluster: ~8 min at load 16-60 on 2 shared cores, where
# the suite's 600 s limit cut the third once.
@pytest.mark.timeout(1500)
def test_bare_executors_build_once_per_machine_and_run_one_host_each(
    bare_python, tools_path, tmp_path, monkeypatch
):
    from standalone import standalone_cluster

    model = six_model(tmp_path / "model")
    cache = tmp_path / "cache"
    loads = tmp_path / "loads.txt"
    # A pip PySpark's driver takes the workers' Python from PYSPARK_PYTHON (spark-submit
    # turns spark.pyspark.python into it); both are set, as a user would.
    monkeypatch.setenv("PYSPARK_PYTHON", bare_python)
    with standalone_cluster(cores=2, memory="2g") as cluster:
        out, workers, executors = _application(
            cluster, bare_python, tools_path, cache, model, loads
        )
        assert executors == 2
        assert set(out["six"]) == {PINNED}
        assert out["python"].nunique() == 1 and out["python"][0].startswith(str(cache))
        # load_context runs once per host (a prefork host's serving children, whose pids
        # the predictions report, fork after it): one load per executor.
        hosts = Counter(line.split()[0] for line in loads.read_text().splitlines())
        assert len(hosts) == executors and set(hosts.values()) == {1}, (hosts, executors)
        assert [b["how"] for b in builds(cache)] == ["built"]
        # The first host compiled what it imported into the environment, for the later ones.
        assert _compiled(out["python"][0], "pandas") and _compiled(out["python"][0], "six")
        # The workers ran spark_pyfunc from the shipped zip, without psutil.
        assert all(".zip" in p for p in workers["package"]) and not workers["psutil"].any()

        again, _, executors_again = _application(
            cluster, bare_python, tools_path, cache, model, loads
        )
        assert set(again["six"]) == {PINNED}
        assert len(builds(cache)) == 1  # the second application built nothing
        # its own hosts, one per executor
        assert len(loads.read_text().splitlines()) == executors + executors_again

        # A prebuilt archive: executors without uv on their PATH (nor any registry use).
        archive = pack_env(model, tmp_path / "env.tar.gz", "uv", tmp_path / "build-cache")
        fresh = tmp_path / "fresh-cache"
        third, _, _ = _application(
            cluster, bare_python, "/usr/bin:/bin", fresh, model, loads, prebuilt=archive
        )
        assert set(third["six"]) == {PINNED}
        assert third["python"].nunique() == 1 and third["python"][0].startswith(str(fresh))
        assert [b["how"] for b in builds(fresh)] == ["unpacked"]
        assert _compiled(third["python"][0], "pandas")  # the archive holds no bytecode


def _compiled(python: str, module: str) -> list[Path]:
    """The bytecode files of ``module`` (a package or a single-file module) in the
    environment of ``python``."""
    site = next(Path(python).parent.parent.glob("lib/python*/site-packages"))
    return list(site.glob(f"{module}/__pycache__/*.pyc")) + list(
        site.glob(f"__pycache__/{module}.*.pyc")
    )


CONNECT_APP = """
import json, sys
from pyspark.sql import SparkSession
from spark_pyfunc import _environments as envs
from spark_pyfunc import spark_udf

model, cache, bare, path, loads = sys.argv[1:]
spark = (
    SparkSession.builder.remote("local[2]")
    .config("spark.ui.enabled", "false")
    .config("spark.pyspark.python", bare)
    .config("spark.executorEnv.PATH", path)
    .config("spark.pyfunc.env.cacheDir", cache)
    .getOrCreate()
)
try:
    config = {"loads": loads}
    udf = spark_udf(spark, model, "six string, python string, pid long", "uv", model_config=config)
    rows = spark.range(0, 200, numPartitions=6).select(udf("id").alias("r")).select("r.*")
    out = rows.toPandas()
    result = {"type": type(spark).__module__, "six": sorted(set(out["six"]))}
    result["python"] = sorted(set(out["python"]))
    result["pids"] = sorted(set(map(int, out["pid"])))
    print(json.dumps(result))
finally:
    spark.stop()
"""


def test_a_connect_session_restores_the_environment_for_bare_workers(
    bare_python, tools_path, tmp_path
):
    pytest.importorskip("grpc", reason="the connect extra (pyspark[connect]) is not installed")
    model = six_model(tmp_path / "model")
    cache = tmp_path / "cache"
    app = tmp_path / "connect_env_app.py"
    loads = tmp_path / "loads.txt"
    app.write_text(CONNECT_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CONNECT")}
    env["PATH"] = tools_path  # the local workers inherit the server's (this process's) PATH
    env["PYSPARK_PYTHON"] = bare_python
    proc = subprocess.run(
        [sys.executable, str(app), str(model), str(cache), bare_python, tools_path, str(loads)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"].startswith("pyspark.sql.connect")
    assert result["six"] == [PINNED]
    assert len(result["python"]) == 1 and result["python"][0].startswith(str(cache))
    assert len(loads.read_text().splitlines()) == 1  # local[2]: one executor, one host
    assert [b["how"] for b in builds(cache)] == ["built"]
