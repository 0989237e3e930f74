"""What request batching in the model host buys, without Spark.

A model shaped like a GPU model: every call costs a fixed 5 ms plus a cost per row, and the
device runs one call at a time (a lock around the cost: a second call waits for the first). The
costs are sleeps, as a GPU's would be for the CPU. K=2 client processes each send 64-row Arrow
requests to one host, started as a worker starts it (scripts/_host_harness.py), through the
real client API (ModelHostClient, ``predict_stream`` with up to ``depth`` requests in flight,
as the Spark relay sends them), batching off and on, at depth 1 (one request in flight:
``predict``) and at ``--depth`` (default: spark.pyfunc.host.pipelineDepth's): four thread hosts
(a GPU host always serves on threads), side by side, the rounds alternating between them so
that all see the same (shared) machine.

Per setting it prints rows/s (median of the rounds), the added latency per request, p50 and
p95 (a request's round trip, from the moment the client takes it to the moment its result
comes back, so at depth 2 including its wait behind the request before it, minus the median
round trip of a 64-row request sent alone to an idle host, the same host), the host's CPU
time per request (median of the rounds: less sensitive to the machine's load than rates),
and the batch sizes the model saw (rows: calls). Then batching on/off at each depth.

Usage::

    python scripts/batching_harness.py [--rounds 5] [--requests 100] [--clients 2]
        [--rows 64] [--call-ms 5] [--row-us 2] [--max-wait-ms 5] [--max-batch-rows 32768]
        [--depth 2]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
from _host_harness import Clients, Host, host_spec

from spark_pyfunc import save_model
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._config import BATCH_CALLS, BATCH_MAX_ROWS, PIPELINE_DEPTH
from spark_pyfunc._launcher import HostSpec
from spark_pyfunc.python_model import PythonModel

FEATURES = [f"x{i}" for i in range(8)]


class DeviceModel(PythonModel):
    """y = sum of the features, after a fixed cost per call and a cost per row, one call at
    a time; each call's row count is appended to model_config["calls"]."""

    def load_context(self, context) -> None:  # noqa: ANN001
        config = context.model_config
        self.call_s = float(config["call_ms"]) / 1e3
        self.row_s = float(config["row_us"]) / 1e6
        self.calls = config["calls"]
        self.device = threading.Lock()

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        with self.device:
            time.sleep(self.call_s + self.row_s * len(model_input))
        with open(self.calls, "a") as f:
            f.write(f"{len(model_input)}\n")
        return model_input[FEATURES].to_numpy().sum(axis=1)


