"""The executor-side model host, with real host processes and a real saved model."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import psutil
import pytest
from host_models import PARAMS, Counting, Threaded
from support.processes import alive_pid
from support.wait import wait_until
from udf_models import Blocking, Gate

from spark_pyfunc import _launcher as launcher_module
from spark_pyfunc import load_model, save_model
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._host import Host, _Watch, choose_mode
from spark_pyfunc._launcher import HostSpec, host_key
from spark_pyfunc._rendezvous import socket_dir, socket_path
from spark_pyfunc._serving import ModelServer
from spark_pyfunc._wire import (
    PeerClosed,
    arrow_bytes_to_frame,
    frame_to_arrow_bytes,
    prediction_to_frame,
    recv_message,
    send_message,
)
from spark_pyfunc.errors import HostError, PredictionError, SchemaEnforcementError

pytestmark = pytest.mark.timeout(120)

FRAME = pd.DataFrame({"a": np.arange(200, dtype=np.float64), "b": np.linspace(-1, 1, 200)})


def assert_reaped(pid: int) -> None:
    """The process has exited and nothing of ours holds its zombie (init reaps orphans).

    Only ``pid`` is checked: other tests' processes (a Spark JVM's launcher shell) may leave
    zombies of their own under pytest."""
    assert wait_until(lambda: not alive_pid(pid), 10), f"host {pid} did not exit"
    ours = psutil.Process().children(recursive=True)
    assert pid not in {p.pid for p in ours}, f"host {pid} is a zombie child of the test"
    try:
        assert psutil.Process(pid).ppid() not in {p.pid for p in ours} | {os.getpid()}
    except psutil.NoSuchProcess:
        pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("host_model") / "counting"
    save_model(str(path), python_model=Counting(), input_example=(FRAME.head(5), PARAMS))
    return str(path)


class Hosts:
    """Makes clients for fresh host keys and kills every host they started."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.keys: list[str] = []
        self.clients: list[ModelHostClient] = []

    def spec(self, model_dir: str, **overrides) -> HostSpec:
        key = uuid.uuid4().hex[:16]
        self.keys.append(key)
        options = {"idle_timeout": 60.0, "start_timeout": 60.0, "watch_pid": os.getpid()}
        options.update(overrides)
        return HostSpec(model_dir=model_dir, key=key, state_dir=str(self.state_dir), **options)

    def client(self, spec: HostSpec) -> ModelHostClient:
        client = ModelHostClient(spec)
        self.clients.append(client)
        return client

    def processes(self, key: str) -> list[psutil.Process]:
        sock = str(socket_path(key))
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if sock in (proc.info["cmdline"] or []) and alive_pid(proc.pid):
                found.append(proc)
        return found

    def roots(self, key: str) -> list[psutil.Process]:
        """The host processes of ``key`` that are not a host's serving children."""
        found = self.processes(key)
        pids = {p.pid for p in found}
        return [p for p in found if p.ppid() not in pids]

    def cleanup(self) -> None:
        """Stop the hosts (SIGTERM: they remove their socket), then sweep what killed ones
        left behind."""
        for client in self.clients:
            client.close()
        for key in self.keys:
            for proc in self.processes(key):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
                    if not wait_until(lambda p=proc: not alive_pid(p.pid), 5):
                        proc.kill()
                        wait_until(lambda p=proc: not alive_pid(p.pid), 5)
            with contextlib.suppress(FileNotFoundError):
                socket_path(key).unlink()
        with contextlib.suppress(OSError):
            socket_dir().rmdir()  # only if no other host uses it


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(tmp_path / "executor")
    try:
        yield made
    finally:
        made.cleanup()


def expected(model_dir: str, frame: pd.DataFrame = FRAME) -> pd.DataFrame:
    """What the model predicts when loaded here, in this process."""
    return prediction_to_frame(load_model(model_dir).predict(frame))


