"""Prebuilt environment archives, for executors that cannot reach a package registry.

``spark-pyfunc build-env`` (:func:`pack_env`) builds the model's environment on a machine
that can and packs its site-packages with the marker; ``spark_udf(...,
prebuilt_env_uri=...)`` ships the archive, and each executor machine unpacks it once into
its environment cache (:func:`restore_prebuilt`): into a venv of its own Python, extracted
safely (``_shipping.safe_extract``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from spark_pyfunc._env_spec import EnvSpec, read_environment
from spark_pyfunc._environments import (
    MARKER,
    cache_entry,
    default_cache_dir,
    ensure_env,
    record_build,
    run_logged,
    same_minor,
)
from spark_pyfunc._shipping import safe_extract
from spark_pyfunc.errors import EnvironmentSetupError, InvalidArgumentError

__all__ = ["pack_env", "restore_prebuilt"]


def _site_packages(env_dir: Path) -> Path:
    found = sorted(env_dir.glob("lib/python*/site-packages"))
    if len(found) != 1:
        raise EnvironmentSetupError(f"{env_dir} has no single lib/python*/site-packages")
    return found[0]


def pack_env(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    manager: str = "uv",
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = 1800.0,
) -> Path:
    """Build the model's environment here and pack it as ``out`` (a .tar.gz), for executors
    that cannot reach a package registry (``spark_udf(..., prebuilt_env_uri=out)``).

    The archive holds the environment's site-packages (symlinks inside it resolved, so the
    executor's safe extraction accepts it) and the marker with its Python version; executors
    with the same major.minor Python make a venv and unpack it into the cache. ``out`` is
    written under a temporary name and renamed, so it is complete or absent.

    Raises:
        InvalidArgumentError: ``manager`` is not ``uv`` or ``virtualenv``.
        EnvironmentSetupError: the build failed.
    """
    if manager not in ("uv", "virtualenv"):
        raise InvalidArgumentError(
            f"env_manager must be 'uv' or 'virtualenv' for a prebuilt environment, not {manager!r}"
        )
    spec = read_environment(model_dir, manager)
    env_dir = Path(ensure_env(spec, cache_dir, timeout)).parent.parent
    site = _site_packages(env_dir)
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}-", dir=out_path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(env_dir / MARKER, arcname=MARKER)
            rel = site.relative_to(env_dir).as_posix()
            tar.dereference = True
            tar.add(site, arcname=rel, filter=_no_bytecode)
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out_path


def _no_bytecode(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name.split("/") else info


def restore_prebuilt(
    archive: str | os.PathLike[str],
    sha256: str,
    cache_dir: str | os.PathLike[str] | None,
    timeout: float,
) -> str:
    """The interpreter of a prebuilt environment archive, unpacked once per machine.

    A venv of the executor's own Python (the standard library's, so nothing needs to be
    installed) receives the archive's site-packages, extracted safely.

    Raises:
        EnvironmentSetupError: the archive was built for another Python major.minor, or it
            cannot be unpacked.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = f"prebuilt-{sha256[:24]}"

    def unpack(target: Path, staging: Path) -> None:
        _unpack_into(Path(archive), cache, key, target, staging, timeout)

    return cache_entry(cache, key, timeout, unpack, f"another worker unpacking {archive}")


def _archive_marker(archive: Path) -> dict:
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = tar.extractfile(MARKER)
            if member is None:
                raise KeyError(MARKER)
            return json.loads(member.read())
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise EnvironmentSetupError(
            f"{archive} is not an environment archive made by 'spark-pyfunc build-env' "
            f"(cannot read its {MARKER}: {exc})"
        ) from exc


def _unpack_into(
    archive: Path, cache: Path, key: str, target: Path, staging: Path, timeout: float
) -> None:
    started = time.monotonic()
    try:
        info = _archive_marker(archive)
        version = str(info.get("python_version", ""))
        if not same_minor(version):
            raise EnvironmentSetupError(
                f"the prebuilt environment {archive} was built for Python {version}, but the "
                f"executor runs {platform.python_version()}: build it with the executors' "
                "Python major.minor"
            )
        with open(cache / f"{key}.log", "wb") as log:
            run_logged([sys.executable, "-m", "venv", "--without-pip", str(staging)], log, timeout)
        site = _site_packages(staging)
        safe_extract(archive, staging)
        if not _site_packages(staging) == site:
            raise EnvironmentSetupError(f"{archive} holds the site-packages of another Python")
        staging.chmod(0o755)
        os.rename(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, (subprocess.SubprocessError, OSError)):
            raise EnvironmentSetupError(f"cannot unpack the environment {archive}: {exc}") from exc
        raise
    spec = EnvSpec(str(info.get("manager", "")), version, ())
    record_build(cache, key, spec, time.monotonic() - started, "unpacked")
