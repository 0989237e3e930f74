"""The client's retry-and-resend policy, in one process: a ModelServer on a socketpair.

``ModelHostClient(connect=...)`` takes any callable that gives a greeted connection, so these
tests hand it the server side of a ``socketpair()`` served by a thread, and decide per
connection whether the "host" answers, dies after reading a request, or is killed before it
was ready. No host process, no Spark: what they prove is the policy itself (every unanswered
request sent again, in order; ``ATTEMPTS`` losses in a row fail; an answer resets the count).
The same policy through real hosts and Spark is in test_host.py and tests/test_cluster_*.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pandas as pd
import pytest

from spark_pyfunc._client import ATTEMPTS, ModelHostClient
from spark_pyfunc._launcher import HostKilled
from spark_pyfunc._serving import ModelServer
from spark_pyfunc._wire import recv_message
from spark_pyfunc.errors import HostError, PredictionError


class Doubling:
    """y = 2x; records the first x of every call, so a resent request shows twice."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def invoke(self, method: str, data: pd.DataFrame, params: dict | None = None):
        if method == "boom":
            raise KeyError("missing_key")
        self.calls.append(float(data["x"].iloc[0]))
        return pd.DataFrame({"y": 2.0 * data["x"]})


def frames(n: int) -> list[pd.DataFrame]:
    return [pd.DataFrame({"x": [float(i), float(i) + 0.5]}) for i in range(n)]


class Hosts:
    """A connect callable: each connection's fate comes from ``plan`` ("serve", "die after N
    requests read", "killed"); past the plan, connections are served."""

    def __init__(self, model: Doubling, plan: list[str | int]) -> None:
        self.model = model
        self.plan = list(plan)
        self.connects = 0
        self.threads: list[threading.Thread] = []

    def __call__(self) -> tuple[socket.socket, int]:
        self.connects += 1
        fate = self.plan.pop(0) if self.plan else "serve"
        if fate == "killed":
            raise HostKilled(f"host {self.connects} was killed before it was ready")
        ours, theirs = socket.socketpair()
        target: Callable[[socket.socket], None]
        if fate == "serve":
            target = ModelServer(self.model, host_pid=self.connects).serve_connection
        else:
            target = self._dies_after(int(fate))
        thread = threading.Thread(target=target, args=(theirs,), daemon=True)
        thread.start()
        self.threads.append(thread)
        greeting, _ = recv_message(ours)
        return ours, int(greeting["pid"])

    def _dies_after(self, reads: int) -> Callable[[socket.socket], None]:
        """Greet, answer nothing, and close once ``reads`` requests were read (killed)."""

        def serve(conn: socket.socket) -> None:
            with conn:
                ModelServer(self.model, host_pid=self.connects).greet(conn)
                for _ in range(reads):
                    recv_message(conn)

        return serve


def expected(batch: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"y": 2.0 * batch["x"]})


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_stream_through_the_seam_is_answered_in_order(depth: int) -> None:
    model = Doubling()
    client = ModelHostClient(connect=Hosts(model, []))
    batches = frames(7)
    results = list(client.predict_stream(batches, depth=depth))
    for got, batch in zip(results, batches, strict=True):
        pd.testing.assert_frame_equal(got, expected(batch))
    assert model.calls == [float(i) for i in range(7)]


@pytest.mark.parametrize("depth", [1, 3])
def test_a_host_lost_with_requests_in_flight_gets_them_all_again_in_order(depth: int) -> None:
    model = Doubling()
    hosts = Hosts(model, [min(depth, 2)])  # the first host reads requests, then dies
    client = ModelHostClient(connect=hosts)
    batches = frames(5)
    results = list(client.predict_stream(batches, depth=depth))
    for got, batch in zip(results, batches, strict=True):
        pd.testing.assert_frame_equal(got, expected(batch))
    assert hosts.connects == 2
    assert model.calls == [float(i) for i in range(5)], "a request lost or answered twice"


def test_predict_resends_its_request_once_per_loss_within_the_budget() -> None:
    model = Doubling()
    hosts = Hosts(model, ["killed", 1])  # killed while starting, then lost mid-request
    client = ModelHostClient(connect=hosts)
    [batch] = frames(1)
    pd.testing.assert_frame_equal(client.predict(batch), expected(batch))
    assert hosts.connects == 3 == ATTEMPTS
    assert client.host_pid == 3


@pytest.mark.parametrize("fates", [["killed"] * 3, [1] * 3, ["killed", 1, "killed"]])
def test_attempts_losses_in_a_row_fail_with_the_last_one_named(fates: list) -> None:
    hosts = Hosts(Doubling(), fates)
    client = ModelHostClient(connect=hosts, name="models/scorer")
    with pytest.raises(HostError, match=f"models/scorer was lost {ATTEMPTS} times in a row"):
        list(client.predict_stream(frames(2), depth=2))
    assert hosts.connects == ATTEMPTS


def test_an_answer_resets_the_count_of_losses() -> None:
    """Two losses, an answer, two losses, an answer...: never three in a row, never failed."""
    model = Doubling()
    hosts = Hosts(model, ["killed", 1, "serve"])
    client = ModelHostClient(connect=hosts)
    batches = frames(3)
    results = list(client.predict_stream(batches, depth=1))
    assert [r["y"].tolist() for r in results] == [expected(b)["y"].tolist() for b in batches]


def test_the_models_error_is_raised_at_its_batch_and_the_connection_stays() -> None:
    model = Doubling()
    hosts = Hosts(model, [])
    client = ModelHostClient(connect=hosts)
    [batch] = frames(1)
    with pytest.raises(PredictionError, match="KeyError: 'missing_key'"):
        client.predict(batch, method="boom")
    pd.testing.assert_frame_equal(client.predict(batch), expected(batch))
    assert hosts.connects == 1


def test_a_client_needs_a_spec_or_a_connect_callable() -> None:
    with pytest.raises(HostError, match="HostSpec or a connect"):
        ModelHostClient()
