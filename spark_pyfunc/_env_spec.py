"""The environment a model describes, read on the driver: which of its files wins, what it pins.

Which file describes the environment follows MLflow (``mlflow.utils.virtualenv._get_python_env``):
``python_env.yaml`` (the file the pyfunc flavor's ``env.virtualenv`` names) wins; without it,
``requirements.txt`` with the Python version of ``conda.yaml``; without that, ``conda.yaml``'s
pip dependencies. ``env_manager="conda"`` builds from ``conda.yaml`` itself.

The driver reads the model's files (:func:`read_environment`) and ships the small, picklable
:class:`EnvSpec` in the UDF: executors never read the model's environment files, they build
the spec (``_environments.ensure_env``) or unpack a prebuilt archive
(``_env_prebuilt.restore_prebuilt``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_pyfunc._version import __version__
from spark_pyfunc.errors import EnvironmentSetupError

__all__ = ["HOST_REQUIREMENTS", "EnvSpec", "read_environment"]

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
