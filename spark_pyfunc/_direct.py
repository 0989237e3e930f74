"""Direct reads: each executor machine reads the model from where it already is (an object
store, a distributed file system, a mount every node sees) instead of from the driver.

The driver ships only a :class:`DirectSource`: the location and a manifest (every file's
relative path, size and sha256, computed from the driver's own resolved copy), a few KiB in
the UDF's closure. One process per machine (the cache's fill lock) reads each file named in
the manifest and checks it: a file that does not match is read once more, then refused with
an error naming it, so a model changed in the store after ``spark_udf`` is never loaded.

Locations (:func:`direct_location`): a store URI (``s3://``, ``s3a://``, ``gs://``,
``abfss://``, ``hdfs://``; through fsspec, as ``_uris`` reads them on the driver), ``dbfs:/``
(as ``/dbfs/``), the storage location MLflow gives for ``runs:/`` and ``models:/``, a platform
volume (``/dbfs/``, ``/Volumes/``), or any local path when ``spark.pyfunc.shipping=direct``
declares it to be on a mount every executor sees.

Nothing here imports fsspec or MLflow at module level: Python workers import this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from spark_pyfunc._cache import file_manifest
from spark_pyfunc._paths import is_remote, local_path, sha256_file
from spark_pyfunc._uris import _STORES, _reason, storage_location
from spark_pyfunc.errors import ShippingError

__all__ = [
    "DirectSource",
    "StoreUnreachable",
    "build_source",
    "check_relpath",
    "direct_location",
    "probe",
    "read_into",
]

_log = logging.getLogger(__name__)

#: Platform volumes that every node of the cluster mounts at the same path.
SHARED_MOUNTS = ("/dbfs/", "/Volumes/")


class StoreUnreachable(ShippingError):
    """This executor cannot read the model's location (no fsspec or no filesystem for the
    protocol, no credentials, no connection, not mounted): the driver may serve it instead."""


@dataclass(frozen=True)
class DirectSource:
    """Where executors read the model, and what they must find there (small, picklable)."""

    #: A store URI (``s3://bucket/model``) or an absolute local path on a shared mount.
    location: str
    #: (relative posix path, size, sha256) of every file, sorted by path.
    files: tuple[tuple[str, int, str], ...]

    @property
    def expected(self) -> dict[str, list]:
        """The manifest in the cache's form (path -> [size, sha256])."""
        return {rel: [size, digest] for rel, size, digest in self.files}

    @property
    def key(self) -> str:
        """The cache key: the sha256 of the manifest, so equal content is stored once."""
        text = json.dumps(self.expected, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.files)


# --------------------------------------------------------------------------- driver


def direct_location(uri: str | os.PathLike[str] | None, declared: bool) -> tuple[str | None, str]:
    """Where executors could read the model behind ``uri`` themselves, and why (or why not).

    Args:
        uri: The model URI the user passed.
        declared: ``spark.pyfunc.shipping=direct`` was set: a local path is then taken to
            be on a mount every executor sees.
    """
    if uri is None:
        return None, "no model URI"
    text = os.fspath(uri)
    scheme = urlparse(text).scheme.lower() if is_remote(text) else ""
    if scheme in ("runs", "models"):
        under = storage_location(text)
        if under is None:
            return None, f"MLflow gives no storage location for {text}"
        location, why = direct_location(under, declared)
        return location, f"{text} is stored at {under}: {why}"
    if scheme == "dbfs":
        path = "/dbfs/" + urlparse(text).path.lstrip("/")
        return path, "dbfs:/ is mounted at /dbfs/ on every Databricks node"
    if scheme in _STORES:
        return text, f"executors read {scheme}:// themselves"
    if scheme:
        return None, f"{scheme}: is not a store executors can read"
    path = str(local_path(text).resolve())
    if (path + "/").startswith(SHARED_MOUNTS):
        return path, "a platform volume every node mounts"
    if declared:
        return path, "spark.pyfunc.shipping=direct declares it on a mount every executor sees"
    return None, "a local path (spark.pyfunc.shipping=direct declares it shared)"


def build_source(location: str, model_dir: str | os.PathLike[str]) -> DirectSource:
    """The manifest of the driver's copy ``model_dir`` of the model at ``location``.

    Raises:
        ShippingError: the directory holds a symlink (the manifest names regular files only,
            so executors would miss it) or a file name that is not a safe relative path.
    """
    root = Path(model_dir)
    for path in root.rglob("*"):
        if path.is_symlink():
            raise ShippingError(
                f"model {location!r} cannot be read directly: {path.relative_to(root)} is a "
                "symlink (use spark.pyfunc.shipping=files)"
            )
    manifest = file_manifest(root)
    for rel in manifest:
        check_relpath(rel, location)
    return DirectSource(
        location, tuple((rel, size, digest) for rel, (size, digest) in sorted(manifest.items()))
    )


