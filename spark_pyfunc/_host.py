"""The executor's model host: ONE loaded copy of a model, served to all Python workers.

Spark runs a Python worker per running task, so a model loaded inside the workers costs one
copy per core. The host loads it once, lazily (the first worker that needs it starts it, see
client.py), and answers batches over a Unix socket private to the user::

    python -m spark_pyfunc._host --model-dir D --socket S --log L --pid-file P \\
        --model-config JSON --watch-pid N --idle-timeout SECONDS \\
        --mode auto|prefork|thread|fork --processes P \\
        [--batching --batch-max-wait-ms MS --batch-max-rows R --batch-calls C]

The command line names spark_pyfunc so that operators find the process with ``ps``; a prefork
host's serving processes are named apart from it (:func:`_name_child`).

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
import ctypes
import gc
import json
import logging
import mmap
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from spark_pyfunc._batching import Batcher
from spark_pyfunc._config import (
    BATCH_CALLS,
    BATCH_MAX_ROWS,
    BATCH_MAX_WAIT_MS,
    DEFAULT_MODE,
    IDLE_TIMEOUT,
    MODES,
    usable_cpus,
)
from spark_pyfunc._rendezvous import (
    STATUS_ZOMBIE,
    ProcessError,
    ProcProcess,
    process,
    remove_pid_file,
    write_exit_status,
    write_pid_file,
)
from spark_pyfunc._status import HostStatus
from spark_pyfunc._wire import (
    PeerClosed,
    decode_arrow_type,
    frame_to_arrow_bytes,
    prediction_to_arrow_bytes,
    recv_message,
    request_to_frame,
    send_message,
    tune_socket,
)
from spark_pyfunc.errors import HostError

logger = logging.getLogger("spark_pyfunc._host")

# How often the accept loop wakes to check the idle timer, the watched pid and children.
_TICK = 0.25
# Every worker of a wide executor may connect at once; the kernel caps this at somaxconn.
_BACKLOG = 1024
# How long children get to finish after SIGTERM before SIGKILL, when the host exits.
_CHILD_GRACE = 2.0
# A prefork child that is busy takes a further connection only once it has waited this long
# unaccepted: every child is then busy, and the client must get its greeting well within
# client._GREETING_TIMEOUT rather than queue behind a task that holds its connection.
_OVERFLOW_AFTER = 0.2


class Invokable(Protocol):
    """What the server needs of a model: loading.PyFuncModel, or a fake in tests."""

    def invoke(self, method: str, data: Any, params: dict | None = None) -> Any: ...


# ---------------------------------------------------------------------------- the server


class ModelServer:
    """Answers the requests of a connection with one loaded model.

    Knows nothing of processes or the socket's lifecycle, so it can be tested with any object
    that has ``invoke``.
    """

    def __init__(self, model: Invokable, *, host_pid: int | None = None) -> None:
        self.model = model
        self.host_pid = os.getpid() if host_pid is None else host_pid

    def handle(self, header: dict, payload: bytes | bytearray) -> tuple[dict, Any]:
        """One request -> (response header, response payload); a failure becomes an error
        response carrying its type, message and traceback, so the host keeps serving."""
        try:
            method = header["method"]
            rows = int(header["rows"])
            frame = request_to_frame(payload)
            if len(frame.columns) == 0:  # Arrow keeps no row count without columns
                frame = frame.reindex(range(rows))
            if len(frame) != rows:
                raise ValueError(f"request says {rows} rows but its batch has {len(frame)}")
            output = self.model.invoke(method, frame, header.get("params"))
            # The UDF's result type, when the request carries it, types the nested outputs
            # (a column of dicts is a map, not a struct of every key seen).
            hint = header.get("result_type")
            count, body = prediction_to_arrow_bytes(
                output,
                what=f"output of the model's {method}",
                result_type=decode_arrow_type(hint) if hint else None,
            )
        except Exception as exc:  # the model's own errors are answered, not fatal
            logger.warning("%s failed: %s: %s", header.get("method"), type(exc).__name__, exc)
            return {
                "ok": False,
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }, b""
        return {"ok": True, "rows": count}, body

    def greet(self, conn: socket.socket) -> None:
        """Tell a new client that the host is ready, and its pid."""
        send_message(conn, {"ok": True, "pid": self.host_pid})

    def serve_connection(self, conn: socket.socket) -> None:
        """Greet the client, then answer its requests, one per batch, until it closes the
        connection. A pipelining client's next requests wait in the socket meanwhile: each
        is read once the previous answer is out."""
        with conn:
            try:
                self.greet(conn)
                while True:
                    header, payload = recv_message(conn)
                    send_message(conn, *self.handle(header, payload))
            except PeerClosed:
                pass
            except OSError as exc:
                logger.info("connection lost: %s", exc)


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (None where SO_PEERCRED is unavailable)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _release_free_memory() -> None:
    """Hand the memory a finished connection freed back to the kernel: glibc's malloc and
    Arrow's pool keep freed pages for reuse, and in a prefork child every such page is
    private to it, so an idle child would hold its last task's working buffers."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    pa.default_memory_pool().release_unused()


