"""A throw-away Spark standalone cluster on 127.0.0.1, and an executor-side PSS sampler.

The benchmark needs real executors (their own JVM and Python processes) to measure what a model
costs per executor; ``local[N]`` would run everything inside the driver. The Master and the
Worker are started from the pip PySpark with ``spark-class``, log into a temp dir, and are
stopped by PID (also on errors and Ctrl-C, since callers use this as a context manager).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: Executors inherit this variable (``spark.executorEnv``), and so do their Python daemon,
#: workers and the spark_pyfunc model hosts they start: it tells one application's processes
#: from everything else on a shared machine.
TAG_VAR = "SPARK_PYFUNC_BENCH_TAG"

HOST_MARKER = "spark_pyfunc._host"


class ClusterError(RuntimeError):
    """The standalone cluster could not be started; carries the tail of the process's log."""


def spark_class() -> Path:
    import pyspark

    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not path.exists():
        raise ClusterError(f"{path} not found: is this the pip PySpark?")
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
    """Poll a daemon's log until ``pattern`` shows up (the daemon is then ready)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{log.name} exited with {proc.returncode}:\n{_tail(log)}")
        if log.exists():
            match = regex.search(log.read_text(errors="replace"))
            if match:
                return match
        time.sleep(0.2)
    raise ClusterError(f"{log.name}: no {pattern!r} after {timeout:.0f} s:\n{_tail(log)}")


def stop_pid(proc: psutil.Process | subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM (so the Worker's shutdown hook kills its executors), then SIGKILL."""
    pid = proc.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(5)


@dataclass
class Cluster:
    master_url: str
    root: Path
    master: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)


def gpu_discovery_script(directory: Path, addresses: list[str]) -> Path:
    """A Spark resource discovery script that reports ``addresses`` as the machine's GPUs
    (real ones come from ``nvidia-smi``; fake ones let a machine without GPUs test the
    scheduling, since Spark only hands the addresses to tasks)."""
    script = directory / "gpus.sh"
    found = json.dumps({"name": "gpu", "addresses": [str(a) for a in addresses]})
    script.write_text(f"#!/bin/sh\necho '{found}'\n")
    script.chmod(0o755)
    return script


