"""The file lock the workers of a machine share (spark_pyfunc._locks)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spark_pyfunc._locks import file_lock

HOLDER = (
    "import sys, time\n"
    "from spark_pyfunc._locks import file_lock\n"
    "with file_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _hold(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    return holder


def test_a_held_lock_times_out_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.lock"
    holder = _hold(path)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"0.3s waiting for the lock {path}"):
            with file_lock(path, timeout=0.3):
                pytest.fail("acquired a lock another process holds")
        assert time.monotonic() - started >= 0.3
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "model.lock"
    holder = _hold(path)
    holder.kill()  # SIGKILL: no cleanup ran
    holder.wait()
    with file_lock(path, timeout=5):
        assert path.exists()
    assert path.exists()  # never removed: another process may hold it open


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "model.lock"
    inside, overlaps = [], []

    def work() -> None:
        for _ in range(20):
            with file_lock(path, timeout=30):
                inside.append(1)
                overlaps.append(len(inside))
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(overlaps) == 80 and max(overlaps) == 1


def test_no_timeout_waits_for_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "model.lock"
    holder = _hold(path)
    threading.Timer(0.5, holder.kill).start()
    started = time.monotonic()
    with file_lock(path):
        waited = time.monotonic() - started
    holder.wait()
    assert waited >= 0.4
