"""Waiting for something that should happen soon, on a shared machine: poll, never sleep blind.

Every test that waits for a process to exit, a file to appear or a log line to be written
polls through these, so a slow machine costs time, not a red test, and no wait hides a fixed
sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["until", "wait_until"]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds (polled every ``interval``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def until(condition: Callable[[], bool], what: str, timeout: float, interval: float = 0.02) -> None:
    """Wait for ``condition()``; fail the test with ``never: <what>`` if it never comes true."""
    assert wait_until(condition, timeout, interval), f"never: {what}"
