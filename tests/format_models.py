"""Model classes for the format, loading and MLflow compatibility tests.

The behaviour lives in mixins so that ``mlflow_models`` can put the same logic on MLflow's
base class. Pickled by value (see the register call), so a subprocess, or MLflow, unpickles
them without this directory on its path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd

from spark_pyfunc.python_model import PythonModel

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FEATURES = ["a", "b"]


def frame(rows: int = 6) -> pd.DataFrame:
    """Test input: two double columns."""
    a = np.linspace(0.0, 1.0, rows)
    return pd.DataFrame({"a": a, "b": a[::-1] * 2.0})


class LinearLogic:
    """score = (a, b) @ weights * scale + bias, where

    weights come from the ``weights`` artifact (a .npy file), bias from the text file
    ``bias.txt`` in the ``extras`` artifact (a directory) when there is one, plus
    model_config["offset"]; ``label`` is score > model_config["threshold"].
    """

    def load_context(self, context):
        self.weights = np.load(context.artifacts["weights"])
        extras = context.artifacts.get("extras")
        self.bias = float(Path(extras, "bias.txt").read_text()) if extras else 0.0
        config = context.model_config or {}
        self.bias += float(config.get("offset", 0.0))
        self.threshold = float(config.get("threshold", 0.0))

    def predict(self, context, model_input, params=None):
        scale = float((params or {}).get("scale", 1.0))
        score = model_input[FEATURES].to_numpy(dtype=np.float64) @ self.weights * scale + self.bias
        return pd.DataFrame({"score": score, "label": score > self.threshold})


class OutputLogic:
    """Returns the kind of output params["kind"] asks for: frame, series or array."""

    def predict(self, context, model_input, params=None):
        kind = (params or {}).get("kind", "frame")
        total = model_input["a"].to_numpy() + model_input["b"].to_numpy()
        if kind == "series":
            return pd.Series(total, name="total")
        if kind == "array":
            return total * 10.0
        return pd.DataFrame({"total": total, "diff": model_input["a"] - model_input["b"]})


class MethodsLogic:
    """predict, and custom inference methods predict_proba and logits."""

    def predict(self, context, model_input, params=None):
        return (self.predict_proba(context, model_input, params) > 0.5).astype(np.int64)

    def predict_proba(self, context, model_input, params=None):
        return 1.0 / (1.0 + np.exp(-self.logits(context, model_input, params)))

    def logits(self, context, model_input, params=None):
        shift = float((params or {}).get("shift", 0.0))
        return model_input["a"].to_numpy() - model_input["b"].to_numpy() + shift


class ConfigLogic:
    """One row per input row holding the model_config it was loaded with."""

    def load_context(self, context):
        self.config = dict(context.model_config or {})

    def predict(self, context, model_input, params=None):
        keys = sorted(self.config)
        return pd.DataFrame({k: [str(self.config[k])] * len(model_input) for k in keys})


class Linear(LinearLogic, PythonModel):
    pass


class Outputs(OutputLogic, PythonModel):
    pass


class Methods(MethodsLogic, PythonModel):
    pass


class Config(ConfigLogic, PythonModel):
    pass


class NoContext(PythonModel):
    """predict without the context argument, as MLflow 3 allows."""

    def predict(self, model_input, params=None):
        return model_input["a"] * float((params or {}).get("scale", 1.0))


class NoParams(PythonModel):
    """predict without a params argument."""

    def predict(self, context, model_input):
        return model_input["a"] + 1.0


class Failing(PythonModel):
    """predict fails: signature inference must not stop the save."""

    def predict(self, context, model_input, params=None):
        raise RuntimeError("this model cannot predict")
