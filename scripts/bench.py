#!/usr/bin/env python
"""Benchmark spark_pyfunc against MLflow's spark_udf and hand-made alternatives, on real executors.

Starts a Spark standalone cluster on 127.0.0.1 (or uses ``--master``), and for each core count,
model and approach runs its own Spark application (fresh executor, fresh Python workers, so no
approach inherits another's loaded models). Each application times a cold job (UDF built and
model loaded) and ``--runs`` warm repeats, samples the executor's Python PSS, and checks its
predictions against a reference computed on the driver. Writes ``benchmark.md`` and
``benchmark.png`` to ``--out``.

Run:  .venv/bin/python scripts/bench.py            (the default run, ~15 min on 2 cores)
      .venv/bin/python scripts/bench.py --quick    (smoke test: trivial model, few rows)
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# Loopback only, for the driver as for the standalone Master and Worker.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import bench_models as bm  # noqa: E402
import standalone as sa  # noqa: E402

MODELS = ("trivial", "table", "sklearn")
LARGE = ("table", "sklearn")
APPROACHES = (
    "noop",
    "spf-auto",
    "spf-executor-prefork",
    "spf-executor-thread",
    "spf-executor-fork",
    "spf-process",
    "mlflow",
    "predict_batch_udf",
    "handwritten",
)
#: spark_pyfunc approach -> (scope, spark.pyfunc.host.mode or None for the default).
SPF = {
    "spf-auto": ("auto", None),
    "spf-executor-prefork": ("executor", "prefork"),
    "spf-executor-thread": ("executor", "thread"),
    "spf-executor-fork": ("executor", "fork"),
    "spf-process": ("process", None),
}
#: Rows per model, as fractions of --rows (the trivial model's count): big models cost more.
ROW_SHARE = {"trivial": 1.0, "table": 1 / 2, "sklearn": 1 / 10}
CHECK_ROWS = 2000
ARROW_BATCH = 10_000


class Mismatch(RuntimeError):
    """An approach's predictions differ from the reference: no figure may be trusted."""


# ------------------------------------------------------------------------------ results


@dataclass
class Run:
    """One model scored by one approach in one application."""

    model: str
    approach: str
    cores: int
    rows: int
    cold_s: float
    warm_s: list[float]
    total: float
    warm_start: float = 0.0  # time.monotonic() bounds of the warm runs (memory sampling)
    warm_end: float = 0.0
    warm_cpu: dict[str, float] = field(default_factory=dict)  # CPU s of the warm runs, by kind

    @property
    def rows_per_s(self) -> list[float]:
        return [self.rows / t for t in self.warm_s]

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rows_per_s)


@dataclass
class App:
    """One Spark application: its runs, its executor-side Python PSS, what it leaked.

    ``steady_pss`` is the highest PSS during warm runs (models loaded, scoring), ``peak_pss``
    the highest over the whole application (model loading's transient copies included).
    """

    approach: str
    cores: int
    runs: list[Run] = field(default_factory=list)
    peak_pss: int | None = None
    steady_pss: int | None = None
    steady_host_pss: int = 0  # the model hosts' share of steady_pss
    python_procs: int = 0
    leaked: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- approaches


def _feature_cols() -> list[Any]:
    from pyspark.sql import functions as F

    return [F.col(n) for n in bm.FEATURES]


def _noop(spark: Any, path: Path) -> Any:
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")  # type: ignore[call-overload]
    def noop(
        x0: pd.Series,
        x1: pd.Series,
        x2: pd.Series,
        x3: pd.Series,
        x4: pd.Series,
        x5: pd.Series,
        x6: pd.Series,
        x7: pd.Series,
    ) -> pd.Series:
        return pd.Series(np.zeros(len(x0)))

    return noop(*_feature_cols())


def _spf(scope: str) -> Callable[[Any, Path], Any]:
    def build(spark: Any, path: Path) -> Any:
        from spark_pyfunc import spark_udf

        return spark_udf(spark, str(path), result_type="double", scope=scope)(*bm.FEATURES)

    return build


def _mlflow(spark: Any, path: Path) -> Any:
    import mlflow.pyfunc

    udf = mlflow.pyfunc.spark_udf(spark, str(path), result_type="double", env_manager="local")
    return udf(*_feature_cols())


