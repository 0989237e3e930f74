"""Model hosts and client processes for the harnesses that measure the host without Spark.

scripts/host_scaling.py and scripts/batching_harness.py (and gpu_bench.py's
``--without-spark``) each start a host of a model directory, fork client processes that
relay requests to it the way Spark's Python workers do, and stop everything at the end.
This module does it once, through the package's own launcher (HostSpec/HostLauncher: the
host's files are named there, never rebuilt here), so that a harness measures the host a
worker would start and leaves no host or client behind, even when it fails.

Example::

    spec = host_spec(model_dir, root / "state", mode="thread")
    with Host(spec) as host, Clients(2, worker, lambda i: (spec, i, barrier, queue)) as clients:
        ...  # measure; host.pid, host.cpu_seconds(), host.log_text()
        clients.join()
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from spark_pyfunc._launcher import HostLauncher, HostSpec

__all__ = ["Clients", "Host", "host_spec"]


def host_spec(
    model_dir: str | os.PathLike[str], state_dir: str | os.PathLike[str], **settings: Any
) -> HostSpec:
    """A HostSpec of its own (a fresh key) for ``model_dir``, watched by this process (the
    host ends with the harness), idle for at most 60 s unless ``settings`` say otherwise.

    Args:
        model_dir: the saved model the host serves.
        state_dir: where the host's lock, pid and log files go.
        settings: any other HostSpec field (mode, processes, batching, model_config, env...).
    """
    settings.setdefault("idle_timeout", 60.0)
    settings.setdefault("watch_pid", os.getpid())
    return HostSpec(
        model_dir=str(model_dir), key=uuid.uuid4().hex[:16], state_dir=str(state_dir), **settings
    )


class Host:
    """The host of ``spec``, started as a worker starts it; stopped and waited for on exit."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.launcher = HostLauncher(spec)
        self.process: psutil.Process | None = None

    def start(self) -> Host:
        """Start (or adopt) the host and wait until it serves; a greeted connection is opened
        and closed, so the host is loaded and listening when this returns."""
        conn, pid = self.launcher.connect()
        conn.close()
        self.process = psutil.Process(pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "the host is not started"
        return self.process.pid

    def cpu_seconds(self, tree: bool = False) -> float:
        """The host's CPU seconds; with ``tree``, those of its serving children too (the ones
        it reaped and the live ones)."""
        assert self.process is not None, "the host is not started"
        times = self.process.cpu_times()
        total = times.user + times.system
        if tree:
            total += times.children_user + times.children_system
            for child in self.process.children(recursive=True):
                try:
                    t = child.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
        return total

    def log_text(self) -> str:
        """The host's log so far ('' if it wrote none)."""
        path = Path(self.launcher.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the host, wait for it, and SIGKILL whatever of it (serving children
        included) outlives ``timeout``."""
        if self.process is None:
            return
        try:
            tree = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if tree:
            self.process.terminate()
            _, alive = psutil.wait_procs(tree, timeout=timeout)
            for proc in alive:
                proc.kill()
            psutil.wait_procs(alive, timeout=timeout)
        self.process = None

    def __enter__(self) -> Host:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Clients:
    """``count`` client processes, process ``i`` running ``target(*args(i))``.

    ``context`` is multiprocessing's: ``fork`` (the default) lets the clients use the
    harness's own classes as they are; ``spawn`` gives each a clean interpreter (what CUDA
    needs). The barriers and queues in ``args`` come from the same context
    (``multiprocessing.get_context(context)``). On leaving a ``with`` block, clients still
    running are ended.
    """

    def __init__(
        self,
        count: int,
        target: Callable[..., None],
        args: Callable[[int], tuple[Any, ...]],
        context: str = "fork",
    ) -> None:
        self.context = multiprocessing.get_context(context)
        self.procs = [self.context.Process(target=target, args=args(i)) for i in range(count)]
        for proc in self.procs:
            proc.start()

    def __len__(self) -> int:
        return len(self.procs)

    def join(self, timeout: float = 60.0) -> None:
        """Wait for every client to end.

        Raises:
            RuntimeError: a client failed (non-zero exit) or did not end within ``timeout``.
        """
        for proc in self.procs:
            proc.join(timeout)
        stuck = [p.pid for p in self.procs if p.is_alive()]
        failed = [(p.pid, p.exitcode) for p in self.procs if p.exitcode not in (0, None)]
        self.terminate()
        if stuck or failed:
            raise RuntimeError(f"clients did not end well: stuck {stuck}, failed {failed}")

    def terminate(self) -> None:
        """End the clients still running (after a failure elsewhere in the harness)."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(10)

    def __enter__(self) -> Clients:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.terminate()