def loads(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("mode", ["thread", "fork", "prefork", "auto"])
def test_predictions_equal_local_ones(hosts: Hosts, model_dir: str, mode: str) -> None:
    config = {"offset": 0.25}
    local = load_model(model_dir, model_config=config)
    spec = hosts.spec(model_dir, mode=mode, model_config=config)
    with hosts.client(spec) as client:
        got = client.predict(FRAME)
        pd.testing.assert_frame_equal(got, prediction_to_frame(local.predict(FRAME)))
        # a slice with a non-default index, as Spark's batches may be
        chunk = FRAME.iloc[50:120]
        pd.testing.assert_frame_equal(
            client.predict(chunk), prediction_to_frame(local.predict(chunk))
        )
        # params and a custom method reach the model, model_config reached load_context
        scaled = client.predict(FRAME, params={"scale": 3.0})
        pd.testing.assert_frame_equal(
            scaled, prediction_to_frame(local.predict(FRAME, params={"scale": 3.0}))
        )
        assert scaled["score"].iloc[10] == pytest.approx((2 * 10 + FRAME["b"][10]) * 3 + 0.25)
        described = client.predict(FRAME.head(2), method="describe")
        assert described["0"].tolist() == ["a=0 b=-1", "a=1 b=-0.98995"]
        host = psutil.Process(client.host_pid)
        cmdline = " ".join(host.cmdline())
    assert "spark_pyfunc" in cmdline and f"--mode {mode}" in cmdline
    assert host.pid != os.getpid() and host.ppid() != os.getpid()  # detached, nothing to reap
    log = client.launcher.log_path.read_text()
    for needle in ["model host starting", "loaded in", "size on disk", "rss=", "pss="]:
        assert needle in log


def test_many_workers_at_once_share_one_host(hosts: Hosts, model_dir: str, tmp_path) -> None:
    count = tmp_path / "count"
    spec = hosts.spec(model_dir, model_config={"count_file": str(count), "load_delay": 0.5})
    ctx = multiprocessing.get_context("fork")
    workers = 4
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_predict_in_worker, args=(spec, barrier, results))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    answers = [results.get(timeout=90) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert len({pid for pid, _ in answers}) == 1
    assert all(scores == answers[0][1] for _, scores in answers)
    assert len(loads(count)) == 1
    assert len(hosts.roots(spec.key)) == 1


def _predict_in_worker(spec: HostSpec, barrier, results) -> None:
    barrier.wait()
    with ModelHostClient(spec) as client:
        scores = client.predict(FRAME)["score"].tolist()
        results.put((client.host_pid, scores))


def test_model_error_is_a_prediction_error_and_the_host_keeps_serving(
    hosts: Hosts, model_dir: str
) -> None:
    with hosts.client(hosts.spec(model_dir)) as client:
        before = client.predict(FRAME)
        pid = client.host_pid
        with pytest.raises(PredictionError, match="predict refused: on purpose") as info:
            client.predict(FRAME, params={"fail": "on purpose"})
        assert "ValueError" in str(info.value)
        assert "host_models.py" in info.value.remote_traceback
        assert "Traceback (most recent call last)" in str(info.value)
        # the model's message once, at the end, as its own traceback ends
        assert str(info.value).count("predict refused: on purpose") == 1, str(info.value)
        assert "host_models.py" in str(info.value)  # the frames stay
        assert info.value.remote_traceback.rstrip().endswith("predict refused: on purpose")
        assert str(info.value).endswith("ValueError: predict refused: on purpose")
        # the package's own errors keep their type
        with pytest.raises(SchemaEnforcementError, match="b"):
            client.predict(FRAME[["a"]])
        pd.testing.assert_frame_equal(client.predict(FRAME), before)
        assert client.host_pid == pid


def test_server_core_with_a_fake_model() -> None:
    """The request handling needs only an object with ``invoke``."""

    class Fake:
        def invoke(self, method, data, params=None):
            if method == "explode":
                raise KeyError("no such thing")
            return data["x"].to_numpy() * (params or {}).get("k", 1)

    server = ModelServer(Fake(), host_pid=4242)
    a, b = socket.socketpair()
    thread = threading.Thread(target=server.serve_connection, args=(b,))
    thread.start()
    with a:
        assert recv_message(a)[0] == {"ok": True, "pid": 4242}
        payload = frame_to_arrow_bytes(pd.DataFrame({"x": [1, 2, 3]}))
        send_message(a, {"method": "predict", "params": {"k": 2}, "rows": 3}, payload)
        header, body = recv_message(a)
        assert header == {"ok": True, "rows": 3}
        assert arrow_bytes_to_frame(body)["0"].tolist() == [2, 4, 6]
        send_message(a, {"method": "explode", "params": None, "rows": 3}, payload)
        header, body = recv_message(a)
        assert header["ok"] is False and header["error"] == "KeyError"
        assert "no such thing" in header["message"] and "Traceback" in header["traceback"]
        send_message(a, {"method": "predict", "params": None, "rows": 5}, payload)
        assert "says 5 rows" in recv_message(a)[0]["message"]
    thread.join(5)
    assert not thread.is_alive()


# ------------------------------------------------------------------------ host failures


@pytest.mark.parametrize("mode", ["thread", "fork", "prefork"])
def test_host_killed_during_a_request_is_restarted(hosts: Hosts, mode: str, tmp_path) -> None:
    """The host dies while it provably holds a request (the model waits at a gate until the
    kill is done); the client restarts it and resends, and the answer is exact."""
    model = tmp_path / "gate"
    save_model(str(model), python_model=Gate())
    gate = tmp_path / "gate-files"
    gate.mkdir()
    spec = hosts.spec(str(model), mode=mode, model_config={"gate": str(gate)})
    frame = FRAME.head(50)

    def kill_mid_request() -> None:
        assert wait_until(lambda: any(gate.glob("request-*")), 120), "no request arrived"
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not alive_pid(first), 60)
        (gate / "release").touch()

    with hosts.client(spec) as client:
        client._connection()  # connect (start the host) first, to know whom to kill
        first = client.host_pid
        killer = threading.Thread(target=kill_mid_request)
        killer.start()
        got = client.predict(frame)
        killer.join()
        assert client.host_pid not in (None, first)
    pd.testing.assert_frame_equal(got, pd.DataFrame({"score": 2 * frame["a"] + frame["b"]}))
    # The first host (fork: its connection's child) saw the request, then the restarted one.
    servers = {p.name for p in gate.glob("request-*")}
    assert len(servers) == 2, servers
    # fork and prefork modes: the killed host's children died with it
    assert wait_until(lambda: not any(p.ppid() == first for p in hosts.processes(spec.key)), 60)
    assert len(hosts.roots(spec.key)) == 1


