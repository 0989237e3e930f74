"""The executor's model host: ONE loaded copy of a model, served to all Python workers.

Spark runs a Python worker per running task, so a model loaded inside the workers costs one
copy per core. The host loads it once, lazily (the first worker that needs it starts it, see
_launcher.py), and answers batches over a Unix socket private to the user::

    python -m spark_pyfunc._host --model-dir D --socket S --log L --pid-file P \\
        --model-config JSON --watch-pid N --idle-timeout SECONDS \\
        --mode auto|prefork|thread|fork --processes P \\
        [--batching --batch-max-wait-ms MS --batch-max-rows R --batch-calls C]

The command line names spark_pyfunc so that operators find the process with ``ps``; a prefork
host's serving processes are named apart from it (``_prefork._name_child``).

This module is the supervisor, gunicorn's arbiter: the command line, loading the model,
choosing the mode, the listening socket and the host's lifecycle, and where each connection
is served. How a connection is answered is _serving.py's (``ModelServer``, batched serving);
the prefork serving processes are _prefork.py's (``Prefork``). Apart, each can be read and
changed without the others: serving knows no processes, prefork no requests.

Modes:

- ``prefork`` loads the model, freezes the loaded objects out of the garbage collector's reach
  (``gc.freeze()``, so reference-count-free pages stay shared) and forks P long-lived serving
  processes that all accept on the one socket: one loaded copy, P GILs, no fork per task. The
  parent only supervises (it replaces a child that dies and never runs predict: BLAS/OpenMP
  pools are not fork-safe once used).
- ``thread`` serves each connection on a thread of the one process: for models that must not
  be forked (they started threads, or hold a GPU context) or whose predict releases the GIL.
- ``fork`` forks a child per connection (per task): kept for comparison, it pays a fork and
  fresh copy-on-write faults on every task.
- ``auto`` (the default) picks ``prefork`` unless the loaded model made forking unsafe, then
  ``thread``, and logs why.

``--batching`` (see _batching.py) answers the requests of all connections in batches, one
predict call per batch: it needs every worker's requests in one process, so it serves on
threads whatever the mode asked for, and the log line that names the mode says so.

The host goes away by itself: after ``--idle-timeout`` seconds without a connection, within a
second of the ``--watch-pid`` process (the executor's Python daemon or JVM) going away, and on
SIGTERM. It then removes its socket and pid file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from spark_pyfunc._batching import Batcher
from spark_pyfunc._config import (
    add_host_arguments,
    serving_mode,
    usable_cpus,
)
from spark_pyfunc._faultpoints import hold
from spark_pyfunc._prefork import Prefork, _Activity, fork_child
from spark_pyfunc._rendezvous import (
    STATUS_ZOMBIE,
    ProcessError,
    ProcProcess,
    process,
    remove_pid_file,
    write_exit_status,
    write_pid_file,
    write_stage,
)
from spark_pyfunc._serving import (
    BatchedServing,
    ModelServer,
    _keep_request_buffers,
    _warm_up_wire,
    admit,
)
from spark_pyfunc._status import HostStatus
from spark_pyfunc.errors import HostError

__all__ = ["Host", "choose_mode", "main"]

logger = logging.getLogger("spark_pyfunc._host")

# How often the accept loop wakes to check the idle timer, the watched pid and children.
_TICK = 0.25
# Every worker of a wide executor may connect at once; the kernel caps this at somaxconn.
_BACKLOG = 1024
# How long children get to finish after SIGTERM before SIGKILL, when the host exits.
_CHILD_GRACE = 2.0


class _Watch:
    """The process whose end ends the host; create_time guards against pid reuse."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.proc: Any = None
        if pid is not None:
            with contextlib.suppress(*ProcessError):
                self.proc = process(pid)

    def alive(self) -> bool:
        if self.pid is None:
            return True
        if self.proc is None:
            return False
        try:
            return self.proc.is_running() and self.proc.status() != STATUS_ZOMBIE
        except ProcessError:
            return False


