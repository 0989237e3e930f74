"""Where a worker and its model host meet: the socket, the pid file and the exit record.

Both sides compute these paths from the host key alone, so the worker (_client.py) finds a
host it did not start and the host (_host.py) cleans up after itself. They live here, below
both, so that the client does not import the server module to learn a file name.

The files::

    <tmp>/spark_pyfunc-<uid>/<key>.sock   the socket, in the user's private directory (0700)
    <state dir>/<...>.pid                 the host's pid, written atomically once it listens
    <state dir>/<...>.exit                how it ended (JSON with its pid): a failed load
                                          fails fast instead of being started again
    <state dir>/<...>.status.json         the host's figures (_status.py), rewritten as it runs
    <state dir>/<...>.restarts            one JSON line per restart of the host, and why
    <tmp>/spark_pyfunc-<uid>/<key>.status a link to the status file: how ``spark-pyfunc
                                          hosts`` finds every host of the machine

The state directory is the executor's own, chosen by the client.

Both sides also ask about processes (is the host alive, is it ours, is the watched process
gone): :func:`process` answers from ``/proc`` on Linux, so that executors need no compiled
package beyond PySpark's own and every relaying worker (one per core) is spared psutil's
0.7 MiB; psutil answers elsewhere (macOS).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

if os.path.isdir("/proc/self"):
    psutil = None
else:  # pragma: no cover - macOS: no /proc
    import psutil

from spark_pyfunc.errors import HostError

__all__ = [
    "NoSuchProcess",
    "ProcessError",
    "STATUS_SUFFIX",
    "STATUS_ZOMBIE",
    "ProcProcess",
    "exit_status_path",
    "process",
    "read_exit_status",
    "read_pid_file",
    "read_stage",
    "remove_pid_file",
    "restarts_path",
    "socket_dir",
    "socket_path",
    "stage_path",
    "status_link_path",
    "status_links",
    "status_path",
    "write_exit_status",
    "write_pid_file",
    "write_stage",
]

# sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _socket_dir_path(base: str | os.PathLike[str] | None) -> Path:
    return Path(base if base is not None else tempfile.gettempdir()) / f"spark_pyfunc-{os.getuid()}"


def socket_dir(base: str | os.PathLike[str] | None = None) -> Path:
    """The user's private socket directory ``<tmp>/spark_pyfunc-<uid>``, created 0700.

    Refuses (HostError) a directory that another user could have planted or can read: a
    symlink, a non-directory, another owner or a mode other than 0700.
    """
    uid = os.getuid()
    path = _socket_dir_path(base)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise HostError(f"cannot create the model host socket directory {path}: {exc}") from exc
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise HostError(f"model host socket directory {path} is not a directory (or is a symlink)")
    if st.st_uid != uid:
        raise HostError(
            f"model host socket directory {path} is owned by uid {st.st_uid}, not by uid {uid}"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise HostError(
            f"model host socket directory {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
            "it must be 0700"
        )
    return path


def socket_path(key: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The socket of the host for ``key``, checked against the Unix socket path limit."""
    if not _KEY_RE.fullmatch(key):
        raise HostError(f"model host key {key!r} must be 1-64 letters, digits, '_' or '-'")
    path = _socket_dir_path(base) / f"{key}.sock"
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise HostError(
            f"model host socket path {path} is longer than the {_MAX_SOCKET_PATH} bytes a Unix "
            "socket path can have; point TMPDIR to a shorter directory"
        )
    socket_dir(base)
    return path


def write_pid_file(path: str, pid: int) -> None:
    """Write atomically, so a reader never sees a half-written pid."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def read_pid_file(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def exit_status_path(pid_file: str) -> str:
    """The exit status file beside a pid file (``<key>.pid`` -> ``<key>.exit``)."""
    return os.path.splitext(pid_file)[0] + ".exit"


def status_path(pid_file: str) -> str:
    """The status file beside a pid file (``<key>.pid`` -> ``<key>.status.json``)."""
    return os.path.splitext(pid_file)[0] + STATUS_SUFFIX


def restarts_path(pid_file: str) -> str:
    """The restart record beside a pid file (``<key>.pid`` -> ``<key>.restarts``)."""
    return os.path.splitext(pid_file)[0] + ".restarts"


#: How a status file's name ends, for those who list a directory of them.
STATUS_SUFFIX = ".status.json"


def status_link_path(socket_file: str) -> str:
    """The link to a host's status file beside its socket (``<key>.sock`` ->
    ``<key>.status``): the socket directory is the one place every host of the user on the
    machine shares, whatever its executor's state directory."""
    return os.path.splitext(socket_file)[0] + ".status"


def status_links(base: str | os.PathLike[str] | None = None) -> list[Path]:
    """The status links in the user's socket directory (none if it does not exist); read
    only: the directory is not created."""
    try:
        return sorted(_socket_dir_path(base).glob("*.status"))
    except OSError:
        return []