def nvidia_gpu_addresses() -> list[str]:
    """The indexes of this machine's NVIDIA GPUs (none without nvidia-smi or a GPU)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


@contextmanager
def standalone_cluster(
    cores: int,
    memory: str = "4g",
    timeout: float = 90.0,
    root: Path | None = None,
    gpus: list[str] | None = None,
) -> Iterator[Cluster]:
    """Start a Master and one Worker (``cores`` cores) on 127.0.0.1; stop both on exit.

    Web UIs bind to port 0 (an unused port), logs and the work dir live in a temp dir that is
    removed at the end. Executors use this Python (``PYSPARK_PYTHON``) and local dirs under the
    same temp dir, so nothing they write outlives the cluster. ``gpus``: the Worker offers
    these GPU addresses (``spark.worker.resource.gpu.*``, found by a discovery script that
    reports them); applications then ask for them with ``spark.executor.resource.gpu.amount``
    and ``spark.task.resource.gpu.amount``.
    """
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="spb-")) if root is None else root
    logs, work, local = root / "logs", root / "work", root / "local"
    for d in (logs, work, local):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_DIRS": str(local),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(logs),
        "SPARK_WORKER_DIR": str(work),
    }
    env.pop("SPARK_HOME", None)  # spark-class finds the pip PySpark's own home
    cluster = Cluster(master_url="", root=root, env=env)
    launcher = str(spark_class())
    try:
        master_log = logs / "master.log"
        with master_log.open("wb") as out:
            cluster.master = subprocess.Popen(
                [
                    launcher,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--webui-port",
                    "0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C goes to us; we stop it ourselves
            )
        found = _wait_for(
            master_log, r"Starting Spark master at (spark://[\d.]+:\d+)", cluster.master, timeout
        )
        _wait_for(master_log, r"I have been elected leader", cluster.master, timeout)
        cluster.master_url = found.group(1)
        worker_log = logs / "worker.log"
        resources: list[str] = []
        if gpus:
            properties = root / "worker.properties"
            script = gpu_discovery_script(root, gpus)
            properties.write_text(
                f"spark.worker.resource.gpu.amount={len(gpus)}\n"
                f"spark.worker.resource.gpu.discoveryScript={script}\n"
            )
            resources = ["--properties-file", str(properties)]
        with worker_log.open("wb") as out:
            cluster.worker = subprocess.Popen(
                [
                    launcher,
                    "org.apache.spark.deploy.worker.Worker",
                    cluster.master_url,
                    "--host",
                    "127.0.0.1",
                    "--webui-port",
                    "0",
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--work-dir",
                    str(work),
                    *resources,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        _wait_for(worker_log, r"Successfully registered with master", cluster.worker, timeout)
        yield cluster
    finally:
        for proc in (cluster.worker, cluster.master):
            if proc is not None:
                stop_pid(proc)
        if own_root:
            shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------ PSS sampling


def _tag_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(TAG_VAR)
    except (psutil.Error, OSError):
        return None


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every process started for the application ``tag`` (executor JVMs, Python, hosts)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if _tag_of(proc) == tag:
            found.append(proc)
    return found


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return ""


def _is_java(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "java"
    except (psutil.Error, OSError):
        return False


class PssSampler:
    """Sum the PSS of every Python process of one application's executor, every ``interval``.

    The Python processes are the executor JVM's descendants (PySpark daemon and workers) plus
    the spark_pyfunc model hosts (command line containing ``spark_pyfunc._host``) and their
    children: a host may have been reparented away from the JVM, so hosts are found by command
    line and matched to the application by the inherited :data:`TAG_VAR`. PSS counts pages
    shared between forked processes once in total, which is what a per-executor figure needs.
    """

    def __init__(self, tag: str, interval: float = 0.2, rescan: float = 1.0) -> None:
        self.tag = tag
        self.interval = interval
        self.rescan = rescan
        # (monotonic time, PSS bytes, processes, of which model hosts' PSS bytes)
        self.samples: list[tuple[float, int, int, int]] = []
        self._seen: dict[tuple[int, float], bool] = {}  # (pid, create time) -> is a root
        self._roots: list[psutil.Process] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _scan_roots(self) -> None:
        """Find (new) executor JVMs and model hosts of this application."""
        roots = []
        for proc in psutil.process_iter(["name"]):
            try:
                key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            is_root = self._seen.get(key)
            if is_root is None:
                cmd = _cmdline(proc)
                is_root = (
                    (_is_java(proc) and "CoarseGrainedExecutorBackend" in cmd) or HOST_MARKER in cmd
                ) and _tag_of(proc) == self.tag
                # A process seconds old has exec'd already: its command line is final.
                if is_root or time.time() - key[1] > 2.0:
                    self._seen[key] = is_root
            if is_root:
                roots.append(proc)
        self._roots = roots

    def _processes(self) -> list[psutil.Process]:
        """The roots and all their descendants, each once."""
        procs: dict[int, psutil.Process] = {}
        for root in self._roots:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            procs.update((proc.pid, proc) for proc in family)
        return list(procs.values())

    def python_processes(self) -> list[psutil.Process]:
        return [proc for proc in self._processes() if not _is_java(proc)]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by the executor's processes, by kind: ``jvm`` (the executor
        JVM, all its threads), ``workers`` (PySpark's daemon and Python workers) and ``host``
        (model hosts and their serving children). A process's reaped children count too
        (``children_user``), so a worker or forked child that has exited is not lost."""
        self._scan_roots()
        totals = {"jvm": 0.0, "workers": 0.0, "host": 0.0}
        for proc in self._processes():
            try:
                kind = (
                    "jvm"
                    if _is_java(proc)
                    else "host"
                    if HOST_MARKER in _cmdline(proc)
                    else "workers"
                )
                t = proc.cpu_times()
            except (psutil.Error, OSError):
                continue
            totals[kind] += t.user + t.system + t.children_user + t.children_system
        return totals

    def sample(self) -> tuple[int, int, int]:
        """(PSS of every Python process, how many, PSS of the model hosts among them)."""
        total, count, host = 0, 0, 0
        for proc in self.python_processes():
            # The command line first: an exiting process reads as an empty one (a fork host's
            # child at the end of its connection), and would pass for a worker.
            cmd = _cmdline(proc)
            if not cmd:
                continue
            try:
                pss = proc.memory_full_info().pss
            except (psutil.Error, OSError):
                continue  # exited between listing and reading: its pages are gone too
            is_host = HOST_MARKER in cmd
            total += pss
            count += 1
            host += pss if is_host else 0
        return total, count, host

    def _run(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_scan >= self.rescan:
                self._scan_roots()
                last_scan = now
            self.samples.append((time.monotonic(), *self.sample()))
            self._stop.wait(self.interval)

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> int | None:
        """Highest summed PSS seen between two ``time.monotonic()`` instants (None: no sample)."""
        top = self.peak_sample(start, end)
        return None if top is None else top[1]

    def peak_sample(
        self, start: float = float("-inf"), end: float = float("inf")
    ) -> tuple[float, int, int, int] | None:
        """The sample of highest summed PSS between two instants (None: no sample)."""
        window = [s for s in self.samples if start <= s[0] <= end]
        return max(window, key=lambda s: s[1], default=None)


def reap_tagged(tag: str, timeout: float = 30.0) -> list[str]:
    """Wait for an application's processes to exit; kill (by PID) and describe any left over.

    Called after ``SparkSession.stop()``: the Worker kills the executor JVM, the PySpark daemon
    follows, and model hosts must notice on their own. Anything still alive after ``timeout``
    is a leak worth reporting.
    """
    deadline = time.monotonic() + timeout
    alive = tagged_processes(tag)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    leaked = []
    for proc in alive:
        leaked.append(f"pid {proc.pid}: {_cmdline(proc)[:200]}")
        stop_pid(proc, grace=5.0)
    return leaked
