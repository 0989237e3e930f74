"""Structured Streaming: one warm model host across micro-batches, however far apart.

PySpark kills a Python worker that has been idle for a minute, and with it every per-worker
model cache (MLflow's, Spark's ``ModelCache``, ``scope="process"``): a stream whose
micro-batches come more than a minute apart reloads the model for each. The model host is not
a worker: it lives until its own idle timeout (``spark.pyfunc.host.idleTimeout``, default 600
s) or its executor's end, so with ``scope="executor"`` the second micro-batch finds it warm.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import LOCAL_MASTER, get_session
from support.wait import until
from udf_models import Probe, records, save

from spark_pyfunc import spark_udf
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, Schema

#: Further apart than PySpark's idle-worker kill (60 s, checked every few seconds).
GAP = 75.0
PATIENCE = 180.0


def _drop(directory: Path, name: str, start: int) -> None:
    """Write a parquet file beside the stream's input, then rename it in: the file source
    never sees half a file."""
    frame = pd.DataFrame({"a": np.arange(start, start + 500, dtype=np.float64), "b": "x"})
    staging = directory.parent / f".{name}"
    frame.to_parquet(staging, index=False)
    staging.rename(directory / name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_load_over_micro_batches_further_apart_than_the_idle_worker_kill(
    tmp_path: Path, spark_tmp: str
) -> None:
    # The hosts' own idle timeout must outlast the gap (the test session's is short).
    spark = get_session(LOCAL_MASTER, spark_tmp, {"spark.pyfunc.host.idleTimeout": "600"})
    sig = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "a"), ColSpec(DataType.string, "b")]),
        outputs=Schema([ColSpec(DataType.long, "pid"), ColSpec(DataType.long, "rows")]),
    )
    model = save(Probe(), tmp_path / "model", signature=sig)
    hosted, per_worker = tmp_path / "hosted.txt", tmp_path / "per-worker.txt"
    in_stream = spark_udf(spark, model, model_config={"counter": str(hosted)}, scope="executor")
    in_sink = spark_udf(spark, model, model_config={"counter": str(hosted)}, scope="executor")
    process = spark_udf(spark, model, model_config={"counter": str(per_worker)}, scope="process")

    source = tmp_path / "in"
    source.mkdir()
    seen: list[dict] = []

    def sink(batch, batch_id: int) -> None:
        """foreachBatch: the stream's own predictions, and the same model scored again
        here, with both scopes."""
        stream_pids = {r.pid for r in batch.select("p.pid").distinct().collect()}
        sink_pids = {r.pid for r in batch.select(in_sink("a", "b").alias("q")).select("q.pid")
                     .distinct().collect()}  # fmt: skip
        workers = {r.pid for r in batch.select(process("a", "b").alias("w")).select("w.pid")
                   .distinct().collect()}  # fmt: skip
        seen.append({"hosts": stream_pids | sink_pids, "workers": workers, "rows": batch.count()})

    stream = spark.readStream.schema("a double, b string").parquet(str(source))
    query = (
        stream.select("a", "b", in_stream("a", "b").alias("p"))
        .writeStream.foreachBatch(sink)
        .trigger(processingTime="2 seconds")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .start()
    )
    try:
        _drop(source, "part-1.parquet", 0)
        until(lambda: len(seen) == 1, "the first micro-batch", PATIENCE, 0.5)
        time.sleep(GAP)  # the scenario itself: no micro-batch for longer than the idle kill
        _drop(source, "part-2.parquet", 1000)
        until(lambda: len(seen) == 2, "the second micro-batch", PATIENCE, 0.5)
    finally:
        query.stop()
    first, second = seen
    assert first["rows"] == second["rows"] == 500
    # PySpark did kill the idle workers in between: scope="process" loaded the model again,
    # in new workers.
    assert not first["workers"] & second["workers"], seen
    worker_loads = [pid for _, pid, _ in records(per_worker, "load")]
    assert set(worker_loads) == first["workers"] | second["workers"]
    # One host served both micro-batches, in the stream and in foreachBatch: one load.
    assert first["hosts"] == second["hosts"] and len(first["hosts"]) == 1, seen
    loads = records(hosted, "load")
    assert [pid for _, pid, _ in loads] == list(first["hosts"])
    assert loads[0][2] == "spark_pyfunc._host"
