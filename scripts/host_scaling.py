"""How the model host scales with its clients, per mode and model, without Spark.

K client processes (K = 1, 2) each send prebuilt 10,000-row Arrow requests to one host,
started through the real client API (HostSpec/ModelHostClient), and fit every answer to a
``double`` result the way the Arrow UDF's worker does (udf.predict_arrow). Per mode and model
it prints rows/s (median of the rounds), the K=2/K=1 ratio, the CPU seconds per request of
the host (parent and serving children) and of a client (the worker's share of the path), and
the host's cores busy (its CPU seconds per wall second: above 1 only if it runs in parallel).
Then, for prefork, the serving children's private dirty memory (smaps Private_Dirty) after 10
and after 1,000 requests: copy-on-write discipline.

Models (written with spark_pyfunc.save_model, no MLflow):

- ``linear``: y = X @ w over 8 double features: per-request cost is all framework.
- ``table``: a 256 MiB float64 table of 8-wide rows; predict gathers ``table[id]`` with numpy
  indexing and reduces it against the features.

Usage::

    python scripts/host_scaling.py [--modes auto thread fork] [--models linear table]
        [--rounds 5] [--requests 60] [--processes 2] [--memory-requests 1000]
        [--omp-threads 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
from pyspark.sql.types import DoubleType

from spark_pyfunc import save_model
from spark_pyfunc._client import HostSpec, ModelHostClient
from spark_pyfunc._udf import predict_arrow
from spark_pyfunc.python_model import PythonModel

ROWS = 10_000
FEATURES = [f"x{i}" for i in range(8)]
TABLE_ROWS = 256 * 2**20 // (8 * 8)  # 256 MiB of 8 float64 per row


class LinearModel(PythonModel):
    """y = X @ w: the trivial model."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        return model_input[FEATURES].to_numpy(dtype=np.float64) @ self.weights


