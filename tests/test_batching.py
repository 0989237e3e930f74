"""Request batching in the model host: the batcher on its own, then through a real host.

The batcher's tests hold the model busy on an event while requests queue up behind it, so
what shares a call is decided by the test, not by the machine's speed; a test that waits for
an answer waits on an event with a generous deadline, never for a time to pass.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from host_models import Batched
from support.wait import until

from spark_pyfunc import save_model
from spark_pyfunc._batching import Batcher
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._launcher import HostLauncher, HostSpec
from spark_pyfunc._serving import ModelServer
from spark_pyfunc._wire import arrow_bytes_to_frame, batch_to_arrow_bytes, frame_to_arrow_bytes
from spark_pyfunc.errors import PredictionError

pytestmark = pytest.mark.timeout(300)

#: How long a test waits for something that should happen at once (a shared machine).
PATIENCE = 60.0


def frame(start: int, rows: int = 64) -> pd.DataFrame:
    a = np.arange(start, start + rows, dtype=np.float64)
    return pd.DataFrame({"a": a, "b": -a / 2})


class HeldModel:
    """Records each call (rows, params); its first call waits until ``release`` is set, so
    the requests sent meanwhile queue up behind it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict | None]] = []
        self.busy = threading.Event()
        self.release = threading.Event()

    def invoke(self, method: str, data: pd.DataFrame, params: dict | None = None):
        self.calls.append((len(data), params))
        if len(self.calls) == 1:
            self.busy.set()
            assert self.release.wait(PATIENCE)
        if (params or {}).get("fail"):
            raise ValueError(f"predict refused: {params['fail']}")
        scale = float((params or {}).get("scale", 1.0))
        return pd.DataFrame({"y": (2 * data["a"] + data["b"]) * scale})


class Scene:
    """A batcher over a HeldModel, and requests submitted from threads in a known order."""

    def __init__(self, *, max_wait: float = 3600.0, max_rows: int = 10_000, connections=4):
        self.model = HeldModel()
        self.batcher = Batcher(ModelServer(self.model).handle, max_wait=max_wait, max_rows=max_rows)
        self.connections = connections
        self.threads: list[threading.Thread] = []
        self.replies: dict[int, tuple[dict, pd.DataFrame | None]] = {}

    def submit(
        self, n: int, data: pd.DataFrame, params: dict | None = None, *, plain: bool = False
    ) -> None:
        """Send request ``n`` from a thread of its own: a connection that closes once it has
        its answer (so that the batcher does not wait for it to send again)."""
        header = {"method": "predict", "params": params, "rows": len(data)}
        payload = frame_to_arrow_bytes(data)
        if plain:  # as a worker relaying Spark's Arrow sends it: no pandas metadata
            batch = pa.RecordBatch.from_pandas(data, preserve_index=False)
            payload = batch_to_arrow_bytes(batch.replace_schema_metadata(None))

        def run() -> None:
            reply, body = self.batcher.wait(self.batcher.enqueue(header, payload))
            self.replies[n] = (reply, arrow_bytes_to_frame(body) if reply.get("ok") else None)
            self.batcher.disconnected()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def queued(self, count: int) -> None:
        until(
            lambda: len(self.batcher._queue) == count, f"{count} requests queued", PATIENCE, 0.005
        )

    def connect(self, count: int) -> None:
        for _ in range(count):
            self.batcher.connected()

    def hold_first(self) -> None:
        """A first request that keeps the model busy (its call waits for release): sent
        while it is the only connection, so it goes at once; then the others connect."""
        self.connect(1)
        self.submit(0, frame(10_000, 1), {"scale": 0.0})
        assert self.model.busy.wait(PATIENCE)
        self.connect(self.connections - 1)

    def finish(self) -> None:
        self.model.release.set()
        for thread in self.threads:
            thread.join(PATIENCE)
            assert not thread.is_alive(), "a request was never answered"
        self.batcher.stop()


def expected(data: pd.DataFrame, scale: float = 1.0) -> np.ndarray:
    return ((2 * data["a"] + data["b"]) * scale).to_numpy()


def test_queued_requests_share_one_call_and_get_their_own_rows_back_in_order() -> None:
    scene = Scene(connections=4)
    scene.hold_first()
    parts = {1: frame(0, 64), 2: frame(1000, 10), 3: frame(2000, 100)}
    for n, data in parts.items():
        scene.submit(n, data)
        scene.queued(n)  # arrival order is 1, 2, 3
    scene.finish()
    assert [rows for rows, _ in scene.model.calls] == [1, 174]
    for n, data in parts.items():
        reply, result = scene.replies[n]
        assert reply["ok"] and reply["rows"] == len(data)
        np.testing.assert_array_equal(result["y"].to_numpy(), expected(data))


