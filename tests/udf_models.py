"""Model classes used by the Spark UDF tests.

They are pickled by value (see ``save``), so Spark's Python workers and the model host can
unpickle them without the tests directory on their path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd

from spark_pyfunc.python_model import PythonModel
from spark_pyfunc.saving import save_model

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FEATURES = [f"f{i}" for i in range(8)]


def _record(context, event: str) -> None:
    """Append ``event pid`` to the file named by model_config["counter"], if any."""
    path = (context.model_config or {}).get("counter")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{event} {os.getpid()}\n")


class Linear(PythonModel):
    """y = X @ w + bias * scale; w from an artifact, bias from model_config."""

    def load_context(self, context):
        self.w = np.load(context.artifacts["weights"])
        self.bias = float((context.model_config or {}).get("bias", 0.0))
        _record(context, "load")

    def predict(self, context, model_input, params=None):
        scale = (params or {}).get("scale", 1.0)
        x = model_input[FEATURES].to_numpy(dtype=np.float64)
        return pd.Series(x @ self.w + self.bias * scale, name="y")

    def logits(self, context, model_input, params=None):
        return -self.predict(context, model_input, params)


class SlowLinear(Linear):
    """Linear, sleeping model_config["delay"] seconds per batch: a job long enough to hurt."""

    def predict(self, context, model_input, params=None):
        import time

        time.sleep(float((context.model_config or {}).get("delay", 0.0)))
        return super().predict(context, model_input, params)


class Probe(PythonModel):
    """Reports what it saw: the host/worker pid, batch sizes and nulls, for UDF semantics tests.

    The pid is that of the process that loaded this copy: a prefork host's serving children
    report their parent, the host.
    """

    def load_context(self, context):
        _record(context, "load")
        self.pid = os.getpid()

    def predict(self, context, model_input, params=None):
        n = len(model_input)
        return pd.DataFrame(
            {
                "pid": np.full(n, self.pid, dtype=np.int64),
                "rows": np.full(n, n, dtype=np.int64),
                "nulls": model_input.isna().sum(axis=1).astype(np.int64),
                "tag": [str((params or {}).get("tag", "none"))] * n,
            }
        )


class Echo(PythonModel):
    """Returns its input columns unchanged: what reaches the model is what comes back."""

    def predict(self, context, model_input, params=None):
        return model_input.copy()


class Describe(PythonModel):
    """One string per row naming each input's dtype and value: what exactly the model saw."""

    def predict(self, context, model_input, params=None):
        columns = list(model_input.columns)
        return pd.Series(
            [
                " | ".join(
                    f"{c}:{model_input[c].dtype}:{model_input[c].iloc[i]!r}" for c in columns
                )
                for i in range(len(model_input))
            ]
        )


class Shapes(PythonModel):
    """Returns what it is told to (via params), to test result-type fitting."""

    def predict(self, context, model_input, params=None):
        kind = (params or {}).get("kind", "double")
        n = len(model_input)
        x = model_input["x"].to_numpy()
        if kind == "double":
            return x * 1.5
        if kind == "fraction":
            return pd.Series(x + 0.5)
        if kind == "int":
            return pd.Series(x.astype(np.int64) * 2)
        if kind == "array":
            return np.stack([x, x * 2, x * 3], axis=1)
        if kind == "string":
            return pd.Series([f"row-{v:g}" for v in x])
        if kind == "too_few":
            return pd.Series(x[: max(n - 1, 0)])
        if kind == "raise":
            raise RuntimeError("the model refused this batch")
        raise ValueError(kind)


def save(model, path: Path, **kwargs) -> Path:
    save_model(str(path), python_model=model, **kwargs)
    return path
