"""The Python worker's side of the model host: connect, start it under a lock, retry.

Every Python worker of an executor asks the same host (one per executor, model and
model_config, see host.py). The first one that finds no host starts it while holding a file
lock in the executor's directory; the others wait on the lock and then connect. A connection
that breaks during a request (the host was killed) is reopened, restarting the host, and the
same batch is sent again, so results stay exact. A host killed before it is ready (while it
imports or loads the model: the moment the out-of-memory killer strikes) is started again the
same way, from the same budget of attempts per batch; a host whose load *fails* (load_context
raises, an import error) is not, since another start would fail alike: its log tail is raised.
The host records how it ended in an exit status file (it is detached: nobody can waitpid it), so
"no status" means a signal it could not catch, SIGKILL.

The host is started detached (``--detach``: it forks and its first process prints the host's
pid and exits at once, reaped here), so a worker never keeps a zombie, and in its own
session, so Spark killing a worker's process group leaves the host serving the others. This
module does not import pyspark: the caller passes everything in a :class:`HostSpec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from spark_pyfunc import errors
from spark_pyfunc._config import (
    BATCH_CALLS,
    BATCH_MAX_ROWS,
    BATCH_MAX_WAIT_MS,
    DEFAULT_MODE,
    IDLE_TIMEOUT,
    MODES,
    PIPELINE_DEPTH,
    START_TIMEOUT,
)
from spark_pyfunc._locks import file_lock
from spark_pyfunc._rendezvous import (
    STATUS_ZOMBIE,
    NoSuchProcess,
    ProcessError,
    exit_status_path,
    process,
    read_exit_status,
    read_pid_file,
    socket_path,
)
from spark_pyfunc._wire import (
    arrow_bytes_to_frame,
    arrow_bytes_to_table,
    batch_to_arrow_bytes,
    encode_arrow_type,
    encode_header,
    frame_to_arrow_bytes,
    recv_message,
    send_message,
    tune_socket,
)
from spark_pyfunc.errors import HostError, PredictionError, SchemaEnforcementError

logger = logging.getLogger("spark_pyfunc._client")

#: Attempts per batch when the host is lost, mid-request or before it was ready (the first try
#: included). One budget for both: it bounds the model loads one batch can cause, so a host the
#: OOM killer takes at every load fails the task after 3 loads, not 3 per kind of loss.
ATTEMPTS = 3
# How long a host that is up may take to greet a new connection before it counts as hung.
_GREETING_TIMEOUT = 5.0
# How long a host being killed may take to go.
_KILL_WAIT = 10.0
_LOG_TAIL_LINES = 40
# The lock wait beyond start_timeout: the holder may be waiting start_timeout for its host.
_LOCK_MARGIN = 60.0


@dataclass(frozen=True)
class HostSpec:
    """Which model to serve and where the host's files live.

    ``key`` names the host (see :func:`host_key`); ``state_dir`` is the executor's own
    directory, which holds the lock file, the pid file and (unless ``log_dir`` is given) the
    host's log. ``watch_pid`` is the process whose end ends the host (the worker's parent: the
    pyspark daemon or the executor). ``model_uri`` is the path the user passed, named in errors
    instead of ``model_dir``, the executor's temporary copy. ``processes`` is how many serving
    processes a prefork host runs (the executor's task slots, at most its CPUs; None: the CPUs
    the host may run on). ``env`` holds environment variables set for the host on top of the
    worker's own (``extra_env``, ``CUDA_VISIBLE_DEVICES``); ``python`` is the interpreter that
    runs it (a restored model environment's; None: the worker's own). ``batching`` makes the
    host answer the requests of all workers in batches of up to ``batch_max_rows`` rows,
    waiting at most ``batch_max_wait_ms`` for company, running up to ``batch_calls`` batches at
    once (see _batching.py).
    """

    model_dir: str
    key: str
    state_dir: str
    model_config: dict | None = None
    idle_timeout: float = IDLE_TIMEOUT.default
    start_timeout: float = START_TIMEOUT.default
    mode: str = DEFAULT_MODE
    watch_pid: int | None = None
    model_uri: str | None = None
    log_dir: str | None = None
    processes: int | None = None
    env: dict[str, str] | None = None
    python: str | None = None
    batching: bool = False
    batch_max_wait_ms: float = BATCH_MAX_WAIT_MS.default
    batch_max_rows: int = BATCH_MAX_ROWS.default
    batch_calls: int = BATCH_CALLS.default

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HostError(f"model host mode {self.mode!r} is not one of {list(MODES)}")
        if self.processes is not None and (
            isinstance(self.processes, bool)
            or not isinstance(self.processes, int)
            or self.processes < 1
        ):
            raise HostError(
                f"model host processes must be a positive integer, not {self.processes!r}"
            )


def host_key(
    executor_dir: str, model_sha256: str, model_config: dict | None, **variant: Any
) -> str:
    """A short name for the host of one (executor, model content, model_config, variant).

    ``variant`` is everything else that makes two hosts of one model differ (its mode and
    processes, its environment variables and interpreter): UDFs that ask for different ones
    get different hosts instead of whichever started first.
    """
    ident = json.dumps(
        [executor_dir, model_sha256, model_config, variant], sort_keys=True, default=str
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _alive(proc: Any) -> bool:
    try:
        return proc.is_running() and proc.status() != STATUS_ZOMBIE
    except ProcessError:
        return False


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _remote_error(reply: dict, method: str, host_pid: int | None) -> Exception:
    """The exception for an error response: the package's own error types (a schema
    mismatch, an unrepresentable result) keep their type, anything else the model raised
    becomes a PredictionError. Both carry the remote traceback.

    A PredictionError's message ends as a traceback of the model's own does: the model's
    frames (the host's relay frames left out), then its ``Type: message``, so that the last
    line a user sees, in any scope, is the model's error.
    """
    name = str(reply.get("error", "Exception"))
    message = str(reply.get("message", ""))
    remote_tb = str(reply.get("traceback", ""))
    cls = getattr(errors, name, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, errors.SparkPyfuncError)
        and not _defines_init(cls)
    ):
        exc: errors.SparkPyfuncError = cls(message)
        exc.remote_traceback = remote_tb
        return exc
    return PredictionError(
        f"the model's {method} raised {name} in the model host (pid {host_pid}):\n"
        f"{_model_frames(remote_tb, name, message)}",
        remote_traceback=remote_tb,
    )


#: A traceback's frame line in one of spark_pyfunc's own modules (the host's relay).
_OWN_FRAME = re.compile(r'^  File ".*[/\\]spark_pyfunc[/\\][\w/\\]*\.py", line \d+, in ')


def _model_frames(remote_tb: str, name: str, message: str) -> str:
    """The host's traceback without spark_pyfunc's own frames, ending with the closing
    ``Type: message`` (added when the text ends otherwise)."""
    text = _without_own_frames(remote_tb.rstrip("\n").splitlines())
    closing = f"{name}: {message}" if message else name
    return text if text.endswith(closing) else f"{text}\n{closing}".lstrip("\n")


def _without_own_frames(lines: list[str]) -> str:
    """Traceback lines without the frames (and their source lines) of spark_pyfunc's own
    modules: the relay around the model's code."""
    kept: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("  File "):
            skipping = bool(_OWN_FRAME.match(line))
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def _ending_with_traceback(tail: str) -> str:
    """A host log's tail cut after the closing line(s) of its last traceback, so that an
    error carrying it ends with the model's ``Type: message`` (what the host logged after
    that, its shutdown, stays in the log file)."""
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return tail
    end = starts[-1] + 1
    while end < len(lines) and lines[end].startswith((" ", "\t")):
        end += 1  # the frames
    while end < len(lines) and not _LOG_RECORD.match(lines[end]):
        end += 1  # the exception's lines, up to the next log record
    return "\n".join([*lines[: starts[-1]], _without_own_frames(lines[starts[-1] : end])])


#: The start of a line of the host's log (see _host's logging format).
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _defines_init(cls: type) -> bool:
    """Whether one of the package's error classes gives ``cls`` a constructor of its own
    (fields beyond the message, which the host's reply does not carry)."""
    return any("__init__" in vars(k) for k in cls.__mro__ if issubclass(k, errors.SparkPyfuncError))


class _HostKilled(HostError):
    """The host ended before it was ready by a signal, not by a failure of its own: the
    kind of loss another start can cure."""


@dataclass(frozen=True)
class _Request:
    """One request, encoded once: sent again as it is if the host is lost before answering."""

    header: dict
    payload: Any


_END = object()  # the end of a stream's input


def _request(
    frame: pd.DataFrame | pa.RecordBatch,
    method: str,
    params: dict | None,
    result_type: pa.DataType | None,
) -> _Request:
    """The wire form of one batch; SchemaEnforcementError for what cannot travel."""
    rows = frame.num_rows if isinstance(frame, pa.RecordBatch) else len(frame)
    header: dict[str, Any] = {"method": method, "params": params, "rows": rows}
    if result_type is not None:
        header["result_type"] = encode_arrow_type(result_type)
    try:
        encode_header(header)
    except (TypeError, ValueError) as exc:
        raise SchemaEnforcementError(
            f"params {sorted(params or {})} cannot be sent to the model host: {exc}"
        ) from exc
    if isinstance(frame, pa.RecordBatch):
        payload = batch_to_arrow_bytes(frame, error=SchemaEnforcementError)
    else:
        payload = frame_to_arrow_bytes(frame, what="model input", error=SchemaEnforcementError)
    return _Request(header, payload)


class _Sender:
    """Sends a connection's requests from a thread of its own while the caller reads the
    answers: a host answers a request before it reads the next one, so a caller that sent
    a large request while the host sent it a large answer would wait forever on a full
    socket buffer. A failed send shuts the socket down, so the caller's read fails too."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spark_pyfunc-sender", daemon=True)
        self._thread.start()

    def send(self, request: _Request) -> None:
        self._queue.put(request)

    def _run(self) -> None:
        while (request := self._queue.get()) is not None:
            try:
                send_message(self.sock, request.header, request.payload)
            except OSError as exc:
                logger.info("sending a request to the model host failed: %s", exc)
                self._shutdown()
                return

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self, *, abort: bool) -> None:
        """End the thread once it has sent what it holds; ``abort``: at once, shutting the
        connection down (a send blocked on it fails), which the caller then closes."""
        if abort:
            self._shutdown()
        self._queue.put(None)
        self._thread.join()


class ModelHostClient:
    """Scores batches with the executor's model host, starting it if needed.

    One connection per client, opened on the first :meth:`predict`. Not thread-safe: use a
    client per thread (Spark gives each task its own).
    """

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        state = Path(spec.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot create the model host state directory {state}: {exc}") from exc
        log_dir = Path(spec.log_dir) if spec.log_dir else state
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot create the model host log directory {log_dir}: {exc}") from exc
        stem = f"spark_pyfunc-host-{spec.key}"
        self.lock_path = state / f"{stem}.lock"
        self.pid_path = state / f"{stem}.pid"
        self.log_path = log_dir / f"{stem}.log"
        self.model_name = spec.model_uri or spec.model_dir
        self.socket_path = socket_path(spec.key)
        self._sock: socket.socket | None = None
        self._host_pid: int | None = None

    @property
    def host_pid(self) -> int | None:
        """The pid of the host serving this client (None before the first predict)."""
        return self._host_pid

    # ------------------------------------------------------------------------- scoring

    def predict(
        self,
        frame: pd.DataFrame | pa.RecordBatch,
        method: str = "predict",
        params: dict | None = None,
        *,
        arrow: bool = False,
        result_type: pa.DataType | None = None,
    ) -> pd.DataFrame | pa.Table:
        """The model's output for ``frame``, as rows (see wire.prediction_to_frame).

        An Arrow record batch goes to the host as it is, so a Spark worker that already holds
        Arrow data skips a round of pandas conversions; the host gives the model pandas.
        ``arrow=True`` returns the host's Arrow table as it came, for a relay that fits it
        to the result type without pandas. ``result_type`` (the Arrow form of the UDF's result
        type) tells the host the types of nested outputs.
        """
        request = _request(frame, method, params, result_type)
        failure: Exception | None = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                sock = self._connection()
            except _HostKilled as exc:  # killed while starting or loading: start it again
                failure = exc
                logger.warning(
                    "%s (attempt %d of %d); starting it again",
                    str(exc).split("\n", 1)[0],
                    attempt,
                    ATTEMPTS,
                )
                continue
            try:
                send_message(sock, request.header, request.payload)
                reply, body = recv_message(sock)
            except OSError as exc:  # the host died or was killed: restart it, send again
                failure = exc
                logger.warning(
                    "lost the model host (pid %s) during a request (attempt %d of %d): %s",
                    self._host_pid,
                    attempt,
                    ATTEMPTS,
                    exc,
                )
                self.close()
                continue
            return self._result(reply, body, method, arrow)
        raise self._lost(failure)

    def predict_stream(
        self,
        frames: Iterable[pd.DataFrame | pa.RecordBatch],
        method: str = "predict",
        params: dict | None = None,
        *,
        arrow: bool = False,
        result_type: pa.DataType | None = None,
        depth: int = PIPELINE_DEPTH.default,
    ) -> Iterator[pd.DataFrame | pa.Table]:
        """The model's output for each of ``frames``, in order, with up to ``depth`` requests
        in flight on the one connection.

        With one request in flight, the host and the model wait while this worker turns an
        answer into its next request (and Spark hands it the next batch); with two, the
        next request is already at the host, queued (a batching host can put it in the
        model's next call) or read as soon as the previous answer is out. ``frames`` is
        read ahead of the results (at most ``depth`` frames), in the caller's thread; the
        requests are sent from a thread of this client's, so that a large request never
        waits for a large answer that nobody reads: no host mode can deadlock it.

        A host lost mid-stream (killed, crashed) is restarted as :meth:`predict` does, and
        the requests it had not answered are sent again to the new host, in order, once
        per loss; ``ATTEMPTS`` losses in a row without an answer in between fail the
        stream. An error answer (the model raised) is raised when that request's result is
        due, after the results of the requests before it; the stream ends there.

        Args:
            frames: the batches to score (pandas frames or Arrow record batches, as
                :meth:`predict` takes them), pulled lazily.
            method, params, arrow, result_type: as for :meth:`predict`, for every batch.
            depth: requests in flight at most; 1 is :meth:`predict` per batch.

        Returns:
            An iterator of the results, one per frame, in the order of ``frames``.

        Raises:
            HostError: the host was lost ``ATTEMPTS`` times in a row, or could not start.
            PredictionError: the model raised for a batch (the package's own errors, such
                as SchemaEnforcementError, keep their type).

        Example:
            >>> with ModelHostClient(spec) as client:  # doctest: +SKIP
            ...     for result in client.predict_stream(batches, depth=2):
            ...         write(result)
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise HostError(f"pipeline depth must be a positive integer, not {depth!r}")
        if depth == 1:
            for frame in frames:
                yield self.predict(frame, method, params, arrow=arrow, result_type=result_type)
            return
        source = iter(frames)
        pending: deque[_Request] = deque()  # sent (or to be sent), not answered, in order
        sender: _Sender | None = None
        exhausted = False
        losses = 0
        try:
            while True:
                while not exhausted and len(pending) < depth:
                    frame = next(source, _END)
                    if frame is _END:
                        exhausted = True
                        break
                    pending.append(_request(frame, method, params, result_type))
                    if sender is not None:
                        sender.send(pending[-1])
                if not pending:
                    return
                if sender is None:
                    try:
                        sender = _Sender(self._connection())
                    except _HostKilled as exc:  # killed while starting or loading
                        losses += 1
                        self._log_loss(exc, losses, len(pending))
                        if losses >= ATTEMPTS:
                            raise self._lost(exc) from None
                        continue
                    for request in pending:  # a new connection: everything unanswered
                        sender.send(request)
                try:
                    reply, body = recv_message(sender.sock)
                except OSError as exc:  # the host died or was killed: restart it, resend
                    losses += 1
                    self._log_loss(exc, losses, len(pending))
                    sender.stop(abort=True)
                    sender = None
                    self.close()
                    if losses >= ATTEMPTS:
                        raise self._lost(exc) from None
                    continue
                losses = 0
                pending.popleft()
                yield self._result(reply, body, method, arrow)
        finally:
            if sender is not None:
                sender.stop(abort=bool(pending))
            if pending:  # answers still due on the connection: nobody will read them
                self.close()

    def _log_loss(self, exc: Exception, losses: int, unanswered: int) -> None:
        logger.warning(
            "lost the model host (pid %s) during a request (attempt %d of %d): %s; "
            "sending the %d unanswered request(s) again",
            self._host_pid,
            losses,
            ATTEMPTS,
            str(exc).split("\n", 1)[0],
            unanswered,
        )

    def _result(
        self, reply: dict, body: bytearray, method: str, arrow: bool
    ) -> pd.DataFrame | pa.Table:
        if not reply.get("ok"):
            raise _remote_error(reply, method, self._host_pid)
        return arrow_bytes_to_table(body) if arrow else arrow_bytes_to_frame(body)

    def _lost(self, failure: Exception | None) -> HostError:
        last = str(failure).split("\n", 1)[0]
        return HostError(
            f"the model host for {self.model_name} was lost {ATTEMPTS} times in a row, "
            f"the last time: {last}",
            log_path=str(self.log_path),
            log_tail=_log_tail(self.log_path),
        )

    def close(self) -> None:
        """Close the connection (the host stays up for the other workers)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ModelHostClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------- connecting

    def _connection(self) -> socket.socket:
        if self._sock is None:
            conn = self._try_connect() or self._connect_or_start()
            self._sock, self._host_pid = conn
        return self._sock

    def _try_connect(self) -> tuple[socket.socket, int] | None:
        """Connect and read the host's greeting; None if no host answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tune_socket(sock)
        try:
            sock.settimeout(_GREETING_TIMEOUT)
            sock.connect(str(self.socket_path))
            greeting, _ = recv_message(sock)
            sock.settimeout(None)
            return sock, int(greeting["pid"])
        except (OSError, KeyError, TypeError, ValueError):
            sock.close()
            return None

    def _connect_or_start(self) -> tuple[socket.socket, int]:
        wait = self.spec.start_timeout + _LOCK_MARGIN
        try:
            with file_lock(self.lock_path, timeout=wait):
                # Another worker may have started the host while this one waited.
                conn = self._try_connect()
                if conn is None:
                    conn = self._adopt_or_clear()
                if conn is None:
                    conn = self._start()
                return conn
        except TimeoutError as exc:
            raise HostError(
                f"timed out after {wait:g}s waiting for the lock {self.lock_path}, held by "
                f"another worker starting the model host for {self.model_name} (host pid "
                f"{read_pid_file(str(self.pid_path))})",
                log_path=str(self.log_path),
                log_tail=_log_tail(self.log_path),
            ) from exc

    def _host_process(self) -> Any:
        """The live host named by the pid file, if it is really ours (pid reuse guard)."""
        pid = read_pid_file(str(self.pid_path))
        if pid is None:
            return None
        try:
            proc = process(pid)
            cmdline = proc.cmdline()
            ours = (
                "spark_pyfunc._host" in cmdline
                and str(self.socket_path) in cmdline
                and proc.uids().real == os.getuid()
            )
        except ProcessError:
            return None
        return proc if ours and _alive(proc) else None

    def _adopt_or_clear(self) -> tuple[socket.socket, int] | None:
        """Under the lock, no host answered. A host still loading (its starter died) is
        waited for; a hung one is killed; then stale files go, so a new host can start."""
        proc = self._host_process()
        if proc is not None and not self.socket_path.exists():
            logger.info(
                "the model host pid %d is still loading and its starter died: waiting for it",
                proc.pid,
            )
            remaining = proc.create_time() + self.spec.start_timeout - time.time()
            conn = self._await_ready(proc, time.monotonic() + remaining)
            if conn is not None:
                return conn
            ended = None if _alive(proc) else self._ended(proc.pid)
            if ended is not None and not isinstance(ended, _HostKilled):
                raise ended  # its load failed: so would ours
        if proc is not None and _alive(proc):
            logger.warning("killing the model host pid %d: it does not answer", proc.pid)
            self._kill(proc)
        for path in (self.socket_path, self.pid_path, self.status_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None

    def _kill(self, proc: Any) -> None:
        """SIGKILL and wait until it is dead (a zombie counts: init, its parent, reaps it)."""
        with contextlib.suppress(*NoSuchProcess):
            proc.kill()
        deadline = time.monotonic() + _KILL_WAIT
        while _alive(proc):
            if time.monotonic() > deadline:
                raise HostError(f"could not kill the model host pid {proc.pid}")
            time.sleep(0.02)

    def _await_ready(self, proc: Any, deadline: float) -> tuple[socket.socket, int] | None:
        """Poll until the host answers; None once it is gone or the deadline passed."""
        delay = 0.01
        while _alive(proc):
            if self.socket_path.exists():
                conn = self._try_connect()
                if conn is not None:
                    return conn
            if time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)  # a host is often ready within 1 s: check often
        return None

    def _command(self) -> list[str]:
        spec = self.spec
        cmd = [
            spec.python or sys.executable, "-m", "spark_pyfunc._host",
            "--model-dir", str(spec.model_dir),
            "--socket", str(self.socket_path),
            "--log", str(self.log_path),
            "--pid-file", str(self.pid_path),
            "--model-config", json.dumps(spec.model_config, default=str),
            "--idle-timeout", str(spec.idle_timeout),
            "--mode", spec.mode,
            "--detach",
        ]  # fmt: skip
        if spec.watch_pid is not None:
            cmd += ["--watch-pid", str(spec.watch_pid)]
        if spec.processes is not None:
            cmd += ["--processes", str(spec.processes)]
        if spec.batching:
            cmd += [
                "--batching",
                "--batch-max-wait-ms", repr(float(spec.batch_max_wait_ms)),
                "--batch-max-rows", str(int(spec.batch_max_rows)),
                "--batch-calls", str(int(spec.batch_calls)),
            ]  # fmt: skip
        return cmd

    @property
    def status_path(self) -> Path:
        """Where the host records how it ended (see host.write_exit_status)."""
        return Path(exit_status_path(str(self.pid_path)))

    def _fail(
        self, message: str, cls: type[HostError] = HostError, *, model_error: bool = False
    ) -> HostError:
        """A HostError with the log's tail; ``model_error``: cut after the last traceback
        (the model's, when loading it failed), so that the error ends with its line."""
        tail = _log_tail(self.log_path)
        return cls(
            f"{message} (model {self.model_name}, log {self.log_path})",
            log_path=str(self.log_path),
            log_tail=_ending_with_traceback(tail) if model_error else tail,
        )

    def _ended(self, pid: int) -> HostError:
        """The error for host ``pid``, gone before it was ready, saying how it ended: a
        _HostKilled (start it again) for a signal, a HostError (fail fast) for its own exit."""
        status = read_exit_status(str(self.pid_path), pid)
        if status is None:
            return self._fail(
                f"the model host (pid {pid}) was killed before it was ready, by SIGKILL or "
                "another signal it cannot catch (it recorded no exit status); killed during "
                "load: out of memory?",
                _HostKilled,
            )
        if status.get("signal"):
            return self._fail(
                f"the model host (pid {pid}) was stopped by {status['signal']} while "
                f"{status.get('stage', 'loading')} the model, before it was ready",
                _HostKilled,
            )
        error = f": {status['error']}" if status.get("error") else ""
        return self._fail(
            f"the model host (pid {pid}) exited with code {status.get('code')} before it was "
            f"ready; loading the model failed{error}",
            model_error=True,
        )

    def _host_environ(self) -> dict[str, str]:
        """The host's environment variables: the worker's, with ``spec.env`` on top.

        In the worker's own Python the host imports what this worker can import (the model's
        classes may come from paths added at run time, SparkFiles or addPyFile), so its
        sys.path becomes PYTHONPATH. A restored environment's host (``spec.python``) must see
        the model's pinned packages instead: its PYTHONPATH is only what ``spec.env`` names
        (spark_pyfunc itself), and neither the user's site nor PYTHONHOME leak in.
        """
        extra = self.spec.env or {}
        if self.spec.python is None:
            path = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
            return dict(os.environ, **extra, PYTHONPATH=path)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PYTHONNOUSERSITE="1", PYTHONPATH="")
        env.update(extra)
        return env

    def _start(self) -> tuple[socket.socket, int]:
        """Start the host and wait until it answers; HostError with its log tail if it dies
        first or is not ready within start_timeout."""
        deadline = time.monotonic() + self.spec.start_timeout
        env = self._host_environ()
        logger.info(
            "starting the model host for %s from %s (log %s)",
            self.model_name,
            self.spec.model_dir,
            self.log_path,
        )
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()  # a status left by an earlier host
        with open(self.log_path, "ab") as log:
            # The launcher forks the host, prints its pid and exits (see host --detach).
            launcher = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        try:
            out, _ = launcher.communicate(timeout=self.spec.start_timeout)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.communicate()
            raise self._fail(
                f"the model host did not start within {self.spec.start_timeout}s"
            ) from None
        if launcher.returncode != 0 or not out.strip().isdigit():
            raise self._fail(
                f"the model host exited with code {launcher.returncode} before it was ready"
            )
        pid = int(out)
        try:
            proc = process(pid)
        except NoSuchProcess:
            raise self._ended(pid) from None
        conn = self._await_ready(proc, deadline)
        if conn is not None:
            return conn
        if _alive(proc):
            self._kill(proc)
            raise self._fail(f"the model host was not ready within {self.spec.start_timeout}s")
        raise self._ended(pid)