class Host:
    """The listening socket, its connections and the host's lifecycle."""

    def __init__(
        self,
        server: ModelServer,
        *,
        socket_file: str,
        mode: str,
        idle_timeout: float,
        watch: _Watch,
        processes: int = 1,
        batcher: Batcher | None = None,
    ) -> None:
        if mode not in ("prefork", "thread", "fork"):
            raise HostError(f"model host mode {mode!r} must be resolved before serving")
        if batcher is not None and mode != "thread":
            raise HostError(f"request batching needs the thread mode, not {mode!r}")
        self.server = server
        self.socket_file = socket_file
        self.mode = mode
        self.idle_timeout = idle_timeout
        self.watch = watch
        self.processes = max(int(processes), 1)
        self.listener: socket.socket | None = None
        self.socket_ino: int | None = None
        self.threads: set[threading.Thread] = set()
        self.children: set[int] = set()
        self.batcher = batcher
        # thread mode: what answers a connection on its thread
        self.serve_connection = (
            server.serve_connection
            if batcher is None
            else BatchedServing(server, batcher).serve_connection
        )
        #: The host's figures (_status.HostStatus), written as the supervising loop ticks.
        self.status: HostStatus | None = None
        # prefork only: the serving processes (made before any fork: see _prefork._Activity)
        self.prefork = (
            Prefork(server.serve_connection, self.processes, fork=self._fork)
            if mode == "prefork"
            else None
        )

    @property
    def workers(self) -> dict[int, int]:
        """prefork: slot -> pid of the serving process in it (empty in the other modes)."""
        return self.prefork.workers if self.prefork is not None else {}

    @property
    def activity(self) -> _Activity | None:
        """prefork only: the other modes see every connection in this process."""
        return self.prefork.activity if self.prefork is not None else None

    def bind(self) -> None:
        """Listen on a temporary name, then rename it into place: a client that finds the
        socket always finds a host that is ready."""
        directory = os.path.dirname(self.socket_file)
        tmp = os.path.join(directory, f".{os.getpid()}.tmp")
        for attempt in range(3):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                listener.bind(tmp)
                os.chmod(tmp, 0o600)
                listener.listen(_BACKLOG)
                os.rename(tmp, self.socket_file)
            except FileNotFoundError:
                # Another host, exiting, removed the directory once it was empty: recreate it.
                listener.close()
                if attempt == 2:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o700)
                    os.chmod(directory, 0o700)
                continue
            self.listener = listener
            self.socket_ino = os.stat(self.socket_file).st_ino
            if self.prefork is not None:  # a client that connects meanwhile waits in the backlog
                self.prefork.start(listener)
            return

    def serve(self) -> None:
        """Accept connections until idle, until the watched process is gone, or SIGTERM."""
        assert self.listener is not None
        self.listener.settimeout(_TICK)
        last_active = time.monotonic()
        while True:
            if self.prefork is not None:
                time.sleep(_TICK)  # the children accept; this process only supervises
                self.prefork.replace_dead()
            else:
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    conn = None
                if conn is not None:
                    self._start_connection(conn)
            if self.status is not None:
                self.status.tick()
            now = time.monotonic()
            if self._open_connections():
                last_active = now
            elif now - last_active > self.idle_timeout:
                logger.info("no connection for %.1fs: exiting", self.idle_timeout)
                return
            if not self.watch.alive():
                logger.info("watched process %s is gone: exiting", self.watch.pid)
                return

    def _start_connection(self, conn: socket.socket) -> None:
        if not admit(conn):
            return
        if self.mode == "thread":
            thread = threading.Thread(target=self.serve_connection, args=(conn,), daemon=True)
            thread.start()
            self.threads.add(thread)
            return
        pid = self._fork(lambda: self.server.serve_connection(conn), "connection child")
        conn.close()
        self.children.add(pid)

    def _fork(self, work: Any, what: str) -> int:
        """Fork a child that dies with this process, runs ``work`` and exits (every fork of
        the host, prefork's serving processes included, goes through here; the status file's
        shared counters get their slot for the child in ``status.fork``)."""
        return fork_child(work, what, fork=self.status.fork if self.status is not None else os.fork)

    # ----------------------------------------------------------------------- lifecycle

    def _open_connections(self) -> int:
        self.threads = {t for t in self.threads if t.is_alive()}
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            self.children.discard(pid)
        children_serving = self.prefork.total_active() if self.prefork else 0
        return len(self.threads) + len(self.children) + children_serving

    def close(self) -> None:
        """Remove the socket (if it is still ours), stop children, and remove the socket
        directory when nothing else is left in it."""
        with contextlib.suppress(OSError):
            if self.socket_ino is not None and os.stat(self.socket_file).st_ino == self.socket_ino:
                os.unlink(self.socket_file)
        if self.listener is not None:
            self.listener.close()
        if self.batcher is not None:
            self.batcher.stop()
        self._stop_children()
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.socket_file))

    def _stop_children(self) -> None:
        pids = self.children | set(self.workers.values())
        self.workers.clear()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _CHILD_GRACE
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                pids.discard(pid)
            time.sleep(0.02)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


