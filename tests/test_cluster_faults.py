"""Faults that land mid-job on a real multi-process cluster, with nothing for Spark to retry.

The model host scenarios run on ``fault_spark``: one executor JVM with 2 cores (two Python
workers sharing one host) and ``spark.task.maxFailures=1``, so a task that fails fails the
job: exact results prove the worker's own restart-and-resend, not Spark's retry. Each fault
lands at a known moment: the model (host_models.Faulty) stops at a
gate file until the test has delivered the fault, so the job is provably still running (it
cannot finish while the gate is shut). Each scenario checks the processes' own evidence: the
model's record of loads and calls (a resent batch is called twice), the worker's warning in
the executor's stderr and the host's log in ``spark.pyfunc.host.logDir``.

A killed Python worker or executor is a failed task that only Spark can rerun, so those two
scenarios run on ``cluster_spark`` (2 executors, Spark's default 4 task attempts) and check
that the host outlived the worker, or followed its executor.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import host_models
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import FAULT_CONF, FAULT_MASTER, stop_active_session
from host_models import Faulty
from pyspark.sql import functions as F

from spark_pyfunc import save_model, spark_udf

CONF_HOST_LOG_DIR = "spark.pyfunc.host.logDir"
CONF_IDLE_TIMEOUT = "spark.pyfunc.host.idleTimeout"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Jobs per host-fault scenario; the default gives 28 kills per session (the twice-in-a-row
#: scenario kills two hosts per job).
REPEATS = int(os.environ.get("SPARK_PYFUNC_FAULT_REPEATS", "4"))
ROWS = 2000
PARTITIONS = 8
#: Rows per Arrow batch, so one request per 100 rows: partition 4 holds ids 1000-1249.
BATCH = 100
BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
#: The batch the gates hold: the second of partition 4, so its worker has already scored one.
GATE_ID = 1100
#: How long a fault thread waits for a gate or a process (generous: the machine is shared).
PATIENCE = 120.0


@pytest.fixture(scope="module")
def faulty_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Faulty, pickled by reference with host_models.py as a code path: the host imports the
    module (which runs the import gate) from the model's own copy."""
    path = tmp_path_factory.mktemp("faults-model") / "model"
    example = pd.DataFrame({"id": np.arange(3, dtype=np.int64), "x": [0.5, 1.0, 2.0]})
    save_model(
        str(path),
        python_model=Faulty(),
        code_paths=[host_models.__file__],
        input_example=example,
    )
    return path


