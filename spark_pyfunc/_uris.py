"""Every model URI users pass to ``mlflow.pyfunc.spark_udf``, resolved once on the driver.

Everything remote is downloaded here, on the driver, with the user's own settings; the
executors get that copy through Spark (``_distribution``), needing no tracking server,
registry or cloud credentials, unless the ``direct`` route has them read the store
themselves (:func:`storage_location` says where MLflow keeps a registry URI's artifacts).
With MLflow importable, downloads go through
``mlflow.artifacts.download_artifacts`` (tracking URI, registry URI and store credentials
apply as they do for MLflow); without it, object stores through fsspec, one optional extra
per store. MLflow is imported only for a URI that needs it, never for a local path: the
model host and the workers call the same loaders with local directories.

Downloads are cached for the life of the process in one temporary directory, removed at
exit. The key is the URI, except for registry references that can move (an alias, a stage,
``latest``): those are first resolved to a version, so a re-pointed alias is seen by the
next call while the same version is downloaded once.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from spark_pyfunc._paths import is_remote, local_path
from spark_pyfunc.errors import ModelURIError

__all__ = ["cache_root", "resolve_model_uri", "storage_location"]

logger = logging.getLogger(__name__)

#: URI scheme -> (fsspec protocol, the spark-pyfunc extra that installs its implementation).
_STORES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3"),
    "s3a": ("s3", "s3"),
    "s3n": ("s3", "s3"),
    "gs": ("gs", "gcs"),
    "gcs": ("gs", "gcs"),
    "abfs": ("abfs", "azure"),
    "abfss": ("abfss", "azure"),
    "az": ("az", "azure"),
    "hdfs": ("hdfs", "hdfs"),
}

#: Schemes only MLflow resolves (its tracking server, model registry, Databricks).
_MLFLOW_ONLY = ("runs", "models", "dbfs")

_INSTALL_MLFLOW = "pip install mlflow (mlflow-skinny is enough) on the driver"


@dataclass(frozen=True)
class _Reference:
    """What a ``models:/`` URI names: ``version`` (a number), ``alias``, ``stage``, or
    ``latest`` (True); a logged model id (``models:/m-...``) has none of them."""

    name: str
    version: str | None = None
    alias: str | None = None
    stage: str | None = None
    latest: bool = False

    @property
    def moves(self) -> bool:
        """Whether the version it names can change between two calls."""
        return bool(self.alias or self.stage or self.latest)


class _Cache:
    """Downloaded model directories of this process, by key; one download per key.

    A download goes into a staging directory beside its final place and is renamed into it
    once complete, so a failed or interrupted download never leaves a half model behind.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root: Path | None = None
        self._entries: dict[str, Path] = {}

    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="spark-pyfunc-models-"))
            atexit.register(shutil.rmtree, self._root, True)
        return self._root

    def get(self, key: str, download: Callable[[Path], Path]) -> Path:
        """The directory for ``key``, calling ``download(staging) -> model dir`` once."""
        with self._lock:  # a second thread asking for the same key waits for the first
            found = self._entries.get(key)
            if found is not None and found.is_dir():
                return found
            root = self.root()
            final = root / hashlib.sha256(key.encode()).hexdigest()[:32]
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
            try:
                got = download(staging)
                if final.exists():
                    shutil.rmtree(final)
                os.rename(got, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._entries[key] = final
            return final


_cache = _Cache()
#: The URI MLflow downloaded for each registry URI a user passed (a moving reference pinned to
#: its version), so that :func:`storage_location` names the same artifacts.
_pinned: dict[str, str] = {}
#: Distinct keys for downloads that must not be reused.
_unkeyed = itertools.count()


def cache_root() -> Path:
    """This process's download cache directory (created on first use, removed at exit)."""
    return _cache.root()


def resolve_model_uri(uri: str | os.PathLike) -> Path:
    """The local model directory behind any model URI that ``mlflow.pyfunc.spark_udf`` takes.

    Args:
        uri: a local path or ``PathLike``, a ``file:`` URI, ``runs:/<run id>/<path>``,
            ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
            ``models:/<name>/<stage>``, ``models:/<name>/latest``, ``models:/<model id>``,
            or a store URI (``s3://``, ``gs://``, ``abfss://``, ``hdfs://``, ``dbfs:/``).

    Returns:
        An absolute directory: the path itself for local ones (not checked here), else the
        downloaded copy in this process's cache, checked to hold an ``MLmodel`` file.

    Raises:
        ModelURIError: the URI cannot be resolved (unknown run, model, version or alias, a
            missing bucket, no MLmodel there, MLflow or a store's extra not installed); the
            message names the URI and the reason.
        InvalidArgumentError: a ``file:`` URI on another host.

    Example:
        >>> resolve_model_uri("file:///tmp/model")
        PosixPath('/tmp/model')
        >>> resolve_model_uri("models:/scorer@champion")  # doctest: +SKIP
        PosixPath('/tmp/spark-pyfunc-models-k2j3/5f0c...')
    """
    text = os.fspath(uri)
    if not is_remote(text):
        return local_path(text).resolve()
    scheme = urlparse(text).scheme.lower()
    mlflow = _import_mlflow()
    if mlflow is not None:
        return _through_mlflow(mlflow, text, scheme)
    if scheme in _STORES:
        return _cached(text, text, lambda staging: _fsspec_download(text, scheme, staging))
    if scheme in _MLFLOW_ONLY:
        raise ModelURIError(f"model URI {text!r} is resolved through MLflow: {_INSTALL_MLFLOW}")
    raise ModelURIError(
        f"model URI {text!r}: unsupported scheme {scheme!r}; spark_pyfunc takes local paths, "
        f"file:, runs:/, models:/, dbfs:/ (these with MLflow) and "
        f"{', '.join(s + '://' for s in _STORES)}; other schemes need MLflow: {_INSTALL_MLFLOW}"
    )


def storage_location(uri: str | os.PathLike) -> str | None:
    """Where MLflow stores the artifacts behind a ``runs:/`` or ``models:/`` URI (for example
    ``s3://bucket/1/abc/artifacts/model``), so executors can read them there themselves; None
    for other URIs, without MLflow, or when MLflow cannot say. The version a moving
    reference had when :func:`resolve_model_uri` downloaded it is the one located."""
    text = os.fspath(uri)
    scheme = urlparse(text).scheme.lower()
    if scheme not in ("runs", "models") or _import_mlflow() is None:
        return None
    pinned = _pinned.get(text, text)
    try:
        if scheme == "runs":
            from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

            return str(RunsArtifactRepository.get_underlying_uri(pinned))
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        return str(ModelsArtifactRepository.get_underlying_uri(pinned))
    except Exception as exc:  # noqa: BLE001 - MLflow's errors: then the driver ships it
        logger.info("no storage location for model URI %s: %s", text, _reason(exc))
        return None


def _import_mlflow() -> Any:
    """``mlflow.artifacts`` if MLflow is importable on this driver, else None."""
    try:
        import mlflow.artifacts
    except ImportError:
        return None
    return mlflow


def _cached(uri: str, key: str, download: Callable[[Path], Path]) -> Path:
    """The cached directory for ``key``; ``uri`` is what the user passed, for messages."""

    def checked(staging: Path) -> Path:
        logger.info("downloading model %s (%s)", uri, key)
        got = download(staging)
        if not (got / "MLmodel").is_file():
            found = ", ".join(sorted(p.name for p in got.iterdir())) or "nothing"
            raise ModelURIError(
                f"model URI {uri!r}: no MLmodel file there; a model URI names the directory "
                f"MLflow wrote (found: {found})"
            )
        return got

    return _cache.get(key, checked)


# ---------------------------------------------------------------------- through MLflow


def _through_mlflow(mlflow: Any, uri: str, scheme: str) -> Path:
    key = uri
    if scheme == "models":
        reference = _parse_models_uri(uri)
        if reference is None:  # a registry of its own: its version is not resolved here,
            key = f"{uri}#{next(_unkeyed)}"  # so it is downloaded again on every call
        elif reference.moves:
            version = _resolve_version(mlflow, uri, reference)
            key = f"models:/{reference.name}/{version}"
    _pinned[uri] = key

    def download(staging: Path) -> Path:
        try:
            got = mlflow.artifacts.download_artifacts(artifact_uri=key, dst_path=str(staging))
        except Exception as exc:  # MlflowException, botocore's, OSError: all are the reason
            raise ModelURIError(f"cannot resolve model URI {uri!r}: {_reason(exc)}") from exc
        return Path(got)

    return _cached(uri, key, download)


def _parse_models_uri(uri: str) -> _Reference | None:
    """MLflow's ``models:/`` forms; None for one with a registry in it
    (``models://profile@databricks/...``), which is passed to MLflow as it is and, when it
    can move, downloaded on every call."""
    parsed = urlparse(uri)
    if parsed.netloc:
        return None
    path = parsed.path.strip("/")
    parts = path.split("/")
    if len(parts) == 2 and all(parts):
        name, suffix = parts
        if suffix.isdigit():
            return _Reference(name, version=suffix)
        if suffix.lower() == "latest":
            return _Reference(name, latest=True)
        return _Reference(name, stage=suffix)
    if len(parts) == 1 and "@" in path:
        name, alias = path.rsplit("@", 1)
        if name and alias:
            return _Reference(name, alias=alias)
    if len(parts) == 1 and path:
        return _Reference(path)  # a logged model id: immutable
    raise ModelURIError(
        f"model URI {uri!r} is not a models:/ URI MLflow knows: models:/<name>/<version>, "
        "models:/<name>@<alias>, models:/<name>/<stage>, models:/<name>/latest or "
        "models:/<model id>"
    )


def _resolve_version(mlflow: Any, uri: str, ref: _Reference) -> str:
    """The version an alias, a stage or ``latest`` names now, from the user's registry."""
    client = mlflow.MlflowClient()
    try:
        if ref.alias:
            return str(client.get_model_version_by_alias(ref.name, ref.alias).version)
        with warnings.catch_warnings():  # stages are deprecated; latest-by-stage is how
            warnings.simplefilter("ignore", FutureWarning)  # MLflow resolves both forms
            found = client.get_latest_versions(ref.name, [ref.stage] if ref.stage else None)
    except Exception as exc:
        raise ModelURIError(
            f"cannot resolve model URI {uri!r}: {_registry_reason(client, ref, exc)}"
        ) from exc
    if not found:
        what = f"no version in stage {ref.stage!r}" if ref.stage else "no versions"
        raise ModelURIError(
            f"cannot resolve model URI {uri!r}: registered model {ref.name!r} has {what}"
        )
    return str(max(int(v.version) for v in found))


def _registry_reason(client: Any, ref: _Reference, exc: Exception) -> str:
    """Say whether the registered model or its alias is what is missing."""
    try:
        client.get_registered_model(ref.name)
    except Exception:
        return f"no registered model {ref.name!r} ({_reason(exc)})"
    if ref.alias:
        return f"registered model {ref.name!r} has no alias {ref.alias!r} ({_reason(exc)})"
    return _reason(exc)


#: Longest reason quoted from a library's error (pyarrow's libhdfs error lists every path tried).
_REASON_CHARS = 500


def _reason(exc: BaseException) -> str:
    """A library's error in one line, for a message that already names the URI."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(str(message).split())
    return text if len(text) <= _REASON_CHARS else f"{text[:_REASON_CHARS]} ..."


# ------------------------------------------------------------------- through fsspec


def _fsspec_download(uri: str, scheme: str, staging: Path) -> Path:
    """Copy the directory at ``uri`` into ``staging/model`` through fsspec."""
    protocol, extra = _STORES[scheme]
    install = f'pip install "spark-pyfunc[{extra}]" (or mlflow) on the driver'
    try:
        import fsspec
    except ImportError as exc:
        raise ModelURIError(f"model URI {uri!r} needs fsspec: {install}") from exc
    target = f"{protocol}{uri[len(scheme) :]}"  # s3a://b/m -> s3://b/m, as fsspec names it
    try:
        fs, root = fsspec.core.url_to_fs(target)
    except ImportError as exc:
        raise ModelURIError(
            f"model URI {uri!r} needs fsspec's {protocol}:// filesystem: {install}"
        ) from exc
    except Exception as exc:  # e.g. no libhdfs for hdfs://, bad account in abfss://
        raise ModelURIError(f"cannot resolve model URI {uri!r}: {_reason(exc)}") from exc
    root = root.rstrip("/")
    try:
        files = fs.find(root)
    except Exception as exc:
        raise ModelURIError(f"cannot resolve model URI {uri!r}: {_reason(exc)}") from exc
    if not files:
        raise ModelURIError(f"cannot resolve model URI {uri!r}: no such directory")
    model = staging / "model"
    for name in files:
        relative = PurePosixPath(name).relative_to(root)
        if not relative.parts:
            raise ModelURIError(
                f"model URI {uri!r} is a file; a model URI names the directory MLflow wrote"
            )
        if ".." in relative.parts:
            raise ModelURIError(f"model URI {uri!r}: unsafe file name {name!r} in the store")
        local = model.joinpath(*relative.parts)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(name, str(local))
        except Exception as exc:
            raise ModelURIError(
                f"cannot resolve model URI {uri!r}: reading {name}: {_reason(exc)}"
            ) from exc
    return model
