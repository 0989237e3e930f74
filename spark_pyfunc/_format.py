"""The MLmodel file: read into ModelMetadata, written back, and its paths kept inside the model.

A model directory may come from anyone, so every path its MLmodel names (artifacts, code, the
pickle, the loader's data) is checked to stay inside the directory before anything opens or
imports it: ``..``, absolute paths and symbolic links that lead out are refused.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from spark_pyfunc.errors import (
    InvalidArgumentError,
    ModelFormatError,
    SchemaError,
    SparkPyfuncError,
    UnsafePathError,
)
from spark_pyfunc.schema import ModelSignature, ParamSchema, Schema

MLMODEL_FILE = "MLmodel"
PYFUNC_FLAVOR = "python_function"
#: The loader module of custom pyfunc models (a pickled PythonModel), MLflow's and ours.
CUSTOM_PYFUNC_LOADER = "mlflow.pyfunc.model"
REQUIREMENTS_FILE = "requirements.txt"
#: The python_function flavor's list of the python model's inference methods, written by
#: save_model so that ``method`` is checked on the driver without unpickling the model.
#: MLflow records no such list (only ``predict_fn`` and ``streamable``) and its loader
#: ignores flavor keys it does not know; the prefix keeps clear of any key MLflow may add.
METHODS_KEY = "spark_pyfunc_methods"
#: Public methods of a python model that are not inference methods.
_NOT_INFERENCE = frozenset({"load_context", "predict_type_hints"})


def is_inference_name(name: Any) -> bool:
    """Whether ``name`` may name an inference method: public, and not one of the hooks."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("_")
        and name not in _NOT_INFERENCE
    )


def inference_methods(python_model: Any) -> list[str] | None:
    """The names ``PyFuncModel.invoke`` can call on ``python_model``, sorted, as recorded
    under :data:`METHODS_KEY`: its class's public callables, read statically (no property
    runs), and the callables set on the instance. None when a ``__getattr__`` can answer
    any name: the model's methods cannot be known, and are checked where it is loaded."""
    cls = type(python_model)
    if getattr(cls, "__getattr__", None) is not None:
        return None
    own = getattr(python_model, "__dict__", {})
    names = {name for name in dir(cls) if _callable(inspect.getattr_static(cls, name))}
    names |= {name for name, value in own.items() if _callable(value)}
    return sorted(name for name in names if is_inference_name(name))


def _callable(attr: Any) -> bool:
    """A function, method or callable object; not a class, which invoke would instantiate."""
    return isinstance(attr, (staticmethod, classmethod)) or (
        callable(attr) and not isinstance(attr, type)
    )


def resolve_inside(model_dir: str | os.PathLike[str], relpath: Any, what: str) -> Path:
    """The absolute path of ``relpath`` inside ``model_dir``, refusing any way out of it.

    ``what`` names the thing in messages (e.g. "artifact 'weights'"). The path returned is
    not resolved (it keeps the names written in the model) but its real location, symbolic
    links followed, has been checked to lie inside the model directory's real location.
    """
    root = Path(os.path.abspath(model_dir))
    if not isinstance(relpath, str) or not relpath:
        raise ModelFormatError(
            f"{what}: its path must be a non-empty string relative to the model directory "
            f"{root}, not {relpath!r}"
        )
    if PurePosixPath(relpath).is_absolute() or os.path.isabs(relpath):
        raise UnsafePathError(
            f"{what}: path {relpath!r} is absolute; a model may only name paths relative to "
            f"its directory {root}"
        )
    if ".." in PurePosixPath(relpath).parts or ".." in Path(relpath).parts:
        raise UnsafePathError(
            f"{what}: path {relpath!r} contains '..'; a model may only name paths inside its "
            f"directory {root}"
        )
    candidate = root / relpath
    try:
        real, real_root = candidate.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafePathError(f"{what}: path {relpath!r} cannot be resolved: {exc}") from exc
    if not real.is_relative_to(real_root):
        raise UnsafePathError(
            f"{what}: path {relpath!r} leads through a symbolic link to {real}, outside the "
            f"model directory {root}"
        )
    return candidate