def _predict_batch(spark: Any, path: Path) -> Any:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType

    model_dir, names = str(path), list(bm.FEATURES)

    def make_predict_fn() -> Callable[..., np.ndarray]:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(model_dir)

        # One parameter per column: predict_batch_udf counts them to pass one array each.
        def predict(
            x0: np.ndarray,
            x1: np.ndarray,
            x2: np.ndarray,
            x3: np.ndarray,
            x4: np.ndarray,
            x5: np.ndarray,
            x6: np.ndarray,
            x7: np.ndarray,
        ) -> np.ndarray:
            arrays = (x0, x1, x2, x3, x4, x5, x6, x7)
            frame = pd.DataFrame(dict(zip(names, arrays, strict=True)), copy=False)
            return np.asarray(model.predict(frame), dtype=np.float64)

        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=ARROW_BATCH)
    return udf(*_feature_cols())


def _handwritten(spark: Any, path: Path) -> Any:
    from pyspark.sql.functions import pandas_udf

    model_dir = str(path)

    @pandas_udf("double")  # type: ignore[call-overload]
    def handwritten(
        x0: pd.Series,
        x1: pd.Series,
        x2: pd.Series,
        x3: pd.Series,
        x4: pd.Series,
        x5: pd.Series,
        x6: pd.Series,
        x7: pd.Series,
    ) -> pd.Series:
        return bm.handwritten_predict(model_dir, x0, x1, x2, x3, x4, x5, x6, x7)

    return handwritten(*_feature_cols())


COLUMN: dict[str, Callable[[Any, Path], Any]] = {
    "noop": _noop,
    **{name: _spf(scope) for name, (scope, _) in SPF.items()},
    "mlflow": _mlflow,
    "predict_batch_udf": _predict_batch,
    "handwritten": _handwritten,
}


# ------------------------------------------------------------------------ one application


@dataclass
class Settings:
    master: str
    cores: list[int]
    main_cores: int
    rows: dict[str, int]
    sweep_rows: dict[str, int]
    runs: int
    sweep_runs: int
    models: list[str]
    approaches: list[str]
    partitions_per_core: int
    out: Path
    root: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    local_cluster: bool = True
    conf: dict[str, str] = field(default_factory=dict)  # --conf: set on every application


@contextmanager
def session(cfg: Settings, app: App, tag: str, name: str, host_mode: str | None) -> Iterator[Any]:
    """A new application with one executor of ``cores`` cores, stopped (and reaped) on exit."""
    from pyspark.sql import SparkSession

    tmp, cores = cfg.root / "tmp", app.cores
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(f"spark_pyfunc-bench {name}")
        .config("spark.executor.cores", str(cores))
        .config("spark.cores.max", str(cores))
        .config("spark.executor.memory", "1g")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH))
        .config("spark.local.dir", str(cfg.root / "driver-local"))
        .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={tmp}")
        .config("spark.executor.extraJavaOptions", f"-Djava.io.tmpdir={tmp}")
        .config(f"spark.executorEnv.{sa.TAG_VAR}", tag)
        .config("spark.executorEnv.TMPDIR", str(tmp))
    )
    if host_mode is not None:
        builder = builder.config("spark.pyfunc.host.mode", host_mode)
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        spark.sparkContext.addPyFile(str(HERE / "bench_models.py"))
        # A JVM-only job: the executor is registered before any timing starts.
        spark.range(cores * 4, numPartitions=cores * 4).count()
        yield spark
    finally:
        spark.stop()
        app.leaked = sa.reap_tagged(tag) if cfg.local_cluster else []


