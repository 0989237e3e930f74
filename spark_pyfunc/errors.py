"""Every exception spark_pyfunc raises, in one place.

All of them derive from :class:`SparkPyfuncError`, so callers can catch the package's
failures with one ``except``. Each message names the thing at fault: the argument, the path,
the file, the field, the column, the module or the host log. The hierarchy::

    SparkPyfuncError
    ├── InvalidArgumentError (also ValueError)   an argument or spark.pyfunc.* setting
    │   └── ModelURIError                         a model URI that cannot be resolved
    ├── UsageError                                a command-line argument (exit status 2)
    ├── EnvironmentSetupError                     no usable Java; a model env not built
    ├── ModelFormatError                          a model directory, MLmodel, pickle
    │   └── UnsafePathError                       a path that leaves the model directory
    ├── ModelExistsError (also FileExistsError)   save_model into a non-empty directory
    ├── ModelSaveError                            something save_model cannot save
    ├── MissingDependencyError (also ImportError) a module the model needs is missing
    ├── SchemaError                               a malformed signature or schema
    │   └── SchemaEnforcementError                input or params that do not match it
    ├── ShippingError                             the model archive on its way to executors
    ├── HostError                                 the model host cannot be started or reached
    ├── PredictionError                           the model's own predict raised
    ├── ModelExitError                            the model's predict called sys.exit
    └── ResultTypeError                           a prediction that does not fit the result type

Errors rebuilt from the model host: an exception raised in the host crosses the socket as
its type name, message and traceback text, and the worker (``_client._remote_error``)
raises it again. A class of this module that takes its message alone (it defines no
``__init__`` of its own, as ``SchemaEnforcementError``) comes back as the same class, so
``except SchemaEnforcementError`` works the same in both scopes; anything else (the model's
own exceptions, and these errors that carry fields) comes back as :class:`PredictionError`
naming the original type. Either way ``remote_traceback`` holds the host's traceback text;
it is None on an error raised in the process that catches it.
"""

from __future__ import annotations

__all__ = [
    "EnvironmentSetupError",
    "HostError",
    "InvalidArgumentError",
    "MissingDependencyError",
    "ModelExistsError",
    "ModelExitError",
    "ModelFormatError",
    "ModelURIError",
    "ModelSaveError",
    "PredictionError",
    "ResultTypeError",
    "SchemaEnforcementError",
    "SchemaError",
    "ShippingError",
    "SparkPyfuncError",
    "UnsafePathError",
    "UsageError",
]


class SparkPyfuncError(Exception):
    """Base class of every error raised by spark_pyfunc."""

    #: The model host's traceback text, on an error rebuilt from the host; else None.
    remote_traceback: str | None = None


class InvalidArgumentError(SparkPyfuncError, ValueError):
    """An argument or a ``spark.pyfunc.*`` setting has a value the function cannot use; the
    message names the argument (or key), what it must be and the value given."""

    #: The keyword argument at fault, when the error is about one (the CLI maps it to a flag).
    argument: str | None = None


class ModelURIError(InvalidArgumentError):
    """A model URI (``runs:/``, ``models:/``, ``s3://``, ...) cannot be resolved to a local
    model directory on the driver; the message names the URI and the reason (an unknown run
    or alias, a missing bucket, MLflow or the store's extra not installed)."""


class UsageError(SparkPyfuncError):
    """A command-line argument is wrong: exit status 2, as for argparse's own errors. The
    message names the flag (``--param``), where the library's names the keyword.

    Not a ValueError: argparse replaces the message of a ValueError raised by a ``type=``
    converter (``--columns``) with "invalid ... value"."""


class EnvironmentSetupError(SparkPyfuncError):
    """This machine cannot start Spark (no Java, or a Java the installed Spark does not
    support: the message says which Java was found), or an executor cannot restore a model's
    Python environment (``env_manager``): the message names the tool or Python that is
    missing, or carries the tail of the build's log."""


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
    """The model's own predict (or custom method) raised in the model host; the message
    names the original exception type and carries the host's traceback, also kept apart in
    ``remote_traceback``."""

    def __init__(self, message: str, *, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class ModelExitError(SparkPyfuncError):
    """The model's predict (or custom method) called ``sys.exit``: raised in its place, so
    that the process serving the model (a Python worker, a model host) lives on and the
    task fails with this error. The message ends with the model's frames and its
    ``SystemExit: ...``, in both scopes (it takes its message alone: rebuilt as itself)."""


class ResultTypeError(SparkPyfuncError):
    """A prediction does not fit the UDF's result type or has the wrong number of rows."""
