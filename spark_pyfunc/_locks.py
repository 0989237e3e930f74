"""An exclusive lock on a file, shared by the processes of a machine.

Every Python worker of an executor may race to unpack a model, build an environment or start
the model host, and one of them must do it while the others wait. ``flock(2)`` is all that
takes on the Unix systems this package runs on (its host already needs fork and Unix
sockets): the kernel drops the lock when the holder's descriptor closes, so a worker killed
while holding it never leaves a stale lock behind.

Written here rather than taken from ``filelock``: every relaying worker, i.e. every core of an
executor, imports this path, and filelock 4 costs 21 modules and about 0.6 MiB there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

__all__ = ["file_lock"]

_FIRST_POLL = 0.005
_MAX_POLL = 0.1


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never removed: removing a
    lock file another process has open would let a third lock a new file of the same name).

    Args:
        path: The lock file; its directory must exist.
        timeout: Seconds to wait for the lock; None waits as long as it takes.

    Raises:
        TimeoutError: The lock was still held by another process after ``timeout`` seconds
            (callers turn it into the package's error for what they were waiting for).
        OSError: The lock file cannot be opened.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            delay = _FIRST_POLL
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"timed out after {timeout:g}s waiting for the lock {os.fspath(path)}"
                        ) from None
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, _MAX_POLL)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
