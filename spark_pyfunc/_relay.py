"""The worker side of the UDF: what runs in Spark's Python workers for each batch.

It binds a batch's columns to the signature's input names, asks the executor's model host
(``scope="executor"``, through :func:`~spark_pyfunc._placement.host_client`) or the worker's own
model copy (``scope="process"``) for predictions, and fits them to the UDF's result type: as
pandas (a pandas UDF, PySpark 3.5 and 4.0) or, on PySpark 4.1+, as Arrow relayed untouched to the
host and back. The driver side (``spark_udf``) is in _udf.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import ArrayType, DataType, MapType, StructType

from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._distribution import materialize
from spark_pyfunc._placement import ScoringPlan, host_client
from spark_pyfunc._result_types import (
    arrow_type,
    fit_arrow_result,
    fit_prediction,
)
from spark_pyfunc._wire import prediction_to_frame, struct_rows
from spark_pyfunc.errors import HostError, SparkPyfuncError

if TYPE_CHECKING:
    from spark_pyfunc._loading import PyFuncModel

# The signature (schema/) and the model (_loading.py) are read on the driver, and by workers
# with scope="process"; a worker relaying batches to the host never imports them.

__all__ = ["arrow_udf_factory", "model_errors_first", "score_arrow_batches", "score_batches"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------- worker-side model


_PROCESS_MODELS: dict[tuple[str, str, str], PyFuncModel] = {}


class _InProcess:
    """scope="process": one model per Python worker, kept for the worker's lifetime."""

    def __init__(self, plan: ScoringPlan) -> None:
        self._env = plan.extra_env or {}
        key = (plan.shipped.sha256, plan.config_key, json.dumps(self._env, sort_keys=True))
        model = _PROCESS_MODELS.get(key)
        if model is None:
            from spark_pyfunc._loading import load_for_scoring

            with self._environment():
                model = load_for_scoring(
                    materialize(plan.shipped), plan.model_config, plan.model_uri
                )
            _PROCESS_MODELS[key] = model
        self._model = model

    def _environment(self) -> Any:
        """extra_env set in this worker while the model runs, as MLflow sets it around its
        UDF's load and predict; the worker's own environment comes back afterwards."""
        if not self._env:
            return contextlib.nullcontext()
        from unittest import mock  # only here: it imports asyncio, which workers rarely need

        return mock.patch.dict(os.environ, self._env)

    def predict(
        self,
        frame: pd.DataFrame,
        method: str,
        params: dict | None,
        *,
        result_type: pa.DataType | None = None,
    ) -> pd.DataFrame:
        """The model's output as rows (``result_type`` is for the host's Arrow; unused)."""
        with self._environment():
            return prediction_to_frame(self._model.invoke(method, frame, params))

    def predict_stream(
        self,
        frames: Iterable[pd.DataFrame],
        method: str,
        params: dict | None,
        *,
        result_type: pa.DataType | None = None,
        depth: int = 1,
    ) -> Iterator[pd.DataFrame]:
        """:meth:`predict` for each frame, in order (in process, nothing to pipeline)."""
        for frame in frames:
            yield self.predict(frame, method, params, result_type=result_type)

    def close(self) -> None:
        pass


def _bind(batch: Any, names: tuple[str, ...] | None) -> pd.DataFrame:
    """Turn the UDF's arguments (Series, struct DataFrames) into the model's input frame.

    As mlflow.pyfunc.spark_udf: a lone struct's fields are the inputs; otherwise each
    argument is one input, named by the signature (or "0", "1", ... without one), and a
    struct among them is one column of dicts.
    """
    parts = batch if isinstance(batch, tuple) else (batch,)
    if len(parts) == 1 and isinstance(parts[0], pd.DataFrame):
        return parts[0]  # a struct: its fields are the inputs, by name
    columns: dict[str, pd.Series] = {}
    for i, part in enumerate(parts):
        name = names[i] if names is not None and i < len(names) else str(i)
        columns[name] = struct_rows(part) if isinstance(part, pd.DataFrame) else part
    return _frame_of(columns)


def _frame_of(columns: dict[str, pd.Series]) -> pd.DataFrame:
    """One batch's columns as a DataFrame, built for speed: they share one index, so nothing
    is aligned; columns of one numeric dtype (the usual features) become one 2-D block, so
    the model's ``to_numpy()``/``np.asarray(df)`` is free instead of copying every batch."""
    series = list(columns.values())
    if not series:
        return pd.DataFrame()
    index = series[0].index
    dtypes = {s.dtype for s in series}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            block = np.column_stack([s.to_numpy() for s in series])
            return pd.DataFrame(block, index=index, columns=list(columns), copy=False)
    return pd.DataFrame(
        {k: s.to_numpy() if isinstance(s.dtype, np.dtype) else s.array for k, s in columns.items()},
        index=index,
        copy=False,
    )


