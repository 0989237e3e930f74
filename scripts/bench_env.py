#!/usr/bin/env python
"""Restored model environments: spark_pyfunc's env_manager against MLflow's, on real executors.

A standalone Master and Worker on 127.0.0.1 (scripts/standalone.py) run one executor with
``--cores`` cores (default 2). The model is written by MLflow (``mlflow.pyfunc.save_model``)
and pins ``six==1.15.0``, which the driver's environment does not have: the environment must
really be restored. For each system and env_manager, ``--runs`` rounds of two applications
each, on a cold environment cache per round:

- environment builds in the application (spark_pyfunc: lines of its ``builds.jsonl``; MLflow:
  its "Creating a new environment" log lines in the executor's stderr);
- seconds to the first result (UDF built to the first small job's rows on the driver, the
  environment build and the model load included);
- warm rows/s (``--rows`` rows scored again ``--repeats`` times once everything is up).

The second application of a round reuses the cache the first left (spark_pyfunc's cache
lives on the machine; MLflow's environments live in per-worker temporary directories).
Medians over the rounds, side by side, printed as a markdown table (``--out`` also writes it).

MLflow's ``env_manager="virtualenv"`` needs pyenv (it installs the model's exact Python from
CPython's sources): without pyenv it is reported as not run, and where pyenv cannot download
the sources the table shows the failure. Its ``"uv"`` installs the model's
requirements (``mlflow`` among them) into each environment and serves the model with MLflow's
scoring server: over HTTP where ``nc`` is on the executors' PATH (MLflow checks ports with it),
else through stdin and a file it polls every second.

A plain pandas UDF computing the same sum in the workers (system ``pandas_udf``: no model,
no environment, no host) gives Spark's own floor: a fresh application's first Python job.

``--phases`` also times spark_pyfunc's way to its first result: a ``sitecustomize`` on the
executors' PYTHONPATH turns on spark_pyfunc's DEBUG log in the Python workers and notes when
the Python daemon starts and when a worker unpickles the UDF and imports pandas; the hosts
log to a directory of the bench. Every line is printed, in seconds after ``spark_udf`` was
called, and a table of medians follows. ``--steps`` times the environment's own steps
without Spark (``uv pip install`` from the index, from uv's cache alone, with
``--compile-bytecode``; the host's imports without and with bytecode).

Run:  .venv/bin/python scripts/bench_env.py                 (~10-20 min on 2 shared cores)
      .venv/bin/python scripts/bench_env.py --runs 3 --rows 20000 --repeats 1 --managers uv \
          --phases                                          (first results: ~25 min, loaded)
      .venv/bin/python scripts/bench_env.py --runs 5 --steps          (no Spark, ~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import standalone as sa  # noqa: E402

FEATURES = [f"f{i}" for i in range(8)]
PIN = "six==1.15.0"


# ----------------------------------------------------------------------------- the model


def save_model(path: Path) -> Path:
    """An MLflow-written pyfunc model: a weighted sum that checks it sees six 1.15.0."""
    import cloudpickle
    import mlflow.pyfunc

    class PinnedSix(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import six

            if six.__version__ != "1.15.0":
                raise RuntimeError(f"six {six.__version__} instead of the pinned 1.15.0")
            x = model_input[[f"f{i}" for i in range(8)]].to_numpy(dtype="float64")
            return pd.Series(x @ np.arange(1.0, 9.0), name="y")

    requirements = [
        PIN,
        f"cloudpickle=={cloudpickle.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]
    from mlflow.models import infer_signature

    # A signature, so that both systems bind the UDF's columns to f0..f7 by name.
    example = pd.DataFrame(np.ones((2, 8)), columns=FEATURES)
    signature = infer_signature(example, pd.Series(np.ones(2), name="y"))
    mlflow.pyfunc.save_model(
        str(path), python_model=PinnedSix(), pip_requirements=requirements, signature=signature
    )
    return path


# ----------------------------------------------------------------------------- one app


@dataclass
class App:
    system: str
    manager: str
    round: int
    app: int
    builds: int = 0
    first_result_s: float = float("nan")
    warm_rps: list[float] = field(default_factory=list)
    error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)


def _session(
    cluster: Any, cores: int, tmp: Path, cache: Path, tag: str, phases: Path | None = None
) -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if phases is not None:  # the workers log spark_pyfunc's DEBUG lines; hosts log there
        builder = builder.config("spark.executorEnv.PYTHONPATH", str(phases.parent))
        builder = builder.config("spark.pyfunc.host.logDir", str(phases))
    spark = (
        builder.master(cluster.master_url)
        .appName(f"bench_env {tag}")
        .config("spark.executor.cores", str(cores))
        .config("spark.cores.max", str(cores))
        .config("spark.executor.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.task.maxFailures", "1")
        .config("spark.executorEnv.TMPDIR", str(tmp))
        .config(f"spark.executorEnv.{sa.TAG_VAR}", tag)
        .config("spark.pyfunc.env.cacheDir", str(cache))
        # MLflow's per-request timeout (60 s by default) is what fails first on a busy
        # machine; raised so that its figures come out (it does not make it faster).
        .config("spark.executorEnv.MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "600")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.range(cores * 2, numPartitions=cores * 2).count()  # the executor is up
    return spark


def _udf(spark: Any, system: str, manager: str, model: Path) -> Any:
    if system == "pandas_udf":  # Spark's own floor: the same sum in the worker, no model
        from pyspark.sql.functions import pandas_udf

        @pandas_udf("double")
        def weighted(
            f0: pd.Series, f1: pd.Series, f2: pd.Series, f3: pd.Series,
            f4: pd.Series, f5: pd.Series, f6: pd.Series, f7: pd.Series,
        ) -> pd.Series:  # fmt: skip
            x = np.stack([f0, f1, f2, f3, f4, f5, f6, f7], axis=1)
            return pd.Series(x @ np.arange(1.0, 9.0))

        return weighted(*FEATURES)
    if system == "spark_pyfunc":
        from spark_pyfunc import spark_udf

        return spark_udf(spark, str(model), "double", env_manager=manager)(*FEATURES)
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(spark, str(model), result_type="double", env_manager=manager)
    return udf(*[F.col(c) for c in FEATURES])


def _features(spark: Any, rows: int, partitions: int) -> Any:
    from pyspark.sql import functions as F

    df = spark.range(0, rows, numPartitions=partitions)
    return df.select(*[(F.col("id") % (i + 7) / 7.0).alias(c) for i, c in enumerate(FEATURES)])


def _mlflow_builds(cluster: Any, app_id: str) -> int:
    count = 0
    for stderr in (cluster.root / "work" / app_id).glob("*/stderr"):
        count += stderr.read_text(errors="replace").count("Creating a new environment")
    return count


def _spf_builds(cache: Path) -> int:
    log = cache / "builds.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def run_app(cfg: argparse.Namespace, cluster: Any, model: Path, app: App, cache: Path) -> None:
    tmp = cfg.root / f"tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    tag = f"{app.system}-{app.manager}-{app.round}-{app.app}-{uuid.uuid4().hex[:6]}"
    before = _spf_builds(cache)
    phases = None
    if cfg.phases and app.system == "spark_pyfunc":
        phases = _phase_logging(cfg.root) / tag
    spark = _session(cluster, cfg.cores, tmp, cache, tag, phases)
    app_id = spark.sparkContext.applicationId
    partitions = cfg.cores * 2
    try:
        started, wall = time.monotonic(), time.time()
        col = _udf(spark, app.system, app.manager, model)
        built = time.monotonic() - started
        first = _features(spark, 1000, partitions).select(col.alias("p")).collect()
        app.first_result_s = time.monotonic() - started
        if phases is not None:
            app.phases = {"spark_udf (driver)": built}
            app.phases.update(_phase_breakdown(cluster.root / "work" / app_id, phases, wall))
            app.phases["first result (driver)"] = app.first_result_s
        expected = _expected(1000)
        got = np.array([r["p"] for r in first])
        if not np.allclose(np.sort(got), np.sort(expected)):
            raise AssertionError(f"{app.system}: wrong predictions")
        from pyspark.sql import functions as F

        for _ in range(cfg.repeats):
            t0 = time.monotonic()
            scored = _features(spark, cfg.rows, partitions).select(col.alias("p"))
            n = scored.agg(F.count("p")).collect()[0][0]
            app.warm_rps.append(n / (time.monotonic() - t0))
    except Exception as exc:  # reported in the table, the run goes on
        lines = [line for line in str(exc).splitlines() if line.strip()]
        app.error = f"{type(exc).__name__}: " + " | ".join(lines[-6:])[:1500]
    finally:
        spark.stop()
        sa.reap_tagged(tag)
    if app.error and cfg.debug:
        for stderr in (cluster.root / "work" / app_id).glob("*/stderr"):
            print(
                f"--- {stderr} ---\n"
                + "\n".join(stderr.read_text(errors="replace").splitlines()[-60:])
            )
    if app.system == "spark_pyfunc":
        app.builds = _spf_builds(cache) - before
    else:
        app.builds = _mlflow_builds(cluster, app_id)
    shutil.rmtree(tmp, ignore_errors=True)


def _expected(rows: int) -> np.ndarray:
    ids = np.arange(rows)
    x = np.stack([(ids % (i + 7)) / 7.0 for i in range(8)], axis=1)
    return x @ np.arange(1.0, 9.0)


# ----------------------------------------------------------------------------- phases

_SITECUSTOMIZE = """\
# bench_env.py --phases: spark_pyfunc's DEBUG lines, with epoch timestamps, on the executor's
# stderr; and when this Python started (the workers are forked from the daemon it becomes).
import logging, os, sys, time
_h = logging.StreamHandler(sys.stderr)
_h.setFormatter(logging.Formatter("PHASE %(created).3f %(process)d %(name)s: %(message)s"))
_l = logging.getLogger("spark_pyfunc")
_l.addHandler(_h)
_l.setLevel(logging.DEBUG)
print(f"PHASE {time.time():.3f} {os.getpid()} python: started", file=sys.stderr, flush=True)
_seen = set()
def _imports(event, args):
    if event == "import" and args[0] in ("pyspark.worker", "pandas", "spark_pyfunc._udf"):
        what = f"import: {args[0]}"
    elif event == "pickle.find_class" and args[1] == "_Plan":
        what = "unpickled: the UDF's plan"
    else:
        return
    if (os.getpid(), what) not in _seen:
        _seen.add((os.getpid(), what))
        print(f"PHASE {time.time():.3f} {os.getpid()} {what}", file=sys.stderr)
