"""GPU placement: one model host per (executor, model, GPU address), seeing only its GPU.

The machine has no GPU, and needs none: Spark's resource scheduling only hands tasks the
addresses a discovery script reports, so a script reporting ["0", "1"] on a standalone Worker
gives tasks real GPU addresses. The model reports the process that loaded it and the
CUDA_VISIBLE_DEVICES it runs under.
"""

from __future__ import annotations

import sys
from pathlib import Path

import host_models
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import get_session, stop_active_session
from host_models import Environ

from spark_pyfunc import load_model, save_model, spark_udf
from spark_pyfunc._launcher import host_key
from spark_pyfunc._placement import ScoringPlan as _Plan
from spark_pyfunc._placement import host_variant
from spark_pyfunc._shipping import ShippedModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import standalone  # noqa: E402


def plan(**overrides) -> _Plan:
    from pyspark.sql.types import DoubleType

    fields = {
        "shipped": ShippedModel("m.tar", "0" * 64, 1),
        "scope": "executor",
        "method": "predict",
        "params": None,
        "model_config": None,
        "result_type": DoubleType(),
        "input_names": None,
        "batch_size": None,
        "idle_timeout": 60.0,
        "start_timeout": 60.0,
        "host_mode": None,
    }
    fields.update(overrides)
    return _Plan(**fields)


def test_without_gpus_the_host_is_as_before() -> None:
    assert host_variant(plan(), (), 4) == {"processes": 4}
    assert host_variant(plan(host_mode="fork"), (), None) == {"mode": "fork"}


def test_a_gpu_task_gets_a_thread_host_on_its_gpu_batching_by_default() -> None:
    variant = host_variant(plan(host_mode="prefork"), ("1",), 4)
    assert variant["env"] == {"CUDA_VISIBLE_DEVICES": "1"}
    assert variant["mode"] == "thread"  # a CUDA context does not survive a fork
    assert variant["batching"] is True
    assert variant["batch_max_wait_ms"] == plan().batch_max_wait_ms


def test_batching_can_be_turned_off_for_gpus_and_on_for_cpus() -> None:
    off = host_variant(plan(batching=False), ("0",), None)
    assert "batching" not in off and off["mode"] == "thread"
    on = host_variant(plan(batching=True, batch_max_wait_ms=2.0, batch_max_rows=100), (), 2)
    assert on["mode"] == "thread" and "env" not in on
    assert (on["batching"], on["batch_max_wait_ms"], on["batch_max_rows"]) == (True, 2.0, 100)


def test_a_task_with_several_gpus_gets_one_host_seeing_all_of_them() -> None:
    assert host_variant(plan(), ("2", "0"), None)["env"] == {"CUDA_VISIBLE_DEVICES": "2,0"}


def test_extra_env_joins_the_gpu_hosts_environment_and_the_address_wins() -> None:
    extra = {"X": "1", "CUDA_VISIBLE_DEVICES": "7"}
    assert host_variant(plan(extra_env=extra), (), None) == {"env": extra}
    on_gpu = host_variant(plan(extra_env=extra), ("1",), None)
    assert on_gpu["env"] == {"X": "1", "CUDA_VISIBLE_DEVICES": "1"}
    assert extra["CUDA_VISIBLE_DEVICES"] == "7"  # the plan's own dict is left alone


def test_each_gpu_address_has_a_host_of_its_own() -> None:
    keys = {
        host_key("/exec", "0" * 64, None, **host_variant(plan(), (gpu,), 4))
        for gpu in ("0", "1", "0")
    }
    assert len(keys) == 2
    cpu = host_key("/exec", "0" * 64, None, **host_variant(plan(), (), 4))
    assert cpu not in keys


# ----------------------------------------------------------------- on a standalone cluster


def _hosts_under(root: Path) -> list[psutil.Process]:
    """The model hosts started by this cluster's executors (their command line names a path
    under the cluster's directory), without a prefork host's children."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "spark_pyfunc._host" in cmdline and any(str(root) in a for a in cmdline):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.ppid() not in pids]


@pytest.mark.slow
def test_one_host_per_gpu_address_on_a_standalone_cluster(tmp_path: Path, spark_tmp) -> None:
    model_dir = tmp_path / "environ"
    example = pd.DataFrame({"x": [0.5, 1.0]})
    save_model(
        str(model_dir),
        python_model=Environ(),
        code_paths=[host_models.__file__],
        input_example=example,
    )
    data = pd.DataFrame({"x": np.linspace(-3, 3, 4000)})
    root = tmp_path / "cluster"
    stop_active_session()
    conf = {
        "spark.executor.memory": "512m",
        "spark.executor.cores": "4",
        "spark.executor.resource.gpu.amount": "2",
        "spark.task.resource.gpu.amount": "0.5",
        "spark.task.maxFailures": "1",
    }
    with standalone.standalone_cluster(4, memory="2g", root=root, gpus=["0", "1"]) as cluster:
        spark = None
        try:
            spark = get_session(cluster.master_url, spark_tmp, conf)
            predict = spark_udf(
                spark, model_dir, result_type="y double, pid long, devices string", scope="executor"
            )
            df = spark.createDataFrame(data).repartition(16)
            out = df.select("x", predict("x").alias("p")).select("x", "p.*").toPandas()
            hosts = {p.pid: p for p in _hosts_under(root)}
            devices = {p: h.environ().get("CUDA_VISIBLE_DEVICES") for p, h in hosts.items()}
            commands = {p: h.cmdline() for p, h in hosts.items()}
        finally:
            jvm = spark.sparkContext._jvm if spark is not None else None
            stop_active_session()
            # The builder's options outlive the session as the JVM's system properties, which
            # every later SparkConf reads: a local[2] session would then wait for GPUs forever.
            for key in conf if jvm is not None else ():
                jvm.java.lang.System.clearProperty(key)
    by_host = out.groupby("pid")["devices"].unique()
    assert sorted(by_host.index) == sorted(hosts), (by_host, hosts)
    # Exactly one host per address, each seeing only its own GPU, from load to predict.
    assert sorted(d for ds in by_host for d in ds) == ["0", "1"], by_host
    assert sorted(devices.values()) == ["0", "1"]
    for pid, (reported,) in by_host.items():
        assert devices[pid] == reported
        cmd = commands[pid]
        assert cmd[cmd.index("--mode") + 1] == "thread" and "--batching" in cmd, cmd
    local = load_model(model_dir).predict(out[["x"]])
    np.testing.assert_allclose(out["y"].to_numpy(), np.asarray(local["y"]))


def test_gpu_bench_without_a_gpu_or_torch_says_so_and_exits_0() -> None:
    import importlib.util
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_bench.py"
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: the script would measure, not refuse")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "gpu_bench: torch is not installed (pip install torch): nothing to measure here."
    )