# ------------------------------------------------------------------------ choosing a mode


def _thread_count() -> int:
    """Native threads of this process (Linux); 1 where /proc is unavailable."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _gpu_in_use() -> str | None:
    """Why the loaded model holds a GPU context, if it does (checked only where the model
    already imported torch: importing it here would cost seconds)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_initialized():
            return "the model initialised CUDA (torch): a GPU context cannot be forked"
    except Exception:  # a torch without CUDA support
        return None
    return None


def choose_mode(requested: str, threads_before: int, threads_after: int) -> tuple[str, str]:
    """The serving mode for ``requested`` and why (logged).

    ``auto`` forks unless forking is unsafe: a fork copies only the forking thread, so threads
    the model started while loading (onnxruntime's pools, a background refresher) would be
    missing, with their locks possibly held, in every child; a GPU context cannot be shared.
    Threads that were there before the load (numpy's BLAS pool) are the host's own and are
    fork-safe (OpenBLAS re-creates them in the child).
    """
    if requested != "auto":
        return requested, "asked for"
    gpu = _gpu_in_use()
    if gpu is not None:
        return "thread", gpu
    started = threads_after - threads_before
    if started > 0:
        return "thread", (
            f"loading the model started {started} native thread(s) ({threads_after} in the "
            "process): forking would leave them behind"
        )
    return "prefork", "the loaded model runs no threads of its own and holds no GPU context"


# ------------------------------------------------------------------------------ the main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spark_pyfunc._host", description="Serve one model to a Spark executor."
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--log", required=True, help="log file (appended to)")
    parser.add_argument("--pid-file")
    parser.add_argument("--model-config", default="null", help="JSON object or null")
    parser.add_argument("--model-uri", help="the model as the user named it (status file)")
    parser.add_argument("--model-sha256", help="the shipped model's sha256 (status file)")
    parser.add_argument("--watch-pid", type=int, help="exit soon after this process is gone")
    add_host_arguments(parser)  # --idle-timeout, --mode, --processes, --batching, ...
    parser.add_argument(
        "--detach",
        action="store_true",
        help="fork: the parent prints the host's pid on stdout and exits at once, so the "
        "process that started the host has nothing to reap later; the host logs to --log",
    )
    return parser.parse_args(argv)


def _setup_logging(path: str) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _memory() -> str:
    proc = process()
    if isinstance(proc, ProcProcess):  # no psutil: /proc's figures, in KiB
        sizes = {k: v * 1024 for k, v in proc.memory_kib().items()}
        rss, pss = sizes.get("rss", 0), sizes.get("pss")
    else:
        try:
            info = proc.memory_full_info()
        except ProcessError:  # smaps unreadable here: RSS only
            info = proc.memory_info()
        rss, pss = info.rss, getattr(info, "pss", None)
    pss_text = f"{pss / 2**20:.1f} MiB" if pss is not None else "n/a"
    return f"rss={rss / 2**20:.1f} MiB pss={pss_text}"


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    if path is not None:
        write_pid_file(path, os.getpid())
    try:
        yield
    finally:
        remove_pid_file(path, os.getpid())


