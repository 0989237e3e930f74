"""Pipelining: a worker keeps several requests in flight on its one connection to the host.

Real hosts (started through HostSpec/ModelHostClient) in every serving mode, with and without
request batching. A fault lands at a known moment: the model (pipe_models.Tagged) stops at a
gate file while it holds the chosen request, so the requests behind it are provably in
flight when the host is killed. Waits are on files and threads with generous deadlines.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pipe_models import Tagged
from support.processes import alive_pid
from support.wait import until

from spark_pyfunc import save_model
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._launcher import HostSpec
from spark_pyfunc.errors import HostError, PredictionError

pytestmark = pytest.mark.timeout(600)

#: How long a test waits for something that should happen soon (a shared, slow machine).
PATIENCE = 120.0

#: (mode, batching): every way a host serves a connection.
SERVING = [("thread", False), ("prefork", False), ("fork", False), ("thread", True)]
SERVING_IDS = ["thread", "prefork", "fork", "batching"]


def frame(start: int, rows: int) -> pd.DataFrame:
    a = np.arange(start, start + rows, dtype=np.float64)
    return pd.DataFrame({"a": a, "b": -a / 4})


def expected(data: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"y": 2 * data["a"] + data["b"], "z": data["b"]})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipelining") / "tagged"
    save_model(str(path), python_model=Tagged())
    return path


def host_spec(model_dir: Path, tmp: Path, mode: str, batching: bool, **config) -> HostSpec:
    return HostSpec(
        model_dir=str(model_dir),
        key=uuid.uuid4().hex[:16],
        state_dir=str(tmp / "state"),
        model_config={"dir": str(tmp), **config},
        idle_timeout=60.0,
        watch_pid=os.getpid(),
        mode=mode,
        processes=2,
        batching=batching,
        batch_max_wait_ms=5.0,
    )


def calls(tmp: Path) -> list[tuple[int, list[int]]]:
    """(host pid, the a of each row) per model call, in order."""
    path = tmp / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), [int(v) for v in a.split(",")]) for pid, _, a in map(str.split, lines)]


def in_thread(work: Callable[[], object]) -> Callable[[], object]:
    """Run ``work`` on a thread; the returned function joins it (a deadlock shows as a
    thread still running after PATIENCE, not as a test that hangs) and gives its result."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> object:
        thread.join(PATIENCE)
        assert not thread.is_alive(), "the stream never finished: a deadlock?"
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


# ------------------------------------------------------------------------ order and size


@pytest.mark.parametrize(("mode", "batching"), SERVING, ids=SERVING_IDS)
def test_results_come_back_in_request_order_with_several_in_flight(
    model_dir: Path, tmp_path: Path, mode: str, batching: bool
) -> None:
    frames = [frame(1000 * i, 1 + (37 * i) % 90) for i in range(40)]
    with ModelHostClient(host_spec(model_dir, tmp_path, mode, batching)) as client:
        results = list(client.predict_stream(iter(frames), depth=3))
    assert len(results) == len(frames)
    for data, result in zip(frames, results, strict=True):
        pd.testing.assert_frame_equal(result, expected(data), check_dtype=False)


@pytest.mark.parametrize(("mode", "batching"), SERVING, ids=SERVING_IDS)
def test_requests_and_replies_of_several_mib_do_not_deadlock(
    model_dir: Path, tmp_path: Path, mode: str, batching: bool
) -> None:
    """5 MiB each way per request, three in flight: far beyond the sockets' buffers, so a
    client that sent its next request while the host was sending it an answer nobody read
    would wait forever (as would a host that did the same)."""
    rows = 330_000  # 2 float64 columns each way: 5 MiB
    frames = [frame(rows * i, rows) for i in range(5)]
    with ModelHostClient(host_spec(model_dir, tmp_path, mode, batching)) as client:
        join = in_thread(lambda: list(client.predict_stream(iter(frames), arrow=True, depth=3)))
        results = join()
    assert len(results) == 5
    for data, table in zip(frames, results, strict=True):
        assert table.get_total_buffer_size() >= 5 * 2**20
        pd.testing.assert_frame_equal(table.to_pandas(), expected(data), check_dtype=False)


def test_a_batching_host_queues_a_connections_next_request_while_answering_one(
    model_dir: Path, tmp_path: Path
) -> None:
    """One client, so only its own requests can share a call: with one in flight every call
    holds one request; with three, requests queue in the batcher while an earlier one is on
    the device (20 ms per call) and later calls carry several of them."""
    frames = [frame(100 * i, 64) for i in range(30)]
    sizes = {}
    for depth in (1, 3):
        tmp = tmp_path / f"depth-{depth}"
        tmp.mkdir()
        spec = host_spec(model_dir, tmp, "thread", True, cost=0.02)
        with ModelHostClient(spec) as client:
            results = list(client.predict_stream(iter(frames), depth=depth))
        for data, result in zip(frames, results, strict=True):
            pd.testing.assert_frame_equal(result, expected(data), check_dtype=False)
        sizes[depth] = [len(a) for _, a in calls(tmp)]
        assert sum(sizes[depth]) == 30 * 64
    assert set(sizes[1]) == {64}
    assert max(sizes[3]) > 64, sizes[3]


