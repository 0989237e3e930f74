"""spark_pyfunc: score MLflow-format Python models in Spark with one model copy per executor.

The public API::

    import spark_pyfunc

    spark_pyfunc.save_model(path, python_model=MyModel(), ...)   # writes an MLflow-loadable dir
    model = spark_pyfunc.load_model(path)                        # no MLflow needed
    predict = spark_pyfunc.spark_udf(spark, path)                # one model copy per executor

``spark_udf`` (and anything else that needs pyspark) is imported on first use, so the
executor-side model host, which imports this package, never loads pyspark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spark_pyfunc.errors import (
    HostError,
    MissingDependencyError,
    ModelExistsError,
    ModelFormatError,
    ModelSaveError,
    PredictionError,
    ResultTypeError,
    SchemaEnforcementError,
    SchemaError,
    ShippingError,
    SparkPyfuncError,
    UnsafePathError,
)
from spark_pyfunc.format import ModelMetadata
from spark_pyfunc.loading import PyFuncModel, load_model
from spark_pyfunc.python_model import PythonModel, PythonModelContext
from spark_pyfunc.saving import save_model
from spark_pyfunc.schema import (
    ColSpec,
    ModelSignature,
    ParamSchema,
    ParamSpec,
    Schema,
    TensorSpec,
    infer_signature,
)

if TYPE_CHECKING:
    from spark_pyfunc.udf import SparkPyfuncUDF, spark_udf

__version__ = "0.1.0"

__all__ = [
    "ColSpec",
    "HostError",
    "MissingDependencyError",
    "ModelExistsError",
    "ModelFormatError",
    "ModelMetadata",
    "ModelSaveError",
    "ModelSignature",
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
    "__version__",
    "infer_signature",
    "load_model",
    "save_model",
    "spark_udf",
]

_SPARK_LAYER = {"spark_udf", "SparkPyfuncUDF"}


def __getattr__(name: str) -> Any:
    if name in _SPARK_LAYER:
        from spark_pyfunc import udf

        return getattr(udf, name)
    raise AttributeError(f"module 'spark_pyfunc' has no attribute {name!r}")
