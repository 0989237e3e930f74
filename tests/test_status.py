"""The model host's status file (_status.py), ``spark-pyfunc hosts`` and the host's log lines:
real host processes in every mode, started through the real client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import LOCAL_MASTER, get_session
from host_models import PARAMS, Counting
from pyspark import SparkFiles
from support.processes import alive_pid
from udf_models import FEATURES, LINEAR_WEIGHTS, save_linear

from spark_pyfunc import cli, host_report, save_model, spark_udf
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._launcher import HostSpec
from spark_pyfunc._rendezvous import socket_path, status_link_path, status_path
from spark_pyfunc._sizing import host_memory_warning
from spark_pyfunc._status import WRITE_EVERY, Meter, _quantile_ms, read_status
from spark_pyfunc.errors import InvalidArgumentError, PredictionError

pytestmark = pytest.mark.timeout(120)

FRAME = pd.DataFrame({"a": np.arange(200, dtype=np.float64), "b": np.linspace(-1, 1, 200)})
#: Host modes: (mode, batching).
MODES = [("prefork", False), ("thread", False), ("fork", False), ("thread", True)]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("status_model") / "counting"
    save_model(str(path), python_model=Counting(), input_example=(FRAME.head(5), PARAMS))
    return str(path)


class Hosts:
    """Clients of fresh host keys; stops their hosts and removes their status links."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.specs: list[HostSpec] = []

    def client(self, model_dir: str, **options) -> ModelHostClient:
        settings = {"idle_timeout": 60.0, "start_timeout": 60.0, "watch_pid": os.getpid()}
        spec = HostSpec(
            model_dir=model_dir,
            key=uuid.uuid4().hex[:16],
            state_dir=str(self.state_dir),
            model_uri="models:/counting/3",
            model_sha256="ab" * 32,
            **{**settings, **options},
        )
        self.specs.append(spec)
        return ModelHostClient(spec)

    def cleanup(self) -> None:
        for spec in self.specs:
            sock = str(socket_path(spec.key))
            for proc in psutil.process_iter(["cmdline"]):
                if sock in (proc.info["cmdline"] or []):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
            for path in (sock, status_link_path(sock)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(tmp_path / "executor")
    try:
        yield made
    finally:
        made.cleanup()


def status_of(client: ModelHostClient) -> dict:
    status = read_status(status_path(str(client.launcher.pid_path)))
    assert status is not None, f"no status file beside {client.launcher.pid_path}"
    return status


def wait_for_rows(client: ModelHostClient, rows: int) -> dict:
    """The status once it counts ``rows`` (it is written every WRITE_EVERY seconds)."""
    assert wait_until(lambda: status_of(client).get("rows") == rows, 4 * WRITE_EVERY + 5), (
        status_of(client)
    )
    return status_of(client)


@pytest.mark.parametrize(("mode", "batching"), MODES)
def test_status_counts_what_the_host_answered(
    hosts: Hosts, model_dir: str, mode: str, batching: bool
) -> None:
    client = hosts.client(model_dir, mode=mode, batching=batching, processes=2)
    sizes = [200, 150, 7, 200, 31]
    with client:
        for n in sizes:
            client.predict(FRAME.head(n))
        with pytest.raises(PredictionError):
            client.predict(FRAME.head(3), params={"fail": "on purpose"})
        pid = client.host_pid
        status = wait_for_rows(client, sum(sizes) + 3)
    assert status["pid"] == pid and status["state"] == "serving"
    assert status["mode"] == mode and status["batching"] is batching
    assert status["requests"] == len(sizes) + 1
    assert status["errors"] == 1
    assert status["model_uri"] == "models:/counting/3" and status["model_sha256"] == "ab" * 32
    assert status["load_seconds"] >= 0 and status["uptime_seconds"] > 0
    assert 0 < status["predict_ms_p50"] <= status["predict_ms_p99"]
    assert status["predict_seconds"] > 0
    if batching:
        assert status["queue_wait_ms_p50"] is not None
        assert status["queue_wait_ms_p50"] <= status["queue_wait_ms_p99"]
    else:
        assert status["queue_wait_ms_p50"] is None
    assert status["pss_mib"] > 10 and status["peak_pss_mib"] >= status["pss_mib"]
    children = {p.pid for p in psutil.Process(pid).children()}
    if mode == "prefork":
        assert status["serving_processes"] == 2
        assert set(status["serving_pids"]) == children and len(children) == 2
    assert status["log"] == str(client.launcher.log_path)
    assert status["restarts"] == 0
    # the link in the socket directory leads to it
    link = status_link_path(str(client.launcher.socket_path))
    assert os.path.realpath(link) == os.path.realpath(status_path(str(client.launcher.pid_path)))

    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: status_of(client)["state"] == "exited", 10)
    final = status_of(client)
    assert final["rows"] == sum(sizes) + 3 and final["requests"] == len(sizes) + 1
    assert final["exit"]["signal"] == "SIGTERM"
    assert "SIGTERM" in final["exit"]["reason"]
    assert not os.path.lexists(link), "a host stopped by SIGTERM leaves no link behind"
    log = client.launcher.log_path.read_text()
    ready = [line for line in log.splitlines() if "model host ready" in line]
    assert len(ready) == 1 and f"{mode} mode" in ready[0] and "MiB" in ready[0]
    stopping = [line for line in log.splitlines() if "model host stopping" in line]
    assert len(stopping) == 1
    assert f"{len(sizes) + 1} requests, {sum(sizes) + 3} rows, 1 errors" in stopping[0]


