"""Where one batch's time goes in a Python worker scoring in process (scope="process"),
and on the relayed path of scope="executor" (the worker's relay and the host's request).

Runs the worker-side steps of spark_pyfunc's pandas UDF on 10,000-row batches of the
benchmark's features, outside Spark, so each step can be timed alone; then a cProfile of the
whole path. Spark's own Arrow <-> pandas conversions, which a no-op pandas UDF pays too, are
timed for comparison. Needs the ``bench`` extra (the model is written by MLflow)::

    python scripts/profile_batch.py [--model trivial|table] [--batches 500]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql.types import DoubleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402

from spark_pyfunc import load_model  # noqa: E402
from spark_pyfunc._relay import _bind  # noqa: E402
from spark_pyfunc._result_types import fit_arrow_result, fit_prediction, to_arrow  # noqa: E402
from spark_pyfunc._serving import ModelServer  # noqa: E402
from spark_pyfunc._wire import (  # noqa: E402
    arrow_bytes_to_frame,
    arrow_bytes_to_table,
    batch_to_arrow_bytes,
    frame_to_arrow_bytes,
    prediction_to_frame,
    request_to_frame,
)
from spark_pyfunc.schema import enforce_schema  # noqa: E402

ROWS = 10_000


def per_call_ms(f: Callable[[], object], n: int) -> float:
    """CPU milliseconds per call (process time: on a shared machine, time spent waiting for a
    core is not the step's)."""
    f()
    started = time.process_time()
    for _ in range(n):
        f()
    return (time.process_time() - started) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["trivial", "table"], default="trivial")
    p.add_argument("--batches", type=int, default=500)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / args.model
        bm.build(args.model, path, Path(tmp))
        model = load_model(path)
    batch = pa.RecordBatch.from_pandas(bm.features_np(np.arange(ROWS)), preserve_index=False)
    names = tuple(bm.FEATURES)
    schema = model.metadata.get_input_schema()
    python_model = model.unwrap_python_model()

    series = tuple(batch.column(i).to_pandas() for i in range(batch.num_columns))
    frame = _bind(series, names)
    raw = model.invoke("predict", frame, None)
    pred = prediction_to_frame(raw)
    fitted = fit_prediction(pred, DoubleType(), ROWS)

    def whole_batch() -> object:
        cols = tuple(batch.column(i).to_pandas() for i in range(batch.num_columns))
        bound = _bind(cols, names)
        out = fit_prediction(
            prediction_to_frame(model.invoke("predict", bound, None)), DoubleType(), ROWS
        )
        return pa.Array.from_pandas(out)

    steps: dict[str, Callable[[], object]] = {
        "Spark: Arrow -> pandas (a no-op UDF pays it too)": lambda: tuple(
            batch.column(i).to_pandas() for i in range(batch.num_columns)
        ),
        "bind columns to the signature's names": lambda: _bind(series, names),
        "schema enforcement": lambda: enforce_schema(frame, schema),
        "the model's own predict": lambda: python_model.predict(None, frame),
        "prediction -> rows": lambda: prediction_to_frame(raw),
        "fit to the result type": lambda: fit_prediction(pred, DoubleType(), ROWS),
        "Spark: pandas -> Arrow (a no-op UDF pays it too)": lambda: pa.Array.from_pandas(fitted),
        "whole batch": whole_batch,
    }
    # scope="executor": the worker sends the Arrow batch, the host answers, the worker fits
    request = batch_to_arrow_bytes(batch)
    server = ModelServer(model)
    header = {"method": "predict", "params": None, "rows": ROWS}
    reply = frame_to_arrow_bytes(pred)

    def relay_via_pandas() -> object:  # the relay before it fitted in Arrow
        fitted = fit_prediction(arrow_bytes_to_frame(reply), DoubleType(), ROWS)
        return to_arrow(fitted, DoubleType())

    payload = bytearray(request.to_pybytes())  # what the host's socket read gives it
    received = request_to_frame(payload)
    steps.update(
        {
            "relay: Arrow batch -> request bytes (worker)": lambda: batch_to_arrow_bytes(batch),
            "relay: one request in the host (Arrow->pandas, predict, ->Arrow)": lambda: (
                server.handle(header, payload)
            ),
            "  host: request bytes -> pandas": lambda: request_to_frame(payload),
            "  host: schema enforcement + predict (invoke)": lambda: model.invoke(
                "predict", received, None
            ),
            "  host: prediction -> rows -> Arrow bytes": lambda: frame_to_arrow_bytes(
                prediction_to_frame(raw)
            ),
            "relay: fit the host's result in Arrow (worker)": lambda: fit_arrow_result(
                arrow_bytes_to_table(reply), DoubleType(), ROWS
            ),
            "relay: fit the host's result via pandas (worker, before)": relay_via_pandas,
        }
    )
    print(f"{args.model} model, {ROWS:,}-row batches, CPU ms, mean of {args.batches}:")
    for name, step in steps.items():
        print(f"  {per_call_ms(step, args.batches):7.3f} ms  {name}")
    profile = cProfile.Profile()
    profile.runcall(lambda: [whole_batch() for _ in range(args.batches)])
    pstats.Stats(profile).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
