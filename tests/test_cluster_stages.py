"""Every stage of a model host's life, killed there, on a real cluster with no task retries.

``fault_spark``: one executor with 2 cores and ``spark.task.maxFailures=1``, so only the
worker's own restart can save a job. Each test arms one stage (spark_pyfunc._faultpoints for
the package's own stages, the model's gates for its import and load): the process that reaches
it says so and waits, the test SIGKILLs the process the stage belongs to, then opens the
gate. So the signal provably lands at that stage, whatever the machine's speed. Each test
checks the job's exact result (Faults.run) and the evidence of what the worker did.

The stages, in order: the launcher before and after it forks the host, the host while it
imports and loads the model, the host between ready and its first request, a prefork serving
process before it accepts, and the prefork supervisor while it replaces a serving process.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from support.faults import (  # noqa: F401 (faulty_model, evidence_root, faults: fixtures)
    Faults,
    Job,
    alive,
    alive_pid,
    evidence_root,
    faults,
    faulty_model,
    hosts_naming,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Host modes, and batching (which serves on threads).
MODES = ["prefork", "thread", "fork", "batching"]


def host_processes(faults: Faults) -> list[psutil.Process]:
    """Every live process of this test's hosts: launchers, hosts and their children."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "spark_pyfunc._host" in cmd and any(str(faults.dir) in c for c in cmd) and alive(proc):
            found.append(proc)
    return found


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stage", ["launcher.forking", "launcher.forked"])
def test_launcher_killed_before_it_reports_the_host(faults: Faults, stage: str, mode: str):
    """SIGKILL to ``python -m spark_pyfunc._host --detach`` before it forks the host, or after
    it forked it but before it printed the host's pid: the worker ends whatever the launcher
    forked and starts the host again; the job ends exact."""
    faults.serve_in(mode)
    seen: dict = {}

    def fault(job: Job) -> None:
        launcher = faults.wait_for_arrival(stage)
        assert "--detach" in psutil.Process(launcher).cmdline()
        forked = [
            p.pid
            for p in host_processes(faults)
            if p.pid != launcher and os.getpgid(p.pid) == launcher
        ]
        assert bool(forked) == (stage == "launcher.forked"), forked
        faults.kill_host(launcher, job)
        seen.update(launcher=launcher, forked=forked)

    faults.run(faults.config(stage), fault)
    launcher, forked = seen["launcher"], seen["forked"]
    assert faults.worker_logged(f"launcher (pid {launcher}) was killed by SIGKILL")
    # The host the dead launcher forked was ended with it, and never served.
    assert wait_until(lambda: not any(alive_pid(pid) for pid in forked), 30), forked
    served = set(faults.calls())
    assert served and not served & set(forked), (served, forked)


@pytest.mark.parametrize("mode", ["thread", "fork", "batching"])
@pytest.mark.parametrize("gate", ["import", "load"])
def test_host_killed_while_it_imports_or_loads_in_every_mode(faults: Faults, gate: str, mode: str):
    """The model's import and load_context (the prefork default is in test_cluster_faults)."""
    faults.serve_in(mode)
    killed: list[int] = []

    def fault(job: Job) -> None:
        pid = faults.wait_for_arrival(gate)
        faults.kill_host(pid, job)
        killed.append(pid)

    faults.run(faults.config(gate), fault)
    [pid] = killed
    assert faults.worker_logged(f"(pid {pid}) was killed before it was ready, while loading")
    served = set(faults.calls())
    assert served and pid not in served


@pytest.mark.parametrize("mode", MODES)
def test_host_killed_between_ready_and_its_first_request(faults: Faults, mode: str):
    """SIGKILL to the host once it has greeted its first connection, before it read a
    request: the worker's request is lost with it, so it starts a new host and resends."""
    faults.serve_in(mode)
    seen: dict = {}

    def fault(job: Job) -> None:
        holder = faults.wait_for_arrival("host.ready")
        [host] = hosts_naming(str(faults.dir))
        if mode in ("thread", "batching"):
            assert holder == host.pid
        else:  # a prefork serving process or a fork mode connection child greets
            assert psutil.Process(holder).ppid() == host.pid
        faults.kill_host(host.pid, job)
        seen["host"] = host.pid

    faults.run(faults.config("host.ready"), fault)
    host = seen["host"]
    assert faults.loads()[0] == host and len(faults.loads()) == 2
    assert host not in faults.calls()
    assert faults.worker_logged(f"lost the model host (pid {host}) during a request")


def test_prefork_serving_process_killed_before_it_accepts(faults: Faults):
    """A serving process killed as soon as it is forked: the supervisor replaces it, and the
    job is served by the one loaded copy."""
    faults.serve_in("prefork")
    seen: dict = {}

    def fault(job: Job) -> None:
        child = faults.wait_for_arrival("child.started")
        [host] = hosts_naming(str(faults.dir))
        assert psutil.Process(child).ppid() == host.pid
        assert job.running(), "the job ended before the fault"
        os.kill(child, signal.SIGKILL)
        assert wait_until(lambda: not alive_pid(child), 30)
        faults.open("child.started")
        seen.update(host=host.pid, child=child)

    faults.run(faults.config("child.started"), fault)
    assert faults.loads() == [seen["host"]]
    assert set(faults.calls()) == {seen["host"]}
    assert wait_until(lambda: faults.host_logged(f"serving process {seen['child']} exited"), 30)


def test_prefork_supervisor_killed_while_it_replaces_a_serving_process(faults: Faults):
    """A serving process dies mid-request; while the supervisor is replacing it, the
    supervisor is killed too (its other serving processes die with it): the worker starts a
    new host and sends its unanswered requests again."""
    faults.serve_in("prefork")
    seen: dict = {}

    def fault(job: Job) -> None:
        host = faults.wait_for_arrival("predict")
        child = int((faults.dir / f"at-predict-{host}").read_text())
        assert child != host, "the predict gate was not reached in a prefork serving process"
        os.kill(child, signal.SIGKILL)
        assert faults.wait_for_arrival("supervisor.replacing") == host
        faults.kill_host(host, job)
        seen.update(host=host, child=child)

    faults.run(faults.config("predict", "supervisor.replacing"), fault)
    host = seen["host"]
    loads = faults.loads()
    assert loads[0] == host and len(loads) == 2
    assert faults.worker_logged(f"lost the model host (pid {host}) during a request")
    assert faults.host_logged(f"serving process {seen['child']} exited")
