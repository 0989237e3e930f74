"""After an application ends, nothing of spark_pyfunc is left: no model host process and no
temporary file or directory (the driver's archive directory, the host's socket directory).

The application runs in its own interpreter with TMPDIR pointed at an empty directory, so
everything Python code creates with ``tempfile`` lands where the test can see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from udf_models import LINEAR_WEIGHTS, save_linear

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def hosts_under(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "spark_pyfunc._host" in cmd and any(str(root) in part for part in cmd):
            found.append(proc)
    return found


def test_an_ended_application_leaves_no_host_and_no_temp_files(tmp_path):
    model = save_linear(tmp_path, example_rows=2)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run(
        [sys.executable, str(HERE / "leak_app.py"), str(model)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = np.arange(5000).sum() * (np.arange(8) @ LINEAR_WEIGHTS)
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(expected)

    ended = time.monotonic()
    deadline = ended + 10
    while hosts_under(scratch) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not hosts_under(scratch), "a model host outlived its application by more than 10 s"
    while any(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in scratch.iterdir()) == []
