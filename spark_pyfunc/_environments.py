"""The model's own Python environment, built once per executor machine for its host.

Only the model host needs the model's packages, and there is one host per executor, so
``env_manager="uv"``/``"virtualenv"``/``"conda"`` builds the environment the model describes
(an :class:`~spark_pyfunc._env_spec.EnvSpec`, read on the driver by ``_env_spec``) once per
*machine*, into a cache directory shared by every executor and application of the user
there, and starts the host with that environment's interpreter. The Python workers stay in
the cluster's environment and keep relaying Arrow. This module owns that cache entry and the
host's variables; ``_env_prebuilt`` fills an entry from an archive instead of a build.

The cache (``spark.pyfunc.env.cacheDir``, default ``~/.cache/spark_pyfunc/envs``)::

    <cache>/<key>/                an environment, complete once it exists (renamed into place)
    <cache>/<key>/spark_pyfunc-env.json   what it was built from (the marker)
    <cache>/<key>.lock            held while one worker builds; the others wait, then reuse it
    <cache>/<key>.log             the last build's log (its tail is in a failed build's error)
    <cache>/.<key>-*              a build in progress (removed if its builder died)
    <cache>/builds.jsonl          one line per environment built on this machine

The key hashes the Python version, the requirements, the packages the host itself needs and
spark_pyfunc's version: a model with the same environment reuses it across applications.
uv installs from its own cache alone first (``--offline``: no index round trips) and from
the index only when that fails; the first host in an environment writes its bytecode there
(:func:`host_environment`), so later hosts start faster. Each phase is logged at DEBUG with
its seconds, and each build command in the build log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spark_pyfunc._env_spec import HOST_REQUIREMENTS, EnvSpec
from spark_pyfunc._locks import file_lock
from spark_pyfunc._version import __version__
from spark_pyfunc.errors import EnvironmentSetupError

__all__ = [
    "MARKER",
    "cache_entry",
    "default_cache_dir",
    "ensure_env",
    "host_environment",
    "package_path",
    "record_build",
    "run_logged",
    "same_minor",
]

_log = logging.getLogger(__name__)

#: The file that marks an environment as complete and says what it holds.
MARKER = "spark_pyfunc-env.json"
_BUILDS = "builds.jsonl"
_TAIL_LINES = 40


# ------------------------------------------------------------------------ executor: building


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spark_pyfunc/envs``, else ``~/.cache/spark_pyfunc/envs``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spark_pyfunc" / "envs"


_memo_lock = threading.Lock()
# (cache dir, key) -> the environment's interpreter, so later tasks skip the lock
_ready: dict[tuple[str, str], str] = {}


def _env_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = path.read_bytes()[-64 * 1024 :].decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def same_minor(version: str | None) -> bool:
    """Whether ``version`` (None: any) has this interpreter's major.minor."""
    if not version:
        return True
    parts = version.split(".")
    return parts[:2] == [str(sys.version_info[0]), str(sys.version_info[1])]


def _find_uv() -> str:
    """uv beside this interpreter, on PATH, or from the ``uv`` package."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("uv")
    if found:
        return found
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin

        return str(find_uv_bin())
    raise EnvironmentSetupError(
        "env_manager='uv' needs uv on the executors and none was found (beside "
        f"{sys.executable}, on PATH or as the 'uv' package): pip install uv there, use "
        "env_manager='virtualenv', or ship a prebuilt environment (prebuilt_env_uri)"
    )


def _find_conda() -> list[str]:
    for name in ("micromamba", "mamba", "conda"):
        found = shutil.which(name)
        if found:
            return [found, "create"] if name == "micromamba" else [found, "env", "create"]
    exe = os.environ.get("CONDA_EXE")
    if exe and os.access(exe, os.X_OK):
        return [exe, "env", "create"]
    raise EnvironmentSetupError(
        "env_manager='conda' needs conda, mamba or micromamba on the executors, and none was "
        f"found on PATH ({os.environ.get('PATH', '')}) or in CONDA_EXE; install one there, or "
        "use env_manager='uv' or 'virtualenv', which need no conda"
    )


def _base_python(spec: EnvSpec) -> tuple[str, str]:
    """The interpreter to build on and the Python version the environment will have.

    The executor's own Python when it has the model's major.minor (patch releases are
    compatible); else uv's ``--python`` request (uv finds or fetches it) or ``pythonX.Y``
    on PATH for virtualenv.
    """
    if same_minor(spec.python):
        return sys.executable, platform.python_version()
    assert spec.python is not None
    minor = ".".join(spec.python.split(".")[:2])
    if spec.manager == "uv":
        return spec.python, spec.python
    found = shutil.which(f"python{minor}")
    if found is None:
        raise EnvironmentSetupError(
            f"the model needs Python {spec.python} ({spec.source}) but the executor runs "
            f"{platform.python_version()} and no python{minor} is on PATH; install it there, or "
            "use env_manager='uv', which can fetch it"
        )
    return found, spec.python


def run_logged(cmd: list[str], log: Any, timeout: float) -> None:
    """Run a build command into ``log`` (the command, then its seconds and exit code), outside
    the worker's Python paths; raise ``CalledProcessError`` when it fails."""
    log.write(f"$ {' '.join(cmd)}\n".encode())
    log.flush()
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        timeout=timeout, check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    log.write(f"# {took:.3f}s, exit code {proc.returncode}\n".encode())
    what = " ".join([Path(cmd[0]).name, *cmd[1:3], *(f for f in cmd if f == "--offline")])
    _log.debug("%s: %.3fs, exit code %d", what, took, proc.returncode)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def _offline(install: list[str], log: Any, timeout: float) -> bool:
    """Whether uv installed everything from its cache alone (``--offline``). Most of an online
    install with a warm cache is the index's round trips; a requirement the cache cannot
    satisfy fails resolution, before anything is installed, and the caller goes online."""
    try:
        run_logged([*install, "--offline"], log, timeout)
    except subprocess.CalledProcessError:
        log.write(b"# not everything is in uv's cache: installing from the index\n")
        return False
    return True


