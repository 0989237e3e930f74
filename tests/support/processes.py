"""Process checks the tests share: is a process still there (a zombie is not)?"""

from __future__ import annotations

import psutil

__all__ = ["alive", "alive_pid"]


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
