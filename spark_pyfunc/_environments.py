"""The model's own Python environment, restored once per executor machine for its host.

Only the model host needs the model's packages, and there is one host per executor, so
``env_manager="uv"``/``"virtualenv"``/``"conda"`` builds the environment the model describes
once per *machine*, into a cache directory shared by every executor and application of the
user there, and starts the host with that environment's interpreter. The Python workers stay
in the cluster's environment and keep relaying Arrow.

Which file describes the environment follows MLflow (``mlflow.utils.virtualenv._get_python_env``):
``python_env.yaml`` (the file the pyfunc flavor's ``env.virtualenv`` names) wins; without it,
``requirements.txt`` with the Python version of ``conda.yaml``; without that, ``conda.yaml``'s
pip dependencies. ``env_manager="conda"`` builds from ``conda.yaml`` itself.

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
The driver reads the model's files (:func:`read_environment`) and ships the result in the
UDF; executors only build (:func:`ensure_env`) or unpack a prebuilt archive
(:func:`restore_prebuilt`, made by :func:`pack_env`, ``spark-pyfunc build-env``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spark_pyfunc._locks import file_lock
from spark_pyfunc._shipping import safe_extract
from spark_pyfunc._version import __version__
from spark_pyfunc.errors import EnvironmentSetupError, InvalidArgumentError

__all__ = [
    "HOST_REQUIREMENTS",
    "MARKER",
    "EnvSpec",
    "default_cache_dir",
    "ensure_env",
    "host_environment",
    "pack_env",
    "package_path",
    "read_environment",
    "restore_prebuilt",
]

_log = logging.getLogger(__name__)

#: What the host imports besides the model's own packages (spark_pyfunc's runtime
#: dependencies less pyspark, which the host never imports, and psutil, which Linux does not
#: need). spark_pyfunc itself is not installed: the host finds it on PYTHONPATH.
HOST_REQUIREMENTS = (
    "pyarrow>=14",
    "pandas>=2.0,<3",
    "numpy>=1.24",
    "cloudpickle>=2.2",
    "pyyaml>=6",
)

#: The file that marks an environment as complete and says what it holds.
MARKER = "spark_pyfunc-env.json"
_BUILDS = "builds.jsonl"
_TAIL_LINES = 40
# Requirements naming this package: the host takes spark_pyfunc from the worker, not PyPI.
_OWN_NAMES = re.compile(r"^\s*spark[-_.]pyfunc\b", re.IGNORECASE)
_CONDA_DEP = re.compile(r"^(?P<package>[A-Za-z0-9_.\-]+)\s*(?P<op><=|>=|==|=|<|>|!=)?\s*(?P<v>.*)$")


@dataclass(frozen=True)
class EnvSpec:
    """The environment a model asks for, read on the driver and pickled into the UDF.

    ``python`` is the version the model was saved with (None: any, the executor's own);
    ``requirements`` are pip requirement lines with ``-r`` files inlined; ``conda_yaml`` is
    the text of ``conda.yaml`` for ``manager="conda"``; ``source`` names the file read.
    """

    manager: str
    python: str | None
    requirements: tuple[str, ...]
    build_dependencies: tuple[str, ...] = ()
    conda_yaml: str | None = None
    source: str = ""

    def key(self, python_version: str) -> str:
        """The cache key of this environment built with Python ``python_version``."""
        ident = json.dumps(
            {
                "kind": "conda" if self.manager == "conda" else "venv",
                "python": python_version,
                "requirements": list(self.requirements),
                "build": list(self.build_dependencies),
                "conda": self.conda_yaml,
                "host": list(HOST_REQUIREMENTS),
                "spark_pyfunc": __version__,
            },
            sort_keys=True,
        )
        return hashlib.sha256(ident.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------ driver: reading


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EnvironmentSetupError(
            f"cannot read the model's environment file {path}: {exc}"
        ) from exc


def _requirement_lines(model_dir: Path, lines: list[Any], what: str, depth: int = 0) -> list[str]:
    """pip requirement lines with ``-r FILE`` inlined (FILE inside the model directory)."""
    from spark_pyfunc._format import resolve_inside

    out: list[str] = []
    for raw in lines:
        line = str(raw).strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(?:-r|--requirement)(?:\s+|=)(.+)$", line)
        if match:
            if depth > 5:
                raise EnvironmentSetupError(f"{what}: '-r' files nest too deeply at {line!r}")
            path = resolve_inside(model_dir, match.group(1).strip(), what)
            try:
                text = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise EnvironmentSetupError(f"{what}: cannot read {path}: {exc}") from exc
            out += _requirement_lines(model_dir, text, f"{path.name}", depth + 1)
        elif not _OWN_NAMES.match(line):
            out.append(line)
    return out


def _conda_python_and_pip(conda: Any, path: Path) -> tuple[str | None, list[str], list[str]]:
    """conda.yaml's pinned python, its other conda packages and its pip list (MLflow's
    ``_PythonEnv.get_dependencies_from_conda_yaml``)."""
    if not isinstance(conda, dict):
        raise EnvironmentSetupError(f"the model's {path.name} is not a mapping: {path}")
    python: str | None = None
    build: list[str] = []
    pip: list[str] = []
    for dep in conda.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            pip = [str(p) for p in dep["pip"] or []]
            continue
        match = _CONDA_DEP.match(str(dep).strip())
        if match is None:
            continue
        name, op, version = match.group("package"), match.group("op"), match.group("v")
        if name == "python":
            if not op or op in ("<", ">", "!="):
                raise EnvironmentSetupError(
                    f"{path}: python must be pinned (e.g. python=3.11.7), not {dep!r}"
                )
            python = python or version.strip()
        elif name in ("pip", "setuptools", "wheel"):
            build.append(name + ("==" if op == "=" else op or "") + (version or ""))
    return python, build, pip


def read_environment(model_dir: str | os.PathLike[str], manager: str) -> EnvSpec:
    """The environment ``model_dir`` describes, by MLflow's rules for which file wins.

    Args:
        model_dir: the model directory (on the driver).
        manager: ``"uv"``, ``"virtualenv"`` or ``"conda"``.

    Returns:
        An :class:`EnvSpec` (small and picklable: executors do not read the model's files).

    Raises:
        EnvironmentSetupError: the model has no environment file, or one that cannot be read.
        UnsafePathError: an environment file names a path outside the model directory.

    Example:
        >>> read_environment("models/scorer", "uv").requirements  # doctest: +SKIP
        ('scikit-learn==1.5.2', 'cloudpickle==3.1.0')
    """
    from spark_pyfunc._format import read_metadata, resolve_inside

    root = Path(model_dir)
    metadata = read_metadata(root)
    env_conf = metadata.pyfunc_conf.get("env")
    names = env_conf if isinstance(env_conf, dict) else {}
    what = "the model's environment file"
    python_env = resolve_inside(root, str(names.get("virtualenv", "python_env.yaml")), what)
    conda_file = resolve_inside(
        root, str(names.get("conda", env_conf if isinstance(env_conf, str) else "conda.yaml")), what
    )
    requirements = resolve_inside(root, "requirements.txt", what)
    if manager == "conda":
        if not conda_file.is_file():
            raise EnvironmentSetupError(
                f"env_manager='conda' needs the model's conda.yaml, and {root} has none"
            )
        python, _, pip = _conda_python_and_pip(_read_yaml(conda_file), conda_file)
        return EnvSpec(
            manager,
            python,
            tuple(_requirement_lines(root, pip, conda_file.name)),
            conda_yaml=conda_file.read_text(encoding="utf-8"),
            source=conda_file.name,
        )
    if python_env.is_file():
        data = _read_yaml(python_env)
        if not isinstance(data, dict):
            raise EnvironmentSetupError(f"the model's {python_env.name} is not a mapping")
        deps = _requirement_lines(root, list(data.get("dependencies") or []), python_env.name)
        build = [str(d) for d in data.get("build_dependencies") or []]
        python = data.get("python")
        return EnvSpec(
            manager,
            str(python) if python else metadata.python_version,
            tuple(deps),
            tuple(build),
            source=python_env.name,
        )
    if conda_file.is_file():
        python, build, pip = _conda_python_and_pip(_read_yaml(conda_file), conda_file)
        if requirements.is_file():
            pip, source = ["-r requirements.txt"], "requirements.txt"
        else:
            source = conda_file.name
        return EnvSpec(
            manager,
            python or metadata.python_version,
            tuple(_requirement_lines(root, pip, source)),
            tuple(build),
            source=source,
        )
    if requirements.is_file():
        lines = _requirement_lines(root, ["-r requirements.txt"], "requirements.txt")
        return EnvSpec(manager, metadata.python_version, tuple(lines), source="requirements.txt")
    raise EnvironmentSetupError(
        f"env_manager={manager!r}: the model {root} describes no environment (it has no "
        "python_env.yaml, requirements.txt or conda.yaml); use env_manager='local'"
    )


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


def _same_minor(version: str | None) -> bool:
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
    if _same_minor(spec.python):
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


def _run(cmd: list[str], log: Any, timeout: float) -> None:
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
        _run([*install, "--offline"], log, timeout)
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
                _run(create, log, timeout)
            finally:
                conda_file.unlink()
            python = str(_env_python(staging))
            host_reqs = list(HOST_REQUIREMENTS)
            _run([python, "-m", "pip", "install", *host_reqs], log, timeout)
        else:
            base, version = _base_python(spec)
            if spec.manager == "uv":
                uv = _find_uv()
                _run([uv, "venv", "--quiet", "--python", base, str(staging)], log, timeout)
                install = [uv, "pip", "install", "--python", str(_env_python(staging))]
                install += ["-r", str(reqs)]
                if not offline_first or not _offline(install, log, timeout):
                    _run(install, log, timeout)
            else:
                try:
                    import virtualenv  # noqa: F401

                    create = [sys.executable, "-m", "virtualenv", "-q", "-p", base, str(staging)]
                except ImportError:  # the standard library's venv, with pip
                    create = [base, "-m", "venv", str(staging)]
                _run(create, log, timeout)
                pip = [str(_env_python(staging)), "-m", "pip", "install", "-q"]
                _run([*pip, "-r", str(reqs)], log, timeout)
        out = subprocess.run(
            [str(_env_python(staging)), "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip()
    finally:
        reqs.unlink(missing_ok=True)


def _record_build(cache: Path, key: str, spec: EnvSpec, seconds: float, how: str) -> None:
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
    version = spec.python if not _same_minor(spec.python) else platform.python_version()
    key = spec.key(version or platform.python_version())

    def build(target: Path, staging: Path) -> None:
        _build_into(spec, cache, key, target, staging, timeout, offline_first)

    return _once(
        cache, key, timeout, build, f"another worker's build of the model environment {key}"
    )


def _once(
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
    _record_build(cache, key, spec, time.monotonic() - started, "built")
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


# ------------------------------------------------------------------ prebuilt environments


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

    return _once(cache, key, timeout, unpack, f"another worker unpacking {archive}")


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
        if not _same_minor(version):
            raise EnvironmentSetupError(
                f"the prebuilt environment {archive} was built for Python {version}, but the "
                f"executor runs {platform.python_version()}: build it with the executors' "
                "Python major.minor"
            )
        with open(cache / f"{key}.log", "wb") as log:
            _run([sys.executable, "-m", "venv", "--without-pip", str(staging)], log, timeout)
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
    _record_build(cache, key, spec, time.monotonic() - started, "unpacked")