def test_a_batch_never_grows_past_max_batch_rows() -> None:
    scene = Scene(max_rows=128, connections=4)
    scene.hold_first()
    for n in (1, 2, 3):
        scene.submit(n, frame(100 * n))
        scene.queued(n)
    scene.finish()
    assert [rows for rows, _ in scene.model.calls] == [1, 128, 64]
    for n in (1, 2, 3):
        np.testing.assert_array_equal(scene.replies[n][1]["y"].to_numpy(), expected(frame(100 * n)))


def test_a_single_request_above_max_batch_rows_goes_alone_and_whole() -> None:
    scene = Scene(max_rows=50, connections=3)
    scene.hold_first()
    scene.submit(1, frame(0, 64))
    scene.queued(1)
    scene.submit(2, frame(500, 64))
    scene.queued(2)
    scene.finish()
    assert [rows for rows, _ in scene.model.calls] == [1, 64, 64]
    assert scene.replies[2][0]["rows"] == 64


def test_requests_with_different_params_or_methods_never_share_a_call() -> None:
    scene = Scene(connections=4)
    scene.hold_first()
    params = {1: {"scale": 1.0}, 2: {"scale": 2.0}, 3: {"scale": 1.0}}
    for n, p in params.items():
        scene.submit(n, frame(100 * n), p)
        scene.queued(n)
    scene.finish()
    assert scene.model.calls[1:] == [(128, {"scale": 1.0}), (64, {"scale": 2.0})]
    for n, p in params.items():
        np.testing.assert_array_equal(
            scene.replies[n][1]["y"].to_numpy(), expected(frame(100 * n), p["scale"])
        )


def test_requests_whose_schemas_differ_only_in_metadata_share_a_call() -> None:
    scene = Scene(connections=4)
    scene.hold_first()
    scene.submit(1, frame(0))
    scene.queued(1)
    scene.submit(2, frame(64), plain=True)
    scene.queued(2)
    scene.submit(3, frame(128).astype({"b": "float32"}))  # another type: not with them
    scene.queued(3)
    scene.finish()
    assert [rows for rows, _ in scene.model.calls] == [1, 128, 64]
    for n, start in ((1, 0), (2, 64)):
        np.testing.assert_array_equal(scene.replies[n][1]["y"].to_numpy(), expected(frame(start)))


def test_a_failing_batch_fails_every_request_in_it_with_the_models_error() -> None:
    scene = Scene(connections=4)
    scene.hold_first()
    for n in (1, 2, 3):
        scene.submit(n, frame(100 * n), {"fail": "bad batch"})
        scene.queued(n)
    scene.finish()
    assert [rows for rows, _ in scene.model.calls] == [1, 192]
    for n in (1, 2, 3):
        reply, _ = scene.replies[n]
        assert not reply["ok"]
        assert reply["error"] == "ValueError"
        assert reply["message"] == "predict refused: bad batch"
        assert "predict refused" in reply["traceback"]


def test_a_request_arriving_alone_is_answered_after_max_wait() -> None:
    # Two connections, one of which never sends: the request must not wait for it forever.
    scene = Scene(max_wait=0.05)
    scene.connect(2)
    scene.submit(1, frame(0))
    scene.model.release.set()
    scene.finish()
    assert [rows for rows, _ in scene.model.calls] == [64]
    np.testing.assert_array_equal(scene.replies[1][1]["y"].to_numpy(), expected(frame(0)))


def test_once_every_connection_has_a_request_queued_the_batch_goes_without_waiting() -> None:
    # max_wait is an hour: only the "every connection is waiting" rule can answer these.
    scene = Scene(max_wait=3600.0)
    scene.connect(2)
    scene.model.release.set()
    scene.submit(1, frame(0))
    scene.submit(2, frame(64))
    scene.finish()
    assert sum(rows for rows, _ in scene.model.calls) == 128
    assert scene.replies[1][0]["ok"] and scene.replies[2][0]["ok"]