@pytest.fixture(scope="module")
def evidence_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run's gates and records live under here, and so the hosts' command lines name it."""
    return tmp_path_factory.mktemp("faults-evidence")


@pytest.fixture
def faults(fault_spark, faulty_model: Path, evidence_root: Path, request) -> Faults:
    conf = fault_spark.sparkContext.getConf()
    assert conf.get("spark.task.maxFailures") == FAULT_CONF["spark.task.maxFailures"] == "1"
    assert fault_spark.sparkContext.master == FAULT_MASTER
    return Faults(fault_spark, faulty_model, evidence_root, request.node.name)


class Faults:
    """One run's evidence directory, its job and its checks."""

    def __init__(self, spark, model: Path, root: Path, name: str) -> None:
        self.spark = spark
        self.model = model
        self.dir = root / "".join(c if c.isalnum() else "-" for c in name)
        self.dir.mkdir()
        self.log_dir = root / "host-logs"
        self.app_dir: Path | None = None
        # Runtime settings, read on the driver: the host logs where the test reads them (the
        # logDir key is tested through Spark here), and hosts of earlier runs go away instead
        # of piling up.
        spark.conf.set(BATCH_CONF, str(BATCH))
        spark.conf.set(CONF_HOST_LOG_DIR, str(self.log_dir))
        spark.conf.set(CONF_IDLE_TIMEOUT, "30")

    def config(self, *gates: str) -> dict:
        return {"gates_dir": str(self.dir), "gates": list(gates), "gate_id": GATE_ID}

    # ------------------------------------------------------------------ gates and records

    def arrivals(self, gate: str) -> list[int]:
        prefix = f"at-{gate}-"
        return sorted(int(p.name[len(prefix) :]) for p in self.dir.glob(f"{prefix}*"))

    def wait_for_arrival(self, gate: str, seen: set[int] = frozenset()) -> int:
        def new() -> list[int]:
            return [pid for pid in self.arrivals(gate) if pid not in seen]

        assert wait_until(lambda: bool(new()), PATIENCE), f"nothing reached gate {gate}"
        return new()[0]

    def open(self, gate: str) -> None:
        (self.dir / f"go-{gate}").touch()

    def loads(self) -> list[int]:
        path = self.dir / "loads"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def calls(self, first_id: int | None = None) -> list[int]:
        """Pids of the hosts that were called, in order; only for one batch if given."""
        path = self.dir / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        rows = [tuple(int(x) for x in line.split()) for line in lines]
        return [pid for pid, first, _ in rows if first_id is None or first == first_id]

    # ------------------------------------------------------------------------- the job

    def frame(self, config: dict):
        predict = spark_udf(self.spark, str(self.model), model_config=config, scope="executor")
        df = self.spark.range(0, ROWS, 1, PARTITIONS).withColumn("x", F.col("id") * 0.25 + 1.0)
        return df.select("id", predict("id", "x").alias("y"))

    def run(self, config: dict, fault: Callable[[Job], None]) -> None:
        """Run the job on a thread and ``fault`` here, then check the job's exact result."""
        job = Job(self.frame(config))
        try:
            fault(job)
        finally:  # whatever happened, let the job end
            for gate in ("import", "load", "predict"):
                self.open(gate)
        job.join()
        ids = np.arange(ROWS, dtype=np.int64)
        want = pd.DataFrame({"id": ids, "y": 2.0 * (ids * 0.25 + 1.0) + ids})
        pd.testing.assert_frame_equal(job.result, want)

    def kill_host(self, pid: int, job: Job) -> None:
        """SIGKILL host ``pid`` (checked to be one of this run's hosts) while ``job`` runs."""
        assert pid in {p.pid for p in hosts_naming(str(self.dir))}, f"{pid} is no host of ours"
        assert job.running(), "the job ended before the fault"
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not alive_pid(pid), 30)

    # ------------------------------------------------------------------------ evidence

    def executor_logs(self) -> str:
        """The executors' stderr, where the Python workers' warnings go: in the application's
        directory, which is the parent of each executor JVM's working directory."""
        app = self.spark.sparkContext.applicationId
        if self.app_dir is None:
            dirs = {Path(p.cwd()).parent for p in executor_jvms()}
            self.app_dir = next(d for d in dirs if d.name == app)
        return "\n".join(p.read_text(errors="replace") for p in self.app_dir.glob("*/stderr"))

    def worker_logged(self, text: str) -> bool:
        """Some worker logged ``text`` (polled: stderr reaches the file asynchronously)."""
        return wait_until(lambda: text in self.executor_logs(), 30)

    def host_logged(self, text: str) -> bool:
        return any(text in p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))


class Job:
    """``frame.toPandas()`` on a thread, so that the test can deliver faults meanwhile."""

    def __init__(self, frame) -> None:
        self.result: pd.DataFrame | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(frame,), daemon=True)
        self._thread.start()

    def _run(self, frame) -> None:
        try:
            self.result = frame.toPandas().sort_values("id", ignore_index=True)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self._done.set()

    def running(self) -> bool:
        return not self._done.is_set()

    def join(self) -> None:
        assert self._done.wait(240), "the job did not finish"
        assert self.error is None, f"the job failed: {self.error}"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def alive_pid(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def hosts_naming(text: str) -> list[psutil.Process]:
    """Live model hosts whose command line mentions ``text`` (hosts are detached, so they are
    found by command line, not as our descendants); a prefork host's serving children share
    its command line and are left out."""
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmd = proc.info["cmdline"] or []
        if "spark_pyfunc._host" in cmd and any(text in part for part in cmd) and alive(proc):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.info["ppid"] not in pids]


