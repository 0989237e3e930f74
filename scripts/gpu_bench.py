"""GPU memory and rows/s for k tasks sharing one GPU: one model copy vs k copies.

On a Spark standalone cluster on 127.0.0.1 whose Worker offers ONE GPU (``--gpu``, found by a
discovery script), a torch MLP (``--hidden`` x ``--layers``, float32, built on the GPU from a
fixed seed) scores ``--rows`` rows three ways:

- ``spark_pyfunc``: k tasks share the GPU (``spark.task.resource.gpu.amount`` = 1/k) and one
  model host on it (one copy, request batching on, as for every GPU host);
- ``per-worker copies``: k tasks share the GPU and every Python worker loads its own copy
  (``mlflow.pyfunc.spark_udf`` when MLflow is installed, else spark_pyfunc's
  ``scope="process"``, which does the same): k copies;
- ``one task per GPU``: ``spark.task.resource.gpu.amount`` = 1, one copy, one busy core.

For each it prints the median rows/s over ``--runs`` warm jobs, the peak GPU memory used by
the application's processes (``nvidia-smi --query-compute-apps``, summed over the processes on
that GPU and sampled every 0.2 s, processes there before left out), how many processes held
memory on the GPU, and the peak rise of the GPU's memory in use (a container may hide the
processes). Every approach's predictions are checked against the first one's.

Without torch, CUDA, nvidia-smi or Java it says what is missing and exits 0.

``--without-spark`` measures the same three approaches on a machine without Java or PySpark
(a GPU box with only torch): k client processes stand for the k tasks' Python workers and send
the same Arrow batches (``--arrow-batch`` rows each) to one spark_pyfunc model host on the GPU
(thread mode, request batching on, as ``spark_udf`` starts a GPU host; also with batching off),
or each load their own copy and predict in-process (what ``mlflow.pyfunc.spark_udf`` does per
Python worker), or one process alone holds the one copy (one task per GPU). What it leaves
out is Spark's own cost per batch (the JVM, Arrow to the worker), the same for every approach.

Usage::

    python scripts/gpu_bench.py [--tasks 4] [--gpu 0] [--rows 200000] [--runs 3]
        [--hidden 4096] [--layers 8] [--features 64] [--arrow-batch 2048] [--device cpu]
        [--without-spark]

``--device cpu`` is a dry run for a machine without a GPU (with torch): the same clusters,
sessions and jobs, a fake GPU address for Spark, the model on the CPU, no memory figures.
"""

from __future__ import annotations

import argparse
import importlib.util
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

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import standalone as sa  # noqa: E402

from spark_pyfunc import save_model  # noqa: E402
from spark_pyfunc._config import BATCH_CALLS, PIPELINE_DEPTH  # noqa: E402
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
    java = shutil.which("java") or os.environ.get("JAVA_HOME")
    if spark and not java:
        return "no Java (Spark needs Java 17 or 21; --without-spark needs none)"
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
    """Samples the GPU's compute processes every ``interval`` s on a thread of its own:
    the peak of their summed memory (processes already there at the start left out), and the
    peak of the GPU's memory in use less what was in use at the start."""

    def __init__(self, uuid: str | None, interval: float = 0.2) -> None:
        self.uuid = uuid  # None: the dry run, nothing to sample
        self.interval = interval
        self.before = set(gpu_processes(uuid)) if uuid else set()
        self.used_before = gpu_used_mib(uuid) if uuid else 0
        self.peak_mib = 0
        self.peak_used_mib = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        if self.uuid:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.uuid:
            self._thread.join()

    def _run(self) -> None:
        assert self.uuid is not None
        while not self._stop.is_set():
            try:
                used = {p: m for p, m in gpu_processes(self.uuid).items() if p not in self.before}
                total = gpu_used_mib(self.uuid) - self.used_before
            except (OSError, subprocess.SubprocessError):
                used, total = {}, 0
            self.pids |= set(used)
            self.peak_mib = max(self.peak_mib, sum(used.values()))
            self.peak_used_mib = max(self.peak_used_mib, total)
            self._stop.wait(self.interval)


