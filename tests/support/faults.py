"""The fault tests' shared machinery: a faulty model, its gates and records, a job on a thread.

The model (host_models.Faulty) stops at gate files until the test has delivered its fault, so a
job is provably still running when the fault lands; the package's own stages are held the same
way through spark_pyfunc._faultpoints (``Faults.env``). Used by every tests/test_cluster_*
module that kills something.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import host_models
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import FAULT_CONF, FAULT_MASTER
from host_models import Faulty
from pyspark.sql import functions as F

from spark_pyfunc import save_model, spark_udf
from spark_pyfunc._faultpoints import ENV as FAULTPOINTS_ENV

CONF_HOST_LOG_DIR = "spark.pyfunc.host.logDir"
CONF_IDLE_TIMEOUT = "spark.pyfunc.host.idleTimeout"
MODE_CONF = "spark.pyfunc.host.mode"
BATCHING_CONF = "spark.pyfunc.host.batching.enabled"

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
def faults(fault_spark, faulty_model: Path, evidence_root: Path, request) -> Iterator[Faults]:
    conf = fault_spark.sparkContext.getConf()
    assert conf.get("spark.task.maxFailures") == FAULT_CONF["spark.task.maxFailures"] == "1"
    assert fault_spark.sparkContext.master == FAULT_MASTER
    try:
        yield Faults(fault_spark, faulty_model, evidence_root, request.node.name)
    finally:  # Faults.serve_in: the next test's hosts serve as the defaults say
        for key in (MODE_CONF, BATCHING_CONF):
            fault_spark.conf.unset(key)


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
        """The model_config arming ``gates``: the model's own (``import``, ``load``,
        ``predict``) and the package's stages (``launcher.forked``: see _faultpoints)."""
        return {
            "gates_dir": str(self.dir),
            "gates": [g for g in gates if "." not in g],
            "stages": [g for g in gates if "." in g],
            "gate_id": GATE_ID,
        }

    def serve_in(self, mode: str) -> None:
        """Serve the next jobs' hosts in ``mode``: a host mode, or ``batching`` (thread mode
        with request batching on)."""
        if mode == "batching":
            self.spark.conf.set(BATCHING_CONF, "true")
        else:
            self.spark.conf.set(MODE_CONF, mode)

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
        stages = config.get("stages")
        env = {FAULTPOINTS_ENV: f"{self.dir}:{','.join(stages)}"} if stages else None
        predict = spark_udf(
            self.spark, str(self.model), model_config=config, scope="executor", extra_env=env
        )
        df = self.spark.range(0, ROWS, 1, PARTITIONS).withColumn("x", F.col("id") * 0.25 + 1.0)
        return df.select("id", predict("id", "x").alias("y"))

    def run(self, config: dict, fault: Callable[[Job], None]) -> None:
        """Run the job on a thread and ``fault`` here, then check the job's exact result."""
        job = Job(self.frame(config))
        try:
            fault(job)
        finally:  # whatever happened, let the job end
            for gate in ("import", "load", "predict", *config.get("stages", ())):
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