def descendants(predicate: Callable[[list[str]], bool]) -> list[psutil.Process]:
    """Our live descendants (the executor JVMs and their Python processes) matching."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if predicate(proc.cmdline()) and alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def executor_jvms() -> list[psutil.Process]:
    return descendants(lambda cmd: any("CoarseGrainedExecutorBackend" in c for c in cmd))


# --------------------------------------------------------- the host, killed (no retries)


@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.parametrize(("gate", "kills"), [("import", 1), ("load", 1), ("load", 2)])
def test_host_killed_before_it_is_ready(faults: Faults, gate: str, kills: int, repeat: int):
    """SIGKILL while the host imports the model's code or runs load_context (once, or twice
    in a row): the worker starts it again and the job ends exact."""
    config = faults.config(gate)
    killed: list[int] = []

    def fault(job: Job) -> None:
        for _ in range(kills):
            pid = faults.wait_for_arrival(gate, set(killed))
            faults.kill_host(pid, job)
            killed.append(pid)

    faults.run(config, fault)
    served = set(faults.calls())
    assert served and not served & set(killed), (served, killed)
    loaded = faults.loads()
    for pid in killed:
        # import: the killed host never reached load_context; load: it did
        assert (pid in loaded) == (gate == "load"), (pid, loaded)
        assert faults.worker_logged(f"(pid {pid}) was killed before it was ready"), pid
    assert all(faults.host_logged(f"model host starting: pid={pid}") for pid in served)


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_host_killed_mid_request(faults: Faults, repeat: int):
    """SIGKILL while the host runs predict on the gated batch: the worker restarts the host and
    sends that batch again."""
    config = faults.config("predict")
    killed: list[int] = []

    def fault(job: Job) -> None:
        pid = faults.wait_for_arrival("predict")
        faults.kill_host(pid, job)
        killed.append(pid)

    faults.run(config, fault)
    [pid] = killed
    resent = faults.calls(GATE_ID)
    assert len(resent) == 2 and resent[0] == pid and resent[1] != pid, resent
    assert faults.worker_logged(f"lost the model host (pid {pid}) during a request")


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_prefork_serving_process_killed_mid_request(faults: Faults, repeat: int):
    """SIGKILL to the prefork child running predict on the gated batch (the process the OOM
    killer would pick while predict allocates): the host replaces the child, the worker
    reconnects to the same host, which sends the batch again to a new child; no reload."""
    config = faults.config("predict")
    seen: dict = {}

    def fault(job: Job) -> None:
        host = faults.wait_for_arrival("predict")
        child = int((faults.dir / f"at-predict-{host}").read_text())
        assert child != host, "the predict gate was not reached in a prefork serving process"
        assert job.running(), "the job ended before the fault"
        os.kill(child, signal.SIGKILL)
        assert wait_until(lambda: not alive_pid(child), 30)
        seen.update(host=host, child=child)

    faults.run(config, fault)
    host = seen["host"]
    assert alive_pid(host) and faults.loads() == [host]
    assert faults.calls(GATE_ID) == [host, host]
    assert faults.worker_logged(f"lost the model host (pid {host}) during a request")
    assert wait_until(lambda: faults.host_logged(f"serving process {seen['child']} exited"), 30)


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_host_killed_between_requests(faults: Faults, repeat: int):
    """SIGKILL while no request is in flight (between two jobs on the reused Python workers):
    the next request finds a dead host, its socket and pid file left behind, and starts a new
    one. (Within one open connection this path is the mid-request one: the send or the
    receive fails. Spark gives no way to hold a worker between two batches: an upstream UDF
    gate also holds the batch before it, in the Python worker's output buffer.)"""
    config = faults.config()
    faults.run(config, lambda job: None)
    [first] = set(faults.calls())
    assert not faults.spark.sparkContext.statusTracker().getActiveJobsIds()
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: not alive_pid(first), 30)
    faults.run(config, lambda job: None)
    assert faults.loads() == [first, faults.calls()[-1]] and faults.calls()[-1] != first
    assert faults.calls(GATE_ID) == [first, faults.calls()[-1]]  # once per job, each exact


