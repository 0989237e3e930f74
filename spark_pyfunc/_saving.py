"""save_model(): write a pyfunc model directory that spark_pyfunc and MLflow both load.

The files and MLmodel fields are those ``mlflow.pyfunc.save_model`` writes for a PythonModel
(``loader_module: mlflow.pyfunc.model``), so ``mlflow.pyfunc.load_model`` loads the directory
too, wherever spark_pyfunc is installed beside MLflow (the pickle refers to spark_pyfunc's
PythonModel). The python model is stored with cloudpickle: classes defined in ``__main__`` or
a notebook are stored by value, classes from an importable module by reference, so such a
module must be importable where the model is loaded, or be passed as ``code_paths``.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import yaml

from spark_pyfunc._format import (
    CUSTOM_PYFUNC_LOADER,
    METHODS_KEY,
    PYFUNC_FLAVOR,
    REQUIREMENTS_FILE,
    ModelMetadata,
    inference_methods,
    read_metadata,
    read_model_config,
    write_mlmodel,
)
from spark_pyfunc._paths import local_path
from spark_pyfunc._version import __version__
from spark_pyfunc.errors import ModelExistsError, ModelSaveError, SchemaError, SparkPyfuncError
from spark_pyfunc.python_model import PythonModelContext, bind_inference
from spark_pyfunc.schema import ModelSignature, enforce_params, enforce_schema, infer_signature

logger = logging.getLogger(__name__)

PYTHON_MODEL_FILE = "python_model.pkl"
ARTIFACTS_DIR = "artifacts"
CODE_DIR = "code"
CONDA_ENV_FILE = "conda.yaml"
PYTHON_ENV_FILE = "python_env.yaml"
EXAMPLE_FILE = "input_example.json"
SERVING_EXAMPLE_FILE = "serving_input_example.json"


def save_model(
    path: str | os.PathLike[str],
    python_model: Any,
    *,
    artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    code_paths: Iterable[str | os.PathLike[str]] | None = None,
    signature: Any = None,
    input_example: Any = None,
    model_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    pip_requirements: Iterable[str] | str | os.PathLike[str] | None = None,
) -> ModelMetadata:
    """Save ``python_model`` as an MLflow ``python_function`` model in directory ``path``.

    The directory is what ``mlflow.pyfunc.save_model`` writes: MLflow, ``load_model`` and
    ``spark_udf`` all load it. A failure leaves no directory behind (or the empty one given).

    Args:
        path: a new directory, or an empty one (a path or a ``file:`` URI).
        python_model: a :class:`~spark_pyfunc.python_model.PythonModel` instance (MLflow's
            ``mlflow.pyfunc.PythonModel`` too), pickled with cloudpickle.
        artifacts: name -> local file or directory (or ``file:`` URI), copied under
            ``artifacts/``; the model finds them in ``context.artifacts[name]``.
        code_paths: files or directories copied under ``code/`` and put on ``sys.path``
            when the model is loaded.
        signature: a :class:`~spark_pyfunc.schema.ModelSignature` (or MLflow's, or anything
            with its ``to_dict()``). Without one, it is inferred from ``input_example``.
        input_example: data (or ``(data, params)``) saved with the model; the signature is
            inferred by loading the saved model and predicting on it.
        model_config: a dict (or a YAML/JSON file) given to the model as
            ``context.model_config``.
        metadata: a dict stored in MLmodel's ``metadata`` field.
        pip_requirements: a list or a requirements file, replacing the default pins of
            ``spark-pyfunc`` and ``cloudpickle`` in ``requirements.txt``.

    Returns:
        The saved model's :class:`~spark_pyfunc.ModelMetadata`.

    Raises:
        ModelExistsError: ``path`` exists and is not an empty directory.
        ModelSaveError: something cannot be saved (the model, an artifact, a code path, the
            example, the config, the metadata, the requirements), named in the message.
        SchemaError: ``signature`` is malformed.

    Example:
        >>> import pandas as pd
        >>> from spark_pyfunc import PythonModel, save_model
        >>> class Doubler(PythonModel):
        ...     def predict(self, context, model_input, params=None):
        ...         return model_input * 2
        >>> saved = save_model("doubler", Doubler(), input_example=pd.DataFrame({"x": [1.0]}))
        >>> saved.get_input_schema().input_names(), saved.get_output_schema().input_names()
        (['x'], ['x'])
    """
    _check_python_model(python_model)
    artifact_sources = _artifact_sources(artifacts)
    code_sources = _code_sources(code_paths)
    signature = _as_signature(signature)
    config = read_model_config(model_config, error=ModelSaveError)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ModelSaveError(f"metadata must be a dict, not {type(metadata).__name__}")
    metadata = dict(metadata) if metadata is not None else None
    requirements = _requirements(pip_requirements)
    example = _Example.of(input_example) if input_example is not None else None
    _check_yaml({"model_config": config, "metadata": metadata})

    target = Path(os.path.abspath(path))
    created = _prepare_directory(target)
    try:
        _write(
            target,
            python_model,
            artifact_sources,
            code_sources,
            signature,
            example,
            config,
            metadata,
            requirements,
        )
    except BaseException:
        _undo(target, created)
        raise
    return read_metadata(target)


# ------------------------------------------------------------------------ argument checks


def _check_python_model(python_model: Any) -> None:
    if isinstance(python_model, type):
        raise ModelSaveError(
            f"python_model must be an instance, not the class {python_model.__qualname__}: "
            f"pass {python_model.__qualname__}()"
        )
    if not callable(getattr(python_model, "predict", None)):
        raise ModelSaveError(
            f"python_model must be a spark_pyfunc.PythonModel (an object with a predict "
            f"method), not a {type(python_model).__qualname__}"
        )


def _local_path(value: Any, what: str) -> Path:
    """A local path from a path or a ``file:`` URI; other URIs are refused."""
    if not isinstance(value, (str, os.PathLike)):
        raise ModelSaveError(f"{what} must be a local path, not {type(value).__name__}")
    try:
        path = local_path(value)
    except SparkPyfuncError as exc:
        raise ModelSaveError(
            f"{what}: {exc}; only local files and directories can be saved"
        ) from exc
    if not path.exists():
        raise ModelSaveError(f"{what}: {path} does not exist")
    return path


@dataclass(frozen=True)
class _Artifact:
    name: str
    uri: str
    source: Path


def _artifact_sources(artifacts: Mapping[str, Any] | None) -> list[_Artifact]:
    if artifacts is None:
        return []
    if not isinstance(artifacts, Mapping):
        raise ModelSaveError(
            f"artifacts must be a dict of name -> local path, not {type(artifacts).__name__}"
        )
    sources = []
    for name, uri in artifacts.items():
        if not isinstance(name, str) or not name:
            raise ModelSaveError(f"artifact names must be non-empty strings, not {name!r}")
        source = _local_path(uri, f"artifact {name!r}")
        sources.append(_Artifact(name, os.fspath(uri), source))
    return sources


def _code_sources(code_paths: Iterable[Any] | None) -> list[Path]:
    if code_paths is None:
        return []
    if isinstance(code_paths, (str, os.PathLike)) or not isinstance(code_paths, Iterable):
        raise ModelSaveError(
            f"code_paths must be a list of local paths, not {type(code_paths).__name__}"
        )
    sources = [_local_path(p, "code path") for p in code_paths]
    seen: dict[str, Path] = {}
    for source in sources:
        if (other := seen.setdefault(source.name, source)) != source:
            raise ModelSaveError(
                f"code paths {other} and {source} would both be copied to {CODE_DIR}/{source.name}"
            )
    return sources


def _as_signature(signature: Any) -> ModelSignature | None:
    """Ours as is; MLflow's (or anything with its ``to_dict()``) through the MLmodel form."""
    if signature is None or isinstance(signature, ModelSignature):
        return signature
    if not callable(getattr(signature, "to_dict", None)):
        raise ModelSaveError(
            f"signature must be a spark_pyfunc.schema.ModelSignature, not "
            f"{type(signature).__qualname__}"
        )
    try:
        return ModelSignature.from_dict(signature.to_dict())
    except SchemaError as exc:
        raise ModelSaveError(f"signature cannot be read: {exc}") from exc


