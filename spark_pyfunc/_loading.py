"""load_model(): a pyfunc model directory -> PyFuncModel, following MLflow's load sequence.

MLmodel -> code directory on sys.path -> unpickle the python model -> context (artifacts,
model_config) -> ``load_context``. Custom pyfunc models (``loader_module:
mlflow.pyfunc.model``), whether spark_pyfunc or MLflow wrote them, load here without MLflow
(MLflow's PythonModel base class is rebuilt as spark_pyfunc's; see ``_Unpickler``);
any other loader module (``mlflow.sklearn``, models-from-code, ...) is imported and its
``_load_pyfunc`` called, as ``mlflow.pyfunc.load_model`` does.

Security: loading a model unpickles it and so runs its code. Load only models you trust.
"""

from __future__ import annotations

import abc
import bz2
import gzip
import importlib
import importlib.util
import inspect
import logging
import lzma
import os
import pickle
import platform
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cloudpickle

from spark_pyfunc._format import (
    ModelMetadata,
    inference_methods,
    is_inference_name,
    read_metadata,
    read_model_config,
)
from spark_pyfunc._uris import resolve_model_uri
from spark_pyfunc.errors import MissingDependencyError, ModelExitError, ModelFormatError
from spark_pyfunc.python_model import PythonModel, PythonModelContext, bind_inference
from spark_pyfunc.schema import enforce_params, enforce_schema

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: How MLflow names the compression of a compressed python model (MLFLOW_LOG_MODEL_COMPRESSION).
_OPENERS: dict[str, Callable[..., Any]] = {"lzma": lzma.open, "bzip2": bz2.open, "gzip": gzip.open}
#: Modules whose pip distribution has another name.
_PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "PyYAML", "PIL": "Pillow", "cv2": "opencv-python"}