def test_prefork_child_replaced_keeps_the_counts_of_the_one_that_died(
    hosts: Hosts, model_dir: str
) -> None:
    client = hosts.client(model_dir, mode="prefork", processes=1)
    with client:
        client.predict(FRAME)
        wait_for_rows(client, 200)
        (child,) = psutil.Process(client.host_pid).children()
        client.close()
        child.kill()
        child.wait(10)
        assert wait_until(lambda: status_of(client)["serving_pids"] not in ([], [child.pid]), 10)
        client.predict(FRAME.head(50))
        status = wait_for_rows(client, 250)
    assert status["requests"] == 2


def test_a_killed_host_restart_is_recorded_with_its_reason(hosts: Hosts, model_dir: str) -> None:
    client = hosts.client(model_dir, mode="thread")
    with client:
        client.predict(FRAME)
        first = client.host_pid
        wait_for_rows(client, 200)
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not alive_pid(first), 10)
        client.predict(FRAME.head(10))  # the lost connection restarts the host
        assert client.host_pid != first
        status = wait_for_rows(client, 10)
    assert status["restarts"] == 1
    (reason,) = status["restart_reasons"]
    assert f"pid {first}" in reason and "SIGKILL" in reason and "no exit record" in reason


def test_an_idle_host_says_why_it_ended_and_stays_listed(
    hosts: Hosts, model_dir: str, capsys: pytest.CaptureFixture
) -> None:
    client = hosts.client(model_dir, mode="thread", idle_timeout=0.5)
    with client:
        client.predict(FRAME.head(20))
        pid = client.host_pid
    assert wait_until(lambda: status_of(client)["state"] == "exited", 20)
    assert "exited idle" in status_of(client)["exit"]["reason"]
    # the link stays: `spark-pyfunc hosts` lists the exited host
    assert cli.main(["hosts", "--json"]) == 0
    listed = {row["pid"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed[pid]["state"] == "exited" and listed[pid]["rows"] == 20
    assert "exited idle" in listed[pid]["exit_reason"]
    # the next start records why the previous host is gone
    with client:
        client.predict(FRAME.head(5))
        status = wait_for_rows(client, 5)
    assert status["restarts"] == 1 and "exited idle" in status["restart_reasons"][0]


def test_hosts_lists_the_machines_hosts_as_a_table_and_as_json(
    hosts: Hosts, model_dir: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    clients = [hosts.client(model_dir, mode=mode) for mode in ("prefork", "thread")]
    for n, client in enumerate(clients, start=1):
        client.predict(FRAME.head(10 * n))
        wait_for_rows(client, 10 * n)
    pids = [c.host_pid for c in clients]
    assert cli.main(["hosts"]) == 0
    text = capsys.readouterr().out
    header, *lines = text.splitlines()
    assert header.split()[:4] == ["PID", "STATE", "MODE", "PROCS"]
    for pid, mode, rows in zip(pids, ("prefork", "thread"), ("10", "20"), strict=True):
        (line,) = [line for line in lines if line.startswith(f"{pid} ")]
        fields = line.split()
        assert fields[1:3] == ["serving", mode] and fields[7] == rows
        assert fields[-1] == "models:/counting/3"
    assert cli.main(["hosts", "--json"]) == 0
    rows = {row["pid"]: row for row in json.loads(capsys.readouterr().out)}
    assert {rows[p]["rows"] for p in pids} == {10, 20}
    assert all(rows[p]["executor_dir"] == str(hosts.state_dir) for p in pids)
    # --dir reads the given directories only
    assert cli.main(["hosts", "--json", "--dir", str(tmp_path / "nothing")]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["hosts", "--json", "--dir", str(hosts.state_dir)]) == 0
    assert sorted(r["pid"] for r in json.loads(capsys.readouterr().out)) == sorted(pids)
    for client in clients:
        client.close()
    # a host killed without a word shows as dead
    os.kill(pids[1], signal.SIGKILL)
    assert wait_until(lambda: not alive_pid(pids[1]), 10)
    assert cli.main(["hosts", "--json", "--dir", str(hosts.state_dir)]) == 0
    rows = {row["pid"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows[pids[1]]["state"] == "dead" and "SIGKILL" in rows[pids[1]]["exit_reason"]


def test_meter_counts_across_forked_children_and_folds_those_that_ended() -> None:
    meter = Meter()
    meter.answered(10, True, 2_000_000)
    pids = []
    for rows in (5, 7):
        pid = meter.claim(os.fork)
        if pid == 0:
            meter.answered(rows, False, 4_000_000)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    assert meter.totals()["rows"] == 22  # live slots are read as they are
    meter.retire(live=set())
    totals = meter.totals()
    assert (totals["rows"], totals["requests"], totals["errors"]) == (22, 3, 2)
    assert totals["predict_seconds"] == pytest.approx(0.010)
    # a slot given to a new child starts from zero: folded counts are not counted twice
    pid = meter.claim(os.fork)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert meter.totals()["rows"] == 22


def test_histogram_quantiles_are_within_a_bucket() -> None:
    meter = Meter()
    for ms in range(1, 101):  # 1..100 ms, one each
        meter.answered(1, True, ms * 1_000_000)
    totals = meter.totals()
    assert totals["predict_ms_p50"] == pytest.approx(50, rel=0.2)
    assert totals["predict_ms_p99"] == pytest.approx(99, rel=0.2)
    assert _quantile_ms([0] * 10, 0.5) is None


# ------------------------------------------------------------------------------ through Spark


@contextlib.contextmanager
def session_settings(spark, settings: dict[str, str]) -> Iterator[None]:
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in settings:
            spark.conf.unset(key)


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_linear(tmp_path_factory.mktemp("status-linear"))


def score_rows(spark, model: Path, scope: str, rows: int) -> float:
    """Score ``rows`` rows with a UDF over ``model``; the sum of the predictions."""
    predict = spark_udf(spark, str(model), scope=scope)
    frame = spark.range(0, rows, numPartitions=4).selectExpr(
        *[f"cast(id as double) * {i} as f{i}" for i in range(8)]
    )
    return frame.select(predict(*FEATURES).alias("p")).groupBy().sum("p").collect()[0][0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scope", ["executor", "process"])
@pytest.mark.parametrize(("mode", "batching"), MODES)
def test_host_report_counts_the_rows_spark_scored(
    spark, linear_model: Path, scope: str, mode: str, batching: bool
) -> None:
    settings = {
        "spark.pyfunc.host.mode": mode,
        "spark.pyfunc.host.batching.enabled": str(batching).lower(),
    }
    with session_settings(spark, settings):
        total = score_rows(spark, linear_model, scope, 3000)
    assert total == pytest.approx(np.arange(3000).sum() * (np.arange(8) @ LINEAR_WEIGHTS))
    report = host_report(spark, since=time.time())
    assert report.attrs["executors_answered"] == report.attrs["executors_expected"] == 1
    ours = report[(report["model_uri"] == str(linear_model)) & (report["state"] == "serving")]
    if scope == "process":  # the workers hold the model: no host runs
        assert ours.empty, ours
        return
    assert len(ours) == 1, report
    host = ours.iloc[0]
    assert host["rows"] == 3000 and host["errors"] == 0
    assert host["mode"] == mode and bool(host["batching"]) is batching
    assert host["requests"] >= 4 and host["pss_mib"] > 0 and host["predict_ms_p99"] > 0
    assert bool(pd.notna(host["queue_wait_ms_p99"])) is batching
    assert host["executor_dir"] == os.path.abspath(SparkFiles.getRootDirectory())


@pytest.mark.timeout(300)
def test_a_host_killed_between_jobs_is_reported_restarted_with_its_reason(
    spark, linear_model: Path
) -> None:
    """scope="executor" only: with scope="process" no host runs, so none can restart."""
    score_rows(spark, linear_model, "executor", 1000)
    (first,) = host_report(spark).query("state == 'serving'").pid.tolist()
    os.kill(int(first), signal.SIGKILL)
    assert wait_until(lambda: not alive_pid(int(first)), 10)
    score_rows(spark, linear_model, "executor", 500)
    report = host_report(spark, since=time.time())
    (host,) = report.query("state == 'serving'").itertuples()
    assert host.pid != first and host.rows == 500 and host.restarts == 1
    (reason,) = host.restart_reasons
    assert f"pid {first}" in reason and "SIGKILL" in reason


def test_host_report_refuses_a_bad_task_count(spark) -> None:
    with pytest.raises(InvalidArgumentError, match="tasks="):
        host_report(spark, tasks=0)


# ------------------------------------------------------------------- the memory warning


@pytest.mark.parametrize(
    ("model_mib", "pyspark_memory", "overhead", "cores", "warns"),
    [
        (300, "1g", None, 4, True),  # 256 MiB per Python process < 360
        (300, "2g", None, 4, False),  # 512 MiB each
        (300, "1200", "4g", 4, True),  # 300 MiB each: pyspark.memory decides
        (300, None, "384m", 4, False),  # 360 MiB fits in 384
        (500, None, "384m", 4, True),
        (10_000, None, None, 4, False),  # nothing set: nothing to compare with
    ],
)
def test_memory_warning_figures(model_mib, pyspark_memory, overhead, cores, warns) -> None:
    message = host_memory_warning(
        model_mib * 2**20,
        model="models:/big/1",
        pyspark_memory=pyspark_memory,
        memory_overhead=overhead,
        executor_cores=cores,
    )
    assert (message is not None) is warns
    if warns:
        need = f"{60 + model_mib:,} MiB"
        assert "models:/big/1" in message and need in message
        assert f"={pyspark_memory or overhead}" in message


def test_no_memory_warning_where_the_session_sets_no_limit(spark, linear_model: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spark_udf(spark, str(linear_model), scope="executor")


def test_memory_warning_fires_once_when_a_host_cannot_fit(spark_tmp, linear_model: Path) -> None:
    # 64 MiB for the Python of a 2-core executor: 32 MiB each, below any host. No job runs.
    session = get_session(LOCAL_MASTER, spark_tmp, {"spark.executor.pyspark.memory": "64m"})
    with pytest.warns(UserWarning, match=r"spark.executor.pyspark.memory=64m gives each Python "
                      r"process of a 2-core executor 32 MiB") as caught:  # fmt: skip
        spark_udf(session, str(linear_model), scope="executor")
    assert len([w for w in caught if "pyspark.memory" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spark_udf(session, str(linear_model), scope="executor")  # said once
        spark_udf(session, str(linear_model), scope="process")  # no host: nothing to say


# ----------------------------------------------------------------- spark-pyfunc score


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scope", ["executor", "process"])
def test_score_summary_and_report_tell_what_the_hosts_did(
    spark, linear_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, scope: str
) -> None:
    data = pd.DataFrame(np.arange(4000.0).reshape(500, 8), columns=FEATURES)
    data.to_parquet(tmp_path / "in.parquet")
    report_file = tmp_path / "report.json"
    code = cli.main(
        [
            "score", str(linear_model), str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
            "--scope", scope, "--report", str(report_file),
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert report["rows"] == 500 and report["scope"] == scope
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    if scope == "process":  # no host ran: nothing to say about hosts
        assert report["hosts"] is None and "hosts" not in lines
        return
    hosts = report["hosts"]
    assert hosts["host_loads"] == 1 and hosts["host_restarts"] == 0
    assert hosts["executors_answered"] == hosts["executors_expected"] == 1
    assert hosts["predict_seconds"] > 0 and 0 <= hosts["predict_share"] < 1
    assert hosts["peak_host_mib"] > 10
    assert lines["hosts"].startswith("1 loaded") and "1 of 1 executors answered" in lines["hosts"]
    assert lines["restarts"] == "0"
    assert lines["peak-mem"] == f"{hosts['peak_host_mib']:,.1f} MiB in one host (PSS)"
