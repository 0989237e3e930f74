"""The format_models logic on MLflow's PythonModel, for models written by MLflow itself.

Pickled by value like format_models, so the pickles refer to MLflow only through the base
class: unpickling them where MLflow is missing fails on exactly that.
"""

from __future__ import annotations

import sys

import cloudpickle
import mlflow.pyfunc
from format_models import ConfigLogic, LinearLogic, MethodsLogic, OutputLogic

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class MlflowLinear(LinearLogic, mlflow.pyfunc.PythonModel):
    pass


class MlflowOutputs(OutputLogic, mlflow.pyfunc.PythonModel):
    pass


class MlflowMethods(MethodsLogic, mlflow.pyfunc.PythonModel):
    pass


class MlflowConfig(ConfigLogic, mlflow.pyfunc.PythonModel):
    pass


class MlflowNoContext(mlflow.pyfunc.PythonModel):
    """predict without the context argument, as MLflow 3 allows."""

    def predict(self, model_input, params=None):
        return model_input["a"] * float((params or {}).get("scale", 1.0))


class MlflowHinted(mlflow.pyfunc.PythonModel):
    """predict with a type hint on model_input: MLflow 3 converts the input to it."""

    def predict(self, context, model_input: list[str], params=None):
        return [f"{type(model_input).__name__}:{s.upper()}" for s in model_input]