sys.addaudithook(_imports)
"""

# (phase name, regex on a PHASE line of the executor's stderr or a host log line)
_EVENTS = {
    "python daemon up": r"python: started",
    "worker imports pandas": r"import: pandas$",
    "worker imports spark_pyfunc": r"import: spark_pyfunc._udf",
    "worker unpickles the UDF": r"unpickled: the UDF's plan",
    "model unpacked": r"model .* unpacked in",
    "env lookup done": r"model environment .* ready in",
    "host launched": r"starting the model host",
    "host imports done": r"model host starting",
    "model loaded": r"model .* loaded in",
    "host serving": r"serving .* mode",
}


def _phase_logging(root: Path) -> Path:
    site = root / "phases"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return site


def _event_times(lines: list[tuple[float, str]]) -> dict[str, float]:
    import re

    found: dict[str, float] = {}
    for when, text in sorted(lines):
        for name, pattern in _EVENTS.items():
            if name not in found and re.search(pattern, text):
                found[name] = when
    return found


def _phase_breakdown(app_dir: Path, host_logs: Path, wall: float) -> dict[str, float]:
    """Seconds from the UDF's creation on the driver to each first executor-side event (the
    workers' DEBUG lines on the executor's stderr, the host's own log), same clock."""
    from datetime import datetime

    lines: list[tuple[float, str]] = []
    for stderr in app_dir.glob("*/stderr"):
        for line in stderr.read_text(errors="replace").splitlines():
            if line.startswith("PHASE "):
                _, when, text = line.split(" ", 2)
                lines.append((float(when), text))
    for log in host_logs.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            try:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            lines.append((stamp, line[24:]))
    for when, text in sorted(lines):  # the whole story, for the reader of the run's output
        print(f"  {when - wall:8.3f}  {text[:160]}")
    return {name: when - wall for name, when in _event_times(lines).items()}