def test_host_killed_between_requests_is_restarted(hosts: Hosts, model_dir: str) -> None:
    with hosts.client(hosts.spec(model_dir)) as client:
        before = client.predict(FRAME)
        first = client.host_pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not alive_pid(first), 10)
        pd.testing.assert_frame_equal(client.predict(FRAME), before)
        assert client.host_pid != first


def test_a_host_killed_while_idle_is_named_when_the_next_task_replaces_it(
    hosts: Hosts, model_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No request was in flight, so no worker saw the loss: the next task, finding the dead
    host's pid file, says which host went and how, before it starts a new one."""
    spec = hosts.spec(model_dir)
    with hosts.client(spec) as client:
        before = client.predict(FRAME)
        first = client.host_pid
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: not alive_pid(first), 10)
    caplog.set_level("WARNING", logger="spark_pyfunc")
    with hosts.client(spec) as client:
        pd.testing.assert_frame_equal(client.predict(FRAME), before)
        assert client.host_pid != first
    assert f"the model host pid {first} is gone (killed while serving, by SIGKILL" in caplog.text


@pytest.mark.parametrize(("mode", "hosts_loaded"), [("thread", 3), ("fork", 1), ("prefork", 1)])
def test_a_request_that_keeps_killing_its_server_fails_after_three_tries(
    hosts: Hosts, model_dir: str, tmp_path, mode: str, hosts_loaded: int
) -> None:
    count = tmp_path / "count"
    spec = hosts.spec(model_dir, mode=mode, model_config={"count_file": str(count)})
    with hosts.client(spec) as client, pytest.raises(HostError, match="3 times") as info:
        client.predict(FRAME, params={"crash": True})
    # thread mode: the host dies and is restarted twice; (pre)fork modes: only children die
    assert len(loads(count)) == hosts_loaded
    assert "model host starting" in info.value.log_tail


def test_stale_socket_and_pid_file_are_recovered(hosts: Hosts, model_dir: str) -> None:
    spec = hosts.spec(model_dir)
    with hosts.client(spec) as client:
        before = client.predict(FRAME)
        dead = client.host_pid
    os.kill(dead, signal.SIGKILL)
    assert wait_until(lambda: not alive_pid(dead), 10)
    assert socket_path(spec.key).exists() and client.launcher.pid_path.exists()  # left behind
    with hosts.client(spec) as again:
        pd.testing.assert_frame_equal(again.predict(FRAME), before)
        assert again.host_pid != dead


def test_pid_file_naming_an_unrelated_process_does_not_kill_it(
    hosts: Hosts, model_dir: str
) -> None:
    spec = hosts.spec(model_dir)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        client = hosts.client(spec)
        client.launcher.pid_path.parent.mkdir(parents=True, exist_ok=True)
        client.launcher.pid_path.write_text(f"{bystander.pid}\n")
        socket_path(spec.key).write_text("not a socket")
        pd.testing.assert_frame_equal(client.predict(FRAME), expected(model_dir))
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_hung_host_is_replaced(
    hosts: Hosts, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_module, "_GREETING_TIMEOUT", 0.5)
    spec = hosts.spec(model_dir)
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
        hung = client.host_pid
    # the whole host hangs: a prefork host's children answer while only its parent is stopped
    for proc in [psutil.Process(hung), *psutil.Process(hung).children()]:
        proc.send_signal(signal.SIGSTOP)
    with hosts.client(spec) as again:
        again.predict(FRAME.head(3))
        assert again.host_pid != hung
    assert wait_until(lambda: not alive_pid(hung), 10)


def test_load_context_error_is_a_host_error_with_the_log_tail(hosts: Hosts, model_dir: str) -> None:
    spec = hosts.spec(model_dir, model_config={"fail_load": True})
    with hosts.client(spec) as client, pytest.raises(HostError) as info:
        client.predict(FRAME)
    message = str(info.value)
    assert "exited" in message and "before it was ready" in message
    assert "load_context failed on purpose" in info.value.log_tail
    assert str(client.launcher.log_path) in message
    assert hosts.processes(spec.key) == []


def test_out_of_memory_in_load_context_is_a_host_error_in_bounded_time(
    hosts: Hosts, model_dir: str
) -> None:
    spec = hosts.spec(model_dir, model_config={"alloc_bytes": 2**62})
    started = time.monotonic()
    with hosts.client(spec) as client, pytest.raises(HostError) as info:
        client.predict(FRAME)
    assert time.monotonic() - started < 30
    assert "MemoryError" in info.value.log_tail
    assert hosts.processes(spec.key) == []


