"""Faults on a real multi-process cluster (local-cluster: executors in their own JVMs).

Each test kills something in the middle of a job and checks the job still returns exactly what
a clean run returns: the model host (the worker restarts it and resends the batch), a Python
worker (Spark retries the task) and a whole executor (Spark replaces it and reruns its tasks).
The last tests check that nothing of spark_pyfunc outlives the application.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import stop_active_session
from udf_models import FEATURES, SlowLinear, save

from spark_pyfunc.udf import spark_udf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROWS = 4000
# Small batches and a delay per batch: a job of several seconds with many host requests.
BATCH = 100
DELAY = 0.05


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults-model")
    np.save(root / "w.npy", np.linspace(-1, 1, 8))
    example = pd.DataFrame(np.ones((3, 8)), columns=FEATURES)
    return save(
        SlowLinear(),
        root / "model",
        artifacts={"weights": str(root / "w.npy")},
        input_example=example,
    )


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(ROWS, 8)), columns=FEATURES)
    frame.insert(0, "id", np.arange(ROWS))
    return frame


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def host_processes(marker: str) -> list[psutil.Process]:
    """Model hosts serving the model whose archive stem is ``marker`` (hosts are detached, so
    they are found by their command line, not as our descendants); a prefork host's serving
    children share its command line and are left out."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmd = proc.info["cmdline"] or []
        if "spark_pyfunc.host" in cmd and any(marker in part for part in cmd):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.info["ppid"] not in pids]


def descendants(predicate: Callable[[list[str]], bool]) -> list[psutil.Process]:
    """Our descendants (the local-cluster's executor JVMs and their Python processes)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if predicate(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def python_workers() -> list[psutil.Process]:
    """Forked pyspark workers: children of a pyspark.daemon that are daemons by cmdline too."""
    daemons = descendants(lambda cmd: "pyspark.daemon" in cmd)
    daemon_pids = {d.pid for d in daemons}
    return [d for d in daemons if d.ppid() in daemon_pids]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def loads(counter: Path) -> Counter:
    if not counter.exists():
        return Counter()
    return Counter(line.split()[1] for line in counter.read_text().splitlines())


def score(spark, model: Path, data: pd.DataFrame, config: dict) -> pd.DataFrame:
    predict = spark_udf(spark, model, model_config=config, scope="executor", batch_size=BATCH)
    df = spark.createDataFrame(data).repartition(8)
    out = df.select("id", predict(*FEATURES).alias("pred")).toPandas()
    return out.sort_values("id", ignore_index=True)


def score_while(spark, model, data, config, fault: Callable[[], None]) -> pd.DataFrame:
    """Score with ``fault`` run on a thread once the job is under way."""
    errors: list[BaseException] = []

    def run_fault() -> None:
        try:
            fault()
        except BaseException as exc:  # surfaced in the test below
            errors.append(exc)

    thread = threading.Thread(target=run_fault, daemon=True)
    thread.start()
    out = score(spark, model, data, config)
    thread.join(60)
    assert not errors, errors
    return out


@pytest.fixture
def clean(cluster_spark, slow_model, data, tmp_path) -> pd.DataFrame:
    return score(cluster_spark, slow_model, data, {"delay": 0.0, "run": "clean"})


def test_model_host_killed_mid_job(cluster_spark, slow_model, data, clean, tmp_path):
    counter = tmp_path / "loads.txt"
    config = {"delay": DELAY, "counter": str(counter)}
    stem = spark_udf(cluster_spark, slow_model).shipped.stem
    killed: list[int] = []

    def kill_hosts() -> None:
        assert wait_until(lambda: len(loads(counter)) >= 1, 60), "no host started"
        time.sleep(0.5)  # let it serve a few batches
        for proc in host_processes(stem):
            if proc.pid in {int(p) for p in loads(counter)}:
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)

    started = time.monotonic()
    out = score_while(cluster_spark, slow_model, data, config, kill_hosts)
    took = time.monotonic() - started
    pd.testing.assert_frame_equal(out, clean)
    assert killed, "the test killed no host"
    # Every killed host was replaced by a new one that loaded the model again.
    assert sum(loads(counter).values()) >= len(killed) + 1, (loads(counter), killed)
    print(f"host SIGKILL mid-job: {len(killed)} killed, job {took:.1f}s")


def test_python_worker_killed_mid_job(cluster_spark, slow_model, data, clean, tmp_path):
    counter = tmp_path / "loads.txt"
    config = {"delay": DELAY, "counter": str(counter)}
    killed: list[int] = []

    def kill_a_worker() -> None:
        assert wait_until(lambda: len(loads(counter)) >= 1, 60), "no host started"
        time.sleep(0.5)
        workers = python_workers()
        assert workers, "no Python worker found to kill"
        workers[0].send_signal(signal.SIGKILL)
        killed.append(workers[0].pid)

    out = score_while(cluster_spark, slow_model, data, config, kill_a_worker)
    pd.testing.assert_frame_equal(out, clean)
    assert killed
    # The host outlived the worker: the retried task reused it (no second load per executor).
    assert all(n == 1 for n in loads(counter).values()), loads(counter)


def test_executor_lost_mid_job(cluster_spark, slow_model, data, clean, tmp_path):
    counter = tmp_path / "loads.txt"
    config = {"delay": DELAY, "counter": str(counter)}
    stem = spark_udf(cluster_spark, slow_model).shipped.stem
    lost: list[int] = []

    def kill_an_executor() -> None:
        assert wait_until(lambda: len(loads(counter)) >= 1, 60), "no host started"
        time.sleep(0.5)
        executors = descendants(lambda cmd: any("CoarseGrainedExecutorBackend" in c for c in cmd))
        assert executors, "no executor JVM found to kill"
        executors[0].send_signal(signal.SIGKILL)
        lost.append(executors[0].pid)

    out = score_while(cluster_spark, slow_model, data, config, kill_an_executor)
    pd.testing.assert_frame_equal(out, clean)
    assert lost
    # The lost executor's host followed its Python daemon: no host of this config is left
    # beyond one per live executor.
    live = descendants(lambda cmd: any("CoarseGrainedExecutorBackend" in c for c in cmd))
    assert wait_until(
        lambda: len([p for p in host_processes(stem) if _serves(p, config)]) <= len(live), 15
    )


def _serves(proc: psutil.Process, config: dict) -> bool:
    try:
        return str(config["counter"]) in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def test_nothing_outlives_the_application(cluster_spark, slow_model, data, tmp_path):
    counter = tmp_path / "loads.txt"
    config = {"delay": 0.0, "counter": str(counter)}
    stem = spark_udf(cluster_spark, slow_model).shipped.stem
    score(cluster_spark, slow_model, data, config)
    hosts = [p for p in host_processes(stem) if _serves(p, config)]
    assert hosts, "no model host served the job"
    sockets = [Path(p.cmdline()[p.cmdline().index("--socket") + 1]) for p in hosts]
    assert all(s.exists() for s in sockets)

    stopped = time.monotonic()
    stop_active_session()
    assert wait_until(lambda: not any(alive(p) for p in hosts), 10), (
        "a model host outlived spark.stop() by more than 10 s"
    )
    took = time.monotonic() - stopped
    assert not any(s.exists() for s in sockets), "a host left its socket behind"
    assert not descendants(lambda cmd: "pyspark.daemon" in cmd)
    print(f"hosts gone {took:.1f}s after spark.stop()")
