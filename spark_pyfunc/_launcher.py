"""Find, adopt or start an executor's model host: its process and its files.

Every Python worker of an executor asks the same host (one per executor, model, model_config
and variant, see _host.py). The first one that finds no host starts it while holding a file
lock in the executor's directory; the others wait on the lock and then connect. A host killed
before it is ready (while its launcher imports, while it loads the model: the moment the
out-of-memory killer strikes) raises :class:`HostKilled`, which the client answers by starting
it again from its budget of attempts; a host whose load *fails* (load_context raises, an
import error) raises a plain HostError with its log tail, since another start would fail
alike. The host records how it ended in an exit status file and its stage in a stage file (it
is detached: nobody can waitpid it), so "no status" means a signal it could not catch.

The host is started detached (``--detach``: its launcher forks it, prints its pid and exits,
reaped here), so a worker never keeps a zombie, and in its own session, so Spark killing a
worker's process group leaves the host serving the others. This module does not import
pyspark: the caller passes everything in a :class:`HostSpec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_pyfunc._config import (
    BATCH_CALLS,
    BATCH_MAX_ROWS,
    BATCH_MAX_WAIT_MS,
    BATCHING,
    DEFAULT_MODE,
    HOST_MODE,
    HOST_PROCESSES,
    IDLE_TIMEOUT,
    MODES,
    START_TIMEOUT,
    Setting,
    host_argv,
)
from spark_pyfunc._locks import file_lock
from spark_pyfunc._protocol import Greeting
from spark_pyfunc._rendezvous import (
    STATUS_ZOMBIE,
    NoSuchProcess,
    ProcessError,
    exit_status_path,
    process,
    read_exit_status,
    read_pid_file,
    read_stage,
    socket_path,
    stage_path,
)
from spark_pyfunc._status import note_start
from spark_pyfunc._wire import recv_message, tune_socket
from spark_pyfunc.errors import HostError

__all__ = [
    "HostKilled",
    "HostLauncher",
    "HostSpec",
    "ending_with_traceback",
    "host_key",
    "without_own_frames",
]

logger = logging.getLogger(__name__)

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
    #: The shipped model's sha256, named in the host's status file (_status.py).
    model_sha256: str | None = None

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


def _read_until_eof(pipe: Any, deadline: float) -> bytes | None:
    """What ``pipe`` gives until its end, or None at ``deadline``."""
    chunks = []
    fd = pipe.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid`` (a launcher's: the host it forked)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


#: A traceback's frame line in one of spark_pyfunc's own modules (the host's relay).
_OWN_FRAME = re.compile(r'^  File ".*[/\\]spark_pyfunc[/\\][\w/\\]*\.py", line \d+, in ')


def without_own_frames(lines: list[str]) -> str:
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


def ending_with_traceback(tail: str) -> str:
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
    return "\n".join([*lines[: starts[-1]], without_own_frames(lines[starts[-1] : end])])


#: The start of a line of the host's log (see _host's logging format).
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class HostKilled(HostError):
    """The host ended before it was ready by a signal, not by a failure of its own: the
    kind of loss another start can cure (the client's retry budget decides)."""


class HostLauncher:
    """Finds, adopts or starts the host of one :class:`HostSpec`, and owns its files.

    The rendezvous file names (lock, pid, exit status, stage, log, socket) are derived here
    and in _rendezvous, never rebuilt by a caller. :meth:`connect` is what a
    :class:`~spark_pyfunc._client.ModelHostClient` calls for a connection.
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

    def connect(self) -> tuple[socket.socket, int]:
        """A connection to the host, greeted, and the host's pid: the running host's, or a
        host adopted or started under the lock.

        Raises:
            HostKilled: the host was killed before it was ready (another start may cure it).
            HostError: the host could not start (its load failed, it timed out).
        """
        return self._try_connect() or self._connect_or_start()

    def log_tail(self) -> str:
        """The last lines of the host's log, for an error message."""
        return _log_tail(self.log_path)

    def _try_connect(self) -> tuple[socket.socket, int] | None:
        """Connect and read the host's greeting; None if no host answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tune_socket(sock)
        try:
            sock.settimeout(_GREETING_TIMEOUT)
            sock.connect(str(self.socket_path))
            greeting, _ = recv_message(sock)
            sock.settimeout(None)
            return sock, Greeting.from_header(greeting).pid
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
        gone = read_pid_file(str(self.pid_path))
        if proc is None and gone is not None:
            # The host died with no request in flight (killed while idle): say so, or its
            # replacement would be the only trace.
            logger.warning("the model host pid %d is gone (%s)", gone, self._how_it_ended(gone))
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
            if ended is not None and not isinstance(ended, HostKilled):
                raise ended  # its load failed: so would ours
        if proc is not None and _alive(proc):
            logger.warning("killing the model host pid %d: it does not answer", proc.pid)
            self._kill(proc)
        stage = Path(stage_path(str(self.pid_path)))
        for path in (self.socket_path, self.pid_path, self.status_path, stage):
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
            "--detach",
        ]  # fmt: skip
        if spec.watch_pid is not None:
            cmd += ["--watch-pid", str(spec.watch_pid)]
        if spec.model_uri is not None:
            cmd += ["--model-uri", str(spec.model_uri)]
        if spec.model_sha256 is not None:
            cmd += ["--model-sha256", spec.model_sha256]
        settings: dict[Setting, Any] = {
            IDLE_TIMEOUT: float(spec.idle_timeout),
            HOST_MODE: spec.mode,
            HOST_PROCESSES: spec.processes,
            BATCHING: spec.batching,
        }
        if spec.batching:
            settings.update({
                BATCH_MAX_WAIT_MS: float(spec.batch_max_wait_ms),
                BATCH_MAX_ROWS: int(spec.batch_max_rows),
                BATCH_CALLS: int(spec.batch_calls),
            })  # fmt: skip
        return cmd + host_argv(settings)

    @property
    def status_path(self) -> Path:
        """Where the host records how it ended (see _rendezvous.write_exit_status)."""
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
            log_tail=ending_with_traceback(tail) if model_error else tail,
        )

    def _how_it_ended(self, pid: int) -> str:
        """How host ``pid`` ended, from its exit status or, without one, its last stage."""
        status = read_exit_status(str(self.pid_path), pid)
        if status is None:
            stage = read_stage(str(self.pid_path), pid) or "starting"
            return f"killed while {stage}, by SIGKILL or another signal it cannot catch"
        by = f" by {status['signal']}" if status.get("signal") else ""
        return f"exited with code {status.get('code')}{by} while {status.get('stage')}"

    def _ended(self, pid: int) -> HostError:
        """The error for host ``pid``, gone before it was ready, saying how it ended: a
        HostKilled (start it again) for a signal, a HostError (fail fast) for its own exit."""
        status = read_exit_status(str(self.pid_path), pid)
        if status is None:
            stage = read_stage(str(self.pid_path), pid) or "starting"
            return self._fail(
                f"the model host (pid {pid}) was killed before it was ready, while {stage}, by "
                "SIGKILL or another signal it cannot catch (it recorded no exit status); "
                "killed during load: out of memory?",
                HostKilled,
            )
        if status.get("signal"):
            return self._fail(
                f"the model host (pid {pid}) was stopped by {status['signal']} while "
                f"{status.get('stage', 'loading')} the model, before it was ready",
                HostKilled,
            )
        error = f": {status['error']}" if status.get("error") else ""
        return self._fail(
            f"the model host (pid {pid}) exited with code {status.get('code')} before it was "
            f"ready; loading the model failed{error}",
            model_error=True,
        )

    def _launch(self, env: dict[str, str], deadline: float) -> int:
        """Run the launcher, which forks the host, prints its pid and exits (host --detach);
        the host's pid.

        The launcher runs in a session of its own, and the host it forks stays in its process
        group. A launcher killed before it printed the pid (the OOM killer, a chaos test, a
        busy machine's slow import) may have forked a host that nobody knows of: that group is
        killed, while the launcher's zombie still holds the group's id, and the start counts
        as a host killed before it was ready, which is started again from the same budget. A
        launcher that exits with an error of its own (a broken install) fails at once.
        """
        with open(self.log_path, "ab") as log:
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
            out = _read_until_eof(launcher.stdout, deadline)
            if out is None:  # neither pid nor exit in time: end it and whatever it forked
                _kill_group(launcher.pid)
                raise self._fail(f"the model host did not start within {self.spec.start_timeout}s")
            # Wait without reaping: the zombie keeps the group's id from being reused.
            ended = os.waitid(os.P_PID, launcher.pid, os.WEXITED | os.WNOWAIT)
            text = out.strip()
            if text.isdigit():  # the pid came out: the host is on its own now
                return int(text)
            _kill_group(launcher.pid)
            if ended is not None and ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                name = _signal_name(ended.si_status)
                raise self._fail(
                    f"the model host's launcher (pid {launcher.pid}) was killed by {name} "
                    "before it reported the host's pid, so the host it may have forked was "
                    "stopped too",
                    HostKilled,
                )
            code = ended.si_status if ended is not None else None
            raise self._fail(
                f"the model host's launcher exited with code {code} before the host started"
            )
        finally:
            launcher.stdout.close()  # type: ignore[union-attr]
            launcher.wait()

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
        note_start(str(self.pid_path))  # why the previous host is gone, if there was one
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()  # a status left by an earlier host
        pid = self._launch(env, deadline)
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