def score(
    cfg: Settings,
    spark: Any,
    approach: str,
    model: str,
    path: Path,
    rows: int,
    runs: int,
    cores: int,
    reference: np.ndarray,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> Run:
    """Cold job (UDF built + first job), prediction check, then ``runs`` warm repeats
    (with ``cpu``, the executor's CPU seconds by process kind are read around them)."""
    from pyspark.sql import functions as F

    partitions = cores * cfg.partitions_per_core
    started = time.monotonic()
    col = COLUMN[approach](spark, path)

    def job() -> tuple[float, int]:
        # A new DataFrame every time: collecting the same one again would reuse its shuffle
        # output and skip the scoring stage altogether.
        scored = bm.features_spark(spark, rows, partitions).select(col.alias("p"))
        return tuple(scored.agg(F.sum("p"), F.count("p")).collect()[0])

    total, n = job()
    cold = time.monotonic() - started
    check = bm.features_spark(spark, CHECK_ROWS, 1).select("id", col.alias("p")).collect()
    got = np.array([r["p"] for r in sorted(check, key=lambda r: r["id"])], dtype=np.float64)
    expected = np.zeros(CHECK_ROWS) if approach == "noop" else reference
    if n != rows or got.shape != expected.shape or not np.allclose(got, expected, 1e-7, 1e-9):
        bad = (
            np.flatnonzero(~np.isclose(got, expected, 1e-7, 1e-9))[:5]
            if got.shape == expected.shape
            else []
        )
        raise Mismatch(
            f"{approach} on the {model} model ({cores} cores): {n} of {rows} rows scored; "
            f"check rows {list(bad)} got {got[bad].tolist() if len(bad) else got.shape} "
            f"expected {expected[bad].tolist() if len(bad) else expected.shape}"
        )
    warm, warm_start, cpu_before = [], time.monotonic(), cpu() if cpu else {}
    for _ in range(runs):
        t0 = time.monotonic()
        again, _n = job()
        warm.append(time.monotonic() - t0)
        if not np.isclose(again, total, rtol=1e-7):
            raise Mismatch(f"{approach} on {model}: warm run summed to {again}, cold to {total}")
    warm_end, cpu_after = time.monotonic(), cpu() if cpu else {}
    warm_cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
    return Run(
        model, approach, cores, rows, cold, warm, float(total), warm_start, warm_end, warm_cpu
    )


def run_app(
    cfg: Settings,
    cores: int,
    approach: str,
    models: list[str],
    index: int,
    paths: dict[str, Path],
    refs: dict[str, np.ndarray],
) -> App:
    tag = f"{cfg.run_id}-{index}"
    host_mode = SPF.get(approach, (None, None))[1]
    rows = cfg.rows if cores == cfg.main_cores else cfg.sweep_rows
    runs = cfg.runs if cores == cfg.main_cores else cfg.sweep_runs
    sampler_cm = sa.PssSampler(tag) if cfg.local_cluster else nullcontext()
    name = f"{approach} {'+'.join(models)} {cores}c"
    app = App(approach=approach, cores=cores)
    with session(cfg, app, tag, name, host_mode) as spark, sampler_cm as sampler:
        for model in models:
            app.runs.append(
                score(
                    cfg,
                    spark,
                    approach,
                    model,
                    paths[model],
                    rows[model],
                    runs,
                    cores,
                    refs[model],
                    sampler.cpu_seconds if sampler is not None else None,
                )
            )
        if sampler is not None:
            app.peak_pss = sampler.peak()
            steady = [sampler.peak_sample(r.warm_start, r.warm_end) for r in app.runs]
            top = max((s for s in steady if s is not None), key=lambda s: s[1], default=None)
            if top is not None:
                app.steady_pss, app.steady_host_pss = top[1], top[3]
            app.python_procs = max((s[2] for s in sampler.samples), default=0)
    return app


# --------------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores, {ram:.1f} GiB RAM, {cpu}, {system}"


def versions() -> str:
    import mlflow
    import pyspark
    import sklearn

    return (
        f"Python {platform.python_version()}, PySpark {pyspark.__version__}, "
        f"pandas {pd.__version__}, numpy {np.__version__}, mlflow {mlflow.__version__}, "
        f"scikit-learn {sklearn.__version__}"
    )


def _fmt_rps(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k"


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


class Figures:
    """Derived numbers: throughput per (model, approach), memory per (model, approach, cores)."""

    def __init__(self, cfg: Settings, apps: list[App], sizes: dict[str, int]) -> None:
        self.cfg, self.apps, self.sizes = cfg, apps, sizes
        self.runs = {(r.model, r.approach, r.cores): r for a in apps for r in a.runs}
        self.floor = {a.cores: a for a in apps if a.approach == "noop"}
        self.mem = {
            (a.runs[0].model, a.approach, a.cores): a
            for a in apps
            if a.approach != "noop" and len(a.runs) == 1
        }

    def rps(self, model: str, approach: str) -> float | None:
        run = self.runs.get((model, approach, self.cfg.main_cores))
        return run.median_rps if run else None

    def ratio(self, model: str, a: str, b: str) -> float | None:
        x, y = self.rps(model, a), self.rps(model, b)
        return x / y if x and y else None

    def floor_pss(self, cores: int, kind: str = "steady") -> int | None:
        app = self.floor.get(cores)
        return None if app is None else getattr(app, f"{kind}_pss")

    def above_floor(
        self, model: str, approach: str, cores: int, kind: str = "steady"
    ) -> float | None:
        app, floor = self.mem.get((model, approach, cores)), self.floor_pss(cores, kind)
        pss = None if app is None else getattr(app, f"{kind}_pss")
        return None if pss is None or floor is None else pss - floor

    def model_sizes(
        self, model: str, approach: str, cores: int, kind: str = "steady"
    ) -> float | None:
        extra = self.above_floor(model, approach, cores, kind)
        return None if extra is None else extra / self.sizes[model]


def goals(fig: Figures) -> list[tuple[str, str, str]]:
    """(goal, measured, PASS/MISS/n/a) rows, as set in issue 5."""
    cfg, rows = fig.cfg, []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    def ratio_goal(label: str, model: str, a: str, b: str, want: float) -> None:
        r = fig.ratio(model, a, b)
        rows.append(
            (label, "-" if r is None else f"{r:.2f}×", verdict(None if r is None else r >= want))
        )

    executor_modes = [
        a for a in ("spf-executor-thread", "spf-executor-fork") if a in cfg.approaches
    ]
    for approach in executor_modes + (["spf-auto"] if "spf-auto" in cfg.approaches else []):
        for model in (m for m in LARGE if m in cfg.models):
            got = [fig.model_sizes(model, approach, c) for c in cfg.cores]
            known = [g for g in got if g is not None]
            pairs = zip(cfg.cores, got, strict=True)
            measured = ", ".join(f"{c}c {g:.2f}" for c, g in pairs if g is not None)
            rows.append(
                (
                    f"{approach} memory ≤ 1.5 model sizes at any core count ({model})",
                    measured or "-",
                    verdict(max(known) <= 1.5 if known else None),
                )
            )
    for model in (m for m in LARGE if m in cfg.models):
        ratio_goal(f"spf-auto rows/s ≥ 1.0× MLflow ({model})", model, "spf-auto", "mlflow", 1.0)
    if "trivial" in cfg.models:
        ratio_goal("spf-auto rows/s ≥ 1.2× MLflow (trivial)", "trivial", "spf-auto", "mlflow", 1.2)
        ratio_goal(
            "spf-auto rows/s ≥ 0.95× no-op floor (trivial)", "trivial", "spf-auto", "noop", 0.95
        )
        for approach in executor_modes:
            ratio_goal(
                f"{approach} rows/s ≥ 0.9× MLflow (trivial)", "trivial", approach, "mlflow", 0.9
            )
    return rows


def markdown(fig: Figures, command: str, wall_s: float, notes: list[str]) -> str:
    """BENCHMARK.md: the setup, then one section per figure, each from its own function."""
    lines = _md_setup(fig, command, wall_s)
    lines += _md_throughput(fig) + _md_ratios(fig) + _md_cpu(fig) + _md_cold_start(fig)
    if fig.cfg.local_cluster:
        lines += _md_memory(fig)
    lines += _md_host_modes(fig)
    lines += ["", "## Goals (issue 5)", "", "| goal | measured | verdict |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in goals(fig)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "![benchmark plots](benchmark.png)", ""]
    return "\n".join(lines)


def _md_setup(fig: Figures, command: str, wall_s: float) -> list[str]:
    cfg = fig.cfg
    cluster = "Spark standalone on 127.0.0.1, one Worker" if cfg.local_cluster else cfg.master
    return [
        "# Benchmark: spark_pyfunc vs MLflow spark_udf and alternatives",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Software: {versions()}",
        f"- Cluster: {cluster}; "
        f"one executor per application (`spark.executor.cores` = `spark.cores.max` = N), a new "
        f"application per approach, model and core count; {cfg.partitions_per_core} partitions "
        f"per core; Arrow batches of {ARROW_BATCH} rows.",
        f"- Wall time of the whole benchmark: {wall_s / 60:.1f} min",
        "- Model sizes (on disk): "
        + ", ".join(f"{m} {fig.sizes[m] / 2**20:.1f} MiB" for m in cfg.models),
        "- Every approach's predictions were checked against a reference computed on the driver "
        f"(np.allclose on {CHECK_ROWS} rows, and equal sums across warm runs) before any figure "
        "was written.",
    ]


def _md_throughput(fig: Figures) -> list[str]:
    cfg, main = fig.cfg, fig.cfg.main_cores
    lines = [
        "",
        f"## Throughput ({main} cores; rows/s, median of {cfg.runs} warm runs [min–max])",
        "",
        "| approach | " + " | ".join(f"{m} ({cfg.rows[m]:,} rows)" for m in cfg.models) + " |",
        "|---" * (len(cfg.models) + 1) + "|",
    ]
    for approach in cfg.approaches:
        cells = []
        for model in cfg.models:
            run = fig.runs.get((model, approach, main))
            if run is None:
                cells.append("-")
                continue
            rps = run.rows_per_s
            cells.append(f"{_fmt_rps(run.median_rps)} [{_fmt_rps(min(rps))}–{_fmt_rps(max(rps))}]")
        lines.append(f"| {approach} | " + " | ".join(cells) + " |")
    return lines


def _md_ratios(fig: Figures) -> list[str]:
    cfg = fig.cfg
    lines = [
        "",
        f"### Ratios of medians ({cfg.main_cores} cores)",
        "",
        "| approach | " + " | ".join(f"{m} ×MLflow | {m} ×no-op" for m in cfg.models) + " |",
        "|---" * (2 * len(cfg.models) + 1) + "|",
    ]
    for approach in cfg.approaches:
        cells = []
        for model in cfg.models:
            for base in ("mlflow", "noop"):
                r = fig.ratio(model, approach, base)
                cells.append("-" if r is None else f"{r:.2f}")
        lines.append(f"| {approach} | " + " | ".join(cells) + " |")
    return lines


def _per_model_table(
    fig: Figures,
    title: str,
    cell: Callable[[Run], str],
    empty: Callable[[Run], bool] = lambda r: False,
) -> list[str]:
    """A section: its title and a table with a row per approach and a column per model, each
    cell ``cell(run)`` of the main core count's run ("-" where there is none, or ``empty``)."""
    cfg, main = fig.cfg, fig.cfg.main_cores
    models = cfg.models
    lines = [
        "",
        title,
        "",
        "| approach | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
    ]
    for approach in cfg.approaches:
        runs = [fig.runs.get((model, approach, main)) for model in models]
        cells = ["-" if run is None or empty(run) else cell(run) for run in runs]
        lines.append(f"| {approach} | " + " | ".join(cells) + " |")
    return lines


def _cpu_cell(run: Run) -> str:
    per = {k: v * 1e3 * 10_000 / (run.rows * len(run.warm_s)) for k, v in run.warm_cpu.items()}
    return f"{per['jvm']:.1f} + {per['workers']:.1f} + {per['host']:.1f} = {sum(per.values()):.1f}"


def _md_cpu(fig: Figures) -> list[str]:
    """Where the executor's CPU goes: at full load rows/s is cores / CPU per row, so this says
    which process an approach's rows/s is lost in."""
    return _per_model_table(
        fig,
        f"### Executor CPU per 10,000 rows during the warm runs ({fig.cfg.main_cores} cores; ms: "
        "executor JVM + Python workers + model host = total)",
        _cpu_cell,
        empty=lambda run: not run.warm_cpu,
    )


def _md_cold_start(fig: Figures) -> list[str]:
    return _per_model_table(
        fig,
        f"### Cold start ({fig.cfg.main_cores} cores): first job in seconds, UDF construction and "
        "model load included (warm median in brackets)",
        lambda run: f"{run.cold_s:.1f} [{statistics.median(run.warm_s):.1f}]",
    )


def _md_memory(fig: Figures) -> list[str]:
    cfg = fig.cfg
    floors = [(c, fig.floor_pss(c), fig.floor_pss(c, "peak")) for c in cfg.cores]
    lines = [
        "",
        "## Executor memory: Python PSS above the no-op floor",
        "",
        "Summed over every Python process of the executor (PySpark daemon and workers, "
        "spark_pyfunc model hosts), sampled every 0.2 s. Each cell: MiB held during the warm "
        "runs (in model sizes), then the peak over the whole application, model loading "
        "included. No-op floor (steady/peak MiB): "
        + ", ".join(f"{c} cores {_mib(s)}/{_mib(p)}" for c, s, p in floors if s and p),
        "",
        "| model | approach | " + " | ".join(f"{c} cores" for c in cfg.cores) + " |",
        "|---" * (len(cfg.cores) + 2) + "|",
    ]
    for model in cfg.models:
        for approach in cfg.approaches[1:]:
            cells = []
            for c in cfg.cores:
                extra = fig.above_floor(model, approach, c)
                peak = fig.above_floor(model, approach, c, "peak")
                sizes = fig.model_sizes(model, approach, c)
                if extra is None or peak is None or sizes is None:
                    cells.append("-")
                elif model in LARGE:
                    cells.append(f"{_mib(extra)} ({sizes:.2f}); peak {_mib(peak)}")
                else:
                    cells.append(f"{_mib(extra)}; peak {_mib(peak)}")
            lines.append(f"| {model} | {approach} | " + " | ".join(cells) + " |")
    return lines + _md_memory_split(fig)


def _md_memory_split(fig: Figures) -> list[str]:
    """The steady figure at the largest core count, split: what the Python workers hold above
    the no-op floor's workers (a relay's imports and buffers, paid once per core) and what
    the model hosts hold (the model once, and each serving process's private pages)."""
    top = max(fig.cfg.cores)
    lines = [
        "",
        f"### Where it lies at {top} cores: Python workers above the no-op floor's, and model "
        "hosts (MiB held during the warm runs)",
        "",
        "| model | approach | workers | hosts |",
        "|---|---|---|---|",
    ]
    for model in fig.cfg.models:
        for approach in fig.cfg.approaches[1:]:
            extra = fig.above_floor(model, approach, top)
            if extra is None:
                continue
            app = fig.mem[(model, approach, top)]
            workers = extra - app.steady_host_pss
            lines.append(
                f"| {model} | {approach} | {_mib(workers)} | {_mib(app.steady_host_pss)} |"
            )
    return lines


def _md_host_modes(fig: Figures) -> list[str]:
    cfg, main = fig.cfg, fig.cfg.main_cores
    modes = [
        a
        for a in ("spf-executor-prefork", "spf-executor-thread", "spf-executor-fork")
        if a in cfg.approaches
    ]
    if not modes:
        return []
    top = max(cfg.cores)
    lines = [
        "",
        f'## Host modes for scope="executor" (`spark.pyfunc.host.mode`): rows/s at '
        f"{main} cores, memory above floor at {top} cores (MiB)",
        "",
        "| model | " + " | ".join(f"{a} rows/s | {a} MiB" for a in modes) + " |",
        "|---" * (2 * len(modes) + 1) + "|",
    ]
    for model in cfg.models:
        cells = []
        for a in modes:
            rps, extra = fig.rps(model, a), fig.above_floor(model, a, top)
            cells += [
                "-" if rps is None else _fmt_rps(rps),
                "-" if extra is None else _mib(extra),
            ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _color(approach: str) -> str:
    """spark_pyfunc in orange, the floor in grey, everything else in blue."""
    if approach == "noop":
        return "tab:gray"
    return "tab:orange" if approach.startswith("spf-") else "tab:blue"


def plot(fig_data: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = fig_data.cfg
    models = cfg.models
    mem_models = [m for m in models if m in LARGE] if cfg.local_cluster else []
    ncols = max(len(models), len(mem_models), 1)
    nrows = 2 if mem_models else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.5 * nrows), squeeze=False)
    approaches = cfg.approaches
    for i, model in enumerate(models):
        ax = axes[0][i]
        med, lo, hi, names = [], [], [], []
        for a in approaches:
            run = fig_data.runs.get((model, a, cfg.main_cores))
            if run is None:
                continue
            rps = run.rows_per_s
            names.append(a)
            med.append(run.median_rps)
            lo.append(run.median_rps - min(rps))
            hi.append(max(rps) - run.median_rps)
        colors = [_color(a) for a in names]
        ax.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_title(f"{model}: rows/s at {cfg.main_cores} cores (median, min–max)")
        ax.set_xlabel("rows/s")
    for j in range(len(models), ncols):
        axes[0][j].axis("off")
    for i, model in enumerate(mem_models):
        ax = axes[1][i]
        for a in approaches:
            if a == "noop":
                continue
            pts = [(c, fig_data.model_sizes(model, a, c)) for c in cfg.cores]
            pts = [(c, v) for c, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=a)
        ax.axhline(1.5, color="grey", linestyle="--", linewidth=1, label="goal 1.5")
        ax.set_ylim(bottom=0)
        ax.set_xticks(cfg.cores)
        ax.set_xlabel("cores per executor")
        ax.set_ylabel("Python PSS above no-op floor (model sizes)")
        ax.set_title(f"{model}: executor memory vs cores")
        ax.legend(fontsize=7)
    if nrows == 2:
        for j in range(len(mem_models), ncols):
            axes[1][j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--master", help="an existing master URL (default: start a standalone cluster)")
    p.add_argument(
        "--cores",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        help="cores per executor to measure memory at (default 1 2 4)",
    )
    p.add_argument(
        "--throughput-cores",
        type=int,
        default=2,
        help="core count whose applications measure rows/s (default 2)",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=4_000_000,
        help="rows for the trivial model; table gets 1/2, sklearn 1/10 (default 4M)",
    )
    p.add_argument("--runs", type=int, default=5, help="warm runs for rows/s (default 5)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    p.add_argument("--partitions-per-core", type=int, default=2)
    p.add_argument("--table-mib", type=int, default=256, help="size of the table model")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: trivial model, one core count, 1 warm run, 400k rows",
    )
    p.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting for every application, e.g. spark.pyfunc.host.processes=4",
    )
    p.add_argument("--out", type=Path, default=HERE.parent / "docs")
    args = p.parse_args(argv)
    if args.quick:
        args.models = ["trivial"]
        # Enough rows that a model host's CPU in the warm run is several clock ticks (10 ms):
        # with 20k rows a thread host's 2 requests often read as 0.
        args.rows = min(args.rows, 400_000)
        args.runs = 1
        if args.cores == [1, 2, 4]:
            args.cores = [1]
        args.throughput_cores = args.cores[0]
    if args.throughput_cores not in args.cores:
        args.cores = sorted({*args.cores, args.throughput_cores})
    if min(args.cores) < 1 or args.runs < 1 or args.rows < CHECK_ROWS:
        p.error(f"--cores and --runs must be positive and --rows at least {CHECK_ROWS}")
    if any("=" not in item for item in args.conf):
        p.error(f"--conf takes KEY=VALUE, not {next(i for i in args.conf if '=' not in i)!r}")
    if "noop" not in args.approaches:
        args.approaches = ["noop", *args.approaches]  # the floor every figure is measured from
    args.approaches = [a for a in APPROACHES if a in args.approaches]
    args.models = [m for m in MODELS if m in args.models]
    return args


def plan(cfg: Settings) -> list[tuple[int, str, list[str]]]:
    """(cores, approach, models) per application; throughput core count first.

    The no-op floor needs no model, so one application per core count runs all row counts.
    Other core counts only measure memory, on the large models (a trivial model's copy is
    noise) unless the trivial model is all there is.
    """
    order = [cfg.main_cores] + [c for c in cfg.cores if c != cfg.main_cores]
    apps = []
    for cores in order:
        models = cfg.models
        if cores != cfg.main_cores:
            models = [m for m in cfg.models if m in LARGE] or cfg.models
        apps.append((cores, "noop", models))
        for approach in cfg.approaches[1:]:
            apps += [(cores, approach, [m]) for m in models]
    return apps


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


#: Sections of benchmark.md below this line are written by hand (host scaling, projections)
#: and survive a re-run, which rewrites everything above it.
KEEP_MARKER = "<!-- sections below are kept by scripts/bench.py -->"


def _kept_sections(path: Path) -> str:
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + old[at:]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(
        shlex.quote(a) for a in ["python", "scripts/bench.py", *(argv or sys.argv[1:])]
    )
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="spb-"))
    (root / "tmp").mkdir()
    # Driver-side temp files (MLflow's model copies, Spark's) land in root, removed at the end.
    os.environ["TMPDIR"] = str(root / "tmp")
    tempfile.tempdir = str(root / "tmp")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    try:
        return _main(args, root, command, started)
    except Mismatch as exc:
        print(f"bench: ABORTED, predictions differ: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _main(args: argparse.Namespace, root: Path, command: str, started: float) -> int:
    rows = {m: max(CHECK_ROWS, int(args.rows * ROW_SHARE[m])) for m in MODELS}
    cfg = Settings(
        master=args.master or "",
        cores=sorted(args.cores),
        main_cores=args.throughput_cores,
        rows=rows,
        sweep_rows={m: max(CHECK_ROWS, r // 4) for m, r in rows.items()},
        runs=args.runs,
        sweep_runs=1,
        models=args.models,
        approaches=args.approaches,
        partitions_per_core=args.partitions_per_core,
        out=args.out,
        root=root,
        local_cluster=args.master is None,
        conf=dict(item.split("=", 1) for item in args.conf),
    )
    paths, refs, sizes = {}, {}, {}
    models_dir, scratch = root / "models", root / "scratch"
    scratch.mkdir(parents=True)
    for model in cfg.models:
        t0 = time.monotonic()
        paths[model] = models_dir / model
        if model == "table":
            bm.build_table(paths[model], scratch, args.table_mib)
        else:
            bm.build(model, paths[model], scratch)
        sizes[model] = dir_size(paths[model])
        refs[model] = _reference(paths[model])
        print(
            f"bench: built the {model} model ({sizes[model] / 2**20:.1f} MiB) in "
            f"{time.monotonic() - t0:.0f} s",
            flush=True,
        )
    apps: list[App] = []
    notes: list[str] = []
    schedule = plan(cfg)
    cluster_cm = (
        sa.standalone_cluster(max(cfg.cores), root=root / "cluster")
        if cfg.local_cluster
        else nullcontext()
    )
    with cluster_cm as cluster:
        if cluster is not None:
            cfg.master = cluster.master_url
        for i, (cores, approach, models) in enumerate(schedule):
            t0 = time.monotonic()
            app = run_app(cfg, cores, approach, models, i, paths, refs)
            apps.append(app)
            if app.leaked:
                notes.append(
                    f"{approach} ({cores} cores) left processes behind after the "
                    f"application stopped (killed): {'; '.join(app.leaked)}"
                )
            # Progress without figures: none is printed before every approach is checked.
            print(
                f"bench: [{i + 1}/{len(schedule)}] {approach} {'+'.join(models)} {cores} cores: "
                f"checked ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
        _cross_check(apps)
    fig = Figures(cfg, apps, sizes)
    cfg.out.mkdir(parents=True, exist_ok=True)
    text = markdown(fig, command, time.monotonic() - started, notes)
    (cfg.out / "benchmark.md").write_text(text + _kept_sections(cfg.out / "benchmark.md"))
    plot(fig, cfg.out / "benchmark.png")
    print(text)
    print(f"bench: wrote {cfg.out / 'benchmark.md'} and {cfg.out / 'benchmark.png'}")
    return 0


def _reference(path: Path) -> np.ndarray:
    """The driver-side MLflow prediction for the check rows (ids 0..CHECK_ROWS-1)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(path))
    return np.asarray(model.predict(bm.features_np(np.arange(CHECK_ROWS))), dtype=np.float64)


def _cross_check(apps: list[App]) -> None:
    """Full-run sums must agree between approaches for the same model and row count."""
    sums: dict[tuple[str, int], tuple[str, float]] = {}
    for app in apps:
        for run in app.runs:
            if run.approach == "noop":
                continue
            first = sums.setdefault((run.model, run.rows), (run.approach, run.total))
            if not np.isclose(run.total, first[1], rtol=1e-7):
                raise Mismatch(
                    f"{run.approach} summed {run.rows} predictions of the {run.model} "
                    f"model to {run.total}, {first[0]} to {first[1]}"
                )


if __name__ == "__main__":
    sys.exit(main())