def test_depth_one_is_one_request_at_a_time_and_a_bad_depth_is_refused(
    model_dir: Path, tmp_path: Path
) -> None:
    with ModelHostClient(host_spec(model_dir, tmp_path, "thread", False)) as client:
        with pytest.raises(HostError, match="pipeline depth must be a positive integer, not 0"):
            next(client.predict_stream(iter([frame(0, 3)]), depth=0))
        [result] = client.predict_stream(iter([frame(0, 3)]), depth=1)
        pd.testing.assert_frame_equal(result, expected(frame(0, 3)), check_dtype=False)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("mode", "batching"), SERVING[:3], ids=SERVING_IDS[:3])
def test_an_error_reaches_its_own_request_only(
    model_dir: Path, tmp_path: Path, mode: str, batching: bool
) -> None:
    """Request 3 makes the model raise: requests 0-2 get their results, request 3 raises
    the model's error, the stream ends there; the host keeps serving the same client."""
    frames = [frame(100 * i, 10) for i in range(8)]
    frames[3] = frame(-50, 10)
    got = []
    with ModelHostClient(host_spec(model_dir, tmp_path, mode, batching)) as client:
        with pytest.raises(PredictionError, match="negative a: -50"):
            for result in client.predict_stream(iter(frames), depth=3):
                got.append(result)
        pid = client.host_pid
        again = client.predict(frames[4])
        assert client.host_pid == pid
    assert len(got) == 3
    for data, result in zip(frames, got, strict=False):
        pd.testing.assert_frame_equal(result, expected(data), check_dtype=False)
    pd.testing.assert_frame_equal(again, expected(frames[4]), check_dtype=False)


def test_with_batching_an_error_fails_the_requests_that_shared_its_call(
    model_dir: Path, tmp_path: Path
) -> None:
    """The documented semantics with batching: a failed call fails every request in it, so
    the stream's error comes at the first request of that call (it may be one before the
    bad one, from the same connection); every result before it is right."""
    frames = [frame(100 * i, 10) for i in range(8)]
    frames[3] = frame(-50, 10)
    got = []
    with ModelHostClient(host_spec(model_dir, tmp_path, "thread", True)) as client:
        with pytest.raises(PredictionError, match="negative a: -50"):
            for result in client.predict_stream(iter(frames), depth=3):
                got.append(result)
        again = client.predict(frames[4])
    assert len(got) <= 3
    failed = next(a for _, a in calls(tmp_path) if -50 in a)
    first_failed = min(i for i, data in enumerate(frames) if int(data["a"][0]) in failed)
    assert len(got) == first_failed
    for data, result in zip(frames, got, strict=False):
        pd.testing.assert_frame_equal(result, expected(data), check_dtype=False)
    pd.testing.assert_frame_equal(again, expected(frames[4]), check_dtype=False)


# ------------------------------------------------------------------ the host, killed