def phase_table(apps: list[App]) -> str:
    """Medians of the phases, in seconds after spark_udf was called, per (manager, app)."""
    out = [
        "| env_manager | app | "
        + " | ".join(["spark_udf (driver)", *_EVENTS, "first result (driver)"])
        + " |"
    ]
    out.append("|---|---|" + "---|" * (len(_EVENTS) + 2))
    for manager in sorted({a.manager for a in apps if a.phases}):
        for n in (1, 2):
            runs = [a for a in apps if a.phases and (a.manager, a.app) == (manager, n)]
            if not runs:
                continue
            cells = []
            for name in ["spark_udf (driver)", *_EVENTS, "first result (driver)"]:
                cells.append(f"{_median([a.phases.get(name, float('nan')) for a in runs]):.2f}")
            out.append(f"| {manager} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- steps


def steps(cfg: argparse.Namespace) -> str:
    """The environment's own steps without Spark, side by side, ``--runs`` rounds, medians:
    ``uv pip install`` of the bench model's requirements and the host's (uv's wheel cache
    warm) against the index, from the cache alone (``--offline``) and with
    ``--compile-bytecode``; then the host's imports in the environment without and with .pyc.
    """
    import subprocess

    from spark_pyfunc import _environments as envs
    from spark_pyfunc._env_spec import HOST_REQUIREMENTS

    uv = envs._find_uv()
    reqs = cfg.root / "requirements.txt"
    reqs.write_text("\n".join([PIN, "cloudpickle", "pandas<3", "numpy", *HOST_REQUIREMENTS]))
    quiet = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    imports = "import spark_pyfunc._host, spark_pyfunc._loading, six"
    pkg = {"PYTHONPATH": envs.package_path(cfg.root / "pkg")}

    def timed(cmd: list[str], env: dict[str, str]) -> float:
        t0 = time.monotonic()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.monotonic() - t0

    ways = {
        "index": [],
        "offline (cache alone)": ["--offline"],
        "offline + --compile-bytecode": ["--offline", "--compile-bytecode"],
    }
    seconds: dict[str, list[float]] = {}
    for rnd in range(cfg.runs):
        for way, flags in ways.items():
            venv = cfg.root / f"steps-{rnd}-{len(way)}"
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
            python = str(venv / "bin" / "python")
            install = [uv, "pip", "install", "-q", "--python", python, "-r", str(reqs), *flags]
            seconds.setdefault(f"uv pip install, {way}", []).append(timed(install, quiet))
            if way == "index":
                nopyc = {**quiet, **pkg, "PYTHONDONTWRITEBYTECODE": "1"}
                seconds.setdefault("host imports, no .pyc", []).append(
                    timed([python, "-c", imports], nopyc)
                )
                first = {**quiet, **pkg, "PYTHONDONTWRITEBYTECODE": ""}
                seconds.setdefault("host imports, writing .pyc (first host)", []).append(
                    timed([python, "-c", imports], first)
                )
                seconds.setdefault("host imports, from .pyc (later hosts)", []).append(
                    timed([python, "-c", imports], nopyc)
                )
            shutil.rmtree(venv, ignore_errors=True)
    lines = ["| step | median s | rounds |", "|---|---|---|"]
    for what, values in seconds.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {what} | {statistics.median(values):.2f} | {runs} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    good = [v for v in values if v == v]
    return statistics.median(good) if good else float("nan")


def table(apps: list[App], skipped: dict[str, str]) -> str:
    lines = [
        "| system | env_manager | app | env builds (per app) | first result, s | warm rows/s |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(a.system, a.manager) for a in apps})
    for system, manager in keys:
        for n in (1, 2):
            runs = [a for a in apps if (a.system, a.manager, a.app) == (system, manager, n)]
            errors = [a.error for a in runs if a.error]
            if errors:
                short = errors[0].rsplit(" | ", 1)[-1][:200]
                lines.append(f"| {system} | {manager} | {n} | - | failed: {short} | - |")
                continue
            builds = "/".join(str(a.builds) for a in runs)
            first = _median([a.first_result_s for a in runs])
            rps = _median([_median(a.warm_rps) for a in runs])
            lines.append(f"| {system} | {manager} | {n} | {builds} | {first:.1f} | {rps:,.0f} |")
    for what, why in skipped.items():
        lines.append(f"| {what} | - | - | not run: {why} | - | - |")
    return "\n".join(lines)


def ratios(apps: list[App]) -> list[str]:
    out = []
    for manager in ("uv", "virtualenv"):
        ours = [a for a in apps if (a.system, a.manager) == ("spark_pyfunc", manager)]
        theirs = [a for a in apps if (a.system, a.manager) == ("mlflow", manager)]
        if not ours or not theirs or any(a.error for a in ours + theirs):
            continue
        for n in (1, 2):
            mine = [a for a in ours if a.app == n]
            other = [a for a in theirs if a.app == n]
            first = _median([a.first_result_s for a in other]) / _median(
                [a.first_result_s for a in mine]
            )
            rps = _median([_median(a.warm_rps) for a in mine]) / _median(
                [_median(a.warm_rps) for a in other]
            )
            out.append(
                f"- {manager}, application {n}: first result {first:.1f}x sooner, "
                f"warm rows/s {rps:.2f}x MLflow's"
            )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (cold cache each)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows per warm job")
    parser.add_argument("--repeats", type=int, default=3, help="warm jobs per application")
    parser.add_argument("--cores", type=int, default=2, help="the executor's cores")
    parser.add_argument(
        "--systems",
        default="spark_pyfunc,mlflow,pandas_udf",
        help="pandas_udf: a plain pandas UDF, no model or environment (Spark's own floor)",
    )
    parser.add_argument("--managers", default="uv,virtualenv")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--debug", action="store_true", help="print a failed app's executor log")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time spark_pyfunc's phases to the first result (executor DEBUG logs)",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="only time the environment's steps, without Spark (uv install ways, host imports)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-env-"))
    cfg.root = root
    systems, managers = cfg.systems.split(","), cfg.managers.split(",")
    skipped = {}
    if "mlflow" in systems and "virtualenv" in managers and shutil.which("pyenv") is None:
        skipped["mlflow virtualenv"] = "MLflow's virtualenv manager needs pyenv, absent here"
    if cfg.steps:
        try:
            text = f"`{' '.join(['python', 'scripts/bench_env.py', *(argv or sys.argv[1:])])}`"
            text += f", {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n\n" + steps(cfg)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(text)
        return 0
    apps: list[App] = []
    import spark_pyfunc  # noqa: F401 - imported before the clock, as save_model imports mlflow

    try:
        model = save_model(root / "model")
        with sa.standalone_cluster(cfg.cores, memory="3g", root=root / "cluster") as cluster:
            for rnd in range(1, cfg.runs + 1):
                for system in systems:
                    for manager in managers if system != "pandas_udf" else ["none"]:
                        if f"{system} {manager}" in skipped:
                            continue
                        cache = root / f"cache-{system}-{manager}-{rnd}"
                        for n in (1, 2):
                            app = App(system, manager, rnd, n)
                            run_app(cfg, cluster, model, app, cache)
                            print(json.dumps(app.__dict__), flush=True)
                            apps.append(app)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(
        [
            f"`{' '.join(['python', 'scripts/bench_env.py', *(argv or sys.argv[1:])])}`: "
            f"{cfg.runs} rounds, one {cfg.cores}-core executor, {cfg.rows:,} rows per warm job, "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, "
            f"{time.monotonic() - started:.0f} s in all",
            "",
            table(apps, skipped),
            "",
            *ratios(apps),
            *(
                ["", "Phases (s after spark_udf was called; medians):", "", phase_table(apps)]
                if cfg.phases
                else []
            ),
        ]
    )
    print(text)
    if cfg.out:
        cfg.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
