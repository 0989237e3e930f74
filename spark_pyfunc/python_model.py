"""PythonModel and PythonModelContext: the user's side of a pyfunc model, under MLflow's names.

A class written for ``mlflow.pyfunc.PythonModel`` moves over by changing its import: the
method names and arguments are MLflow's (``load_context(context)``,
``predict(context, model_input, params=None)``, where ``context`` may be left out of predict
as MLflow 3 allows).

Security: ``save_model`` stores the model object with cloudpickle, and loading a model
unpickles it, which runs code chosen by whoever wrote the file. Load only models you trust.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

__all__ = [
    "PythonModel",
    "PythonModelContext",
    "bind_inference",
]


class _TypeHints(NamedTuple):
    input: Any = None
    output: Any = None


class PythonModelContext:
    """What ``load_context`` and ``predict`` get: the artifacts and the model configuration.

    ``artifacts`` maps each artifact name to the absolute local path of its copy inside the
    model directory; ``model_config`` is the saved configuration merged with the one given
    at load time (an empty dict when there is none).
    """

    __slots__ = ("_artifacts", "_model_config")

    def __init__(
        self, artifacts: Mapping[str, str] | None, model_config: Mapping[str, Any] | None
    ) -> None:
        self._artifacts = dict(artifacts or {})
        self._model_config = dict(model_config or {})

    @property
    def artifacts(self) -> dict[str, str]:
        return self._artifacts

    @property
    def model_config(self) -> dict[str, Any]:
        return self._model_config

    def __repr__(self) -> str:
        return (
            f"PythonModelContext(artifacts={self._artifacts!r}, "
            f"model_config={self._model_config!r})"
        )


class PythonModel(abc.ABC):
    """Base class of a custom pyfunc model: override ``predict`` (and ``load_context``).

    Other public methods with predict's arguments (``predict_proba``, ``logits``, ...) can be
    called through ``PyFuncModel.invoke`` and ``spark_udf(..., method=...)``.
    """

    def load_context(self, context: PythonModelContext) -> None:  # noqa: B027 (optional hook)
        """Called once when the model is loaded: read artifacts here, not in predict."""

    @abc.abstractmethod
    def predict(
        self, context: PythonModelContext, model_input: Any, params: dict[str, Any] | None = None
    ) -> Any:
        """Score ``model_input`` (usually a pandas DataFrame) and return the predictions."""

    @property
    def predict_type_hints(self) -> _TypeHints:
        """No type hints. MLflow's pyfunc wrapper reads this attribute before every predict and
        converts the input according to the hints; reporting none makes ``mlflow.pyfunc``
        pass the input unchanged, as spark_pyfunc does, so both predict the same."""
        return _TypeHints()


def bind_inference(
    fn: Callable[..., Any], context: PythonModelContext | None
) -> Callable[[Any, dict[str, Any] | None], Any]:
    """``fn`` (a bound inference method) as a function of (data, params), called the way
    MLflow calls a python model's predict.

    ``context`` goes first unless ``fn`` was written without it (MLflow 3 allows
    ``predict(self, model_input, params=None)``); pass None for methods of objects that are
    not python models (a loader module's wrapper). ``params`` is passed by keyword only when
    ``fn`` has a ``params`` argument, and dropped with a warning otherwise.
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature
        parameters = {}
    takes_params = "params" in parameters
    positional = [
        p
        for p in parameters.values()
        if p.name != "params"
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    wants_context = "context" in parameters or len(positional) >= 2
    leading = (context,) if context is not None and wants_context else ()
    name = getattr(fn, "__qualname__", repr(fn))

    def call(data: Any, params: dict[str, Any] | None) -> Any:
        if takes_params:
            return fn(*leading, data, params=params)
        if params:
            logger.warning(
                "%s takes no params argument; the params %s are ignored", name, list(params)
            )
        return fn(*leading, data)

    return call