def _check_yaml(values: dict[str, Any]) -> None:
    for what, value in values.items():
        try:
            yaml.safe_dump(value)
        except yaml.YAMLError as exc:
            raise ModelSaveError(
                f"{what} must hold only YAML values (str, int, float, bool, None, lists and "
                f"dicts of them): {exc}"
            ) from exc


def _requirements(pip_requirements: Any) -> list[str] | None:
    if pip_requirements is None:
        return None
    if isinstance(pip_requirements, (str, os.PathLike)):
        try:
            lines = Path(pip_requirements).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelSaveError(
                f"cannot read pip_requirements file {pip_requirements}: {exc}"
            ) from exc
        return [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    requirements = list(pip_requirements)
    if bad := [r for r in requirements if not isinstance(r, str)]:
        raise ModelSaveError(f"pip_requirements must be strings, got {bad!r}")
    return [r.strip() for r in requirements if r.strip()]


def _default_requirements() -> list[str]:
    return [f"spark-pyfunc=={__version__}", f"cloudpickle=={cloudpickle.__version__}"]


# ------------------------------------------------------------------------ input example


class _Encoder(json.JSONEncoder):
    """JSON for what examples hold beyond plain Python: numpy values, bytes, dates."""

    def default(self, o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.datetime64):
            return np.datetime_as_string(o)
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (bytes, bytearray)):
            return base64.encodebytes(o).decode("ascii")
        if isinstance(o, (pd.Timestamp, dt.date, dt.datetime, dt.time)):
            return o.isoformat()
        return super().default(o)


