"""Prefork serving: P long-lived processes that accept on the host's one socket.

A prefork host loads the model once, then forks its serving processes (gunicorn's arbiter and
workers): one loaded copy shared copy-on-write, P GILs, no fork per task. This module owns
what that takes, apart from the host's lifecycle (_host.py) and from how a connection is
answered (_serving.py):

- :func:`fork_child` forks a child that dies with its parent, runs one piece of work and exits
  (the host's ``fork`` mode uses it for a child per connection too).
- :class:`Prefork` spawns a serving process per slot, replaces one that died, and counts the
  connections its processes hold (:class:`_Activity`), which only they see but the parent's
  idle timer must count.
- Each serving process accepts one connection at a time while another is free
  (:meth:`Prefork._serve_slot`), and is named apart from the host in ``ps`` (:func:`_name_child`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

from spark_pyfunc._faultpoints import hold
from spark_pyfunc._serving import _release_free_memory, admit

__all__ = ["Prefork", "fork_child"]

logger = logging.getLogger("spark_pyfunc._prefork")

# How often a serving process wakes to publish its count of open connections.
_TICK = 0.25
# A prefork child that is busy takes a further connection only once it has waited this long
# unaccepted: every child is then busy, and the client must get its greeting well within
# client._GREETING_TIMEOUT rather than queue behind a task that holds its connection.
_OVERFLOW_AFTER = 0.2

#: ``fork_child``'s signature: (work, what it is, for the log) -> the child's pid.
Fork = Callable[[Callable[[], object], str], int]


def fork_child(work: Callable[[], object], what: str, fork: Callable[[], int] = os.fork) -> int:
    """Fork (with ``fork``) a child that dies with this process, runs ``work`` and exits."""
    parent = os.getpid()
    pid = fork()
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


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


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


class Prefork:
    """The serving processes of a prefork host: one per slot, all accepting on one socket.

    Args:
        serve_connection: answers one admitted connection (``ModelServer.serve_connection``).
        processes: how many serving processes (slots).
        fork: forks a child for a piece of work (:func:`fork_child`'s signature); the host
            passes its own, so that every fork of the host goes through one place.
    """

    def __init__(
        self,
        serve_connection: Callable[[socket.socket], None],
        processes: int,
        *,
        fork: Fork = fork_child,
    ) -> None:
        self.serve_connection = serve_connection
        self.processes = processes
        self.fork = fork
        self.listener: socket.socket | None = None
        #: slot -> pid of the serving process in it
        self.workers: dict[int, int] = {}
        # made here, before any fork, so that every child shares it with the parent
        self.activity = _Activity(processes)

    def start(self, listener: socket.socket) -> None:
        """Spawn a serving process per slot on ``listener``: a client that connects before
        one is up waits in the backlog."""
        self.listener = listener
        for slot in range(self.processes):
            self.spawn(slot)

    def spawn(self, slot: int) -> None:
        self.activity.set(slot, 0)
        self.workers[slot] = self.fork(lambda: self._serve_slot(slot), "serving process")

    def replace_dead(self) -> None:
        """Reap the serving processes that exited and start a new one in each's slot."""
        for slot, pid in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            logger.warning("serving process %d exited (%s): replacing it", pid, _exit_text(status))
            hold("supervisor.replacing")
            self.spawn(slot)

    def total_active(self) -> int:
        """The connections all serving processes hold open."""
        return self.activity.total()

    def pids(self) -> set[int]:
        return set(self.workers.values())

    def _serve_slot(self, slot: int) -> None:
        """A prefork child: accept on the shared socket, one connection at a time while
        another child is free; a connection left waiting means every child is busy, so this
        one takes it on a thread rather than keep a worker waiting for its greeting."""
        assert self.listener is not None
        activity, listener = self.activity, self.listener
        _name_child()
        hold("child.started")
        listener.settimeout(0)  # several processes accept: one wins, the others get EAGAIN
        wake_r, wake_w = os.pipe()
        active: set[threading.Thread] = set()
        waiting_since: float | None = None

        def serve(conn: socket.socket) -> None:
            try:
                self.serve_connection(conn)
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
            if not admit(conn):
                continue
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            thread.start()
            active.add(thread)
            activity.set(slot, len(active))