def _build(spec: EnvSpec, staging: Path, log: Any, timeout: float, offline_first: bool) -> str:
    """Build ``spec`` into ``staging``; return the Python version it got."""
    reqs = staging.parent / f"{staging.name}.requirements.txt"
    reqs.write_text(
        "\n".join([*spec.build_dependencies, *spec.requirements, *HOST_REQUIREMENTS]) + "\n",
        encoding="utf-8",
    )
    try:
        if spec.manager == "conda":
            conda_file = staging.parent / f"{staging.name}.conda.yaml"
            conda_file.write_text(spec.conda_yaml or "", encoding="utf-8")
            try:
                create = [*_find_conda(), "-y", "-p", str(staging), "-f", str(conda_file)]
                run_logged(create, log, timeout)
            finally:
                conda_file.unlink()
            python = str(_env_python(staging))
            host_reqs = list(HOST_REQUIREMENTS)
            run_logged([python, "-m", "pip", "install", *host_reqs], log, timeout)
        else:
            base, version = _base_python(spec)
            if spec.manager == "uv":
                uv = _find_uv()
                run_logged([uv, "venv", "--quiet", "--python", base, str(staging)], log, timeout)
                install = [uv, "pip", "install", "--python", str(_env_python(staging))]
                install += ["-r", str(reqs)]
                if not offline_first or not _offline(install, log, timeout):
                    run_logged(install, log, timeout)
            else:
                try:
                    import virtualenv  # noqa: F401

                    create = [sys.executable, "-m", "virtualenv", "-q", "-p", base, str(staging)]
                except ImportError:  # the standard library's venv, with pip
                    create = [base, "-m", "venv", str(staging)]
                run_logged(create, log, timeout)
                pip = [str(_env_python(staging)), "-m", "pip", "install", "-q"]
                run_logged([*pip, "-r", str(reqs)], log, timeout)
        out = subprocess.run(
            [str(_env_python(staging)), "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip()
    finally:
        reqs.unlink(missing_ok=True)


def record_build(cache: Path, key: str, spec: EnvSpec, seconds: float, how: str) -> None:
    """Append one line to the machine's ``builds.jsonl``: what was made, how, in what time."""
    entry = {
        "key": key,
        "how": how,
        "manager": spec.manager,
        "seconds": round(seconds, 3),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.time(),
    }
    with open(cache / _BUILDS, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _prepare(cache: Path, key: str) -> tuple[Path, Path | None]:
    """Under the key's lock: the target, and whether it must still be made (stale bits gone)."""
    target = cache / key
    if (target / MARKER).is_file():
        return target, None
    for stale in cache.glob(f".{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # a conda build that died in place
        shutil.rmtree(target, ignore_errors=True)
    return target, Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))


def _locked(cache: Path, key: str, timeout: float) -> contextlib.AbstractContextManager[None]:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentSetupError(
            f"cannot create the environment cache directory {cache}: {exc} "
            "(set spark.pyfunc.env.cacheDir to a writable directory)"
        ) from exc
    return file_lock(cache / f"{key}.lock", timeout=timeout)


def ensure_env(
    spec: EnvSpec,
    cache_dir: str | os.PathLike[str] | None,
    timeout: float,
    offline_first: bool = True,
) -> str:
    """The interpreter of ``spec``'s environment on this machine, built once if missing.

    Concurrent callers (every Python worker of every executor of the machine) serialise on
    a file lock; the one that holds it first builds in a temporary directory beside the
    cache entry and renames it into place, the others find it done. ``offline_first``: uv
    tries its cache alone before the package index (``spark.pyfunc.env.uvOfflineFirst``).

    Raises:
        EnvironmentSetupError: the build failed (with the tail of its log; nothing of the
            build is left), a tool is missing, or another build held the lock too long.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    version = spec.python if not same_minor(spec.python) else platform.python_version()
    key = spec.key(version or platform.python_version())

    def build(target: Path, staging: Path) -> None:
        _build_into(spec, cache, key, target, staging, timeout, offline_first)

    return cache_entry(
        cache, key, timeout, build, f"another worker's build of the model environment {key}"
    )


def cache_entry(
    cache: Path, key: str, timeout: float, make: Callable[[Path, Path], None], what: str
) -> str:
    """The interpreter of cache entry ``key``, made by ``make(target, staging)`` if missing:
    under the key's file lock, by the first caller on the machine; memoised per process."""
    memo = (str(cache), key)
    with _memo_lock:
        known = _ready.get(memo)
    if known is not None and Path(known).exists():
        return known
    target = cache / key
    if not (target / MARKER).is_file():
        try:
            with _locked(cache, key, timeout):
                target, staging = _prepare(cache, key)
                if staging is not None:
                    make(target, staging)
        except TimeoutError as exc:
            raise EnvironmentSetupError(
                f"timed out after {timeout:g}s waiting for {what} (lock {cache / key}.lock); "
                f"see {cache / (key + '.log')}"
            ) from exc
    python = str(_env_python(target))
    with _memo_lock:
        _ready[memo] = python
    return python


def _build_into(
    spec: EnvSpec,
    cache: Path,
    key: str,
    target: Path,
    staging: Path,
    timeout: float,
    offline_first: bool,
) -> None:
    log_path = cache / f"{key}.log"
    started = time.monotonic()
    # conda environments hard-code their prefix: they are built in place, marked last
    where = target if spec.manager == "conda" else staging
    if where is target:
        staging.rmdir()
    _log.info("building the model environment %s with %s (log %s)", target, spec.manager, log_path)
    try:
        with open(log_path, "wb") as log:
            version = _build(spec, where, log, timeout, offline_first)
        _write_marker(where, spec, key, version)
        if where is staging:
            staging.chmod(0o755)  # mkdtemp's 0o700 would hide it from the other executors' users
            os.rename(staging, target)
    except BaseException as exc:
        shutil.rmtree(where, ignore_errors=True)
        if isinstance(exc, EnvironmentSetupError):
            raise
        if isinstance(exc, (subprocess.SubprocessError, OSError)):
            raise EnvironmentSetupError(
                f"cannot build the model environment (env_manager={spec.manager!r}, from the "
                f"model's {spec.source or 'environment'}): {exc}\n"
                f"--- last lines of the build log {log_path} ---\n{_tail(log_path)}"
            ) from exc
        raise
    record_build(cache, key, spec, time.monotonic() - started, "built")
    _log.info("built %s in %.1f s", target, time.monotonic() - started)


def _write_marker(env_dir: Path, spec: EnvSpec, key: str, version: str) -> None:
    info = {**asdict(spec), "key": key, "python_version": version, "spark_pyfunc": __version__}
    (env_dir / MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")


# ------------------------------------------------------------------ the host's variables


def host_environment(cache_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """The environment variables a host in a restored environment starts with.

    Its PYTHONPATH is spark_pyfunc alone (:func:`package_path`). It writes bytecode even
    where the executors set PYTHONDONTWRITEBYTECODE (an empty value turns it off): the
    environment is ours, so the first host on the machine compiles the modules it imports
    (pandas, pyarrow, the model's) and every later host loads them about 3x faster, at no
    cost to the build (``uv --compile-bytecode`` compiles every installed file instead: ~7x
    the build time here).
    """
    return {"PYTHONPATH": package_path(cache_dir), "PYTHONDONTWRITEBYTECODE": ""}


def package_path(cache_dir: str | os.PathLike[str] | None) -> str:
    """A PYTHONPATH entry that makes spark_pyfunc, and nothing else, importable.

    A restored environment's host must see the model's pinned packages, not the worker's,
    so the worker's sys.path cannot be passed on. spark_pyfunc shipped as a zip
    (``addPyFile``) holds only the package; an installed one sits among other packages, so a
    directory under the cache holds a symlink to it alone.
    """
    package = Path(__file__).resolve().parent
    if package.parent.is_file():  # imported from a zip
        return str(package.parent)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    digest = hashlib.sha256(str(package).encode()).hexdigest()[:16]
    shim = cache / "pkg" / digest
    if not (shim / "spark_pyfunc").exists():
        (cache / "pkg").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=cache / "pkg"))
        (tmp / "spark_pyfunc").symlink_to(package, target_is_directory=True)
        try:
            os.rename(tmp, shim)
        except OSError:  # another worker made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(shim)