def _nulls_for_nans(array: np.ndarray) -> Any:
    if np.issubdtype(array.dtype, np.number):
        array = np.where(np.isnan(array), None, array)
    return array.tolist()


@dataclass(frozen=True)
class _Example:
    """An input example as MLflow stores it: input_example.json, serving_input_example.json
    and the ``saved_input_example_info`` that describes them."""

    data: Any
    params: dict[str, Any] | None
    info: dict[str, Any]
    example_json: str
    serving_json: str

    @classmethod
    def of(cls, input_example: Any) -> _Example:
        data, params = input_example, None
        if (
            isinstance(input_example, tuple)
            and len(input_example) == 2
            and isinstance(input_example[1], dict)
        ):
            data, params = input_example
            try:
                infer_signature(params=params)
            except SchemaError as exc:
                raise ModelSaveError(f"input_example params cannot be saved: {exc}") from exc
        data = copy.deepcopy(data)
        info: dict[str, Any] = {"artifact_path": EXAMPLE_FILE}
        if isinstance(data, pd.DataFrame):
            stored = data.where(data.notnull(), None).to_dict(orient="split")
            del stored["index"]
            orient = "split"
            if list(data.columns) == list(range(len(data.columns))):
                del stored["columns"]
                orient = "values"
            info.update(type="dataframe", pandas_orient=orient)
            serving: dict[str, Any] = {"dataframe_split": stored}
        elif isinstance(data, np.ndarray):
            stored = _nulls_for_nans(data)
            info["type"] = "ndarray"
            serving = {"inputs": stored}
        elif isinstance(data, dict) and any(isinstance(v, np.ndarray) for v in data.values()):
            if not all(isinstance(v, np.ndarray) for v in data.values()):
                raise ModelSaveError(
                    "input_example: a dict example must hold only numpy arrays or no numpy arrays"
                )
            stored = {name: _nulls_for_nans(v) for name, v in data.items()}
            info["type"] = "ndarray"
            serving = {"inputs": stored}
        elif isinstance(data, (dict, list)) or np.isscalar(data) or isinstance(data, dt.datetime):
            if isinstance(data, list) and any(isinstance(v, np.ndarray) for v in data):
                raise ModelSaveError("input_example: a list example cannot hold numpy arrays")
            stored = data
            info["type"] = "json_object"
            serving = {"inputs": stored}
        else:
            raise ModelSaveError(
                "input_example must be a pandas DataFrame, a numpy array, a dict of numpy "
                "arrays, a dict, a list or a scalar (or a (data, params) tuple of those), not "
                f"a {type(data).__qualname__}"
            )
        document: Any = stored
        if params is not None:
            info["params"] = "true"
            document = {"inputs": stored, "params": params}
            serving = {**serving, "params": params}
        info["serving_input_path"] = SERVING_EXAMPLE_FILE
        try:
            example_json = json.dumps(document, cls=_Encoder)
            serving_json = json.dumps(serving, cls=_Encoder, indent=2)
        except (TypeError, ValueError) as exc:
            raise ModelSaveError(f"input_example cannot be stored as JSON: {exc}") from exc
        return cls(data, params, info, example_json, serving_json)

    def save(self, model_dir: Path) -> None:
        (model_dir / EXAMPLE_FILE).write_text(self.example_json, encoding="utf-8")
        (model_dir / SERVING_EXAMPLE_FILE).write_text(self.serving_json, encoding="utf-8")


