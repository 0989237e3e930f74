"""Every exception spark_pyfunc raises, in one place.

All of them derive from :class:`SparkPyfuncError`, so callers can catch the package's
failures with one ``except``. Each message names the thing at fault: the path, the file,
the field, the column, the module or the host log.
"""

from __future__ import annotations

__all__ = [
    "HostError",
    "MissingDependencyError",
    "ModelExistsError",
    "ModelFormatError",
    "ModelSaveError",
    "PredictionError",
    "ResultTypeError",
    "SchemaEnforcementError",
    "SchemaError",
    "ShippingError",
    "SparkPyfuncError",
    "UnsafePathError",
]


class SparkPyfuncError(Exception):
    """Base class of every error raised by spark_pyfunc."""


class ModelFormatError(SparkPyfuncError):
    """A model directory is missing, incomplete or malformed (MLmodel, flavor, pickle)."""


class UnsafePathError(ModelFormatError):
    """A path in a model or an archive would resolve outside the directory it belongs to."""


class ModelExistsError(SparkPyfuncError, FileExistsError):
    """``save_model`` was asked to write into a directory that is not empty."""


class ModelSaveError(SparkPyfuncError):
    """``save_model`` got something it cannot save: the python model, an artifact, a code path,
    the input example, model_config, metadata or the requirements."""


class MissingDependencyError(SparkPyfuncError, ImportError):
    """Loading a model needs a module that is not importable here.

    ``module`` is the missing module and ``install`` the pip requirement that provides it.
    """

    def __init__(self, message: str, *, module: str, install: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.install = install or module.split(".")[0]


class SchemaError(SparkPyfuncError):
    """A signature, schema or params schema is malformed."""


class SchemaEnforcementError(SchemaError):
    """Model input or params do not match the model's signature."""


class ShippingError(SparkPyfuncError):
    """The model archive could not be built, shipped, verified or unpacked."""


class HostError(SparkPyfuncError):
    """The executor-side model host could not be started or reached.

    ``log_tail`` carries the last lines of the host's log file, when there is one.
    """

    def __init__(self, message: str, *, log_path: str | None = None, log_tail: str = "") -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the model host log {log_path} ---\n{log_tail}"
        super().__init__(message)
        self.log_path = log_path
        self.log_tail = log_tail


class PredictionError(SparkPyfuncError):
    """The model's own predict (or custom method) raised; carries its traceback text."""


class ResultTypeError(SparkPyfuncError):
    """A prediction does not fit the UDF's result type or has the wrong number of rows."""