def test_a_result_with_the_wrong_number_of_rows_fails_the_batch_saying_why() -> None:
    class Summing(HeldModel):
        def invoke(self, method, data, params=None):
            super().invoke(method, data, params)
            return pd.DataFrame({"y": [float(data["a"].sum())]})

    scene = Scene(connections=3)
    scene.model = model = Summing()
    scene.batcher.handle = ModelServer(model).handle
    scene.hold_first()
    scene.submit(1, frame(0))
    scene.queued(1)
    scene.submit(2, frame(64))
    scene.queued(2)
    scene.finish()
    for n in (1, 2):
        reply, _ = scene.replies[n]
        assert not reply["ok"]
        assert "returned 1 rows for a batch of 128 rows from 2 requests" in reply["message"]
        assert "spark.pyfunc.host.batching.enabled=false" in reply["message"]


class CountingModel:
    """Counts the calls inside predict at once; each call waits until a second one has come
    in or ``PATIENCE`` / 20 has passed, so that calls allowed to overlap do overlap."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()
        self.company = threading.Event()

    def invoke(self, method: str, data: pd.DataFrame, params: dict | None = None):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside > 1:
                self.company.set()
        self.company.wait(PATIENCE / 20)
        with self.lock:
            self.inside -= 1
        return pd.DataFrame({"y": 2 * data["a"] + data["b"]})


@pytest.mark.parametrize("max_calls", [1, 2])
def test_max_calls_bounds_the_batches_in_the_model_at_once(max_calls: int) -> None:
    """Two requests of different params never share a call: with max_calls=2 both calls run
    at once (a batch's conversions overlap the other's predict); with 1, one after the other."""
    model = CountingModel()
    batcher = Batcher(ModelServer(model).handle, max_wait=0.0, max_rows=10_000, max_calls=max_calls)
    replies: dict[int, tuple[dict, Any]] = {}

    def send(n: int) -> None:
        data = frame(100 * n)
        header = {"method": "predict", "params": {"n": n}, "rows": len(data)}
        replies[n] = batcher.wait(batcher.enqueue(header, frame_to_arrow_bytes(data)))

    for _ in range(2):
        batcher.connected()
    threads = [threading.Thread(target=send, args=(n,), daemon=True) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    batcher.stop()
    assert model.most == max_calls
    for n in (1, 2):
        reply, body = replies[n]
        assert reply["ok"], reply
        np.testing.assert_array_equal(arrow_bytes_to_frame(body)["y"], expected(frame(100 * n)))


def test_max_calls_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_calls=0"):
        Batcher(ModelServer(CountingModel()).handle, max_wait=0.0, max_rows=1, max_calls=0)


def _header(data: pd.DataFrame) -> dict:
    return {"method": "predict", "params": None, "rows": len(data)}


def _held_batcher(max_wait: float) -> tuple[HeldModel, Batcher, int, threading.Thread]:
    """A batcher whose model is busy (held) with a first 1-row request of connection A, which
    a thread of its own waits for; returns A's number."""
    model = HeldModel()
    batcher = Batcher(ModelServer(model).handle, max_wait=max_wait, max_rows=10_000)
    a = batcher.connected()
    first = batcher.enqueue(_header(frame(0, 1)), frame_to_arrow_bytes(frame(0, 1)), a)
    waiter = threading.Thread(target=batcher.wait, args=(first,), daemon=True)
    waiter.start()
    assert model.busy.wait(PATIENCE)
    return model, batcher, a, waiter


def test_a_connections_next_requests_queue_while_its_first_is_answered() -> None:
    """Pipelining: connection A's next two requests queue while its first is in the model,
    share the next call (A is the only connection), and come back in A's order."""
    model, batcher, a, waiter = _held_batcher(max_wait=3600.0)
    parts = [frame(100, 64), frame(200, 10)]
    queued = [batcher.enqueue(_header(d), frame_to_arrow_bytes(d), a) for d in parts]
    assert len(batcher._queue) == 2  # while the first request is still in the model
    model.release.set()
    for data, request in zip(parts, queued, strict=True):
        reply, body = batcher.wait(request)
        assert reply["ok"] and reply["rows"] == len(data)
        np.testing.assert_array_equal(arrow_bytes_to_frame(body)["y"].to_numpy(), expected(data))
    waiter.join(PATIENCE)
    assert [rows for rows, _ in model.calls] == [1, 74]
    batcher.stop()


