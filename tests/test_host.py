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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import psutil
import pytest
from host_models import PARAMS, Counting
from udf_models import Blocking, Gate

from spark_pyfunc import client as client_module
from spark_pyfunc.client import HostSpec, ModelHostClient, host_key
from spark_pyfunc.errors import HostError, PredictionError, SchemaEnforcementError
from spark_pyfunc.host import Host, ModelServer, _Watch, socket_dir, socket_path
from spark_pyfunc.loading import load_model
from spark_pyfunc.saving import save_model
from spark_pyfunc.wire import (
    PeerClosed,
    arrow_bytes_to_frame,
    frame_to_arrow_bytes,
    prediction_to_frame,
    recv_message,
    send_message,
)

pytestmark = pytest.mark.timeout(120)

FRAME = pd.DataFrame({"a": np.arange(200, dtype=np.float64), "b": np.linspace(-1, 1, 200)})


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_reaped(pid: int) -> None:
    """The process has exited and nothing of ours holds its zombie (init reaps orphans).

    Only ``pid`` is checked: other tests' processes (a Spark JVM's launcher shell) may leave
    zombies of their own under pytest."""
    assert wait_until(lambda: not running(pid), 10), f"host {pid} did not exit"
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
            if sock in (proc.info["cmdline"] or []) and running(proc.pid):
                found.append(proc)
        return found

    def cleanup(self) -> None:
        """Stop the hosts (SIGTERM: they remove their socket), then sweep what killed ones
        left behind."""
        for client in self.clients:
            client.close()
        for key in self.keys:
            for proc in self.processes(key):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
                    if not wait_until(lambda p=proc: not running(p.pid), 5):
                        proc.kill()
                        wait_until(lambda p=proc: not running(p.pid), 5)
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


@pytest.mark.parametrize("mode", ["thread", "fork"])
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
    log = client.log_path.read_text()
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
    assert len(hosts.processes(spec.key)) == 1


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


@pytest.mark.parametrize("mode", ["thread", "fork"])
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
        assert wait_until(lambda: not running(first), 60)
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
    # fork mode: the killed host's child died with it
    assert wait_until(lambda: len(hosts.processes(spec.key)) == 1, 60)


def test_host_killed_between_requests_is_restarted(hosts: Hosts, model_dir: str) -> None:
    with hosts.client(hosts.spec(model_dir)) as client:
        before = client.predict(FRAME)
        first = client.host_pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not running(first), 10)
        pd.testing.assert_frame_equal(client.predict(FRAME), before)
        assert client.host_pid != first


@pytest.mark.parametrize(("mode", "hosts_loaded"), [("thread", 3), ("fork", 1)])
def test_a_request_that_keeps_killing_its_server_fails_after_three_tries(
    hosts: Hosts, model_dir: str, tmp_path, mode: str, hosts_loaded: int
) -> None:
    count = tmp_path / "count"
    spec = hosts.spec(model_dir, mode=mode, model_config={"count_file": str(count)})
    with hosts.client(spec) as client, pytest.raises(HostError, match="3 times") as info:
        client.predict(FRAME, params={"crash": True})
    # thread mode: the host dies and is restarted twice; fork mode: only its children die
    assert len(loads(count)) == hosts_loaded
    assert "model host starting" in info.value.log_tail


def test_stale_socket_and_pid_file_are_recovered(hosts: Hosts, model_dir: str) -> None:
    spec = hosts.spec(model_dir)
    with hosts.client(spec) as client:
        before = client.predict(FRAME)
        dead = client.host_pid
    os.kill(dead, signal.SIGKILL)
    assert wait_until(lambda: not running(dead), 10)
    assert socket_path(spec.key).exists() and client.pid_path.exists()  # left behind
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
        client.pid_path.parent.mkdir(parents=True, exist_ok=True)
        client.pid_path.write_text(f"{bystander.pid}\n")
        socket_path(spec.key).write_text("not a socket")
        pd.testing.assert_frame_equal(client.predict(FRAME), expected(model_dir))
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_hung_host_is_replaced(
    hosts: Hosts, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "_GREETING_TIMEOUT", 0.5)
    spec = hosts.spec(model_dir)
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
        hung = client.host_pid
    os.kill(hung, signal.SIGSTOP)
    with hosts.client(spec) as again:
        again.predict(FRAME.head(3))
        assert again.host_pid != hung
    assert wait_until(lambda: not running(hung), 10)


