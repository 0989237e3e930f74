"""spark_pyfunc: score MLflow-format Python models in Spark with one model copy per executor.

The public API::

    import spark_pyfunc

    spark_pyfunc.save_model(path, python_model=MyModel(), ...)   # writes an MLflow-loadable dir
    model = spark_pyfunc.load_model(path)                        # no MLflow needed
    predict = spark_pyfunc.spark_udf(spark, path)                # one model copy per executor

Every name but the errors is imported on first use: the model host never loads pyspark, and
a Spark worker that only relays batches to the host never loads the format layer (about 5 MiB
less in each worker of each executor).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spark_pyfunc._version import __version__
from spark_pyfunc.errors import (
    EnvironmentSetupError,
    HostError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelExistsError,
    ModelFormatError,
    ModelSaveError,
    ModelURIError,
    PredictionError,
    ResultTypeError,
    SchemaEnforcementError,
    SchemaError,
    ShippingError,
    SparkPyfuncError,
    UnsafePathError,
    UsageError,
)

if TYPE_CHECKING:
    from spark_pyfunc._format import ModelMetadata
    from spark_pyfunc._loading import PyFuncModel, load_model
    from spark_pyfunc._report import host_report
    from spark_pyfunc._saving import save_model
    from spark_pyfunc._udf import SparkPyfuncUDF, spark_udf
    from spark_pyfunc.python_model import PythonModel, PythonModelContext
    from spark_pyfunc.schema import (
        ColSpec,
        ModelSignature,
        ParamSchema,
        ParamSpec,
        Schema,
        TensorSpec,
        infer_signature,
    )


#: Public name -> the module (under spark_pyfunc) that defines it.
_LAZY = {
    "ModelMetadata": "_format",
    "PyFuncModel": "_loading",
    "load_model": "_loading",
    "PythonModel": "python_model",
    "PythonModelContext": "python_model",
    "save_model": "_saving",
    "ColSpec": "schema",
    "ModelSignature": "schema",
    "ParamSchema": "schema",
    "ParamSpec": "schema",
    "Schema": "schema",
    "TensorSpec": "schema",
    "infer_signature": "schema",
    "SparkPyfuncUDF": "_udf",
    "spark_udf": "_udf",
    "host_report": "_report",
}

__all__ = [
    "ColSpec",
    "EnvironmentSetupError",
    "HostError",
    "InvalidArgumentError",
    "MissingDependencyError",
    "ModelExistsError",
    "ModelFormatError",
    "ModelMetadata",
    "ModelSaveError",
    "ModelSignature",
    "ModelURIError",
    "ParamSchema",
    "ParamSpec",
    "PredictionError",
    "PyFuncModel",
    "PythonModel",
    "PythonModelContext",
    "ResultTypeError",
    "Schema",
    "SchemaEnforcementError",
    "SchemaError",
    "ShippingError",
    "SparkPyfuncError",
    "SparkPyfuncUDF",
    "TensorSpec",
    "UnsafePathError",
    "UsageError",
    "__version__",
    "host_report",
    "infer_signature",
    "load_model",
    "save_model",
    "spark_udf",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spark_pyfunc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"spark_pyfunc.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