def _nested_hint(dtype: DataType) -> pa.DataType | None:
    """The result type's Arrow type for the host, where it has nested outputs (arrays, maps,
    structs in a struct) whose Arrow type the host could not infer from Python values;
    None for flat types, whose requests then carry nothing more."""
    nested = (ArrayType, MapType, StructType)
    fields = dtype.fields if isinstance(dtype, StructType) else []
    if isinstance(dtype, (ArrayType, MapType)) or any(
        isinstance(f.dataType, nested) for f in fields
    ):
        return arrow_type(dtype)
    return None


_END = object()


def _per_batch(
    batches: Iterator[Any],
    split: Callable[[Any], list[Any]],
    score: Callable[[Iterator[Any]], Iterator[Any]],
    empty: Callable[[], Any],
    join: Callable[[list[Any]], Any],
) -> Iterator[Any]:
    """One result per Spark batch, in order, from ONE stream of requests over all of them.

    ``split`` turns a batch into its requests (``batch_size`` chunks; none for an empty
    batch), ``score`` turns the stream of requests into their results, in order, and is
    called only once there is a request (empty partitions never start or contact a model).
    One stream across batches is what lets a pipelining client read the next batch from
    Spark and send it to the host before the previous batch's result is handed back.
    """
    shapes: deque[int] = deque()  # requests per batch, in order; filled as they are read

    def requests() -> Iterator[Any]:
        for batch in batches:
            parts = split(batch)
            shapes.append(len(parts))
            yield from parts

    source = requests()
    first = next(source, _END)
    if first is not _END:
        parts: list[Any] = []
        with contextlib.closing(score(itertools.chain([first], source))) as results:
            for result in results:
                while shapes[0] == 0:
                    shapes.popleft()
                    yield empty()
                parts.append(result)
                if len(parts) == shapes[0]:
                    shapes.popleft()
                    yield parts[0] if len(parts) == 1 else join(parts)
                    parts = []
    for _ in shapes:  # empty batches after the last request
        yield empty()


def _fitted(
    scorer: _InProcess | ModelHostClient,
    plan: ScoringPlan,
    chunks: Iterator[Any],
    rows_of: Callable[[Any], int],
    fit: Callable[[Any, Any, int], Any],
    **stream: Any,
) -> Iterator[Any]:
    """``scorer``'s results for ``chunks``, pipelined, each fitted to the UDF's result type
    with the row count of the chunk it answers (read off each chunk as it is sent)."""
    rows: deque[int] = deque()

    def sent() -> Iterator[Any]:
        for chunk in chunks:
            rows.append(rows_of(chunk))
            yield chunk

    results = scorer.predict_stream(
        sent(),
        plan.method,
        plan.params,
        result_type=_nested_hint(plan.result_type),
        depth=plan.pipeline_depth,
        **stream,
    )
    with contextlib.closing(results):
        for result in results:
            yield fit(result, plan.result_type, rows.popleft())


def _numeric_record(batch: Any, names: tuple[str, ...] | None) -> pa.RecordBatch | None:
    """The UDF's arguments as the Arrow record the host would get from :func:`_bind`'s frame,
    built straight from the Series' arrays, when every argument is a plain numeric Series
    (the usual features); None otherwise.

    Relaying to the host, the worker needs no DataFrame: building one copies the columns into
    a 2-D block, and serialising it copies them out again, column by column (strided). A
    numeric numpy array becomes an Arrow array without a copy.
    """
    parts = batch if isinstance(batch, tuple) else (batch,)
    arrays, labels = [], []
    for i, part in enumerate(parts):
        if not isinstance(part, pd.Series):
            return None
        dtype = part.dtype
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
            return None
        arrays.append(pa.array(part.to_numpy()))
        labels.append(names[i] if names is not None and i < len(names) else str(i))
    if len(set(labels)) != len(labels):
        return None  # the frame keeps the last of a repeated name; let _bind decide
    return pa.RecordBatch.from_arrays(arrays, names=labels)


