"""The notebooks run top to bottom in a fresh python3 kernel of this interpreter.

Each notebook starts and stops its own SparkSession (a kernel is its own process with its own
JVM), works in its own temp directory and removes it, so the test only has to fail on any cell
error. Notebooks are stored without outputs; the executed copy is never written back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, workdir: Path) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None
        for cell in notebook.cells
        if cell.cell_type == "code"
    ), f"{name} is stored with outputs"
    # The kernel must run this interpreter (spark_pyfunc is installed in it), and so must
    # Spark's Python workers started from it; matplotlib draws off-screen. Python's and the
    # JVM's temp files go under pytest's tmp dir: Jupyter ends a kernel with SIGTERM, so its
    # atexit clean-ups (and the JVM's shutdown hooks, racing the kernel) may not run.
    scratch = workdir / "tmp"
    scratch.mkdir()
    env = {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "MPLBACKEND": "Agg",
        "TMPDIR": str(scratch),
        "SPARK_SUBMIT_OPTS": f"-Djava.io.tmpdir={scratch}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=300,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()  # raises CellExecutionError naming the failing cell
        left = [p.name for p in scratch.iterdir() if p.name.startswith(("spark-pyfunc", "spark_"))]
        assert not left, f"{name} left {left} behind"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow  # a kernel with a JVM of its own: ~20 s
def test_quickstart(tmp_path):
    run_notebook("quickstart.ipynb", tmp_path)


@pytest.mark.slow
def test_one_copy_per_executor(tmp_path):
    run_notebook("one_copy_per_executor.ipynb", tmp_path)