class PyFuncModel:
    """A loaded model: ``predict``/``invoke`` check input and params against the signature
    first, as ``mlflow.pyfunc.PyFuncModel.predict`` does, then call the model."""

    def __init__(
        self,
        metadata: ModelMetadata,
        *,
        python_model: Any = None,
        context: PythonModelContext | None = None,
        impl: Any = None,
    ) -> None:
        self._metadata = metadata
        self._python_model = python_model
        self._context = context
        self._impl = impl
        self._calls: dict[str, Callable[[Any, dict[str, Any] | None], Any]] = {}
        #: The model as the user named it (spark_udf's model_uri), where it was loaded from
        #: a copy (an executor's cache): errors name both. See :func:`load_for_scoring`.
        self._model_uri: str | None = None

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def __repr__(self) -> str:
        model = self._python_model if self._python_model is not None else self._impl
        return (
            f"PyFuncModel({self._metadata.path}, loader_module={self._metadata.loader_module}, "
            f"model={type(model).__name__})"
        )

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Score ``data`` with the model's ``predict``, as ``mlflow.pyfunc.PyFuncModel`` does.

        Args:
            data: what the signature's inputs describe: a pandas DataFrame (a dict, a list
                of dicts, a Series or a numpy array are converted as MLflow converts them).
            params: inference parameters, checked against the signature's params schema and
                completed with its defaults.

        Returns:
            Whatever the model's ``predict`` returns (a DataFrame, Series, array, list...).

        Raises:
            SchemaEnforcementError: ``data`` or ``params`` do not match the signature; the
                message names the column or param and the types.

        Example:
            >>> import pandas as pd
            >>> from spark_pyfunc import PythonModel, load_model, save_model
            >>> class Doubler(PythonModel):
            ...     def predict(self, context, model_input, params=None):
            ...         return model_input * 2
            >>> _ = save_model("doubling", Doubler(), input_example=pd.DataFrame({"x": [1.0]}))
            >>> load_model("doubling").predict(pd.DataFrame({"x": [1.5, 2]}))["x"].tolist()
            [3.0, 4.0]
        """
        return self.invoke("predict", data, params)

    def invoke(self, method: str, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Call the model's inference method ``method`` (``predict``, ``predict_proba``, ...)
        with predict's calling convention and the same schema and params enforcement.

        Args:
            method: the name of a method of the python model that takes
                ``(context, model_input, params=None)`` as ``predict`` does.
            data: as for :meth:`predict`.
            params: as for :meth:`predict`.

        Returns:
            What the method returns.

        Raises:
            ModelFormatError: the model has no such method (or is not a python model).
            SchemaEnforcementError: ``data`` or ``params`` do not match the signature.

        Example:
            >>> import pandas as pd
            >>> from spark_pyfunc import PythonModel, load_model, save_model
            >>> class Scorer(PythonModel):
            ...     def predict(self, context, model_input, params=None):
            ...         return model_input["x"] > 0
            ...     def predict_proba(self, context, model_input, params=None):
            ...         return model_input["x"].clip(0, 1)
            >>> _ = save_model("scorer", Scorer(), input_example=pd.DataFrame({"x": [0.5]}))
            >>> model = load_model("scorer")
            >>> model.invoke("predict_proba", pd.DataFrame({"x": [-1.0, 0.25]})).tolist()
            [0.0, 0.25]
        """
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._bind(method)
        inputs = self._metadata.get_input_schema()
        # MLflow leaves checking input to the model's own predict when the signature came
        # from its type hints.
        if inputs is not None and not self._metadata.raw.get("is_signature_from_type_hint"):
            data = enforce_schema(data, inputs)
        params = enforce_params(params, self._metadata.get_params_schema())
        try:
            return call(data, params)
        except SystemExit as exc:  # would end the worker or the host's serving thread
            raise ModelExitError(
                f"the model's {method} called sys.exit, which would end the process serving "
                f"it; a model must raise an exception instead:\n{_model_traceback(exc)}"
            ) from None

    def unwrap_python_model(self) -> Any:
        """The user's python model object (a PythonModel instance), as loaded."""
        if self._python_model is not None:
            return self._python_model
        inner = getattr(self._impl, "python_model", None)
        if inner is None:
            raise ModelFormatError(
                f"model {self._metadata.path} was loaded by {self._metadata.loader_module}, "
                f"which has no python model to unwrap"
            )
        return inner

    def _bind(self, method: str) -> Callable[[Any, dict[str, Any] | None], Any]:
        """A function (data, params) -> prediction calling ``method`` the way MLflow would."""
        target = self._python_model if self._python_model is not None else self._impl
        name = method
        if self._python_model is None and method == "predict":
            name = self._metadata.pyfunc_conf.get("predict_fn", "predict")
        fn = getattr(target, name, None) if is_inference_name(name) else None
        if not callable(fn):
            kind = type(target).__qualname__
            shown = f"{self._metadata.path} ({kind})"
            if self._model_uri is not None:
                shown = f"{self._model_uri!r} ({kind}, loaded from {self._metadata.path})"
            methods = inference_methods(target) if self._python_model is not None else None
            listed = f"; its methods are {', '.join(methods)}" if methods else ""
            raise ModelFormatError(f"the model {shown} has no inference method {method!r}{listed}")
        return bind_inference(fn, self._context if self._python_model is not None else None)


def _model_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without spark_pyfunc's own frames, ending ``Type: message``."""
    here = os.path.dirname(os.path.abspath(__file__))
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if os.path.dirname(os.path.abspath(f.filename)) != here
    ]
    closing = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) + closing