def read_model_config(
    value: Mapping[str, Any] | str | os.PathLike[str] | None,
    error: type[SparkPyfuncError] = ModelFormatError,
) -> dict[str, Any]:
    """model_config as MLflow accepts it: a dict, or the path of a YAML/JSON file holding one.

    ``error`` is the exception raised for a bad value (ModelSaveError when saving).
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (str, os.PathLike)):
        try:
            loaded = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise error(f"cannot read the model_config file {value}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise error(f"the model_config file {value} must hold a mapping")
        return loaded
    raise error(
        f"model_config must be a dict or the path of a YAML/JSON file, not {type(value).__name__}"
    )


def write_mlmodel(model_dir: str | os.PathLike[str], content: dict[str, Any]) -> Path:
    """Write ``content`` as ``model_dir/MLmodel`` in the YAML layout MLflow writes."""
    path = Path(model_dir, MLMODEL_FILE)
    path.write_text(yaml.safe_dump(content, default_flow_style=False), encoding="utf-8")
    return path


@dataclass(frozen=True, eq=False)
class ModelMetadata:
    """What a model's MLmodel file says, checked: see :func:`read_metadata`."""

    path: Path
    raw: dict[str, Any]
    flavors: dict[str, Any]
    signature: ModelSignature | None
    model_uuid: str | None
    utc_time_created: str | None
    model_size_bytes: int | None
    mlflow_version: str | None
    saved_input_example_info: dict[str, Any] | None
    metadata: dict[str, Any] | None

    @property
    def mlmodel_path(self) -> Path:
        return self.path / MLMODEL_FILE

    @property
    def pyfunc_conf(self) -> dict[str, Any]:
        """The ``python_function`` flavor's configuration."""
        return self.flavors[PYFUNC_FLAVOR]

    @property
    def loader_module(self) -> str:
        return self.pyfunc_conf["loader_module"]

    @property
    def python_version(self) -> str | None:
        return _optional_str(self.pyfunc_conf.get("python_version"))

    @property
    def cloudpickle_version(self) -> str | None:
        return _optional_str(self.pyfunc_conf.get("cloudpickle_version"))

    @property
    def model_config(self) -> dict[str, Any]:
        """The model configuration saved with the model (MLflow keeps it under ``config``)."""
        return dict(self.pyfunc_conf.get("config") or {})

    @property
    def is_custom_pyfunc(self) -> bool:
        """A pickled PythonModel that spark_pyfunc loads itself (not MLflow's models-from-code,
        whose python model is a script that only MLflow can run)."""
        return (
            self.loader_module == CUSTOM_PYFUNC_LOADER and "model_code_path" not in self.pyfunc_conf
        )

    @property
    def declared_methods(self) -> tuple[str, ...] | None:
        """The inference methods save_model recorded, or None where the model does not say
        (saved by MLflow or an older spark_pyfunc, or another flavor)."""
        methods = self.pyfunc_conf.get(METHODS_KEY)
        if methods is None:
            return None
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise ModelFormatError(
                f"{self.mlmodel_path}: field {PYFUNC_FLAVOR}.{METHODS_KEY} must be a list of "
                f"method names, not {methods!r}"
            )
        return tuple(methods)

    def check_method(self, method: str, model: str) -> None:
        """Refuse, on the driver, a ``method`` the model declares it does not have, rather
        than fail every task; ``model`` names the model as the user gave it. A model that
        declares no methods is left to fail where it is loaded, as before."""
        methods = self.declared_methods
        if methods is None or method in methods:
            return
        raise InvalidArgumentError(
            f"method={method!r} is not a method of {model}; its methods are "
            f"{', '.join(methods) or 'none'}"
        )

    def python_model_path(self) -> Path:
        """The pickled python model of a custom pyfunc model."""
        relpath = self.pyfunc_conf.get("python_model")
        if relpath is None:
            raise ModelFormatError(
                f"{self.mlmodel_path}: flavor {PYFUNC_FLAVOR} has loader_module "
                f"{CUSTOM_PYFUNC_LOADER} but no python_model field naming the pickled model"
            )
        return resolve_inside(self.path, relpath, f"{self.mlmodel_path}: python_model")

    def artifact_paths(self) -> dict[str, Path]:
        """Each artifact's name and its absolute path inside the model directory."""
        artifacts = self.pyfunc_conf.get("artifacts") or {}
        if not isinstance(artifacts, dict):
            raise ModelFormatError(
                f"{self.mlmodel_path}: field {PYFUNC_FLAVOR}.artifacts must be a mapping, "
                f"not {type(artifacts).__name__}"
            )
        paths = {}
        for name, spec in artifacts.items():
            what = f"{self.mlmodel_path}: artifact {name!r}"
            if not isinstance(spec, dict) or "path" not in spec:
                raise ModelFormatError(f"{what} must be a mapping with a path, not {spec!r}")
            paths[str(name)] = resolve_inside(self.path, spec["path"], what)
        return paths

    def code_path(self) -> Path | None:
        """The directory of the model's code (prepended to sys.path on load), if any."""
        code = self.pyfunc_conf.get("code")
        if not code:
            return None
        return resolve_inside(self.path, code, f"{self.mlmodel_path}: code directory")

    def data_path(self) -> Path:
        """What a delegated loader module's ``_load_pyfunc`` gets: ``data`` or the model dir."""
        data = self.pyfunc_conf.get("data")
        if not data:
            return self.path
        return resolve_inside(self.path, data, f"{self.mlmodel_path}: {PYFUNC_FLAVOR}.data")

    def get_input_schema(self) -> Schema | None:
        return self.signature.inputs if self.signature is not None else None

    def get_output_schema(self) -> Schema | None:
        return self.signature.outputs if self.signature is not None else None

    def get_params_schema(self) -> ParamSchema | None:
        return self.signature.params if self.signature is not None else None

    def requirements(self) -> list[str]:
        """The pip requirements in the model's requirements.txt (none when it has no such file)."""
        path = resolve_inside(self.path, REQUIREMENTS_FILE, "the model's requirements file")
        if not path.is_file():
            return []
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        return [line for line in lines if line and not line.startswith("#")]


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _load_yaml(mlmodel: Path) -> dict[str, Any]:
    try:
        text = mlmodel.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"cannot read {mlmodel}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ModelFormatError(f"{mlmodel} is not valid YAML{where}: {problem}") from exc
    if not isinstance(raw, dict):
        found = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ModelFormatError(f"{mlmodel} must be a YAML mapping, but it is {found}")
    return raw


