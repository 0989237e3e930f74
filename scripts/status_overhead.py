#!/usr/bin/env python
"""What the host's status counters cost per request, measured in one process, no Spark.

The same ModelServer.handle of a saved linear model (10,000 rows of 8 doubles, Arrow in and
out, the request path of every serving process) is timed bare and instrumented
(``_status.HostStatus.instrument``: the wrapper around handle and the model's invoke, the
lock and the histogram), alternating, ``--rounds`` rounds of ``--requests`` requests each, in
CPU time of the thread; prints the median µs per request of each and their difference. On a
shared machine only the medians of interleaved rounds mean anything.

    python scripts/status_overhead.py [--rounds 21] [--requests 200] [--rows 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from udf_models import FEATURES, save_linear  # noqa: E402

from spark_pyfunc import load_model  # noqa: E402
from spark_pyfunc._serving import ModelServer  # noqa: E402
from spark_pyfunc._status import Meter, _instrument  # noqa: E402
from spark_pyfunc._wire import frame_to_arrow_bytes  # noqa: E402


def per_request_us(server: ModelServer, header: dict, payload: bytes, requests: int) -> float:
    """CPU µs of this thread per request (descheduled time, which a shared machine is full
    of, is not counted)."""
    started = time.thread_time()
    for _ in range(requests):
        server.handle(header, payload)
    return (time.thread_time() - started) / requests * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rows", type=int, default=10_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_linear(Path(tmp)))
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(args.rows, 8)), columns=FEATURES)
    payload = bytes(frame_to_arrow_bytes(frame))
    header = {"method": "predict", "params": None, "rows": args.rows}
    bare = ModelServer(model)
    counted = ModelServer(model)
    meter = Meter()
    _instrument(counted, meter)
    for server in (bare, counted):  # warm up
        per_request_us(server, header, payload, 20)
    times: dict[str, list[float]] = {"bare": [], "counted": []}
    for i in range(args.rounds):  # each goes first in every other round
        order = [("bare", bare), ("counted", counted)][:: 1 if i % 2 else -1]
        for name, server in order:
            times[name].append(per_request_us(server, header, payload, args.requests))
    bare_us, counted_us = (statistics.median(times[k]) for k in ("bare", "counted"))
    print(f"{args.rows:,}-row requests, median of {args.rounds} interleaved rounds:")
    print(f"  bare      {bare_us:9.1f} us/request")
    print(f"  counted   {counted_us:9.1f} us/request")
    print(f"  overhead  {counted_us - bare_us:+9.1f} us/request ({counted_us / bare_us - 1:+.2%})")
    assert meter.totals()["rows"] == (args.rounds * args.requests + 20) * args.rows
    # What the instrumentation adds, without a request around it to hide in: a handle that
    # does nothing but call a model that does nothing, bare and counted.
    noop, counted_noop = _Noop(), _Noop()
    _instrument(counted_noop, Meter())
    added: dict[str, list[float]] = {"bare": [], "counted": []}
    for i in range(args.rounds):
        order = [("bare", noop), ("counted", counted_noop)][:: 1 if i % 2 else -1]
        for name, server in order:
            added[name].append(per_request_us(server, header, b"", 20_000))  # type: ignore[arg-type]
    bare_us, counted_us = (statistics.median(added[k]) for k in ("bare", "counted"))
    print(f"  added by the counting itself: {counted_us - bare_us:.2f} us CPU per request")
    return 0


class _Noop:
    """A server whose handle calls a model that returns at once."""

    class _Model:
        def invoke(self, method: str, data: object, params: dict | None = None) -> object:
            return data

    def __init__(self) -> None:
        self.model = self._Model()

    def handle(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        self.model.invoke("predict", payload, None)
        return {"ok": True, "rows": header["rows"]}, b""


if __name__ == "__main__":
    sys.exit(main())
