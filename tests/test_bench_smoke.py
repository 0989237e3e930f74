"""Keep scripts/bench.py working: its --quick mode runs every approach end to end.

Speed is not asserted here (the benchmark itself measures it); what is asserted is that the
script runs, checks every approach's predictions, writes its table and plot, and leaves no
cluster or temp dir behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"


def _spb_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("spb-*")}


@pytest.mark.slow
@pytest.mark.mlflow
def test_quick_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("matplotlib")
    out = tmp_path / "docs"
    before = _spb_dirs()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_")}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    table = (out / "benchmark.md").read_text()
    assert "python scripts/bench.py --quick" in table
    assert "RAM" in table and "cores" in table
    for approach in (
        "noop",
        "spf-auto",
        "spf-executor-thread",
        "spf-executor-fork",
        "spf-process",
        "mlflow",
        "predict_batch_udf",
        "handwritten",
    ):
        assert f"| {approach} |" in table, approach
    assert "## Goals" in table
    # CPU per 10,000 rows by process: only the approaches with a model host have host CPU.
    cpu = table.split("### Executor CPU per 10,000 rows")[1].split("###")[0]
    parts = {}
    for line in cpu.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 2 and "=" in cells[1]:
            jvm, workers, host = (float(v) for v in cells[1].split("=")[0].split("+"))
            parts[cells[0]] = (jvm, workers, host)
    assert parts["spf-executor-thread"][2] > 0 and parts["spf-executor-fork"][2] > 0, parts
    assert parts["noop"][2] == parts["mlflow"][2] == parts["spf-process"][2] == 0.0, parts
    assert all(jvm > 0 and workers > 0 for jvm, workers, _ in parts.values()), parts
    # Memory split at the top core count: only a model host's approaches have host PSS.
    split = table.split("### Where it lies at")[1].split("##")[0]
    hosts = {}
    for line in split.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[3].lstrip("-").isdigit():
            hosts[cells[1]] = int(cells[3])
    assert hosts["spf-executor-thread"] > 0 and hosts["spf-executor-prefork"] > 0, hosts
    assert hosts["mlflow"] == hosts["spf-process"] == 0, hosts
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ABORTED" not in proc.stderr
    assert "left processes behind" not in table
    assert _spb_dirs() <= before, "the benchmark left its temp dir behind"
