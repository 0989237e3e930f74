"""Where a worker and its model host meet: the socket, the pid file and the exit record.

Both sides compute these paths from the host key alone, so the worker (_client.py) finds a
host it did not start and the host (_host.py) cleans up after itself. They live here, below
both, so that the client does not import the server module to learn a file name.

The files::

    <tmp>/spark_pyfunc-<uid>/<key>.sock   the socket, in the user's private directory (0700)
    <state dir>/<...>.pid                 the host's pid, written atomically once it listens
    <state dir>/<...>.exit                how it ended (JSON with its pid): a failed load
                                          fails fast instead of being started again

The state directory is the executor's own, chosen by the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from spark_pyfunc.errors import HostError

__all__ = [
    "exit_status_path",
    "read_exit_status",
    "read_pid_file",
    "remove_pid_file",
    "socket_dir",
    "socket_path",
    "write_exit_status",
    "write_pid_file",
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


def remove_pid_file(path: str | None, pid: int) -> None:
    """Remove the pid file only if it still names ``pid`` (a newer host may own it now)."""
    if path is not None and read_pid_file(path) == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)
