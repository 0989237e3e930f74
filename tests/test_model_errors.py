"""An error of the model's own code reaches the user the same way in every scope and host mode.

The rule: the exception's message (the PythonException Spark raises on the driver) and the
CLI's last line end with the model's own ``Type: message``, the model's frames just above it,
and the relay's frames (the worker's generators and sockets) are not what the reader meets.
Each case runs through Spark (local[2]) with ``scope="process"`` and ``scope="executor"`` with
the host in thread and prefork mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from spark_pyfunc import save_model, spark_udf
from spark_pyfunc.cli import main
from spark_pyfunc.python_model import PythonModel
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, Schema

cloudpickle.register_pickle_by_value(sys.modules[__name__])

HOST_MODE = "spark.pyfunc.host.mode"


def _lookup(table):
    return table["missing_key"]


class FailsInHelper(PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.Series(np.full(len(model_input), _lookup({})), dtype=float)


class FailsInPredict(PythonModel):
    def predict(self, context, model_input, params=None):
        raise ValueError("predict refused: bad batch")


class FailsInLoad(PythonModel):
    def load_context(self, context):
        raise RuntimeError("weights-are-corrupt: cannot load")

    def predict(self, context, model_input, params=None):
        return model_input["x"]


class Exits(PythonModel):
    def predict(self, context, model_input, params=None):
        sys.exit("predict called sys.exit")


#: model -> (the closing line the user must see last, the model's frame shown above it)
CASES = {
    "helper": (FailsInHelper, "KeyError: 'missing_key'", "in _lookup"),
    "predict": (FailsInPredict, "ValueError: predict refused: bad batch", "in predict"),
    "load": (FailsInLoad, "RuntimeError: weights-are-corrupt: cannot load", "in load_context"),
    "exit": (Exits, "SystemExit: predict called sys.exit", "in predict"),
}
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.double, "x")]), outputs=Schema([ColSpec(DataType.double)])
)
SCOPES = [("process", None), ("executor", "thread"), ("executor", "prefork")]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model-errors")
    return {
        name: save_model(root / name, python_model=cls(), signature=SIGNATURE) and root / name
        for name, (cls, _, _) in CASES.items()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model-errors-in") / "x.parquet"
    pd.DataFrame({"x": np.arange(6, dtype=float)}).to_parquet(path, index=False)
    return path


def _scored_error(spark, model: Path, scope: str, mode: str | None) -> str:
    previous = spark.conf.get(HOST_MODE, None)
    if mode is not None:
        spark.conf.set(HOST_MODE, mode)
    try:
        predict = spark_udf(spark, model, scope=scope)
        frame = spark.createDataFrame(pd.DataFrame({"x": [1.0, 2.0, 3.0]})).coalesce(1)
        with pytest.raises(Exception) as failure:
            frame.select(predict("x")).collect()
    finally:
        if previous is None:
            spark.conf.unset(HOST_MODE)
        else:
            spark.conf.set(HOST_MODE, previous)
    return str(failure.value)


@pytest.mark.parametrize(("scope", "mode"), SCOPES, ids=["process", "thread", "prefork"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_message_ends_with_the_models_error_and_its_frames(spark, models, case, scope, mode):
    _, closing, frame = CASES[case]
    text = _scored_error(spark, models[case], scope, mode)
    lines = text.rstrip().splitlines()
    assert lines[-1].endswith(closing), text[-3000:]
    # the model's frame comes just above its error (after sys.exit: above the SystemExit,
    # which the ModelExitError closing the message was raised from)
    at = lines.index(closing) if case == "exit" else len(lines) - 1
    assert any(frame in line for line in lines[at - 3 : at]), text[-3000:]
    if scope == "executor":
        # the relay's frames (generators closing the client, the socket) are not shown
        assert "client.close()" not in text and "_client.py" not in text, text[-3000:]
        assert "_host.py" not in text.split("Traceback (most recent")[-1], text[-3000:]


@pytest.mark.parametrize("scope", ["process", "executor"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_cli_ends_with_the_models_error(spark, capsys, tmp_path, models, data, case, scope):
    _, closing, _ = CASES[case]
    out = tmp_path / "out.parquet"
    for verbose in ((), ("--verbose", "--host-log-dir", str(tmp_path / "logs"))):
        code = main(["score", str(models[case]), str(data), str(out), "--scope", scope, *verbose])
        _, err = capsys.readouterr()
        last = err.rstrip().splitlines()[-1]
        assert code == 1, err[-3000:]
        assert last.startswith("spark-pyfunc: error: ") and last.endswith(closing), err[-3000:]
        assert not out.exists()
        if verbose:
            assert "Traceback (most recent call last)" in err  # more detail, same last line
        else:
            assert len(err.strip().splitlines()) <= 2, err  # a hint, then the error