def check_relpath(rel: str, location: str) -> PurePosixPath:
    """``rel`` as a path that stays inside the model directory.

    Raises:
        ShippingError: empty, absolute, with ``..``, ``.``, a backslash or a NUL in it.
    """
    path = PurePosixPath(rel)
    if (
        not rel
        or path.is_absolute()
        or "\\" in rel
        or "\0" in rel
        or any(part in ("..", ".", "") for part in rel.split("/"))
    ):
        raise ShippingError(
            f"model {location!r}: the manifest names {rel!r}, which is not a path inside the "
            "model directory"
        )
    return path


# --------------------------------------------------------------------------- executor


class _Mount:
    """A model directory on a file system this machine mounts."""

    def __init__(self, location: str) -> None:
        self.root = Path(location)

    def stat(self, rel: str) -> None:
        os.stat(self.root / rel)

    def get(self, rel: str, target: Path) -> None:
        shutil.copyfile(self.root / rel, target)


class _Store:
    """A model directory in an object store or distributed file system, through fsspec."""

    def __init__(self, location: str) -> None:
        scheme = urlparse(location).scheme.lower()
        protocol, extra = _STORES[scheme]
        install = f'pip install "spark-pyfunc[{extra}]" on the executors'
        try:
            import fsspec
        except ImportError:
            raise StoreUnreachable(f"fsspec is not installed on this executor: {install}") from None
        try:
            # A fresh instance: credentials and endpoints are read from this process's env.
            self.fs, root = fsspec.core.url_to_fs(
                f"{protocol}{location[len(scheme) :]}", skip_instance_cache=True
            )
        except ImportError:
            raise StoreUnreachable(
                f"fsspec's {protocol}:// filesystem is not installed on this executor: {install}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - no libhdfs, a bad account name: unreachable
            raise StoreUnreachable(_reason(exc)) from exc
        self.root = root.rstrip("/")

    def stat(self, rel: str) -> None:
        self.fs.info(f"{self.root}/{rel}")

    def get(self, rel: str, target: Path) -> None:
        self.fs.get_file(f"{self.root}/{rel}", str(target))


def _open(source: DirectSource) -> _Mount | _Store:
    """A reader for ``source`` that has read one file's metadata.

    Raises:
        StoreUnreachable: this process cannot read the location.
    """
    scheme = urlparse(source.location).scheme.lower() if is_remote(source.location) else ""
    reader = _Store(source.location) if scheme else _Mount(source.location)
    first = "MLmodel" if any(rel == "MLmodel" for rel, _, _ in source.files) else None
    first = first or (source.files[0][0] if source.files else None)
    if first is not None:
        try:
            reader.stat(first)
        except Exception as exc:  # noqa: BLE001 - credentials, connection, not mounted
            raise StoreUnreachable(_reason(exc)) from exc
    return reader


def probe(source: DirectSource) -> str | None:
    """Why this process cannot read ``source`` (None: it can)."""
    try:
        _open(source)
    except StoreUnreachable as exc:
        return str(exc)
    return None


def read_into(source: DirectSource, dest: Path) -> None:
    """Read every file of ``source`` into ``dest``, each checked against the manifest.

    A file that does not match is read once more (a read torn by a concurrent write).

    Raises:
        StoreUnreachable: this process cannot read the location at all.
        ShippingError: a path in the manifest leaves the model directory, a file cannot be
            read, or it still does not match the manifest after a second read.
    """
    for rel, _, _ in source.files:
        check_relpath(rel, source.location)
    try:
        reader = _open(source)
    except StoreUnreachable as exc:
        raise StoreUnreachable(
            f"model {source.location!r} cannot be read from this executor: {exc} (give every "
            "executor access, or set spark.pyfunc.shipping=files to ship it from the driver)"
        ) from exc
    for rel, size, digest in source.files:
        target = dest.joinpath(*check_relpath(rel, source.location).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                reader.get(rel, target)
            except Exception as exc:  # noqa: BLE001 - fsspec's and the store's own errors
                raise ShippingError(
                    f"model {source.location!r}: cannot read {rel}: {_reason(exc)}"
                ) from exc
            got = [target.stat().st_size, sha256_file(target)]
            if got == [size, digest]:
                break
            if attempt == 1:
                _log.warning(
                    "model %s: %s does not match the driver's manifest, reading it again",
                    source.location,
                    rel,
                )
        else:
            target.unlink(missing_ok=True)
            raise ShippingError(
                f"model {source.location!r}: {rel} differs from the driver's copy (size/sha256 "
                f"{got}, expected {[size, digest]}) after a second read; it changed after "
                "spark_udf read it, and is not loaded"
            )