def load_model(
    path: str | os.PathLike[str], model_config: Mapping[str, Any] | str | os.PathLike | None = None
) -> PyFuncModel:
    """Load the pyfunc model in directory ``path``, without MLflow.

    Loads what ``mlflow.pyfunc.save_model`` (or :func:`save_model`) wrote: custom python
    models, models with a ``loader_module`` (``mlflow.sklearn`` and the like, when that
    module is importable) and models from code.

    Args:
        path: the model: a directory (a path or a ``file:`` URI), or any URI
            ``mlflow.pyfunc.load_model`` takes (``runs:/``, ``models:/``, ``s3://``, ...),
            downloaded once per process (see ``spark_udf``).
        model_config: a dict (or a YAML/JSON file) merged over the configuration saved with
            the model; the model gets it as ``context.model_config``. Unlike MLflow, which
            keeps only the keys the saved configuration already has, every key is passed on.

    Returns:
        A :class:`PyFuncModel`: ``predict``, ``invoke``, ``metadata``,
        ``unwrap_python_model()``.

    Raises:
        ModelFormatError: the directory, its MLmodel or its pickle is missing or malformed.
        UnsafePathError: a path in MLmodel leaves the model directory.
        MissingDependencyError: a module the model needs is not importable here; its
            ``install`` names the pip requirement.
        ModelURIError: ``path`` is a URI that cannot be resolved; the message names it.

    Example:
        >>> import pandas as pd
        >>> from spark_pyfunc import PythonModel, load_model, save_model
        >>> class Offset(PythonModel):
        ...     def predict(self, context, model_input, params=None):
        ...         return model_input + context.model_config["offset"]
        >>> _ = save_model("offset", Offset(), model_config={"offset": 1})
        >>> load_model("offset", model_config={"offset": 10}).predict(pd.DataFrame({"x": [1]}))
           x
        0  11
    """
    started = time.perf_counter()
    metadata = read_metadata(resolve_model_uri(path))
    _add_code_to_sys_path(metadata.code_path())
    config = {**metadata.model_config, **read_model_config(model_config)}
    if metadata.is_custom_pyfunc:
        _warn_on_version_mismatch(metadata)
        python_model = _unpickle(metadata)
        context = PythonModelContext(
            {name: str(p) for name, p in _existing_artifacts(metadata).items()}, config
        )
        python_model.load_context(context)
        model = PyFuncModel(metadata, python_model=python_model, context=context)
    else:
        model = PyFuncModel(metadata, impl=_delegate(metadata, config))
    logger.info(
        "loaded model %s (%s) in %.2fs",
        metadata.path,
        metadata.loader_module,
        time.perf_counter() - started,
    )
    return model


def load_for_scoring(
    path: str | os.PathLike[str], model_config: Mapping[str, Any] | None, model_uri: str | None
) -> PyFuncModel:
    """:func:`load_model` of an executor's copy of the model, whose errors name the model as
    the user gave it to spark_udf (``model_uri``) as well as the copy's path."""
    model = load_model(path, model_config=model_config)
    model._model_uri = model_uri or None
    return model


def _add_code_to_sys_path(code: Path | None) -> None:
    """Put the model's code directory first on sys.path, as MLflow does, and forget modules
    already imported under the names it provides so that the model's own copies are used."""
    if code is None:
        return
    names = set()
    if code.is_dir():
        for entry in code.iterdir():
            name = entry.stem if entry.suffix == ".py" else entry.name
            if name.isidentifier() and (entry.suffix == ".py" or entry.is_dir()):
                names.add(name)
    for module in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[module]
    entry = str(code)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def _warn_on_version_mismatch(metadata: ModelMetadata) -> None:
    """Pickles are not guaranteed to load across cloudpickle releases or Python versions."""
    saved = metadata.cloudpickle_version
    if saved is not None and saved != cloudpickle.__version__:
        logger.warning(
            "model %s was saved with cloudpickle %s but cloudpickle %s is running; the pickle "
            "may not load or behave the same",
            metadata.path,
            saved,
            cloudpickle.__version__,
        )
    saved = metadata.python_version
    running = platform.python_version()
    if saved is not None and saved.split(".")[:2] != running.split(".")[:2]:
        logger.warning(
            "model %s was saved with Python %s but Python %s is running; the pickle may not "
            "load or behave the same",
            metadata.path,
            saved,
            running,
        )