def test_model_code_import_error_is_a_host_error(
    hosts: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    module = src / "host_broken_code.py"
    module.write_text(
        textwrap.dedent(
            """
            from spark_pyfunc.python_model import PythonModel

            class Broken(PythonModel):
                def predict(self, context, model_input, params=None):
                    return model_input
            """
        )
    )
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    import host_broken_code

    save_model(str(tmp_path / "broken"), python_model=host_broken_code.Broken())
    module.write_text("raise ImportError('the model code cannot be imported here')\n")
    monkeypatch.delitem(sys.modules, "host_broken_code")
    spec = hosts.spec(str(tmp_path / "broken"))
    with hosts.client(spec) as client, pytest.raises(HostError) as info:
        client.predict(FRAME)
    assert "the model code cannot be imported here" in info.value.log_tail


def test_host_not_ready_in_time_is_killed(
    hosts: Hosts, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start timeout fires while load_context runs, however slow the machine: the load
    blocks until released, and the client's clock jumps past its deadline only once the
    load has announced itself."""
    model = tmp_path / "blocking"
    save_model(str(model), python_model=Blocking())
    loading, release = tmp_path / "loading.pid", tmp_path / "release"
    monkeypatch.setattr(
        launcher_module,
        "time",
        SimpleNamespace(
            monotonic=lambda: time.monotonic() + (3600.0 if loading.exists() else 0.0),
            sleep=time.sleep,
            time=time.time,
        ),
    )
    config = {"loading": str(loading), "release": str(release)}
    spec = hosts.spec(str(model), start_timeout=60.0, model_config=config)
    try:
        with hosts.client(spec) as client, pytest.raises(HostError, match="not ready within 60"):
            client.predict(FRAME)
    finally:
        release.touch()
    host = int(loading.read_text())
    assert not alive_pid(host)  # the client killed it before raising
    assert wait_until(lambda: hosts.processes(spec.key) == [], 60)


# ---------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("mode", ["thread", "fork", "prefork"])
def test_idle_host_exits_and_cleans_up(hosts: Hosts, model_dir: str, mode: str) -> None:
    spec = hosts.spec(model_dir, mode=mode, idle_timeout=0.5)
    with hosts.client(spec) as client:
        client.predict(FRAME)
        time.sleep(1.0)  # an open connection keeps the host up, idle or not
        assert alive_pid(client.host_pid)
        client.predict(FRAME)
    pid = client.host_pid
    assert_reaped(pid)
    assert not socket_path(spec.key).exists()
    assert not client.launcher.pid_path.exists()
    assert "no connection for 0.5s: exiting" in client.launcher.log_path.read_text()


def test_host_exits_when_the_watched_process_is_gone(hosts: Hosts, model_dir: str) -> None:
    watched = subprocess.Popen(["sleep", "60"])
    spec = hosts.spec(model_dir, watch_pid=watched.pid)
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
        pid = client.host_pid
    watched.kill()  # left unreaped for a moment: a zombie counts as gone
    assert wait_until(lambda: not alive_pid(pid), 3)
    watched.wait()
    assert_reaped(pid)
    assert not socket_path(spec.key).exists()
    assert f"watched process {watched.pid} is gone" in client.launcher.log_path.read_text()


@pytest.mark.parametrize("mode", ["fork", "prefork"])
def test_sigterm_stops_the_host_cleanly(hosts: Hosts, model_dir: str, mode: str) -> None:
    spec = hosts.spec(model_dir, mode=mode)
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
        pid = client.host_pid
        os.kill(pid, signal.SIGTERM)
        assert_reaped(pid)
    assert not socket_path(spec.key).exists()
    assert not client.launcher.pid_path.exists()
    assert hosts.processes(spec.key) == []  # the connection's child went with it


# ------------------------------------------------------------------------------ prefork


def serving_children(host_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(host_pid).children() if alive_pid(p.pid)]


def test_prefork_loads_once_and_serves_from_its_children(
    hosts: Hosts, model_dir: str, tmp_path
) -> None:
    count = tmp_path / "count"
    spec = hosts.spec(
        model_dir, mode="prefork", processes=3, model_config={"count_file": str(count)}
    )
    clients = [hosts.client(spec) for _ in range(3)]
    # every client holds its connection while the next connects, as concurrent tasks do
    answers = [c.predict(FRAME, method="whoami")["pid"] for c in clients]
    results = [c.predict(FRAME) for c in clients]
    host = clients[0].host_pid
    assert {c.host_pid for c in clients} == {host}  # the greeting names the host
    assert wait_until(lambda: len(serving_children(host)) == 3, 10)
    children = {p.pid for p in serving_children(host)}
    served_by = {int(pid) for answer in answers for pid in answer}
    assert served_by <= children and host not in served_by  # the parent never runs predict
    for got in results:
        pd.testing.assert_frame_equal(got, expected(model_dir))
    assert loads(count) == [f"load {host}"]  # one load, in the parent, before the fork
    log = clients[0].launcher.log_path.read_text()
    assert "in prefork mode with 3 serving processes (prefork mode: asked for)" in log


def test_prefork_child_killed_is_replaced(hosts: Hosts, model_dir: str, tmp_path) -> None:
    count = tmp_path / "count"
    spec = hosts.spec(
        model_dir, mode="prefork", processes=2, model_config={"count_file": str(count)}
    )
    with hosts.client(spec) as client:
        before = client.predict(FRAME)
        host = client.host_pid
        assert wait_until(lambda: len(serving_children(host)) == 2, 10)
        victim = serving_children(host)[0].pid
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda: (
                len(serving_children(host)) == 2
                and victim not in {p.pid for p in serving_children(host)}
            ),
            15,
        )
        pd.testing.assert_frame_equal(client.predict(FRAME), before)
        assert client.host_pid == host
    with hosts.client(spec) as again:
        pd.testing.assert_frame_equal(again.predict(FRAME), before)
    assert len(loads(count)) == 1
    replaced = f"serving process {victim} exited (killed by signal 9): replacing it"
    assert wait_until(lambda: replaced in client.launcher.log_path.read_text(), 15), (
        client.launcher.log_path.read_text()
    )


def test_prefork_idle_timer_counts_connections_its_children_serve(
    hosts: Hosts, model_dir: str, tmp_path
) -> None:
    count = tmp_path / "count"
    spec = hosts.spec(
        model_dir,
        mode="prefork",
        processes=2,
        idle_timeout=0.5,
        model_config={"count_file": str(count)},
    )
    with hosts.client(spec) as client:
        # a request that runs four idle timeouts long, in a child: the host must stay up
        got = client.predict(FRAME, params={"sleep": 2.0})
        host = client.host_pid
        assert alive_pid(host)
        pd.testing.assert_frame_equal(got, expected(model_dir))
        pd.testing.assert_frame_equal(client.predict(FRAME), got)
        assert client.host_pid == host
    assert len(loads(count)) == 1
    assert_reaped(host)  # and once the connection closed, it idled out
    assert wait_until(lambda: hosts.processes(spec.key) == [], 10)  # children too
    assert not socket_path(spec.key).exists()


def test_more_connections_than_serving_processes_are_all_answered(
    hosts: Hosts, model_dir: str
) -> None:
    """A child whose connection is held takes a further waiting one on a thread, so a worker
    never waits for its greeting behind a connection that stays open."""
    spec = hosts.spec(model_dir, mode="prefork", processes=1)
    with hosts.client(spec) as first, hosts.client(spec) as second:
        pd.testing.assert_frame_equal(first.predict(FRAME), expected(model_dir))
        pd.testing.assert_frame_equal(second.predict(FRAME), expected(model_dir))
        assert first.host_pid == second.host_pid


def test_prefork_children_are_told_apart_from_their_host(hosts: Hosts, model_dir: str) -> None:
    """ps -o comm, top and pgrep name a serving child as such; ps aux still shows the host's
    command line for it, so that grep spark_pyfunc._host finds every process of a host."""
    spec = hosts.spec(model_dir, mode="prefork", processes=2)
    with hosts.client(spec) as client:
        client.predict(FRAME)
        host = client.host_pid
        assert wait_until(lambda: len(serving_children(host)) == 2, 10)
        assert Path(f"/proc/{host}/comm").read_text().strip() != "spf-host-child"
        for child in serving_children(host):
            assert Path(f"/proc/{child.pid}/comm").read_text().strip() == "spf-host-child"
            assert child.cmdline() == psutil.Process(host).cmdline()


def test_only_prefork_shares_connection_counts_with_children() -> None:
    """The other modes see every connection in the host process itself: no shared map."""

    def host(mode: str) -> Host:
        return Host(
            ModelServer(SimpleNamespace(invoke=None)),
            socket_file="unused.sock",
            mode=mode,
            idle_timeout=1.0,
            watch=_Watch(None),
            processes=2,
        )

    assert host("thread").activity is None and host("fork").activity is None
    prefork = host("prefork")
    assert prefork.activity is not None and prefork.activity.total() == 0
    assert prefork._open_connections() == 0 == host("thread")._open_connections()


@pytest.fixture(scope="module")
def threaded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("host_model") / "threaded"
    save_model(str(path), python_model=Threaded(), input_example=(FRAME.head(5), PARAMS))
    return str(path)


def test_auto_forks_a_model_without_threads(hosts: Hosts, model_dir: str) -> None:
    spec = hosts.spec(model_dir, processes=2)
    assert spec.mode == "auto"
    with hosts.client(spec) as client:
        pd.testing.assert_frame_equal(client.predict(FRAME), expected(model_dir))
        host = client.host_pid
        assert wait_until(lambda: len(serving_children(host)) == 2, 10)
    assert (
        "in prefork mode with 2 serving processes (auto mode: the loaded model runs no threads "
        "of its own and holds no GPU context)" in client.launcher.log_path.read_text()
    )


def test_auto_serves_a_model_that_started_a_thread_on_threads(
    hosts: Hosts, threaded_model_dir: str
) -> None:
    spec = hosts.spec(threaded_model_dir, processes=2)
    with hosts.client(spec) as client:
        got = client.predict(FRAME)
        pd.testing.assert_frame_equal(got, expected(threaded_model_dir))
        assert serving_children(client.host_pid) == []
    assert (
        "in thread mode (auto mode: loading the model started 1 native thread(s)"
        in client.launcher.log_path.read_text()
    )


def test_auto_does_not_fork_a_process_holding_a_cuda_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Detected without importing torch: only where the model already imported it."""
    cuda = types.SimpleNamespace(is_initialized=lambda: True)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert choose_mode("auto", 3, 3) == (
        "thread",
        "the model initialised CUDA (torch): a GPU context cannot be forked",
    )
    cuda.is_initialized = lambda: False
    assert choose_mode("auto", 3, 3)[0] == "prefork"
    assert choose_mode("fork", 3, 9) == ("fork", "asked for")


def test_bad_processes_are_refused() -> None:
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(HostError, match="processes must be a positive integer"):
            HostSpec(model_dir="m", key="k", state_dir="s", processes=bad)


# ----------------------------------------------------------------------- socket location


def test_socket_dir_is_private(tmp_path: Path) -> None:
    path = socket_dir(tmp_path)
    assert path == tmp_path / f"spark_pyfunc-{os.getuid()}"
    assert (path.stat().st_mode & 0o777) == 0o700
    assert socket_dir(tmp_path) == path  # existing and right: accepted
    path.chmod(0o755)
    with pytest.raises(HostError, match=f"{path}.*mode 0755"):
        socket_dir(tmp_path)


def test_socket_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / f"spark_pyfunc-{os.getuid()}").symlink_to(target)
    with pytest.raises(HostError, match="symlink"):
        socket_dir(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_socket_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / f"spark_pyfunc-{os.getuid()}"
    path.mkdir(mode=0o700)
    os.chown(path, 12345, 12345)
    with pytest.raises(HostError, match="owned by uid 12345"):
        socket_dir(tmp_path)


def test_socket_path_limits(tmp_path: Path) -> None:
    assert socket_path("0123abcd", tmp_path).name == "0123abcd.sock"
    with pytest.raises(HostError, match="longer than"):
        socket_path("k", tmp_path / ("d" * 120))
    with pytest.raises(HostError, match="key"):
        socket_path("../escape", tmp_path)


def test_host_key_depends_on_executor_model_and_config() -> None:
    key = host_key("/x/exec1", "ab" * 32, {"a": 1})
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == host_key("/x/exec1", "ab" * 32, {"a": 1})
    others = {
        host_key("/x/exec2", "ab" * 32, {"a": 1}),
        host_key("/x/exec1", "cd" * 32, {"a": 1}),
        host_key("/x/exec1", "ab" * 32, {"a": 2}),
        host_key("/x/exec1", "ab" * 32, None),
        host_key("/x/exec1", "ab" * 32, {"a": 1}, mode="thread"),
        host_key("/x/exec1", "ab" * 32, {"a": 1}, processes=4),
    }
    assert key not in others and len(others) == 6


def test_bad_mode_is_refused() -> None:
    with pytest.raises(HostError, match="mode 'spawn'"):
        HostSpec(model_dir="m", key="k", state_dir="s", mode="spawn")


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root")
@pytest.mark.parametrize("mode", ["thread", "prefork"])
def test_peer_of_another_uid_is_refused(caplog: pytest.LogCaptureFixture, mode: str) -> None:
    """SO_PEERCRED: only the host's own user gets an answer (in prefork mode the serving
    children check it, and keep answering the host's own user)."""

    class Fake:
        def invoke(self, method, data, params=None):
            return data

    shared = tempfile.mkdtemp(prefix="spark_pyfunc-test-")  # reachable by the other user
    os.chmod(shared, 0o777)
    sock_file = os.path.join(shared, "h.sock")
    host = Host(
        ModelServer(Fake()),
        socket_file=sock_file,
        mode=mode,
        idle_timeout=2.0,
        watch=_Watch(None),
        processes=1,
    )
    host.bind()
    os.chmod(sock_file, 0o777)  # only the peer check stands in the way
    serving = threading.Thread(target=host.serve)
    serving.start()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.settimeout(5)
                conn.connect(sock_file)
                try:
                    recv_message(conn)
                except PeerClosed:
                    code = 0  # refused: closed without a greeting
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as own:
            own.settimeout(30)
            own.connect(sock_file)
            assert recv_message(own)[0] == {"ok": True, "pid": os.getpid()}
    finally:
        serving.join(10)
        children = set(host.workers.values())
        host.close()  # also removes the then empty directory
    assert not os.path.exists(shared)
    if mode == "thread":  # a prefork child logs to its own copy of the handlers
        assert "refused a connection from uid 65534" in caplog.text
    assert not os.path.exists(sock_file)
    assert len(children) == (1 if mode == "prefork" else 0)
    assert not any(alive_pid(pid) for pid in children)


# ------------------------------------------- hosts lost before they are ready (issue 11)
# A host killed while it imports or loads the model is started again, from the same attempts a
# broken request gets; a load that fails on its own fails at once. Gates (host_models.gate)
# hold the host at a known step until the fault has landed: no sleeps.

USER_PATH = "models/the-path-the-user-passed"


def gated(tmp_path: Path, *gates: str) -> dict:
    """model_config stopping the host at ``gates``, counting loads in ``tmp_path / "count"``."""
    folder = tmp_path / "gates"
    folder.mkdir(exist_ok=True)
    return {"count_file": str(tmp_path / "count"), "gates_dir": str(folder), "gates": list(gates)}


def arrivals(config: dict, name: str) -> list[int]:
    """Pids that reached gate ``name``, in no particular order."""
    prefix = f"at-{name}-"
    return [int(p.name[len(prefix) :]) for p in Path(config["gates_dir"]).glob(f"{prefix}*")]


def wait_for_new_arrival(config: dict, name: str, seen: set[int], timeout: float = 60) -> int:
    """The pid of a process that reached gate ``name`` and is not in ``seen``."""

    def new() -> list[int]:
        return sorted(set(arrivals(config, name)) - seen)

    assert wait_until(lambda: bool(new()), timeout), f"no new process reached gate {name}"
    return new()[0]


def open_gate(config: dict, name: str) -> None:
    (Path(config["gates_dir"]) / f"go-{name}").touch()


def kill_host(hosts: Hosts, key: str, pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` after checking it is the host for ``key`` (not a reused pid)."""
    assert pid in {p.pid for p in hosts.processes(key)}, f"{pid} is not the model host"
    os.kill(pid, sig)
    assert wait_until(lambda: not alive_pid(pid), 10)


def predict_in_thread(client: ModelHostClient) -> tuple[threading.Thread, dict]:
    """Run client.predict(FRAME) on a thread; the dict gets its result or error."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = client.predict(FRAME)
        except BaseException as exc:  # checked by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize(
    ("gate_name", "sig", "how"),
    [
        ("import", signal.SIGKILL, "killed before it was ready, while loading, by SIGKILL"),
        ("load", signal.SIGKILL, "killed during load: out of memory?"),
        ("load", signal.SIGTERM, "stopped by SIGTERM while loading the model"),
    ],
)
def test_host_killed_before_it_is_ready_is_started_again(
    hosts: Hosts,
    model_dir: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    gate_name: str,
    sig: int,
    how: str,
) -> None:
    config = gated(tmp_path, gate_name)
    spec = hosts.spec(model_dir, model_config=config, model_uri=USER_PATH)
    client = hosts.client(spec)
    thread, out = predict_in_thread(client)
    killed = wait_for_new_arrival(config, gate_name, set())
    assert thread.is_alive()  # the request waits for this very host
    kill_host(hosts, spec.key, killed, sig)
    open_gate(config, gate_name)
    thread.join(90)
    assert "error" not in out, out.get("error")
    pd.testing.assert_frame_equal(out["result"], expected(model_dir))
    assert client.host_pid not in (None, killed)
    # import: the killed host never reached load_context; load: it did, and so did the new one
    assert loads(tmp_path / "count") == (
        [f"load {client.host_pid}"]
        if gate_name == "import"
        else [f"load {killed}", f"load {client.host_pid}"]
    )
    warning = next(r.getMessage() for r in caplog.records if f"(pid {killed})" in r.getMessage())
    assert how in warning and USER_PATH in warning and "attempt 1 of 3" in warning
    assert model_dir not in warning  # the user's path, not the executor's copy


def test_host_killed_twice_in_a_row_while_loading_is_started_a_third_time(
    hosts: Hosts, model_dir: str, tmp_path: Path
) -> None:
    config = gated(tmp_path, "load")
    spec = hosts.spec(model_dir, model_config=config)
    client = hosts.client(spec)
    thread, out = predict_in_thread(client)
    first = wait_for_new_arrival(config, "load", set())
    kill_host(hosts, spec.key, first)
    second = wait_for_new_arrival(config, "load", {first})
    kill_host(hosts, spec.key, second)
    open_gate(config, "load")
    thread.join(90)
    assert "error" not in out, out.get("error")
    pd.testing.assert_frame_equal(out["result"], expected(model_dir))
    assert loads(tmp_path / "count") == [f"load {p}" for p in (first, second, client.host_pid)]


def test_host_killed_at_every_load_fails_after_three_tries(
    hosts: Hosts, model_dir: str, tmp_path: Path
) -> None:
    config = gated(tmp_path, "load")
    spec = hosts.spec(model_dir, model_config=config, model_uri=USER_PATH)
    client = hosts.client(spec)
    thread, out = predict_in_thread(client)
    killed: set[int] = set()
    for _ in range(3):
        pid = wait_for_new_arrival(config, "load", killed)
        kill_host(hosts, spec.key, pid)
        killed.add(pid)
    thread.join(90)
    error = out.get("error")
    assert isinstance(error, HostError), out
    message = str(error)
    assert "lost 3 times in a row" in message and "killed during load: out of memory?" in message
    assert USER_PATH in message and "model host starting" in error.log_tail
    assert len(loads(tmp_path / "count")) == 3
    assert hosts.processes(spec.key) == []


@pytest.mark.parametrize("failure", ["fail_load", "exit_load"])
def test_host_whose_load_fails_is_not_started_again(
    hosts: Hosts, model_dir: str, tmp_path: Path, failure: str
) -> None:
    """A load that fails would fail on every start: fail at once, with the log and the exit."""
    config = {"count_file": str(tmp_path / "count"), failure: True}
    spec = hosts.spec(model_dir, model_config=config, model_uri=USER_PATH)
    with hosts.client(spec) as client, pytest.raises(HostError) as info:
        client.predict(FRAME)
    message = str(info.value)
    code = 1 if failure == "fail_load" else 7
    assert f"exited with code {code} before it was ready" in message
    if failure == "fail_load":
        assert "RuntimeError: load_context failed on purpose" in message
    assert USER_PATH in message and model_dir not in message.split("\n", 1)[0]
    assert len(loads(tmp_path / "count")) == 1  # one load: no second start
    assert hosts.processes(spec.key) == []


def test_host_still_loading_when_its_starter_died_is_waited_for(
    hosts: Hosts, model_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """_adopt_or_clear: the worker that started the host was killed while the host loads; the
    next worker waits for that host instead of killing it or starting another."""
    caplog.set_level("INFO", logger="spark_pyfunc")
    config = gated(tmp_path, "load")
    spec = hosts.spec(model_dir, model_config=config)
    ctx = multiprocessing.get_context("fork")
    starter = ctx.Process(target=_predict_in_worker, args=(spec, ctx.Barrier(1), ctx.Queue()))
    starter.start()
    loading = wait_for_new_arrival(config, "load", set())
    os.kill(starter.pid, signal.SIGKILL)
    starter.join(30)
    assert starter.exitcode == -signal.SIGKILL
    assert alive_pid(loading)  # the host outlives its starter: it is in its own session
    client = hosts.client(spec)
    thread, out = predict_in_thread(client)
    assert wait_until(lambda: "its starter died: waiting for it" in caplog.text, 60)
    open_gate(config, "load")
    thread.join(90)
    assert "error" not in out, out.get("error")
    pd.testing.assert_frame_equal(out["result"], expected(model_dir))
    assert client.host_pid == loading
    assert loads(tmp_path / "count") == [f"load {loading}"]


def test_lock_held_too_long_is_a_host_error_naming_the_lock(
    hosts: Hosts, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_module, "_LOCK_MARGIN", 0.0)
    spec = hosts.spec(model_dir, start_timeout=1.0, model_uri=USER_PATH)
    client = hosts.client(spec)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from spark_pyfunc._locks import file_lock\n"
            "with file_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)",
            str(client.launcher.lock_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HostError) as info:
            client.predict(FRAME)
    finally:
        holder.kill()
        holder.wait()
    message = str(info.value)
    assert f"waiting for the lock {client.launcher.lock_path}" in message
    assert "held by another worker starting the model host" in message and USER_PATH in message
    assert hosts.processes(spec.key) == []  # it never started one


def test_host_log_goes_to_the_log_dir(hosts: Hosts, model_dir: str, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs" / "nested"
    spec = hosts.spec(model_dir, log_dir=str(log_dir))
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
    assert client.launcher.log_path == log_dir / f"spark_pyfunc-host-{spec.key}.log"
    assert f"model host starting: pid={client.host_pid}" in client.launcher.log_path.read_text()
    assert not list(Path(spec.state_dir).glob("*.log"))


# --------------------------------------------------------------------- through spark_udf


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from udf_models import Probe, save

    from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "a"), ColSpec(DataType.string, "b")]),
        outputs=Schema([ColSpec(DataType.long, "pid"), ColSpec(DataType.long, "rows")]),
    )
    return str(save(Probe(), tmp_path_factory.mktemp("probe") / "model", signature=signature))


def _host_of_job(spark, probe_dir: str, counter: Path) -> psutil.Process:
    """Score a job with a fresh host (its own model_config) and return that host."""
    from spark_pyfunc import spark_udf

    predict = spark_udf(spark, probe_dir, model_config={"counter": str(counter)}, scope="executor")
    df = spark.range(0, 2000, numPartitions=4).selectExpr("cast(id as double) as a", "'x' as b")
    out = df.select(predict("a", "b").alias("p")).select("p.*").toPandas()
    assert len(out) == 2000
    (host,) = {int(line.split()[1]) for line in counter.read_text().splitlines()}
    assert set(out["pid"]) == {host}  # one loaded copy served every row
    return psutil.Process(host)


def test_processes_setting_reaches_the_host(spark, probe_dir: str, tmp_path: Path) -> None:
    """The executor's task slots (local[2]: 2) by default; spark.pyfunc.host.processes wins."""
    host = _host_of_job(spark, probe_dir, tmp_path / "default")
    assert wait_until(lambda: len(serving_children(host.pid)) == 2, 10)
    assert "--processes 2" in " ".join(host.cmdline())
    spark.conf.set("spark.pyfunc.host.processes", "3")
    try:
        host = _host_of_job(spark, probe_dir, tmp_path / "three")
    finally:
        spark.conf.unset("spark.pyfunc.host.processes")
    assert wait_until(lambda: len(serving_children(host.pid)) == 3, 10)
    cmdline = host.cmdline()
    log = Path(cmdline[cmdline.index("--log") + 1]).read_text()
    assert "in prefork mode with 3 serving processes (auto mode:" in log


def test_no_more_serving_processes_than_cpus_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # An executor of 4 task slots on 2 CPUs: 2 serving processes (a third and fourth would add
    # private pages, not parallelism); spark.pyfunc.host.processes is taken as set.
    from spark_pyfunc._placement import serving_processes as _serving_processes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert _serving_processes(None, 4) == 2
    assert _serving_processes(None, 1) == 1
    assert _serving_processes(4, 4) == 4
    assert _serving_processes(None, None) is None  # the host counts its CPUs itself
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert _serving_processes(None, 4) == 4


def test_bad_processes_setting_names_the_key(spark, probe_dir: str) -> None:
    from spark_pyfunc import spark_udf
    from spark_pyfunc.errors import SparkPyfuncError

    spark.conf.set("spark.pyfunc.host.processes", "many")
    try:
        with pytest.raises(SparkPyfuncError, match="spark.pyfunc.host.processes must be a posi"):
            spark_udf(spark, probe_dir, scope="executor")
    finally:
        spark.conf.unset("spark.pyfunc.host.processes")