def request(rows: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({n: rng.uniform(-1, 1, rows) for n in FEATURES})
    return pa.RecordBatch.from_pandas(frame, preserve_index=False)


def _taken(batch: pa.RecordBatch, requests: int, began: list[float]):
    """``requests`` times ``batch``, noting when the stream takes each (it sends it then)."""
    for _ in range(requests):
        began.append(time.perf_counter())
        yield batch


def _client(
    spec: HostSpec, depth: int, rows: int, seed: int, requests: int, rounds: int, start, out
) -> None:
    """A worker: per round, wait for the start, then stream ``requests`` requests with up
    to ``depth`` in flight and report each one's round trip."""
    batch = request(rows, seed)
    want = batch.to_pandas()[FEATURES].to_numpy().sum(axis=1)
    with ModelHostClient(spec) as client:
        client.predict(batch)  # connected and warm
        for _ in range(rounds):
            start.wait()
            began: list[float] = []
            trips = []
            stream = client.predict_stream(_taken(batch, requests, began), arrow=True, depth=depth)
            for i, result in enumerate(stream):
                trips.append(time.perf_counter() - began[i])
                assert np.allclose(result.column(0).to_numpy(), want), "a wrong answer"
            assert len(trips) == requests, "a missing answer"
            out.put(trips)


class Rounds:
    """``--clients`` client processes of one host, waiting for each round's start."""

    def __init__(self, host: Host, depth: int, args: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("fork")
        self.args = args
        self.host = host
        self.host_cpu: list[float] = []
        self.start = ctx.Barrier(args.clients + 1)
        self.out = ctx.Queue()
        spec = host.spec
        self.clients = Clients(
            args.clients,
            _client,
            lambda i: (
                spec,
                depth,
                args.rows,
                7 + i,
                args.requests,
                args.rounds,
                self.start,
                self.out,
            ),
        )
        self.rates: list[float] = []
        self.trips: list[float] = []

    def round(self) -> float:
        """One round: every client sends its requests; the rows/s of the round."""
        self.start.wait()
        began, cpu = time.perf_counter(), self.host.cpu_seconds()
        per_client = [self.out.get(timeout=600) for _ in range(len(self.clients))]
        took = time.perf_counter() - began
        args = self.args
        self.host_cpu.append((self.host.cpu_seconds() - cpu) / (args.clients * args.requests))
        self.rates.append(args.clients * args.requests * args.rows / took)
        self.trips += [t for client in per_client for t in client]
        return self.rates[-1]


def alone(spec: HostSpec, rows: int, requests: int) -> float:
    """The median round trip of a request sent alone to the idle host of ``spec``."""
    batch = request(rows, 1)
    with ModelHostClient(spec) as client:
        client.predict(batch)
        trips = []
        for _ in range(requests):
            began = time.perf_counter()
            client.predict(batch, arrow=True)
            trips.append(time.perf_counter() - began)
        return statistics.median(trips)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=100, help="per client per round")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--rows", type=int, default=64, help="rows per request")
    p.add_argument("--call-ms", type=float, default=5.0, help="the model's fixed cost per call")
    p.add_argument("--row-us", type=float, default=2.0, help="the model's cost per row")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-batch-rows", type=int, default=BATCH_MAX_ROWS.default)
    p.add_argument(
        "--calls",
        type=int,
        default=BATCH_CALLS.default,
        help="batched model calls at once (spark.pyfunc.host.batching.concurrentCalls)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=PIPELINE_DEPTH.default,
        help="requests each client keeps in flight, measured beside depth 1",
    )
    args = p.parse_args(argv)
    depths = sorted({1, args.depth})
    print(
        f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; model: "
        f"{args.call_ms:g} ms per call + {args.row_us:g} us per row, one call at a time; "
        f"{args.clients} clients x {args.requests} requests of {args.rows} rows x "
        f"{args.rounds} rounds",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="batching_harness-") as tmp:
        root = Path(tmp)
        model_dir = root / "model"
        save_model(str(model_dir), python_model=DeviceModel())

        def spec(batching: bool, calls: Path) -> HostSpec:
            return host_spec(
                model_dir,
                root / "state",
                model_config={"call_ms": args.call_ms, "row_us": args.row_us, "calls": str(calls)},
                mode="thread",
                batching=batching,
                batch_max_wait_ms=args.max_wait_ms,
                batch_max_rows=args.max_batch_rows,
                batch_calls=args.calls,
            )

        print(
            f"{'depth':>5} {'batching':26} {'rows/s':>9} {'alone ms':>8} {'added p50 ms':>12} "
            f"{'added p95 ms':>12} {'host CPU ms/req':>15}  batch sizes the model saw "
            "(rows: calls)"
        )
        # All hosts run side by side and the rounds alternate between them, so that every
        # setting sees the same (shared, noisy) machine.
        with contextlib.ExitStack() as stack:
            settings = {}
            for depth in depths:
                for batching in (False, True):
                    calls = root / f"calls-{depth}-{batching}.txt"
                    host = stack.enter_context(Host(spec(batching, calls)))
                    baseline = alone(host.spec, args.rows, max(args.requests, 50))
                    calls.unlink()
                    rounds = Rounds(host, depth, args)
                    stack.enter_context(rounds.clients)
                    settings[depth, batching] = (calls, baseline, rounds)
            ratios: dict[int, list[float]] = {depth: [] for depth in depths}
            for _ in range(args.rounds):
                for depth in depths:
                    off, on = (settings[depth, b][2].round() for b in (False, True))
                    ratios[depth].append(on / off)
            for rounds in (s[2] for s in settings.values()):
                rounds.clients.join()
        for (depth, batching), (calls, baseline, rounds) in settings.items():
            added = np.array(rounds.trips) - baseline
            sizes = Counter(int(line) for line in calls.read_text().split())
            label = f"on, max wait {args.max_wait_ms:g} ms" if batching else "off"
            top = ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items()))
            print(
                f"{depth:5d} {label:26} {statistics.median(rounds.rates):9,.0f} "
                f"{1e3 * baseline:8.2f} {1e3 * np.percentile(added, 50):12.2f} "
                f"{1e3 * np.percentile(added, 95):12.2f} "
                f"{1e3 * statistics.median(rounds.host_cpu):15.2f}  {top}",
                flush=True,
            )
        for depth in depths:
            print(
                f"depth {depth}: on/off {statistics.median(ratios[depth]):.2f}x (median of the "
                f"rounds' ratios; rounds: {', '.join(f'{r:.2f}' for r in ratios[depth])})"
            )
        top = max(depths)
        best = statistics.median(settings[top, True][2].rates)
        print(
            f"depth {top} batching on / depth 1 batching off: "
            f"{best / statistics.median(settings[1, False][2].rates):.2f}x (medians); "
            f"load average {os.getloadavg()[0]:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
