"""Process checks the tests share: is a process still there (a zombie is not)?

A model host is detached: when it exits, init (or the nearest subreaper) reaps it, not us, and
on some machines init reaps only every second or two. A zombie has exited (it holds no socket,
no memory, no files), so every wait here ends at the exit, not at the reaping:
``psutil.wait_procs`` waits for the pid to go, which cost ~2 s per stopped host there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil

__all__ = ["alive", "alive_pid", "wait_exited"]


def alive_pid(pid: int) -> bool:
    """Whether ``pid`` is running: it exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` (the very process, not a reuse of its pid) is running and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_exited(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each of ``procs`` has exited (a zombie has); return those still running."""
    running = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        running = [proc for proc in running if alive(proc)]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.02)