def test_a_connection_with_several_requests_queued_counts_once_for_every_connection() -> None:
    """Connections A and B, A with two requests queued, B with none: not every connection
    has a request queued, so the batch waits (max_wait is an hour) for B's, then all three
    share one call; B's answer is B's alone."""
    model, batcher, a, waiter = _held_batcher(max_wait=3600.0)
    b = batcher.connected()
    parts = [frame(100, 64), frame(200, 64)]
    queued = [batcher.enqueue(_header(d), frame_to_arrow_bytes(d), a) for d in parts]
    model.release.set()
    waiter.join(PATIENCE)
    assert not waiter.is_alive()
    with batcher._cond:  # the model is free: A's two requests alone are no batch yet
        assert batcher._ready() == (None, pytest.approx(3600.0, abs=PATIENCE))
    answers: dict[int, tuple[dict, Any]] = {}

    def wait(n: int, request) -> None:
        answers[n] = batcher.wait(request)

    waiting = [threading.Thread(target=wait, args=nr, daemon=True) for nr in enumerate(queued)]
    for thread in waiting:
        thread.start()
    late = frame(300, 32)
    reply, body = batcher.wait(batcher.enqueue(_header(late), frame_to_arrow_bytes(late), b))
    np.testing.assert_array_equal(arrow_bytes_to_frame(body)["y"].to_numpy(), expected(late))
    for thread in waiting:
        thread.join(PATIENCE)
    assert [rows for rows, _ in model.calls] == [1, 160]
    for n, data in enumerate(parts):
        np.testing.assert_array_equal(
            arrow_bytes_to_frame(answers[n][1])["y"].to_numpy(), expected(data)
        )
    batcher.stop()


def test_a_closed_connections_queued_requests_never_reach_the_model() -> None:
    model, batcher, a, waiter = _held_batcher(max_wait=3600.0)
    request = batcher.enqueue(_header(frame(100, 64)), frame_to_arrow_bytes(frame(100, 64)), a)
    batcher.disconnected(a)
    reply, _ = batcher.wait(request)
    assert not reply["ok"] and reply["error"] == "ConnectionError"
    model.release.set()
    waiter.join(PATIENCE)
    assert [rows for rows, _ in model.calls] == [1]
    batcher.stop()


# ------------------------------------------------------------------- a real model host


def _client(spec: HostSpec, seed: int, requests: int, start, out) -> None:
    """A worker: send ``requests`` 64-row batches and report whether every answer was right."""
    with ModelHostClient(spec) as client:
        start.wait()
        ok = True
        for i in range(requests):
            data = frame(seed * 100_000 + i * 64)
            result = client.predict(data)
            ok = ok and np.array_equal(result["y"].to_numpy(), expected(data))
        out.put((os.getpid(), ok, client.host_pid))


def test_a_host_with_batching_answers_two_client_processes_from_shared_calls(tmp_path) -> None:
    model_dir = tmp_path / "batched"
    calls = tmp_path / "calls.txt"
    save_batched(model_dir)
    spec = HostSpec(
        model_dir=str(model_dir),
        key=uuid.uuid4().hex[:16],
        state_dir=str(tmp_path / "state"),
        model_config={"calls": str(calls), "cost": 0.005},
        idle_timeout=60.0,
        watch_pid=os.getpid(),
        mode="prefork",  # batching overrides it: it needs both clients' requests in one process
        batching=True,
        batch_max_wait_ms=2000.0,
    )
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(spec, s, 30, start, out)) for s in (1, 2)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(ok for _, ok, _ in reports), reports
    assert len({host for _, _, host in reports}) == 1
    sizes = [int(line.split()[0]) for line in calls.read_text().splitlines()]
    assert sum(sizes) == 2 * 30 * 64
    assert max(sizes) > 64, sizes
    log = (tmp_path / "state" / f"spark_pyfunc-host-{spec.key}.log").read_text()
    assert "in thread mode" in log
    assert "request batching needs the requests of every worker in one process" in log


def save_batched(path: Path) -> None:
    """Batched, with host_models.py as a code path and its params in the signature."""
    import host_models

    example = (frame(0, 5), {"scale": 1.0, "fail": ""})
    save_model(
        str(path), python_model=Batched(), code_paths=[host_models.__file__], input_example=example
    )


def test_host_spec_passes_batching_to_the_host_command_line(tmp_path: Path) -> None:
    spec = HostSpec(
        model_dir="m",
        key="k",
        state_dir=str(tmp_path),
        batching=True,
        batch_max_wait_ms=7.5,
        batch_max_rows=300,
    )
    cmd = HostLauncher(spec)._command()
    at = cmd.index("--batching")
    assert cmd[at + 1 : at + 7] == [
        "--batch-max-wait-ms", "7.5", "--batch-max-rows", "300", "--batch-calls", "1",
    ]  # fmt: skip
    two = HostLauncher(HostSpec(**dict(spec.__dict__, batch_calls=2)))._command()
    assert two[two.index("--batch-calls") + 1] == "2"
    plain = HostLauncher(HostSpec(model_dir="m", key="k", state_dir=str(tmp_path)))._command()
    assert "--batching" not in plain