# ------------------------------------------------------------------------- the approaches


@dataclass
class Result:
    name: str
    rows_s: float
    peak_mib: int
    peak_used_mib: int
    gpu_processes: int
    sample: np.ndarray


def session(master: str, args: argparse.Namespace, task_gpu: float, root: Path) -> Any:
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName(f"spark_pyfunc gpu_bench task.gpu={task_gpu:g}")
        .config("spark.executor.cores", str(args.tasks))
        .config("spark.cores.max", str(args.tasks))
        .config("spark.executor.memory", "4g")
        .config("spark.driver.memory", "4g")
        .config("spark.executor.resource.gpu.amount", "1")
        .config("spark.task.resource.gpu.amount", f"{task_gpu:.6f}")
        .config("spark.executorEnv.CUDA_VISIBLE_DEVICES", args.gpu)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(root / "driver-local"))
        .config("spark.task.maxFailures", "1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def column(approach: str, spark: Any, model: Path, features: list[str]) -> Any:
    if approach == "spark_pyfunc":
        from spark_pyfunc import spark_udf

        return spark_udf(spark, str(model), result_type="double", scope="executor")(*features)
    if importlib.util.find_spec("mlflow") is not None:
        import mlflow.pyfunc

        udf = mlflow.pyfunc.spark_udf(spark, str(model), result_type="double", env_manager="local")
        return udf(*features)
    from spark_pyfunc import spark_udf

    return spark_udf(spark, str(model), result_type="double", scope="process")(*features)


def run(
    approach: str, master: str, args: argparse.Namespace, model: Path, root: Path, uuid: str | None
) -> Result:
    from pyspark.sql import functions as F

    task_gpu = 1.0 if approach == "one task per GPU" else 1.0 / args.tasks
    before = set(gpu_processes(uuid)) if uuid else set()
    spark = session(master, args, task_gpu, root)
    try:
        features = [f"f{i}" for i in range(args.features)]
        data = spark.range(args.rows, numPartitions=args.tasks * 4).select(
            "id", *[F.rand(seed=i).alias(n) for i, n in enumerate(features)]
        )
        data = data.cache()
        data.count()
        col = column("spark_pyfunc" if approach == "spark_pyfunc" else "copies", spark, model,
                     features)  # fmt: skip
        with GpuSampler(uuid) as sampler:
            data.agg(F.sum(col)).collect()  # cold: loads the copies
            times = []
            for _ in range(args.runs):
                began = time.perf_counter()
                data.agg(F.sum(col)).collect()
                times.append(time.perf_counter() - began)
        check = data.orderBy("id").limit(1000).select(col.alias("p")).toPandas()["p"]
        return Result(
            approach,
            args.rows / statistics.median(times),
            sampler.peak_mib,
            sampler.peak_used_mib,
            len(sampler.pids),
            check.to_numpy(),
        )
    finally:
        spark.stop()
        left = gone(uuid, before) if uuid else []
        if left:
            print(f"gpu_bench: still on the GPU 60 s after the application: pids {left}")


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
    approach: str, args: argparse.Namespace, model: Path, root: Path, uuid: str | None
) -> Result:
    """One approach with k (or 1) worker processes and no Spark: see the module's doc."""
    import multiprocessing

    from spark_pyfunc._launcher import HostSpec

    # spawn: the workers start from a clean interpreter, as CUDA wants (never forked after
    # this process has touched the driver).
    ctx = multiprocessing.get_context("spawn")
    workers = 1 if approach == "one task per GPU" else args.tasks
    batches = max(1, args.rows // (workers * args.arrow_batch))
    go, out = ctx.Barrier(workers + 1), ctx.Queue()
    if approach.startswith("spark_pyfunc"):
        spec = HostSpec(
            model_dir=str(model),
            key=f"gpu-bench-{len(approach)}-{os.getpid()}",
            state_dir=str(root / "host-state"),
            watch_pid=os.getpid(),
            mode="thread",
            env={"CUDA_VISIBLE_DEVICES": args.gpu} if args.device == "cuda" else None,
            batching="batching on" in approach,
            batch_calls=args.batch_calls,
        )
        target, first = _relaying_worker, spec
    else:
        target, first = _copy_worker, str(model)
    before = set(gpu_processes(uuid)) if uuid else set()
    with GpuSampler(uuid) as sampler:
        procs = [
            ctx.Process(target=target, args=(first, args, 7 + i, batches, go, out))
            for i in range(workers)
        ]
        for proc in procs:
            proc.start()
        samples = dict(out.get(timeout=900) for _ in procs)  # seed -> its predictions
        times = []
        for _ in range(args.runs):
            go.wait()
            began = time.perf_counter()
            for _ in procs:
                out.get(timeout=900)
            times.append(time.perf_counter() - began)
        for proc in procs:
            proc.join(120)
    if approach.startswith("spark_pyfunc"):
        stop_host(root / "host-state")
    left = gone(uuid, before) if uuid else []
    if left:
        print(f"gpu_bench: still on the GPU 60 s after {approach}: pids {left}")
    return Result(
        approach,
        workers * batches * args.arrow_batch / statistics.median(times),
        sampler.peak_mib,
        sampler.peak_used_mib,
        len(sampler.pids),
        samples[7],  # the first worker's, the same batch in every approach
    )


def stop_host(state: Path) -> None:
    """SIGTERM the host whose pid file is in ``state`` and wait for it to go."""
    import psutil

    for pid_file in state.glob("*.pid"):
        try:
            host = psutil.Process(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, psutil.NoSuchProcess):
            continue
        host.terminate()
        psutil.wait_procs([host], timeout=30)


def report(r: Result) -> None:
    print(
        f"{r.name:32} {r.rows_s:12,.0f} rows/s  peak GPU memory {r.peak_mib:7,} MiB in "
        f"{r.gpu_processes} process(es) ({r.peak_used_mib:,} MiB more in use on the GPU)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=4, help="k: tasks sharing the GPU")
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
    why = missing(args.device, spark=not args.without_spark)
    if why is not None:
        print(f"gpu_bench: {why}: nothing to measure here.")
        return 0
    uuid = gpu_uuid(args.gpu) if args.device == "cuda" else None
    mib = (args.features * args.hidden + (args.layers - 1) * args.hidden**2) * 4 / 2**20
    print(
        f"GPU {args.gpu} ({uuid or 'a fake one: dry run on the CPU'}); k={args.tasks} tasks; "
        f"MLP {args.layers}x{args.hidden} "
        f"(~{mib:,.0f} MiB of weights); {args.rows:,} rows of {args.features} features",
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
            for approach in approaches:
                results.append(run_without_spark(approach, args, model, root, uuid))
                report(results[-1])
        else:
            with sa.standalone_cluster(args.tasks, memory="16g", root=root / "cluster",
                                       gpus=[args.gpu]) as cluster:  # fmt: skip
                for approach in ("spark_pyfunc", "per-worker copies", "one task per GPU"):
                    results.append(run(approach, cluster.master_url, args, model, root, uuid))
                    report(results[-1])
    reference = results[0].sample
    for r in results[1:]:
        # The host's batches join several workers' rows: other kernel shapes, last bits differ.
        if not np.allclose(r.sample, reference, rtol=1e-3, atol=1e-4):
            print(f"gpu_bench: {r.name} predicted differently from spark_pyfunc", file=sys.stderr)
            return 1
    if args.without_spark:
        copies = "load_model in each worker process"
    else:
        mlflow = importlib.util.find_spec("mlflow") is not None
        copies = "mlflow.pyfunc.spark_udf" if mlflow else "scope=process"
    print(f"(per-worker copies: {copies}; predictions agree)")
    frame = pd.DataFrame([r.__dict__ for r in results]).drop(columns="sample")
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
