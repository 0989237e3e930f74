"""How the model host scales with its clients, per mode and model, without Spark.

K client processes (K = 1, 2) each send prebuilt 10,000-row Arrow requests to one host,
started as a worker starts it (scripts/_host_harness.py) and relayed to through the real
client API (ModelHostClient), and fit every answer to a
``double`` result the way the Arrow UDF's worker does (``fit_arrow_result``). Per mode and model
it prints rows/s (median of the rounds), the K=2/K=1 ratio, the CPU seconds per request of
the host (parent and serving children) and of a client (the worker's share of the path), and
the host's cores busy (its CPU seconds per wall second: above 1 only if it runs in parallel).
Then, for prefork, memory: the serving children's private dirty memory (smaps Private_Dirty)
and the PSS of the whole host (parent and children) after 10 and after 1,000 requests, with as
many clients as serving processes (copy-on-write discipline, and what the host costs an
executor of that many cores); ``--smaps`` adds where each process's memory lies (the mappings
with the most PSS or private dirty pages).

Models (written with spark_pyfunc.save_model, no MLflow):

- ``linear``: y = X @ w over 8 double features: per-request cost is all framework.
- ``table``: a 256 MiB float64 table of 8-wide rows; predict gathers ``table[id]`` with numpy
  indexing and reduces it against the features.
- ``sklearn`` (memory only): scripts/bench_models.py's MLflow-written random forest (about
  200 MiB pickled; needs the ``bench`` extra), the model of bench.py's memory goal.

Usage::

    python scripts/host_scaling.py [--modes auto thread fork] [--models linear table]
        [--rounds 5] [--requests 60] [--processes 2] [--memory-requests 1000]
        [--memory-model table|sklearn] [--memory-processes 4] [--smaps] [--model-cache DIR]
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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
from _host_harness import Clients, Host, host_spec
from pyspark.sql.types import DoubleType

from spark_pyfunc import save_model
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._launcher import HostSpec
from spark_pyfunc._result_types import fit_arrow_result
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


def build_model(name: str, cache: Path | None, scratch: Path) -> Path:
    """The model ``name`` under ``cache`` (reused when already there) or ``scratch``.

    linear and table are this script's classes, pickled by value (this is __main__); sklearn
    is bench.py's forest, written by MLflow.
    """
    path = (cache or scratch) / name
    if (path / "MLmodel").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "linear":
        save_model(str(path), python_model=LinearModel(np.linspace(-1.0, 1.0, 8)))
    elif name == "table":
        npy = scratch / "table.npy"
        np.save(npy, np.random.default_rng(0).standard_normal((TABLE_ROWS, 8)))
        save_model(str(path), python_model=TableModel(), artifacts={"table": str(npy)})
        npy.unlink()
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_models

        bench_models.build_sklearn(path, scratch)
    return path


def request_batch(seed: int) -> pa.RecordBatch:
    """A prebuilt request: an int64 id and 8 double features."""
    rng = np.random.default_rng(seed)
    columns = {"id": rng.integers(0, 2**40, ROWS)}
    columns.update({n: rng.uniform(-0.5, 0.5, ROWS) for n in FEATURES})
    return pa.RecordBatch.from_pandas(pd.DataFrame(columns), preserve_index=False)


# ----------------------------------------------------------------------------- clients


def predict_arrow(client: ModelHostClient, batch: pa.RecordBatch) -> pa.Array:
    """One relayed request, its answer fitted to ``double`` in Arrow, as the Arrow UDF does."""
    table = client.predict(batch, "predict", None, arrow=True)
    return fit_arrow_result(table, DoubleType(), batch.num_rows)


def _client(spec: HostSpec, seed: int, requests: int, rounds: int, start, done, out) -> None:
    """A worker: per round, wait for the start, send ``requests`` batches, report its CPU."""
    batch = request_batch(seed)
    with ModelHostClient(spec) as client:
        predict_arrow(client, batch)  # connected and warm
        for _ in range(rounds):
            start.wait()
            cpu = time.process_time()
            for _ in range(requests):
                result = predict_arrow(client, batch)
            assert len(result) == ROWS
            out.put(time.process_time() - cpu)
            done.wait()


def measure(host: Host, clients: int, requests: int, rounds: int) -> dict[str, Any]:
    """Rows/s and CPU per request for ``clients`` clients of ``host``."""
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1)
    out = ctx.Queue()
    spec = host.spec
    rates, host_cpu, client_cpu, busy = [], [], [], []
    with Clients(
        clients, _client, lambda i: (spec, 7 + i, requests, rounds, start, done, out)
    ) as procs:
        for _ in range(rounds):
            start.wait()
            began, cpu = time.perf_counter(), host.cpu_seconds(tree=True)
            per_client = [out.get(timeout=600) for _ in range(clients)]
            took, used = time.perf_counter() - began, host.cpu_seconds(tree=True) - cpu
            done.wait()
            rates.append(clients * requests * ROWS / took)
            host_cpu.append(used / (clients * requests))
            client_cpu.append(statistics.median(per_client) / requests)
            busy.append(used / took)
        procs.join(60)
    return {
        "rows_s": statistics.median(rates),
        "host_ms": 1e3 * statistics.median(host_cpu),
        "client_ms": 1e3 * statistics.median(client_cpu),
        "host_cores": statistics.median(busy),
    }


# ------------------------------------------------------------------------------ memory


def rollup(pid: int) -> dict[str, int]:
    """A process's smaps_rollup totals in bytes (Pss, Private_Dirty, ...)."""
    sizes = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                sizes[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return sizes


def mappings(pid: int, field: str) -> dict[str, int]:
    """``field`` (Pss, Private_Dirty) in bytes per mapping name of a process: a file's
    basename, [heap], [stack] or [anon] (anonymous memory: malloc arenas, Arrow's pool,
    numpy's large arrays, thread stacks)."""
    totals: dict[str, int] = {}
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:  # a mapping's line
                name = os.path.basename(head[5].strip()) if len(head) > 5 else "[anon]"
            elif head[0] == f"{field}:":
                totals[name] = totals.get(name, 0) + int(head[1]) * 1024
    return totals


def _top(sizes: dict[str, int], n: int = 8) -> str:
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {v / 2**20:.1f}" for k, v in largest if v >= 2**19)


def _sender(spec: HostSpec, seed: int, requests: list[int], go, done) -> None:
    batch = request_batch(seed)
    with ModelHostClient(spec) as client:
        for step in requests:
            go.wait()
            for _ in range(step):
                predict_arrow(client, batch)
            done.wait()
        go.wait()  # the connection stays open until the last snapshot is taken


def host_memory(
    served: Host, clients: int, steps: list[int], smaps: bool = False
) -> list[dict[str, Any]]:
    """The host's memory after each cumulative step of requests (in all, over ``clients``
    connected clients), then once more when the clients have closed their connections (the
    host idle between tasks): PSS of the parent and of every serving child, and their
    Private_Dirty; with ``smaps``, where it lies."""
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1)
    per_client = [max(s // clients, 1) for s in steps]
    increments = [b - a for a, b in zip([0, *per_client[:-1]], per_client, strict=True)]
    spec, host = served.spec, psutil.Process(served.pid)
    snapshots = []
    with Clients(clients, _sender, lambda i: (spec, 11 + i, increments, go, done)) as procs:
        for _ in increments:
            go.wait()
            done.wait()
            children = host.children()
            snap: dict[str, Any] = {
                "parent": rollup(host.pid),
                "children": {c.pid: rollup(c.pid) for c in children},
            }
            if smaps:
                snap["parent_pss"] = mappings(host.pid, "Pss")
                snap["child_dirty"] = [mappings(c.pid, "Private_Dirty") for c in children]
            snapshots.append(snap)
        go.wait()  # the clients close their connections
        procs.join(60)
    # Idle: every connection closed, so each child's connection thread has ended.
    deadline = time.monotonic() + 60
    while any(c.num_threads() > 1 for c in host.children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = host.children()
    snapshots.append(
        {"parent": rollup(host.pid), "children": {c.pid: rollup(c.pid) for c in children}}
    )
    return snapshots


def report_memory(name: str, steps: list[int], snapshots: list[dict[str, Any]]) -> None:
    mib = 2**20
    labels = [f"after {step} requests" for step in steps] + ["idle, connections closed"]
    for label, snap in zip(labels, snapshots, strict=True):
        children = snap["children"].values()
        dirty = [c["Private_Dirty"] for c in children]
        tree = snap["parent"]["Pss"] + sum(c["Pss"] for c in children)
        print(
            f"prefork {name}, {len(dirty)} serving processes, {label}: host PSS "
            f"{tree / mib:.1f} MiB (parent {snap['parent']['Pss'] / mib:.1f}, children "
            f"{sum(c['Pss'] for c in children) / mib:.1f}); children's Private_Dirty "
            f"{sum(dirty) / mib:.1f} MiB ({', '.join(f'{d / mib:.1f}' for d in dirty)} each); "
            f"parent Private_Dirty {snap['parent']['Private_Dirty'] / mib:.1f} MiB",
            flush=True,
        )
        if "parent_pss" in snap:
            print(f"  parent PSS by mapping (MiB): {_top(snap['parent_pss'])}")
            for i, child in enumerate(snap["child_dirty"]):
                print(f"  child {i} Private_Dirty by mapping (MiB): {_top(child)}")


# -------------------------------------------------------------------------------- main


def _spec(model_dir: Path, mode: str, processes: int, state: Path) -> HostSpec:
    return host_spec(model_dir, state, idle_timeout=30.0, mode=mode, processes=processes)


def _log_choice(host: Host) -> str:
    """The serving style the host's log says it chose (``auto`` resolves to one)."""
    for line in host.log_text().splitlines():
        if " mode" in line and "serving " in line:
            return line.split("serving ", 1)[1].split(" ", 1)[1]
    return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["auto", "thread", "fork"])
    p.add_argument(
        "--models", nargs="*", default=["linear", "table"], help="none: the memory check only"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=60, help="per client per round")
    p.add_argument("--processes", type=int, default=2, help="prefork serving processes")
    p.add_argument("--memory-requests", type=int, default=1000, help="0 skips the memory check")
    p.add_argument("--memory-model", choices=["table", "sklearn"], default="table")
    p.add_argument(
        "--memory-processes",
        type=int,
        help="serving processes (and clients) of the memory check (default: --processes)",
    )
    p.add_argument("--smaps", action="store_true", help="memory by mapping, per process")
    p.add_argument(
        "--model-cache",
        type=Path,
        help="keep the built models in this directory and reuse them (the forest takes a "
        "minute to train)",
    )
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
        models = {name: build_model(name, args.model_cache, root) for name in args.models}
        header = f"{'model':7} {'mode':7} {'K=1 rows/s':>11} {'K=2 rows/s':>11} {'K2/K1':>6}"
        if args.models:
            print(
                header + f" {'host ms/req':>11} {'client ms/req':>13} {'host cores':>10}  chosen",
                flush=True,
            )
        for name in args.models:
            for mode in args.modes:
                with Host(_spec(models[name], mode, args.processes, root / "state")) as host:
                    one = measure(host, 1, args.requests, args.rounds)
                    two = measure(host, 2, args.requests, args.rounds)
                print(
                    f"{name:7} {mode:7} {one['rows_s']:11,.0f} {two['rows_s']:11,.0f} "
                    f"{two['rows_s'] / one['rows_s']:6.2f} "
                    f"{one['host_ms']:5.2f}/{two['host_ms']:5.2f} "
                    f"{one['client_ms']:6.2f}/{two['client_ms']:6.2f} "
                    f"{one['host_cores']:4.2f}/{two['host_cores']:4.2f}  "
                    f"{_log_choice(host)}",
                    flush=True,
                )
        if args.memory_requests:
            if args.memory_model not in models:
                models[args.memory_model] = build_model(args.memory_model, args.model_cache, root)
            processes = args.memory_processes or args.processes
            spec = _spec(models[args.memory_model], "prefork", processes, root / "state")
            steps = [10, args.memory_requests]
            with Host(spec) as host:
                snapshots = host_memory(host, processes, steps, smaps=args.smaps)
            report_memory(args.memory_model, steps, snapshots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