def write_exit_status(pid_file: str | None, status: dict) -> None:
    """Record how this host ended, for the worker that started it.

    The host is detached, so no process can waitpid it: this file is how its starter tells a
    model that failed to load (fail fast) from a host killed from outside (start it again). A
    host killed by SIGKILL writes nothing, which says as much.
    """
    if pid_file is not None:
        with contextlib.suppress(OSError):
            tmp = f"{exit_status_path(pid_file)}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), **status}, f)
            os.replace(tmp, exit_status_path(pid_file))


def read_exit_status(pid_file: str, pid: int) -> dict | None:
    """The exit status host ``pid`` recorded, or None if it recorded none."""
    try:
        with open(exit_status_path(pid_file)) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("pid") == pid else None


def stage_path(pid_file: str) -> str:
    """The stage file beside a pid file (``<key>.pid`` -> ``<key>.stage``)."""
    return os.path.splitext(pid_file)[0] + ".stage"


def write_stage(pid_file: str | None, stage: str) -> None:
    """Record the stage of its life this host is in (``loading``, ``serving``).

    A host killed by SIGKILL records no exit status, but its starter can still say what the
    signal interrupted: the last stage it recorded here.
    """
    if pid_file is not None:
        with contextlib.suppress(OSError):
            tmp = f"{stage_path(pid_file)}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()} {stage}\n")
            os.replace(tmp, stage_path(pid_file))


def read_stage(pid_file: str, pid: int) -> str | None:
    """The last stage host ``pid`` recorded, or None if it recorded none."""
    try:
        with open(stage_path(pid_file)) as f:
            owner, _, stage = f.read().strip().partition(" ")
    except OSError:
        return None
    return stage if owner == str(pid) and stage else None


def remove_pid_file(path: str | None, pid: int) -> None:
    """Remove the pid file only if it still names ``pid`` (a newer host may own it now)."""
    if path is not None and read_pid_file(path) == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if read_stage(path, pid) is not None:
            with contextlib.suppress(OSError):
                os.unlink(stage_path(path))


# ------------------------------------------------------------------------ processes

_Uids = namedtuple("_Uids", "real effective saved")


class _ProcError(Exception):
    """A process that cannot be read (the /proc twin of ``psutil.Error``)."""


class _ProcGone(_ProcError):
    """The process does not exist (any more): ``psutil.NoSuchProcess``'s twin."""


#: What :func:`process` and :class:`ProcProcess` raise (for ``except``: psutil's error and
#: the /proc twin's), and the status of a process that ended but is not reaped.
ProcessError: tuple[type[Exception], ...] = (_ProcError,)
NoSuchProcess: tuple[type[Exception], ...] = (_ProcGone,)
if psutil is not None:
    ProcessError += (psutil.Error,)
    NoSuchProcess += (psutil.NoSuchProcess,)
STATUS_ZOMBIE = "zombie"


class ProcProcess:
    """The few ``psutil.Process`` methods the host and its client use, read from ``/proc``.

    ``is_running`` compares the start time read at construction, as psutil does, so a pid
    reused by another process does not pass for the one asked about.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else int(pid)
        self._start = self._stat()[19]

    def _stat(self) -> list[str]:
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            raise _ProcGone(f"no process {self.pid}") from None
        except OSError as exc:
            raise _ProcError(f"cannot read /proc/{self.pid}/stat: {exc}") from exc
        # The command name (field 2) is in parentheses and may hold spaces.
        return text[text.rindex(")") + 2 :].split()

    def is_running(self) -> bool:
        try:
            return self._stat()[19] == self._start
        except _ProcError:
            return False

    def status(self) -> str:
        return STATUS_ZOMBIE if self._stat()[0] in ("Z", "X") else "running"

    def cmdline(self) -> list[str]:
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError as exc:
            raise _ProcGone(f"no process {self.pid}: {exc}") from exc
        return [os.fsdecode(part) for part in raw.split(b"\0")[:-1]]

    def uids(self) -> _Uids:
        for line in self._status_lines():
            if line.startswith("Uid:"):
                return _Uids(*(int(v) for v in line.split()[1:4]))
        raise _ProcError(f"no Uid line in /proc/{self.pid}/status")

    def create_time(self) -> float:
        """Seconds since the epoch: boot time plus the start time in clock ticks."""
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + int(self._start) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if not self.is_running():
            raise _ProcGone(f"no process {self.pid}")
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            raise _ProcGone(f"no process {self.pid}") from None

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and (where smaps_rollup is readable) Pss of the process, in KiB."""
        sizes = {}
        for line in self._status_lines():
            if line.startswith("VmRSS:"):
                sizes["rss"] = int(line.split()[1])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    sizes["pss"] = int(line.split()[1])
        return sizes

    def _status_lines(self) -> list[str]:
        try:
            return Path(f"/proc/{self.pid}/status").read_text().splitlines()
        except FileNotFoundError:
            raise _ProcGone(f"no process {self.pid}") from None
        except OSError as exc:
            raise _ProcError(f"cannot read /proc/{self.pid}/status: {exc}") from exc


def process(pid: int | None = None) -> Any:
    """A :class:`ProcProcess` for ``pid`` (default: this process) where there is ``/proc``, a
    ``psutil.Process`` elsewhere. Raises :data:`NoSuchProcess` when there is no such
    process."""
    return ProcProcess(pid) if psutil is None else psutil.Process(pid)