def _detach(log_path: str) -> None:
    """Fork: the parent tells the starter the host's pid (on stdout, a pipe) and exits, so
    the starter reaps it at once; the child, the host, sends its stdout to the log.

    The child stays in the launcher's process group (the starter made the launcher a session
    leader): a launcher killed before it printed the pid leaves a host nobody knows of, and
    the starter ends it by that group (see _client)."""
    hold("launcher.forking")
    pid = os.fork()
    if pid:
        hold("launcher.forked")
        os.write(1, f"{pid}\n".encode())
        os._exit(0)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    model_config = json.loads(args.model_config)
    if args.detach:
        _detach(args.log)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _setup_logging(args.log)
    logger.info(
        "model host starting: pid=%d python=%s (%s) args=%s",
        os.getpid(),
        sys.executable,
        sys.version.split()[0],
        sys.argv[1:],
    )
    host: Host | None = None
    stage = "loading"
    ended: dict | None = None  # the exit record, where the host wrote one
    with _pid_file(args.pid_file):
        write_stage(args.pid_file, stage)
        status = HostStatus(
            pid_file=args.pid_file,
            socket_file=args.socket,
            log_file=args.log,
            model_dir=args.model_dir,
            model_uri=args.model_uri,
            model_sha256=args.model_sha256,
            mode_asked=args.mode,
            batching=args.batching,
        )
        try:
            # Imported here, not at the top: the client imports this module too.
            from spark_pyfunc._loading import load_for_scoring

            threads_before = _thread_count()  # numpy's BLAS pool and the like: the host's own
            started = time.perf_counter()
            model = load_for_scoring(args.model_dir, model_config, args.model_uri)
            load_seconds = time.perf_counter() - started
            size = getattr(model.metadata, "model_size_bytes", None)
            logger.info(
                "model %s loaded in %.2fs (size on disk: %s bytes); memory after load: %s",
                args.model_dir,
                load_seconds,
                size,
                _memory(),
            )
            threads_after = _thread_count()
            _keep_request_buffers()  # after the load: see its docstring
            asked = args.mode
            mode, why = choose_mode(asked, threads_before, threads_after)
            server = ModelServer(model)
            status.instrument(server)
            batcher = None
            if args.batching:
                batched_mode, _ = serving_mode(asked, True, gpus=False)
                if mode != batched_mode:
                    mode = batched_mode
                    why = "request batching needs the requests of every worker in one process"
                batcher = Batcher(
                    server.handle,
                    max_wait=args.batch_max_wait_ms / 1000.0,
                    max_rows=args.batch_max_rows,
                    max_calls=args.batch_calls,
                    on_call=status.meter.waited,
                )
                why += (
                    f"; batching requests up to {args.batch_max_rows} rows, waiting at most "
                    f"{args.batch_max_wait_ms:g} ms, {args.batch_calls} call(s) at once"
                )
            if mode in ("prefork", "fork") and threads_after > threads_before:
                logger.warning(
                    "%s mode was asked for, but loading the model started %d thread(s): the "
                    "forked children will not have them (auto mode would serve on threads)",
                    mode,
                    threads_after - threads_before,
                )
            processes = args.processes if args.processes is not None else usable_cpus()
            if mode in ("prefork", "fork"):
                _warm_up_wire()
                gc.freeze()  # children then leave the loaded objects' pages shared
            host = Host(
                server,
                socket_file=args.socket,
                mode=mode,
                idle_timeout=args.idle_timeout,
                watch=_Watch(args.watch_pid),
                processes=processes,
                batcher=batcher,
            )
            host.status = status
            host.bind()
            stage = "serving"
            write_stage(args.pid_file, stage)
            extent = f" with {host.processes} serving processes" if mode == "prefork" else ""
            logger.info(
                "serving %s in %s mode%s (%s mode: %s)", args.socket, mode, extent, asked, why
            )
            status.serving(host, mode, load_seconds)
            host.serve()
        except SystemExit as exc:
            logger.info("exiting on signal (code %s)", exc.code)
            code = exc.code if isinstance(exc.code, int) else 1
            name = signal.Signals(code - 128).name if code - 128 in signal.valid_signals() else None
            ended = {"code": code, "signal": name, "stage": stage}
            write_exit_status(args.pid_file, ended)
        except Exception as exc:
            logger.exception("model host failed")
            error = f"{type(exc).__name__}: {exc}"
            ended = {"code": 1, "stage": stage, "error": error}
            write_exit_status(args.pid_file, ended)
            return 1
        finally:
            gone = host is not None and not host.watch.alive()
            with contextlib.suppress(Exception):  # the figures must not stop the cleanup
                status.stopped(ended, watched_gone=gone)
            if host is not None:
                host.close()
            logger.info("model host %d stopped", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