def _signature(raw: dict[str, Any], mlmodel: Path) -> ModelSignature | None:
    value = raw.get("signature")
    if value is None:
        return None
    if isinstance(value, dict) and all(
        value.get(k) is None for k in ("inputs", "outputs", "params")
    ):
        return None
    try:
        return ModelSignature.from_dict(value)
    except SchemaError as exc:
        raise ModelFormatError(f"{mlmodel}: field signature is malformed: {exc}") from exc


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read and check a model directory's MLmodel file.

    Checks what every loader needs before it runs any of the model's code: the
    ``python_function`` flavor and its ``loader_module``, the pickled python model of a custom
    pyfunc model, and that every path named stays inside the directory.
    """
    model_dir = Path(os.path.abspath(path))
    if not model_dir.exists():
        raise ModelFormatError(f"model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ModelFormatError(f"model path {model_dir} is not a directory")
    mlmodel = model_dir / MLMODEL_FILE
    if not mlmodel.is_file():
        raise ModelFormatError(
            f"{model_dir} is not a model directory: it has no {MLMODEL_FILE} file"
        )
    raw = _load_yaml(mlmodel)
    flavors = raw.get("flavors")
    if flavors is not None and not isinstance(flavors, dict):
        raise ModelFormatError(
            f"{mlmodel}: field flavors must be a mapping, not {type(flavors).__name__}"
        )
    flavors = flavors or {}
    if PYFUNC_FLAVOR not in flavors:
        found = ", ".join(sorted(map(str, flavors))) or "none"
        raise ModelFormatError(
            f"{mlmodel} has no {PYFUNC_FLAVOR} flavor, so it cannot be scored as a pyfunc "
            f"model; flavors found: {found}"
        )
    conf = flavors[PYFUNC_FLAVOR]
    if not isinstance(conf, dict):
        raise ModelFormatError(
            f"{mlmodel}: flavor {PYFUNC_FLAVOR} must be a mapping, not {type(conf).__name__}"
        )
    loader = conf.get("loader_module")
    if not isinstance(loader, str) or not loader:
        raise ModelFormatError(
            f"{mlmodel}: flavor {PYFUNC_FLAVOR} has no loader_module field naming the module "
            f"that loads the model"
        )
    size = raw.get("model_size_bytes")
    metadata = ModelMetadata(
        path=model_dir,
        raw=raw,
        flavors=flavors,
        signature=_signature(raw, mlmodel),
        model_uuid=_optional_str(raw.get("model_uuid")),
        utc_time_created=_optional_str(raw.get("utc_time_created")),
        model_size_bytes=size if isinstance(size, int) else None,
        mlflow_version=_optional_str(raw.get("mlflow_version")),
        saved_input_example_info=raw.get("saved_input_example_info"),
        metadata=raw.get("metadata"),
    )
    metadata.artifact_paths()
    metadata.code_path()
    metadata.data_path()
    if metadata.is_custom_pyfunc:
        pickled = metadata.python_model_path()
        if not pickled.is_file():
            raise ModelFormatError(
                f"{mlmodel}: the python model file {pickled} (field "
                f"{PYFUNC_FLAVOR}.python_model) is missing"
            )
    return metadata