class TableModel(PythonModel):
    """A 256 MiB lookup table read fully into memory; predict gathers rows by id."""

    def load_context(self, context) -> None:  # noqa: ANN001
        self.table = np.load(context.artifacts["table"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        ids = model_input["id"].to_numpy()
        rows = self.table[ids % len(self.table)]  # numpy fancy indexing: a gather
        return (rows * model_input[FEATURES].to_numpy(dtype=np.float64)).sum(axis=1)


def build_models(root: Path) -> dict[str, Path]:
    """Both models under ``root`` (the classes are pickled by value: this is __main__)."""
    linear = root / "linear"
    save_model(str(linear), python_model=LinearModel(np.linspace(-1.0, 1.0, 8)))
    npy = root / "table.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((TABLE_ROWS, 8)))
    table = root / "table"
    save_model(str(table), python_model=TableModel(), artifacts={"table": str(npy)})
    npy.unlink()
    return {"linear": linear, "table": table}


def request_batch(seed: int) -> pa.RecordBatch:
    """A prebuilt request: an int64 id and 8 double features."""
    rng = np.random.default_rng(seed)
    columns = {"id": rng.integers(0, 2**40, ROWS)}
    columns.update({n: rng.uniform(-0.5, 0.5, ROWS) for n in FEATURES})
    return pa.RecordBatch.from_pandas(pd.DataFrame(columns), preserve_index=False)


# ----------------------------------------------------------------------------- clients


def _client(spec: HostSpec, seed: int, requests: int, rounds: int, start, done, out) -> None:
    """A worker: per round, wait for the start, send ``requests`` batches, report its CPU."""
    batch = request_batch(seed)
    with ModelHostClient(spec) as client:
        predict_arrow(client, batch, "predict", None, DoubleType())  # connected and warm
        for _ in range(rounds):
            start.wait()
            cpu = time.process_time()
            for _ in range(requests):
                result = predict_arrow(client, batch, "predict", None, DoubleType())
            assert len(result) == ROWS
            out.put(time.process_time() - cpu)
            done.wait()


def _host_tree_cpu(host: psutil.Process) -> float:
    """CPU seconds of the host and every child it has or had (reaped ones included)."""
    times = host.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in host.children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(spec: HostSpec, clients: int, requests: int, rounds: int) -> dict[str, Any]:
    """Rows/s and CPU per request for ``clients`` clients of the host of ``spec``."""
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(spec, 7 + i, requests, rounds, start, done, out))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    with ModelHostClient(spec) as probe:  # the host's pid, from its greeting
        probe.predict(request_batch(1).slice(0, 10))
        host = psutil.Process(probe.host_pid)
    rates, host_cpu, client_cpu, busy = [], [], [], []
    for _ in range(rounds):
        start.wait()
        began, cpu = time.perf_counter(), _host_tree_cpu(host)
        per_client = [out.get(timeout=600) for _ in procs]
        took, used = time.perf_counter() - began, _host_tree_cpu(host) - cpu
        done.wait()
        rates.append(clients * requests * ROWS / took)
        host_cpu.append(used / (clients * requests))
        client_cpu.append(statistics.median(per_client) / requests)
        busy.append(used / took)
    for p in procs:
        p.join(60)
    return {
        "rows_s": statistics.median(rates),
        "host_ms": 1e3 * statistics.median(host_cpu),
        "client_ms": 1e3 * statistics.median(client_cpu),
        "host_cores": statistics.median(busy),
        "host": host,
    }


# ------------------------------------------------------------------------------ memory


def private_dirty(pid: int) -> int:
    """Private_Dirty bytes of a process (smaps_rollup): pages it no longer shares."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    return 0


def _sender(spec: HostSpec, seed: int, requests: int, go, done) -> None:
    batch = request_batch(seed)
    with ModelHostClient(spec) as client:
        for step in requests:
            go.wait()
            for _ in range(step):
                predict_arrow(client, batch, "predict", None, DoubleType())
            done.wait()


def cow_memory(spec: HostSpec, clients: int, steps: list[int]) -> list[dict[int, int]]:
    """Children's Private_Dirty after each cumulative step of requests per client."""
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1)
    increments = [b - a for a, b in zip([0, *steps[:-1]], steps, strict=True)]
    procs = [
        ctx.Process(target=_sender, args=(spec, 11 + i, increments, go, done))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    with ModelHostClient(spec) as probe:
        probe.predict(request_batch(1).slice(0, 10))
        host = psutil.Process(probe.host_pid)
    snapshots = []
    for _ in increments:
        go.wait()
        done.wait()
        snapshots.append({c.pid: private_dirty(c.pid) for c in host.children()})
    for p in procs:
        p.join(60)
    return snapshots


# -------------------------------------------------------------------------------- main


def _spec(model_dir: Path, mode: str, processes: int, state: Path) -> HostSpec:
    return HostSpec(
        model_dir=str(model_dir),
        key=uuid.uuid4().hex[:16],
        state_dir=str(state),
        idle_timeout=30.0,
        mode=mode,
        processes=processes,
        watch_pid=os.getpid(),
    )


def _stop(host: psutil.Process) -> None:
    host.terminate()
    psutil.wait_procs([host], timeout=10)


def _log_choice(spec: HostSpec, state: Path) -> str:
    log = state / f"spark_pyfunc-host-{spec.key}.log"
    for line in log.read_text().splitlines():
        if " mode" in line and "serving " in line:
            return line.split("serving ", 1)[1].split(" ", 1)[1]
    return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["auto", "thread", "fork"])
    p.add_argument("--models", nargs="+", default=["linear", "table"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=60, help="per client per round")
    p.add_argument("--processes", type=int, default=2, help="prefork serving processes")
    p.add_argument("--memory-requests", type=int, default=1000, help="0 skips the memory check")
    p.add_argument(
        "--omp-threads",
        default="1",
        help="OMP_NUM_THREADS the hosts inherit: Spark's Python workers export spark.task.cpus "
        "(1 by default), so a host started by a worker has it; '' leaves the environment as is",
    )
    args = p.parse_args(argv)
    if args.omp_threads:
        # What the host sees under Spark; without it each prefork child's OpenBLAS sizes its
        # pool to every CPU (on a quiet 2-core machine that made no clear difference here).
        os.environ["OMP_NUM_THREADS"] = args.omp_threads
    print(
        f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="host_scaling-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        header = f"{'model':7} {'mode':7} {'K=1 rows/s':>11} {'K=2 rows/s':>11} {'K2/K1':>6}"
        print(
            header + f" {'host ms/req':>11} {'client ms/req':>13} {'host cores':>10}  chosen",
            flush=True,
        )
        for name in args.models:
            for mode in args.modes:
                spec = _spec(models[name], mode, args.processes, root / "state")
                one = measure(spec, 1, args.requests, args.rounds)
                two = measure(spec, 2, args.requests, args.rounds)
                print(
                    f"{name:7} {mode:7} {one['rows_s']:11,.0f} {two['rows_s']:11,.0f} "
                    f"{two['rows_s'] / one['rows_s']:6.2f} "
                    f"{one['host_ms']:5.2f}/{two['host_ms']:5.2f} "
                    f"{one['client_ms']:6.2f}/{two['client_ms']:6.2f} "
                    f"{one['host_cores']:4.2f}/{two['host_cores']:4.2f}  "
                    f"{_log_choice(spec, root / 'state')}",
                    flush=True,
                )
                _stop(one["host"])
        if args.memory_requests and "table" in args.models:
            spec = _spec(models["table"], "prefork", args.processes, root / "state")
            steps = [10, args.memory_requests]
            # each of 2 clients sends half: both serving children get requests
            after = cow_memory(spec, 2, [max(s // 2, 1) for s in steps])
            with ModelHostClient(spec) as probe:
                probe.predict(request_batch(1).slice(0, 10))
                host = psutil.Process(probe.host_pid)
            mib = 2**20
            for step, snap in zip(steps, after, strict=True):
                per_child = ", ".join(f"{v / mib:.1f}" for v in snap.values())
                print(
                    f"prefork table: children's Private_Dirty after {step} requests: "
                    f"{sum(snap.values()) / mib:.1f} MiB ({per_child} MiB each); "
                    f"host parent RSS {host.memory_info().rss / mib:.0f} MiB",
                    flush=True,
                )
            _stop(host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