def test_nothing_of_the_fault_session_outlives_it(faults: Faults, evidence_root: Path):
    """After all those kills (the conftest stops each test's hosts, so this one serves a job of
    its own first): no host, daemon or worker is left 10 s after spark.stop()."""
    faults.run(faults.config(), lambda job: None)
    hosts = hosts_naming(str(evidence_root))
    assert hosts, "no model host served the job"
    stop_active_session()
    assert wait_until(lambda: not hosts_naming(str(evidence_root)), 10), [
        p.pid for p in hosts_naming(str(evidence_root))
    ]
    assert wait_until(lambda: not descendants(lambda cmd: "pyspark.daemon" in cmd), 10)


# ------------------------------------------- a worker or an executor lost: Spark's retry


@pytest.fixture
def cluster_faults(cluster_spark, faulty_model: Path, evidence_root: Path, request):
    made = Faults(cluster_spark, faulty_model, evidence_root, request.node.name)
    try:
        yield made
    finally:  # the session is shared with other test files
        for key in (BATCH_CONF, CONF_HOST_LOG_DIR, CONF_IDLE_TIMEOUT):
            cluster_spark.conf.unset(key)


def scoring_worker(faults: Faults) -> tuple[int, psutil.Process]:
    """Hold the gated batch in its host; return that host's pid and a Python worker connected
    to it at that moment (so one in the middle of a task, not an idle reused one)."""
    host = faults.wait_for_arrival("predict")
    peers = [int(p) for p in (faults.dir / f"peers-{host}").read_text().split()]
    workers = [
        psutil.Process(p)
        for p in peers
        if alive_pid(p) and "pyspark.daemon" in " ".join(psutil.Process(p).cmdline())
    ]
    assert workers, f"no Python worker is connected to the host {host}: {peers}"
    return host, workers[0]


def test_python_worker_killed_while_scoring(cluster_faults: Faults):
    faults = cluster_faults
    config = faults.config("predict")
    seen: dict = {}

    def fault(job: Job) -> None:
        host, worker = scoring_worker(faults)
        assert job.running()
        worker.kill()
        assert wait_until(lambda: not alive(worker), 30)
        seen.update(host=host, worker=worker.pid)

    faults.run(config, fault)
    host = seen["host"]
    # Spark reran the task; the host outlived the worker that was waiting for its answer.
    assert alive_pid(host)
    assert faults.calls(GATE_ID)[0] == host and len(faults.calls(GATE_ID)) == 2
    assert sorted(faults.loads()) == sorted(set(faults.calls())), "a host was started again"
    assert wait_until(lambda: faults.host_logged("connection lost"), 30)


def test_executor_lost_while_scoring(cluster_faults: Faults):
    faults = cluster_faults
    config = faults.config("predict")
    seen: dict = {}

    def fault(job: Job) -> None:
        host, worker = scoring_worker(faults)
        [executor] = [p for p in worker.parents() if p in executor_jvms()]
        assert job.running()
        executor.kill()
        assert wait_until(lambda: not alive(executor), 30)
        seen.update(host=host, executor=executor.pid)

    faults.run(config, fault)
    # The lost executor's host followed it; every other host of this run watches a daemon of
    # an executor JVM that is alive.
    assert wait_until(lambda: not alive_pid(seen["host"]), 15)
    live = {p.pid for p in executor_jvms()}
    assert seen["executor"] not in live and live
    for proc in hosts_naming(str(faults.dir)):
        cmd = proc.cmdline()
        daemon = psutil.Process(int(cmd[cmd.index("--watch-pid") + 1]))
        assert alive(daemon) and daemon.ppid() in live, (proc.pid, daemon.pid, live)


def test_nothing_outlives_the_application(cluster_faults: Faults):
    faults = cluster_faults
    faults.run(faults.config(), lambda job: None)
    hosts = hosts_naming(str(faults.dir))
    assert hosts, "no model host served the job"
    sockets = [Path(p.cmdline()[p.cmdline().index("--socket") + 1]) for p in hosts]
    assert all(s.exists() for s in sockets)
    stop_active_session()
    assert wait_until(lambda: not any(alive(p) for p in hosts), 10), (
        "a model host outlived spark.stop() by more than 10 s"
    )
    assert not any(s.exists() for s in sockets), "a host left its socket behind"
    assert wait_until(lambda: not descendants(lambda cmd: "pyspark.daemon" in cmd), 10)