def test_load_context_error_is_a_host_error_with_the_log_tail(hosts: Hosts, model_dir: str) -> None:
    spec = hosts.spec(model_dir, model_config={"fail_load": True})
    with hosts.client(spec) as client, pytest.raises(HostError) as info:
        client.predict(FRAME)
    message = str(info.value)
    assert "exited" in message and "before it was ready" in message
    assert "load_context failed on purpose" in info.value.log_tail
    assert str(client.log_path) in message
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
        client_module,
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
    assert not running(host)  # the client killed it before raising
    assert wait_until(lambda: hosts.processes(spec.key) == [], 60)


# ---------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_idle_host_exits_and_cleans_up(hosts: Hosts, model_dir: str, mode: str) -> None:
    spec = hosts.spec(model_dir, mode=mode, idle_timeout=0.5)
    with hosts.client(spec) as client:
        client.predict(FRAME)
        time.sleep(1.0)  # an open connection keeps the host up, idle or not
        assert running(client.host_pid)
        client.predict(FRAME)
    pid = client.host_pid
    assert_reaped(pid)
    assert not socket_path(spec.key).exists()
    assert not client.pid_path.exists()
    assert "no connection for 0.5s: exiting" in client.log_path.read_text()


def test_host_exits_when_the_watched_process_is_gone(hosts: Hosts, model_dir: str) -> None:
    watched = subprocess.Popen(["sleep", "60"])
    spec = hosts.spec(model_dir, watch_pid=watched.pid)
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
        pid = client.host_pid
    watched.kill()  # left unreaped for a moment: a zombie counts as gone
    assert wait_until(lambda: not running(pid), 3)
    watched.wait()
    assert_reaped(pid)
    assert not socket_path(spec.key).exists()
    assert f"watched process {watched.pid} is gone" in client.log_path.read_text()


def test_sigterm_stops_the_host_cleanly(hosts: Hosts, model_dir: str) -> None:
    spec = hosts.spec(model_dir, mode="fork")
    with hosts.client(spec) as client:
        client.predict(FRAME.head(3))
        pid = client.host_pid
        os.kill(pid, signal.SIGTERM)
        assert_reaped(pid)
    assert not socket_path(spec.key).exists()
    assert not client.pid_path.exists()
    assert hosts.processes(spec.key) == []  # the connection's child went with it


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
    }
    assert key not in others and len(others) == 4


def test_bad_mode_is_refused() -> None:
    with pytest.raises(HostError, match="mode 'spawn'"):
        HostSpec(model_dir="m", key="k", state_dir="s", mode="spawn")


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root")
def test_peer_of_another_uid_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """SO_PEERCRED: only the host's own user gets an answer."""

    class Fake:
        def invoke(self, method, data, params=None):
            return data

    shared = tempfile.mkdtemp(prefix="spark_pyfunc-test-")  # reachable by the other user
    os.chmod(shared, 0o777)
    sock_file = os.path.join(shared, "h.sock")
    host = Host(
        ModelServer(Fake()),
        socket_file=sock_file,
        mode="thread",
        idle_timeout=2.0,
        watch=_Watch(None),
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
    finally:
        serving.join(10)
        host.close()  # also removes the then empty directory
    assert not os.path.exists(shared)
    assert "refused a connection from uid 65534" in caplog.text
    assert not os.path.exists(sock_file)
