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
from pathlib import Path

import psutil
import pytest
from conftest import stop_active_session
from support.faults import (  # noqa: F401 (faulty_model, evidence_root, faults: fixtures)
    BATCH_CONF,
    CONF_HOST_LOG_DIR,
    CONF_IDLE_TIMEOUT,
    GATE_ID,
    REPEATS,
    Faults,
    Job,
    alive,
    alive_pid,
    descendants,
    evidence_root,
    executor_jvms,
    faults,
    faulty_model,
    hosts_naming,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

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