#: glibc's mallopt() parameters (malloc.h) and the values the host sets: where glibc's own
#: adaptive thresholds end up once a process has freed blocks of up to 32 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20
#: Environment variables by which a user sets those thresholds: theirs win.
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _keep_request_buffers() -> None:
    """Let glibc's malloc reuse one request's freed buffers for the next request.

    A request's batch, its pandas columns and the model's arrays are blocks of hundreds of KiB.
    With glibc's default thresholds such blocks are mmap()ed, or trimmed off the heap's top,
    when freed, so every request faults its pages in again: a fifth of a serving process's CPU
    per request of the benchmark's table model (scripts/host_scaling.py; docs/benchmark.md).
    Fixed thresholds keep them in the heap while a connection lasts;
    :func:`_release_free_memory` still hands them back when it ends.

    Set once the model is loaded, not before: a model's load frees many blocks of up to tens
    of MiB (an unpickled forest's temporary copies) between the ones it keeps, and in the heap
    those would stay resident. With the thresholds set before the load, a host holding a
    208 MiB scikit-learn forest held 602 MiB of PSS instead of 394.
    """
    if any(name in os.environ for name in _MALLOC_SETTINGS):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _die_with_parent(parent_pid: int) -> None:
    """Make a forked child die with the host (Linux), so no child outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the host died before prctl took effect
        os._exit(1)


def _name_child() -> None:
    """Tell a forked child apart from its parent in ``ps -o pid,ppid,comm``, ``top`` and
    ``pgrep``: the kernel's name of the process (``/proc/PID/comm``), which a fork copies.

    The command line (``ps aux``) stays the host's, so ``grep spark_pyfunc._host`` finds
    every process of a host. Rewriting it (setproctitle) was tried: with it, a Spark job
    through a prefork host timed out in tests/test_host.py and passed without it.
    """
    with contextlib.suppress(OSError, AttributeError):
        pr_set_name = 15
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_name, b"spf-host-child", 0, 0, 0)


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


class _Activity:
    """Open connections per prefork child, in memory shared with the parent (an anonymous
    mapping made before the fork): the parent's idle timer must count connections that only
    its children see. Each child writes its own slot; aligned 8-byte stores are atomic."""

    def __init__(self, slots: int) -> None:
        self._map = mmap.mmap(-1, 8 * max(slots, 1))
        self._counts = (ctypes.c_int64 * max(slots, 1)).from_buffer(self._map)

    def set(self, slot: int, connections: int) -> None:
        self._counts[slot] = connections

    def total(self) -> int:
        return sum(self._counts)


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
        # prefork: slot -> pid of the serving process in it
        self.workers: dict[int, int] = {}
        # prefork only: the other modes see every connection in this process
        self.activity = _Activity(self.processes) if mode == "prefork" else None
        self.batcher = batcher
        #: The host's figures (_status.HostStatus), written as the supervising loop ticks.
        self.status: HostStatus | None = None

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
            # prefork: a client that connects before a child is up waits in the backlog
            for slot in range(self.processes if self.mode == "prefork" else 0):
                self._spawn(slot)
            return

    def serve(self) -> None:
        """Accept connections until idle, until the watched process is gone, or SIGTERM."""
        assert self.listener is not None
        self.listener.settimeout(_TICK)
        last_active = time.monotonic()
        while True:
            if self.mode == "prefork":
                time.sleep(_TICK)  # the children accept; this process only supervises
                self._replace_dead_workers()
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

    def _admit(self, conn: socket.socket) -> bool:
        """Refuse a peer of another uid (closing the connection); ready an admitted one."""
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            logger.warning(
                "refused a connection from uid %d (this host serves uid %d)", uid, os.getuid()
            )
            conn.close()
            return False
        conn.settimeout(None)
        tune_socket(conn)
        return True

    def _start_connection(self, conn: socket.socket) -> None:
        if not self._admit(conn):
            return
        if self.mode == "thread":
            target = self.server.serve_connection if self.batcher is None else self._serve_batched
            thread = threading.Thread(target=target, args=(conn,), daemon=True)
            thread.start()
            self.threads.add(thread)
            return
        pid = self._fork(lambda: self.server.serve_connection(conn), "connection child")
        conn.close()
        self.children.add(pid)

    def _serve_batched(self, conn: socket.socket) -> None:
        """A connection whose requests go through the batcher, with every other one's.

        A client may send several requests before it reads an answer (pipelining), so this
        thread reads them as they come and queues each in the batcher at once, where it can
        join the model's next call while an earlier one is being answered; a writer thread
        waits for the answers in request order and sends them back. Reading and writing on
        two threads also means that a large answer never waits for a large request to be
        read, or the other way round.
        """
        batcher = self.batcher
        assert batcher is not None
        connection = batcher.connected()
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        writer = threading.Thread(target=self._answer_in_order, args=(conn, answers), daemon=True)
        with conn:
            try:
                self.server.greet(conn)
                writer.start()
                while True:
                    header, payload = recv_message(conn)
                    answers.put(batcher.enqueue(header, payload, connection))
            except PeerClosed:
                pass
            except OSError as exc:
                logger.info("connection lost: %s", exc)
            except RuntimeError as exc:  # the batcher stopped: the host is exiting
                logger.info("connection closed: %s", exc)
            finally:
                batcher.disconnected(connection)  # what it left queued never runs
                answers.put(None)
                if writer.is_alive():
                    writer.join()

    def _answer_in_order(self, conn: socket.socket, answers: queue.SimpleQueue[Any]) -> None:
        """Send a batched connection's answers in the order of its requests; a failed send
        shuts the connection down, which ends its reader too."""
        assert self.batcher is not None
        while (request := answers.get()) is not None:
            reply = self.batcher.wait(request)
            try:
                send_message(conn, *reply)
            except OSError as exc:
                logger.info("connection lost: %s", exc)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                return

    def _fork(self, work: Any, what: str) -> int:
        """Fork a child that dies with this process, runs ``work`` and exits."""
        parent = os.getpid()
        pid = self.status.fork() if self.status is not None else os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _die_with_parent(parent)
                work()
            except BaseException:
                logger.exception("%s failed", what)
                code = 1
            finally:
                os._exit(code)
        return pid

    # ------------------------------------------------------------------------- prefork

    def _spawn(self, slot: int) -> None:
        assert self.activity is not None
        self.activity.set(slot, 0)
        self.workers[slot] = self._fork(lambda: self._serve_slot(slot), "serving process")

    def _replace_dead_workers(self) -> None:
        for slot, pid in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            logger.warning("serving process %d exited (%s): replacing it", pid, _exit_text(status))
            self._spawn(slot)

    def _serve_slot(self, slot: int) -> None:
        """A prefork child: accept on the shared socket, one connection at a time while
        another child is free; a connection left waiting means every child is busy, so this
        one takes it on a thread rather than keep a worker waiting for its greeting."""
        assert self.listener is not None and self.activity is not None
        activity, listener = self.activity, self.listener
        _name_child()
        listener.settimeout(0)  # several processes accept: one wins, the others get EAGAIN
        wake_r, wake_w = os.pipe()
        active: set[threading.Thread] = set()
        waiting_since: float | None = None

        def serve(conn: socket.socket) -> None:
            try:
                self.server.serve_connection(conn)
            finally:
                _release_free_memory()
                os.write(wake_w, b"x")

        logger.info("serving process %d ready (slot %d)", os.getpid(), slot)
        while True:
            readable, _, _ = select.select([listener, wake_r], [], [], _TICK)
            if wake_r in readable:
                os.read(wake_r, 64)
            active = {t for t in active if t.is_alive()}
            activity.set(slot, len(active))
            if listener not in readable:
                waiting_since = None
                continue
            if active:
                now = time.monotonic()
                waiting_since = now if waiting_since is None else waiting_since
                if now - waiting_since < _OVERFLOW_AFTER:
                    time.sleep(_OVERFLOW_AFTER / 4)  # a free child may take it meanwhile
                    continue
            waiting_since = None
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another child took it
            if not self._admit(conn):
                continue
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            thread.start()
            active.add(thread)
            activity.set(slot, len(active))

    # ----------------------------------------------------------------------- lifecycle

    def _open_connections(self) -> int:
        self.threads = {t for t in self.threads if t.is_alive()}
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            self.children.discard(pid)
        children_serving = self.activity.total() if self.activity is not None else 0
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


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


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


def _warm_up_wire() -> None:
    """Run the request path's own conversions once, without the model, before forking:
    what pandas and pyarrow set up lazily on first use (imports, caches, allocator pools)
    is then made once in the parent and shared, instead of in every child's private pages.
    The model is not called: the parent never runs predict."""
    frame = pd.DataFrame(
        {"i": np.arange(4, dtype=np.int64), "x": np.linspace(0, 1, 4), "s": list("abcd")}
    )
    back = request_to_frame(frame_to_arrow_bytes(frame))
    prediction_to_arrow_bytes(back["x"].to_numpy(), what="warm-up")
    prediction_to_arrow_bytes(back, what="warm-up")


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
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT.default)
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument(
        "--processes",
        type=int,
        help="prefork: serving processes (default: the CPUs this host may run on)",
    )
    parser.add_argument(
        "--batching",
        action="store_true",
        help="answer the requests of all connections in batches (implies the thread mode)",
    )
    parser.add_argument(
        "--batch-max-wait-ms",
        type=float,
        default=BATCH_MAX_WAIT_MS.default,
        help="batching: how long the oldest request may wait for others",
    )
    parser.add_argument(
        "--batch-max-rows",
        type=int,
        default=BATCH_MAX_ROWS.default,
        help="batching: rows a batch may reach by adding requests",
    )
    parser.add_argument(
        "--batch-calls",
        type=int,
        default=BATCH_CALLS.default,
        help="batching: batched model calls that may run at once",
    )
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
    the starter reaps it at once; the child, the host, sends its stdout to the log."""
    pid = os.fork()
    if pid:
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
            from spark_pyfunc._loading import load_model

            threads_before = _thread_count()  # numpy's BLAS pool and the like: the host's own
            started = time.perf_counter()
            model = load_model(args.model_dir, model_config=model_config)
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
            mode, why = choose_mode(args.mode, threads_before, threads_after)
            server = ModelServer(model)
            status.instrument(server)
            batcher = None
            if args.batching:
                if mode != "thread":
                    mode = "thread"
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
            extent = f" with {host.processes} serving processes" if mode == "prefork" else ""
            logger.info(
                "serving %s in %s mode%s (%s mode: %s)", args.socket, mode, extent, args.mode, why
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
