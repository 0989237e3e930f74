"""Ctrl-C at every stage of ``spark-pyfunc score``, for every --mode: exit 130 means OUTPUT is
exactly as before (and the same command can run again); from the commit on, Ctrl-C cannot
undo it and the command succeeds, saying that OUTPUT was written.

Each run is the console script in a session of its own, as a terminal runs it; the signal
goes to its whole process group (what Ctrl-C does) once the run reached a gate: a marker
file the code under test writes at that stage, while it waits (``SPARK_PYFUNC_TEST_GATES``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from spark_pyfunc import save_model
from spark_pyfunc._commit import GATES_ENV
from spark_pyfunc.cli import main
from spark_pyfunc.python_model import PythonModel
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, Schema

cloudpickle.register_pickle_by_value(sys.modules[__name__])

CONSOLE_SCRIPT = Path(sys.executable).with_name("spark-pyfunc")
#: Stages in the order a run meets them; the first two come before the commit.
STAGES = ["before-spark", "scoring", "commit", "after-commit", "stop"]
BEFORE_COMMIT = {"before-spark", "scoring"}


class Gated(PythonModel):
    """Writes GATES/scoring.reached and waits for GATES/scoring.go, then scores x + 1."""

    def predict(self, context, model_input, params=None):
        gates = Path(context.model_config["gates"])
        (gates / "scoring.reached").write_text(str(os.getpid()))
        while not (gates / "scoring.go").exists():
            time.sleep(0.02)
        return model_input["x"] + 1.0


def digest(path: Path) -> str | None:
    """md5 of a directory's file names and bytes (None: no such path)."""
    if not path.exists():
        return None
    md5 = hashlib.md5()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        md5.update(str(file.relative_to(path)).encode())
        md5.update(file.read_bytes())
    return md5.hexdigest()


def ids(path: Path) -> list[int]:
    return sorted(pd.read_parquet(path)["id"].tolist())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["error", "overwrite", "append"])
@pytest.mark.parametrize("stage", STAGES)
def test_ctrl_c_at_every_stage_keeps_the_rule(spark, capsys, tmp_path, stage, mode):
    gates = tmp_path / "gates"
    gates.mkdir()
    model = tmp_path / "model"
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "x")]), outputs=Schema([ColSpec(DataType.double)])
    )
    save_model(model, python_model=Gated(), signature=signature, model_config={"gates": str(gates)})
    source = tmp_path / "in.parquet"
    pd.DataFrame({"id": np.arange(10, 20), "x": np.arange(10.0)}).to_parquet(source, index=False)
    out = tmp_path / "out.parquet"
    if mode != "error":  # a previous OUTPUT, to be replaced or added to
        out.mkdir()
        pd.DataFrame({"id": [1, 2], "x": [0.0, 0.0], "prediction": [1.0, 1.0]}).to_parquet(
            out / "part-00000-previous.parquet", index=False
        )
    before = digest(out)
    previous = ids(out) if before is not None else []
    for other in STAGES:  # every gate but this stage's lets the run through
        if other != stage:
            (gates / f"{other}.go").touch()
    command = [
        str(CONSOLE_SCRIPT) if CONSOLE_SCRIPT.exists() else sys.executable,
        *([] if CONSOLE_SCRIPT.exists() else ["-m", "spark_pyfunc.cli"]),
        "score", str(model), str(source), str(out), "--mode", mode, "--scope", "process",
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, env={**os.environ, GATES_ENV: str(gates)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        reached = gates / f"{stage}.reached"
        while not reached.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reached.exists(), f"the run never reached {stage}: {proc.communicate()}"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        (gates / f"{stage}.go").touch()
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    siblings = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.parquet")]
    assert siblings == [], siblings  # no staging directory, no previous OUTPUT set aside
    new = list(range(10, 20))
    if stage in BEFORE_COMMIT:
        assert proc.returncode == 130, stderr
        assert "spark-pyfunc: interrupted" in stderr
        assert digest(out) == before  # exactly as before
        # "the same command can be re-run": it does what it would have done
        assert main(["score", str(model), str(source), str(out), "--mode", mode]) == 0
        assert ids(out) == sorted(previous + new if mode == "append" else new)
    else:
        assert proc.returncode == 0, stderr
        assert "OUTPUT was written" in stderr or "it was written" in stderr, stderr
        assert ids(out) == sorted(previous + new if mode == "append" else new)
        if stage != "after-commit":  # the summary comes once score returned
            assert stdout.startswith("rows"), stdout
        if mode == "error":  # it was written: the same command now says OUTPUT exists
            assert main(["score", str(model), str(source), str(out)]) == 1
            assert "already exists" in capsys.readouterr().err