def score_batches(plan: ScoringPlan, batches: Iterator[Any]) -> Iterator[pd.Series | pd.DataFrame]:
    scorer: _InProcess | ModelHostClient | None = None
    relayed = plan.scope != "process"

    def split(batch: Any) -> list[pd.DataFrame] | list[pa.RecordBatch]:
        record = _numeric_record(batch, plan.input_names) if relayed else None
        if record is not None:
            step = plan.batch_size or record.num_rows or 1
            return [record.slice(start, step) for start in range(0, record.num_rows, step)]
        frame = _bind(batch, plan.input_names)
        step = plan.batch_size or len(frame) or 1
        return [frame.iloc[start : start + step] for start in range(0, len(frame), step)]

    def rows_of(chunk: pd.DataFrame | pa.RecordBatch) -> int:
        return chunk.num_rows if isinstance(chunk, pa.RecordBatch) else len(chunk)

    def score(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.Series | pd.DataFrame]:
        nonlocal scorer
        scorer = _InProcess(plan) if plan.scope == "process" else host_client(plan)
        return _fitted(scorer, plan, chunks, rows_of, fit_prediction)

    try:
        yield from _per_batch(
            batches,
            split,
            score,
            lambda: fit_prediction(pd.DataFrame({"0": []}), plan.result_type, 0),
            lambda parts: pd.concat(parts, ignore_index=True),
        )
    finally:
        if scorer is not None:
            scorer.close()


# ------------------------------------------------- Arrow in, Arrow out (scope="executor")
#
# With the model in the host, the worker only relays batches. Spark >= 4.1 can hand it Arrow
# arrays directly (an Arrow UDF), which skips the two pandas conversions of the batch that a
# pandas UDF makes in the worker (Arrow -> pandas on the way in, and pandas -> Arrow again to
# reach the host). The host still gives the model pandas, converted the way Spark converts.


def arrow_udf_factory() -> Any:
    """pyspark's ``arrow_udf`` (PySpark 4.1+), or None on older versions."""
    try:
        from pyspark.sql.functions import arrow_udf
    except ImportError:
        return None
    return arrow_udf


def _local_time(values: pa.Array, timezone: str | None) -> pa.Array:
    """Timestamps as a PySpark 4 pandas UDF sees them: wall-clock time in the session time
    zone, in nanoseconds (the host converts Arrow to pandas keeping the unit it gets)."""
    if not pa.types.is_timestamp(values.type):
        return values
    if values.type.tz is not None:
        zoned = values.cast(pa.timestamp(values.type.unit, tz=timezone or values.type.tz))
        values = pc.local_timestamp(zoned)
    return values.cast(pa.timestamp("ns"))


def _bind_arrow(batch: Any, names: tuple[str, ...] | None, timezone: str | None) -> pa.RecordBatch:
    """The Arrow twin of :func:`_bind`: arrays and structs -> one record batch of inputs."""
    parts = batch if isinstance(batch, tuple) else (batch,)
    columns: dict[str, pa.Array] = {}
    if len(parts) == 1 and pa.types.is_struct(parts[0].type):  # its fields are inputs, by name
        # flatten() folds the struct's own nulls into its fields, as pandas would see them
        for f, values in zip(parts[0].type, parts[0].flatten(), strict=True):
            columns[f.name] = values
    else:  # a struct among other columns stays one column: the host makes it dicts
        for i, part in enumerate(parts):
            name = names[i] if names is not None and i < len(names) else str(i)
            columns[name] = part
    return pa.RecordBatch.from_arrays(
        [_local_time(v, timezone) for v in columns.values()], names=list(columns)
    )


def model_errors_first(results: Iterator[Any]) -> Iterator[Any]:
    """``results``; an error from the model host is raised without the relay's frames
    (generators and sockets of this worker): ahead of the model's own traceback, which its
    message ends with, they read as the cause."""
    try:
        yield from results
    except SparkPyfuncError as exc:
        if exc.remote_traceback is None and not isinstance(exc, HostError):
            raise
        raise exc.with_traceback(None)  # noqa: B904 - the same error, its cause kept


def score_arrow_batches(plan: ScoringPlan, batches: Iterator[Any]) -> Iterator[pa.Array]:
    client: ModelHostClient | None = None

    def split(batch: Any) -> list[pa.RecordBatch]:
        record = _bind_arrow(batch, plan.input_names, plan.timezone)
        step = plan.batch_size or record.num_rows or 1
        return [record.slice(start, step) for start in range(0, record.num_rows, step)]

    def score(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.Array]:
        nonlocal client
        client = host_client(plan)
        return _fitted(client, plan, chunks, lambda c: c.num_rows, fit_arrow_result, arrow=True)

    try:
        yield from _per_batch(
            batches,
            split,
            score,
            lambda: pa.array([], type=arrow_type(plan.result_type)),
            pa.concat_arrays,
        )
    finally:
        if client is not None:
            client.close()