def _missing(exc: ModuleNotFoundError, doing: str) -> MissingDependencyError:
    module = exc.name or str(exc)
    top = module.split(".")[0]
    install = _PIP_NAMES.get(top, top)
    if top == "mlflow":
        hint = (
            "pip install mlflow (mlflow-skinny is enough). The model was written with MLflow "
            "and needs it, e.g. because its predict has a type hint on model_input, which "
            "MLflow's PythonModel validates, or its pickle refers to other MLflow objects"
        )
    else:
        hint = (
            f"pip install {install}, or, if it is the model's own code, save the model with "
            f"code_paths that include it"
        )
    return MissingDependencyError(
        f"{doing} needs the module {module!r}, which is not installed here: {hint}",
        module=module,
        install=install,
    )


def _unpickle(metadata: ModelMetadata) -> Any:
    path = metadata.python_model_path()
    compression = metadata.pyfunc_conf.get("python_model_compression")
    if compression and compression not in _OPENERS:
        raise ModelFormatError(
            f"{metadata.mlmodel_path}: unknown python_model_compression {compression!r}; "
            f"known: {', '.join(_OPENERS)}"
        )
    opener = _OPENERS[compression] if compression else open
    try:
        with opener(path, "rb") as f:
            python_model = _Unpickler(f).load()
    except _KeepMlflowBase:
        with opener(path, "rb") as f:  # the class MLflow built, predict wrapper and all
            python_model = _load_with_mlflow(f, path)
    except ModuleNotFoundError as exc:
        raise _missing(exc, f"unpickling the python model {path}") from exc
    except Exception as exc:
        raise ModelFormatError(
            f"cannot unpickle the python model {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(python_model, "predict", None)):
        raise ModelFormatError(
            f"the python model in {path} is a {type(python_model).__qualname__}, which has no "
            f"predict method"
        )
    return python_model


# ------------------------------------------------------- MLflow-written pickles, no MLflow
#
# A PythonModel that MLflow saved is pickled by value (cloudpickle) on top of MLflow's base
# class, so unpickling it imports MLflow: about 65 MiB more in every process that loads the
# model (each model host, or each Python worker with scope="process"), for a base class that
# adds nothing spark_pyfunc's PythonModel lacks, with one exception: MLflow 3 wraps a predict
# whose model_input has a type hint, to validate and convert the input. So the base class is
# rebuilt as spark_pyfunc's unless predict has such a hint; then the model is loaded again
# with MLflow's own class.

#: How a pickle names MLflow's PythonModel.
_MLFLOW_PYTHON_MODEL = {("mlflow.pyfunc.model", "PythonModel"), ("mlflow.pyfunc", "PythonModel")}


class _MlflowPythonModel(PythonModel):
    """Stands in for ``mlflow.pyfunc.PythonModel`` as the base of an MLflow-written model."""


class _CachedTypeHints:
    """Stands in for mlflow.models.signature._TypeHints, which MLflow caches on a model it
    saved (``_predict_type_hints``); for models loaded on our base it holds no hints."""

    input: Any = None
    output: Any = None


class _KeepMlflowBase(Exception):
    """A class on MLflow's PythonModel has a type-hinted predict: load it with MLflow."""


def _model_input_hinted(predict: Any) -> bool:
    """True if ``predict`` (a class's own, or None) annotates its model_input parameter."""
    if not callable(predict):
        return False
    try:
        params = list(inspect.signature(predict).parameters.values())[1:]  # without self
    except (TypeError, ValueError):
        return True  # cannot tell: keep MLflow's behaviour
    if params and params[0].name == "context" and len(params) > 1:
        params = params[1:]
    return bool(params) and params[0].annotation is not inspect.Parameter.empty


def _untracked_skeleton_class(
    type_constructor: type, name: str, bases: tuple, type_kwargs: dict, *_: Any
) -> type:
    """cloudpickle's class skeleton, not entered in its class tracker: if the model must be
    loaded again with MLflow's base class, that load builds its own class."""
    namespace = {sys.intern(k): v for k, v in type_kwargs.items()}
    return types.new_class(
        name, bases, {"metaclass": type_constructor}, lambda ns: ns.update(namespace)
    )


class _Unpickler(pickle.Unpickler):
    """Unpickles with spark_pyfunc's PythonModel standing in for MLflow's (see above)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _MLFLOW_PYTHON_MODEL:
            return _MlflowPythonModel
        if (module, name) == ("mlflow.models.signature", "_TypeHints"):
            return _CachedTypeHints
        if module.startswith("cloudpickle") and name == "_make_skeleton_class":
            original = super().find_class(module, name)

            def make_skeleton(type_constructor, cls_name, bases, *args):  # noqa: ANN001, ANN202
                if _MlflowPythonModel in bases:
                    return _untracked_skeleton_class(type_constructor, cls_name, bases, *args)
                return original(type_constructor, cls_name, bases, *args)

            return make_skeleton
        if module.startswith("cloudpickle") and name == "_class_setstate":
            original = super().find_class(module, name)

            def set_state(cls, state):  # noqa: ANN001, ANN202
                if _MlflowPythonModel not in cls.__bases__:
                    return original(cls, state)
                if _model_input_hinted(state[0].get("predict")):
                    raise _KeepMlflowBase(cls.__qualname__)
                original(cls, state)
                # MLflow's base is no ABC, so the pickle has no __abstractmethods__ to restore:
                # now that predict is set, recompute what our (ABC) base marked abstract.
                return abc.update_abstractmethods(cls)

            return set_state
        return super().find_class(module, name)


def _load_with_mlflow(f: Any, path: Path) -> Any:
    logger.info(
        "%s: predict has a type hint on model_input, which MLflow validates: loading the "
        "model with MLflow's PythonModel",
        path,
    )
    return cloudpickle.load(f)


def _existing_artifacts(metadata: ModelMetadata) -> dict[str, Path]:
    artifacts = metadata.artifact_paths()
    for name, path in artifacts.items():
        if not path.exists():
            raise ModelFormatError(f"model {metadata.path}: artifact {name!r} ({path}) is missing")
    return artifacts


def check_loader(metadata: ModelMetadata, model: str) -> None:
    """Fail on the driver, before Spark runs anything, if the model's loader module cannot be
    imported here: it would otherwise fail on every executor, naming their copy of the model.

    Custom pyfunc models are loaded by spark_pyfunc itself; other flavors (``mlflow.sklearn``,
    a loader in the model's code directory) import their loader module. ``model`` names the
    model in the message as the caller's user knows it (``MODEL 'runs:/...'``).
    """
    if metadata.is_custom_pyfunc:
        return
    loader = metadata.loader_module
    code = metadata.code_path()
    top = loader.split(".")[0]
    if code is not None and ((code / f"{top}.py").is_file() or (code / top).is_dir()):
        return  # the model brings its loader along
    try:
        found = importlib.util.find_spec(loader) is not None
    except ImportError as exc:  # a missing parent package: mlflow.sklearn without mlflow
        missing = getattr(exc, "name", None) or top
        found = False
    else:
        missing = loader
    if found:
        return
    install = "mlflow" if top == "mlflow" else _PIP_NAMES.get(top, missing.split(".")[0])
    raise MissingDependencyError(
        f"{model} is loaded by its loader_module {loader}, which needs the module "
        f"{missing!r}, not installed here: pip install {install} (on the driver and the "
        "executors)",
        module=missing,
        install=install,
    )


def _delegate(metadata: ModelMetadata, config: dict[str, Any]) -> Any:
    """Load through the flavor's loader module, passing model_config only when there is one,
    as MLflow does (older loaders take just the data path)."""
    loader = metadata.loader_module
    try:
        module = importlib.import_module(loader)
    except ModuleNotFoundError as exc:
        raise _missing(exc, f"model {metadata.path} (loader_module {loader})") from exc
    load = getattr(module, "_load_pyfunc", None)
    if not callable(load):
        raise ModelFormatError(
            f"{metadata.mlmodel_path}: loader_module {loader} has no _load_pyfunc function"
        )
    data_path = str(metadata.data_path())
    try:
        return load(data_path, config) if config else load(data_path)
    except ModuleNotFoundError as exc:
        raise _missing(exc, f"model {metadata.path} (loader_module {loader})") from exc