@pytest.mark.parametrize(("mode", "batching"), SERVING, ids=SERVING_IDS)
def test_a_host_killed_mid_stream_is_restarted_and_the_unanswered_requests_sent_again(
    model_dir: Path, tmp_path: Path, mode: str, batching: bool, caplog
) -> None:
    """SIGKILL to the host while it holds request 5 (at the gate) and requests 6 and 7 are in
    flight behind it: the stream still gives all 12 results, right and in order; request 5
    reached the killed host and then the new one; nothing was sent more than twice."""
    frames = [frame(100 * i, 20) for i in range(12)]
    gate = 500  # the first row of request 5
    spec = host_spec(model_dir, tmp_path, mode, batching, gate=gate)
    killed: list[int] = []

    def fault() -> None:
        until(lambda: any(tmp_path.glob("at-*")), "the host held request 5 at the gate", PATIENCE)
        [at] = tmp_path.glob("at-*")
        host = int(at.name.split("-")[1])
        killed.append(host)
        os.kill(host, signal.SIGKILL)
        until(lambda: not alive_pid(host), f"host {host} died", PATIENCE)
        (tmp_path / "go").touch()

    caplog.set_level(logging.WARNING, logger="spark_pyfunc")
    faulting = threading.Thread(target=fault, daemon=True)
    faulting.start()
    try:
        with ModelHostClient(spec) as client:
            results = list(client.predict_stream(iter(frames), depth=3))
            new_host = client.host_pid
    finally:
        (tmp_path / "go").touch()  # whatever happened, no host waits at the gate
        faulting.join(PATIENCE)
    [old_host] = killed
    assert new_host != old_host
    assert len(results) == 12
    for data, result in zip(frames, results, strict=True):
        pd.testing.assert_frame_equal(result, expected(data), check_dtype=False)
    loads = [int(x) for x in (tmp_path / "loads").read_text().split()]
    assert loads == [old_host, new_host]
    seen: dict[int, list[int]] = {}  # request -> the hosts that were called with it
    for host, rows in calls(tmp_path):
        for request in sorted({int(a) // 100 for a in rows}):
            seen.setdefault(request, []).append(host)
    assert seen[5] == [old_host, new_host], seen
    assert all(len(hosts) <= 2 for hosts in seen.values()), seen
    assert all(hosts[-1] == new_host for r, hosts in seen.items() if r >= 5), seen
    assert sorted(seen) == list(range(12))
    lost = [r.getMessage() for r in caplog.records if "lost the model host" in r.getMessage()]
    assert len(lost) == 1 and f"(pid {old_host})" in lost[0], lost
    assert "unanswered request(s) again" in lost[0]


def test_a_host_lost_at_every_try_fails_the_stream_after_the_attempts(
    model_dir: Path, tmp_path: Path
) -> None:
    """A request that ends the host's process at every try (the model crashes it): the
    stream fails with a HostError after 3 losses in a row (3 loads), instead of restarting
    the host forever; the results before it came back."""
    spec = host_spec(model_dir, tmp_path, "thread", False, crash=700)
    frames = [frame(100 * i, 20) for i in range(10)]
    got = []
    with ModelHostClient(spec) as client:
        with pytest.raises(HostError, match="was lost 3 times in a row"):
            for result in client.predict_stream(iter(frames), depth=2):
                got.append(result)
    assert len(got) == 7
    assert len((tmp_path / "loads").read_text().split()) == 3


# ---------------------------------------------------------------------------- in Spark

DEPTH_CONF = "spark.pyfunc.host.pipelineDepth"
BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def _scores(spark, model: Path, depth: int, scope: str, result_type: str, columns, frame_of):
    """The frame ``frame_of(spark)`` scored at ``depth``: several Arrow batches per
    partition (150 rows), several requests per batch (batch_size 64), empty partitions."""
    from spark_pyfunc import spark_udf

    spark.conf.set(DEPTH_CONF, str(depth))
    spark.conf.set(BATCH_CONF, "150")
    try:
        predict = spark_udf(spark, model, result_type=result_type, scope=scope, batch_size=64)
        df = frame_of(spark)
        return df.select("id", predict(*columns).alias("p")).toPandas().sort_values("id")
    finally:
        spark.conf.unset(DEPTH_CONF)
        spark.conf.unset(BATCH_CONF)


def _with_gaps(spark):
    """3,000 ids in 6 partitions, two of them empty and two partly filtered."""
    from pyspark.sql import functions as F

    df = spark.range(0, 3000, 1, 6).where("id < 700 or id >= 2400")
    return df.withColumn("a", F.col("id").cast("double")).withColumn("b", F.col("id") * 0.5 - 3)


@pytest.mark.parametrize("scope", ["executor", "process"])
def test_spark_udf_at_depth_2_gives_what_depth_1_gives(spark, tmp_path: Path, scope: str):
    """The Arrow relay (scope="executor"; the process scope has no host to pipeline to)."""
    import pipe_models

    model = tmp_path / "tagged"
    save_model(
        str(model),
        python_model=Tagged(),
        code_paths=[pipe_models.__file__],
        input_example=frame(0, 5),
    )
    runs = {
        depth: _scores(spark, model, depth, scope, "y double, z double", ("a", "b"), _with_gaps)
        for depth in (1, 2)
    }
    ids = np.concatenate([np.arange(0, 700), np.arange(2400, 3000)])
    for depth, result in runs.items():
        assert result["id"].tolist() == ids.tolist(), depth
        b = ids * 0.5 - 3
        np.testing.assert_array_equal([p["y"] for p in result["p"]], 2 * ids + b)
        np.testing.assert_array_equal([p["z"] for p in result["p"]], b)
    pd.testing.assert_frame_equal(runs[1], runs[2])


@pytest.mark.parametrize("scope", ["executor", "process"])
def test_spark_udf_on_the_pandas_relay_at_depth_2_gives_what_depth_1_gives(
    spark, tmp_path: Path, scope: str
):
    """A date in the result: scope="executor" relays through a pandas UDF."""
    import udf_models
    from pyspark.sql import functions as F

    model = tmp_path / "echo"
    save_model(str(model), python_model=udf_models.Echo(), code_paths=[udf_models.__file__])

    def dated(spark):
        return _with_gaps(spark).withColumn(
            "d", F.date_add(F.lit("2024-01-01").cast("date"), (F.col("id") % 100).cast("int"))
        )

    runs = {
        depth: _scores(spark, model, depth, scope, "x double, d date", ("b", "d"), dated)
        for depth in (1, 2)
    }
    ids = np.concatenate([np.arange(0, 700), np.arange(2400, 3000)])
    for result in runs.values():
        assert result["id"].tolist() == ids.tolist()
        np.testing.assert_array_equal([p["x"] for p in result["p"]], ids * 0.5 - 3)
        days = [(p["d"] - pd.Timestamp("2024-01-01").date()).days for p in result["p"]]
        assert days == (ids % 100).tolist()
    pd.testing.assert_frame_equal(runs[1], runs[2])