def test_predict_errors_reach_every_client_as_prediction_errors(tmp_path) -> None:
    model_dir = tmp_path / "batched"
    save_batched(model_dir)
    spec = HostSpec(
        model_dir=str(model_dir),
        key=uuid.uuid4().hex[:16],
        state_dir=str(tmp_path / "state"),
        idle_timeout=60.0,
        watch_pid=os.getpid(),
        batching=True,
    )
    with ModelHostClient(spec) as client:
        with pytest.raises(PredictionError, match="predict refused: nope"):
            client.predict(frame(0), params={"fail": "nope"})
        np.testing.assert_array_equal(client.predict(frame(0))["y"].to_numpy(), expected(frame(0)))


# ------------------------------------------------------------------ settings and Spark


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("spark.pyfunc.host.batching.enabled", "TRUE", True),
        ("spark.pyfunc.host.batching.enabled", "false", False),
        ("spark.pyfunc.host.batching.maxWaitMs", "0", 0.0),
        ("spark.pyfunc.host.batching.maxWaitMs", "2.5", 2.5),
        ("spark.pyfunc.host.batching.maxBatchRows", "4096", 4096),
        ("spark.pyfunc.host.batching.concurrentCalls", "2", 2),
    ],
)
def test_batching_settings_are_parsed(key: str, text: str, expected: object) -> None:
    from spark_pyfunc._config import SETTINGS

    assert SETTINGS[key].read(text) == expected


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("spark.pyfunc.host.batching.enabled", "yes", "true or false"),
        ("spark.pyfunc.host.batching.maxWaitMs", "-1", "a number of milliseconds"),
        ("spark.pyfunc.host.batching.maxWaitMs", "nan", "a number of milliseconds"),
        ("spark.pyfunc.host.batching.maxBatchRows", "0", "a positive integer"),
        ("spark.pyfunc.host.batching.concurrentCalls", "0", "a positive integer"),
    ],
)
def test_a_bad_batching_setting_names_its_key_and_value(key, text, expected) -> None:
    from spark_pyfunc._config import SETTINGS
    from spark_pyfunc.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as info:
        SETTINGS[key].read(text)
    assert str(info.value) == f"{key} must be {expected}, not {text!r}"


def test_spark_udf_with_batching_scores_through_a_batching_host(spark, tmp_path) -> None:
    from spark_pyfunc import spark_udf

    model_dir = tmp_path / "batched"
    calls = tmp_path / "calls.txt"
    save_batched(model_dir)
    keys = {
        "spark.pyfunc.host.batching.enabled": "true",
        "spark.pyfunc.host.batching.maxWaitMs": "50",
        "spark.pyfunc.host.batching.maxBatchRows": "700",
    }
    for key, value in keys.items():
        spark.conf.set(key, value)
    try:
        predict = spark_udf(
            spark, model_dir, model_config={"calls": str(calls)}, params={"scale": 3.0},
            scope="executor", batch_size=100,
        )  # fmt: skip
    finally:
        for key in keys:
            spark.conf.unset(key)
    data = frame(0, 2000)
    out = spark.createDataFrame(data).repartition(4).select("a", "b", predict("a", "b").alias("y"))
    result = out.toPandas().sort_values("a")
    np.testing.assert_array_equal(result["y"].to_numpy(), expected(data, 3.0))
    sizes = [int(line.split()[0]) for line in calls.read_text().splitlines()]
    assert sum(sizes) == 2000 and max(sizes) <= 700
    assert {line.split()[1] for line in calls.read_text().splitlines()} == {"3"}


def test_a_batching_host_must_serve_on_threads(tmp_path: Path) -> None:
    from spark_pyfunc._host import Host, _Watch
    from spark_pyfunc.errors import HostError

    batcher = Batcher(ModelServer(HeldModel()).handle, max_wait=0.0, max_rows=10)
    for mode in ("prefork", "fork"):
        with pytest.raises(
            HostError, match=f"request batching needs the thread mode, not '{mode}'"
        ):
            Host(
                ModelServer(HeldModel()),
                socket_file=str(tmp_path / "s"),
                mode=mode,
                idle_timeout=1.0,
                watch=_Watch(None),
                batcher=batcher,
            )