# ------------------------------------------------------------------------ writing


def _prepare_directory(target: Path) -> Path | None:
    """Make ``target`` an empty directory; returns the top directory created (to undo)."""
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ModelExistsError(f"cannot save a model to {target}: it exists and is a file")
        if any(target.iterdir()):
            raise ModelExistsError(f"cannot save a model to {target}: the directory is not empty")
        return None
    top = target
    while not top.parent.exists():
        top = top.parent
    target.mkdir(parents=True)
    return top


def _undo(target: Path, created: Path | None) -> None:
    """Remove what a failed save wrote: the directories it created, or the contents it put in
    a directory that was empty."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _copy(source: Path, destination: Path, what: str, ignore: Any = None) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        if source.is_dir():
            shutil.copytree(source, destination, ignore=ignore)
        else:
            shutil.copy2(source, destination)
    except (OSError, shutil.Error) as exc:
        raise ModelSaveError(f"cannot copy {what} {source} into the model: {exc}") from exc


def _save_artifacts(target: Path, artifacts: list[_Artifact]) -> dict[str, dict[str, str]]:
    """Copy each artifact to artifacts/<its name on disk>; one whose name is taken goes to
    artifacts/<n>/<name>. Artifacts with the same source share one copy."""
    copies: dict[Path, str] = {}
    taken: set[str] = set()
    config = {}
    for artifact in artifacts:
        relpath = copies.get(artifact.source)
        if relpath is None:
            base = artifact.source.name
            if base.casefold() in taken:
                n = 0
                while str(n) in taken:
                    n += 1
                taken.add(str(n))
                relpath = f"{ARTIFACTS_DIR}/{n}/{base}"
            else:
                taken.add(base.casefold())
                relpath = f"{ARTIFACTS_DIR}/{base}"
            _copy(artifact.source, target / relpath, f"artifact {artifact.name!r}")
            copies[artifact.source] = relpath
        config[artifact.name] = {"path": relpath, "uri": artifact.uri}
    return config


def _infer_signature(
    target: Path, example: _Example, artifacts: dict[str, dict[str, str]], config: dict[str, Any]
) -> ModelSignature | None:
    """Infer the signature as MLflow does: load the saved model (artifacts, model_config),
    enforce the inferred input schema and params on the example, then predict on it.

    A failure is logged and leaves the model without a signature, as in MLflow.
    """
    try:
        with open(target / PYTHON_MODEL_FILE, "rb") as f:
            model = cloudpickle.load(f)
        context = PythonModelContext(
            {name: str(target / spec["path"]) for name, spec in artifacts.items()}, config
        )
        model.load_context(context)
        inferred = infer_signature(copy.deepcopy(example.data), params=example.params)
        data = enforce_schema(copy.deepcopy(example.data), inferred.inputs)
        params = enforce_params(example.params, inferred.params)
        prediction = bind_inference(model.predict, context)(data, params)
        # A 1-D array from column input holds one prediction per row: a column, not a tensor.
        if (
            not inferred.inputs.is_tensor_spec()
            and isinstance(prediction, np.ndarray)
            and prediction.ndim == 1
        ):
            prediction = pd.Series(prediction)
        outputs = infer_signature(model_output=prediction).outputs
    except Exception as exc:
        logger.warning(
            "Could not infer the model signature from input_example (%s: %s); the model is "
            "saved without a signature",
            type(exc).__name__,
            exc,
        )
        return None
    return ModelSignature(inferred.inputs, outputs, inferred.params)


def _directory_size(path: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_environment(target: Path, requirements: list[str]) -> None:
    """requirements.txt, conda.yaml and python_env.yaml, laid out as MLflow writes them."""
    python = platform.python_version()
    (target / REQUIREMENTS_FILE).write_text("\n".join(requirements), encoding="utf-8")
    pip = _version("pip")
    conda = {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [
            f"python={python}",
            f"pip<={pip}" if pip else "pip",
            {"pip": requirements},
        ],
    }
    (target / CONDA_ENV_FILE).write_text(
        yaml.safe_dump(conda, default_flow_style=False), encoding="utf-8"
    )
    build = [
        f"{name}=={v}" if (v := _version(name)) else name for name in ("pip", "setuptools", "wheel")
    ]
    python_env = {
        "python": python,
        "build_dependencies": build,
        "dependencies": [f"-r {REQUIREMENTS_FILE}"],
    }
    (target / PYTHON_ENV_FILE).write_text(
        yaml.safe_dump(python_env, sort_keys=False, default_flow_style=False), encoding="utf-8"
    )


def _write(
    target: Path,
    python_model: Any,
    artifact_sources: list[_Artifact],
    code_sources: list[Path],
    signature: ModelSignature | None,
    example: _Example | None,
    config: dict[str, Any],
    metadata: dict[str, Any] | None,
    requirements: list[str] | None,
) -> None:
    """Write the files in MLflow's order: model_size_bytes, as MLflow computes it, counts the
    pickle, the artifacts and the examples, not the code, MLmodel or environment files."""
    try:
        with open(target / PYTHON_MODEL_FILE, "wb") as f:
            cloudpickle.dump(python_model, f)
    except Exception as exc:
        raise ModelSaveError(
            f"cannot pickle python_model ({type(python_model).__qualname__}) with cloudpickle: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    artifacts = _save_artifacts(target, artifact_sources)
    if example is not None:
        example.save(target)
        if signature is None:
            signature = _infer_signature(target, example, artifacts, config)
    size = _directory_size(target)
    for source in code_sources:
        _copy(
            source,
            target / CODE_DIR / source.name,
            "code path",
            ignore=shutil.ignore_patterns("__pycache__"),
        )

    flavor: dict[str, Any] = {
        "cloudpickle_version": cloudpickle.__version__,
        "code": CODE_DIR if code_sources else None,
        "env": {"conda": CONDA_ENV_FILE, "virtualenv": PYTHON_ENV_FILE},
        "loader_module": CUSTOM_PYFUNC_LOADER,
        "python_model": PYTHON_MODEL_FILE,
        "python_version": platform.python_version(),
        "streamable": False,
    }
    if artifacts:
        flavor["artifacts"] = artifacts
    if config:
        flavor["config"] = config
    if (methods := inference_methods(python_model)) is not None:
        flavor[METHODS_KEY] = methods  # so spark_udf checks method= without unpickling
    mlmodel: dict[str, Any] = {
        "flavors": {PYFUNC_FLAVOR: flavor},
        "model_id": None,
        "model_size_bytes": size,
        "model_uuid": uuid.uuid4().hex,
        "prompts": None,
        "utc_time_created": str(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)),
    }
    if signature is not None:
        mlmodel["signature"] = signature.to_dict()
        mlmodel["is_signature_from_type_hint"] = False
        mlmodel["type_hint_from_example"] = False
    if example is not None:
        mlmodel["saved_input_example_info"] = example.info
    if metadata is not None:
        mlmodel["metadata"] = metadata
    write_mlmodel(target, mlmodel)
    _write_environment(
        target, requirements if requirements is not None else _default_requirements()
    )
