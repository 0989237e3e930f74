"""Local paths from what users pass: a path, a ``PathLike`` or a ``file:`` URI.

One place for it, because every entry point (``spark_udf``, ``save_model``'s artifacts and
code paths) must read ``file:/tmp/m`` as ``/tmp/m`` and not as a relative path named
``file:/tmp/m``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from spark_pyfunc.errors import InvalidArgumentError

__all__ = ["is_remote", "local_path", "sha256_file"]

_CHUNK = 1 << 20


def is_remote(uri_or_path: str | os.PathLike) -> bool:
    """Whether this is a URI of another filesystem (``hdfs://``, ``s3a://``), which Spark can
    read but :func:`local_path` refuses; paths and ``file:`` URIs are not.

    Example:
        >>> is_remote("s3a://bucket/in.parquet"), is_remote("file:/tmp/in"), is_remote("C:/x")
        (True, False, False)
    """
    scheme = urlparse(os.fspath(uri_or_path)).scheme
    return len(scheme) > 1 and scheme != "file"  # a one-letter scheme is a Windows drive


def local_path(uri_or_path: str | os.PathLike) -> Path:
    """The absolute local path behind a path or a ``file:`` URI.

    Args:
        uri_or_path: a local path (relative, absolute, ``~``), a ``PathLike``, or a ``file:``
            URI (``file:/x``, ``file:///x``, ``file://localhost/x``).

    Returns:
        The absolute path (symlinks not resolved; whether it exists is the caller's check).

    Raises:
        InvalidArgumentError: for any other URI (``s3://``, ``runs:/``, ``file://otherhost/x``),
            naming it: such models and files must be downloaded first.

    Example:
        >>> local_path("file:///tmp/model")
        PosixPath('/tmp/model')
    """
    text = os.fspath(uri_or_path)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidArgumentError(
                f"{text!r} is a file: URI on host {parsed.netloc!r}; only local files can be used"
            )
        # Imported here: urllib.request brings http.client, email and ssl (about 2 MiB in
        # every Spark worker and model host that imports this module, for a driver-side call).
        from urllib.request import url2pathname

        text = url2pathname(parsed.path)
    elif is_remote(text):
        raise InvalidArgumentError(
            f"{text!r} is a {parsed.scheme}: URI, not a local path; download it first (for "
            "example with mlflow.artifacts.download_artifacts) and pass the local path"
        )
    return Path(os.path.abspath(os.path.expanduser(text)))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of one file, read in 1 MiB chunks: every shipped byte is checked against
    the driver's."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
