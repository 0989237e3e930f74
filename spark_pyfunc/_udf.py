"""The Spark UDF: ``spark_udf(spark, model_uri, ...)`` -> a callable building a column.

Everything that can be checked on the driver is checked there, when the UDF is built: the
model directory and its MLmodel, ``params`` against the params schema, the result type and the
scope. The function that runs in Spark's Python workers is small: it binds the batch's columns to
the signature's input names, asks the executor's model host (``scope="executor"``) or a
per-worker model copy (``scope="process"``) for predictions, and fits them to the result type.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, DataType, MapType, StructType

from spark_pyfunc import _config
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._distribution import deliver, materialize
from spark_pyfunc._launcher import HostSpec, host_key
from spark_pyfunc._paths import local_path
from spark_pyfunc._result_types import (
    arrow_type,
    fit_arrow_result,
    fit_prediction,
    parse_result_type,
    relayable,
    result_type_from_signature,
)
from spark_pyfunc._shipping import ShippedModel
from spark_pyfunc._sizing import host_memory_warning
from spark_pyfunc._wire import prediction_to_frame, struct_rows
from spark_pyfunc.errors import HostError, InvalidArgumentError, SparkPyfuncError

if TYPE_CHECKING:
    from spark_pyfunc._env_spec import EnvSpec
    from spark_pyfunc._loading import PyFuncModel

# The signature (schema/) and the model (_loading.py) are read on the driver, and by workers
# with scope="process"; a worker relaying batches to the host never imports them.

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------- worker-side model


@dataclass(frozen=True)
class _Plan:
    """Everything a Python worker needs to score, pickled into the UDF once."""

    shipped: ShippedModel
    scope: str
    method: str
    params: dict | None
    model_config: dict | None
    result_type: DataType
    input_names: tuple[str, ...] | None
    batch_size: int | None
    idle_timeout: float
    start_timeout: float
    host_mode: str | None
    config_key: str = field(default="")
    timezone: str | None = None
    model_uri: str = ""  # as the user passed it, for error messages
    host_log_dir: str | None = None
    # A prefork host's serving processes: spark.pyfunc.host.processes, else the executor's
    # task slots (executor cores read on the driver, the task's CPUs), at most its CPUs.
    host_processes: int | None = None
    executor_cores: int | None = None
    # Request batching in the host (spark.pyfunc.host.batching.*); None: on for GPU hosts only.
    batching: bool | None = None
    batch_max_wait_ms: float = _config.BATCH_MAX_WAIT_MS.default
    batch_max_rows: int = _config.BATCH_MAX_ROWS.default
    batch_calls: int = _config.BATCH_CALLS.default
    # Requests a worker keeps in flight to its host (spark.pyfunc.host.pipelineDepth).
    pipeline_depth: int = _config.PIPELINE_DEPTH.default
    # extra_env: environment variables of the model's process (the worker around load and
    # predict for scope="process", the host's own environment for scope="executor").
    extra_env: dict[str, str] | None = None
    # env_manager="uv"/"virtualenv"/"conda": the model's environment, read on the driver and
    # built once per executor machine for the host; or a prebuilt one, shipped like the model.
    env: EnvSpec | None = None
    prebuilt_env: ShippedModel | None = None
    env_cache_dir: str | None = None
    env_build_timeout: float = _config.ENV_BUILD_TIMEOUT.default
    env_uv_offline_first: bool = _config.ENV_UV_OFFLINE_FIRST.default


_PROCESS_MODELS: dict[tuple[str, str, str], PyFuncModel] = {}


class _InProcess:
    """scope="process": one model per Python worker, kept for the worker's lifetime."""

    def __init__(self, plan: _Plan) -> None:
        self._env = plan.extra_env or {}
        key = (plan.shipped.sha256, plan.config_key, json.dumps(self._env, sort_keys=True))
        model = _PROCESS_MODELS.get(key)
        if model is None:
            from spark_pyfunc._loading import load_model

            with self._environment():
                model = load_model(materialize(plan.shipped), model_config=plan.model_config)
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


def _task_slots(executor_cores: int | None) -> int | None:
    """How many tasks this executor runs at once: its cores over this task's CPUs.

    Runs in the worker, where TaskContext knows the task's CPUs (``spark.task.cpus``, or its
    resource profile's). Without the executor's cores (a standalone executor that takes all of
    its worker's), None: the host then counts the CPUs it may run on.
    """
    if executor_cores is None:
        return None
    from pyspark import TaskContext

    context = TaskContext.get()
    cpus = 1
    if context is not None:
        try:
            cpus = max(int(context.cpus()), 1)
        except Exception:  # pragma: no cover - PySpark without TaskContext.cpus()
            cpus = 1
    return max(executor_cores // cpus, 1)


def _serving_processes(configured: int | None, executor_cores: int | None) -> int | None:
    """A prefork host's serving processes: ``spark.pyfunc.host.processes`` as set, else the
    executor's task slots, but no more than the CPUs this worker may run on (None: the host
    counts them itself). More serving processes than CPUs add no parallelism, and each one
    costs the private pages its requests write (about 13 MiB for a random forest): an
    executor with 4 slots on 2 CPUs gets 2, which serve the other tasks' connections on
    threads."""
    if configured is not None:
        return configured
    slots = _task_slots(executor_cores)
    return None if slots is None else min(slots, _config.usable_cpus())


def _task_gpus() -> tuple[str, ...]:
    """The GPU addresses Spark's resource scheduling gave this task (none: no GPU)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return ()
    try:
        info = context.resources().get("gpu")
    except Exception:  # pragma: no cover - a PySpark without TaskContext.resources()
        return ()
    return tuple(str(a) for a in info.addresses) if info is not None else ()


def host_variant(plan: _Plan, gpus: tuple[str, ...], processes: int | None) -> dict[str, Any]:
    """What makes this task's host differ from another's (HostSpec fields; all in its key).

    With GPU addresses the host is one per (executor, model, addresses): the tasks sharing a
    GPU share one copy on it. It sees only those GPUs (``CUDA_VISIBLE_DEVICES``; a task given
    several gets them all, in Spark's order, and so does its host), serves on threads (a
    CUDA context does not survive a fork) and batches requests unless batching was turned off.
    ``extra_env`` joins the host's environment (the GPU address wins over a
    ``CUDA_VISIBLE_DEVICES`` there).
    """
    variant: dict[str, Any] = {}
    mode, batching = _config.serving_mode(plan.host_mode, plan.batching, gpus=bool(gpus))
    if mode:
        variant["mode"] = mode
    if processes is not None:
        variant["processes"] = processes
    env = dict(plan.extra_env or {})
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if env:
        variant["env"] = env
    if batching:
        variant["batching"] = True
        variant["batch_max_wait_ms"] = plan.batch_max_wait_ms
        variant["batch_max_rows"] = plan.batch_max_rows
        variant["batch_calls"] = plan.batch_calls
    return variant


def _host_client(plan: _Plan) -> ModelHostClient:
    from pyspark import SparkFiles

    started = time.perf_counter()
    model_dir = materialize(plan.shipped)
    logger.debug("model %s unpacked in %.3fs", model_dir, time.perf_counter() - started)
    executor_dir = os.path.abspath(SparkFiles.getRootDirectory())
    kwargs = host_variant(
        plan, _task_gpus(), _serving_processes(plan.host_processes, plan.executor_cores)
    )
    if plan.env is not None or plan.prebuilt_env is not None:
        restored = _restored_environment(plan)
        kwargs["python"] = restored["python"]
        kwargs["env"] = {**kwargs.get("env", {}), **restored["env"]}
    spec = HostSpec(
        model_dir=str(model_dir),
        key=host_key(executor_dir, plan.shipped.sha256, plan.model_config, **kwargs),
        state_dir=executor_dir,
        model_config=plan.model_config,
        idle_timeout=plan.idle_timeout,
        start_timeout=plan.start_timeout,
        watch_pid=os.getppid(),
        model_uri=plan.model_uri or None,
        log_dir=plan.host_log_dir,
        model_sha256=plan.shipped.sha256,
        **kwargs,
    )
    return ModelHostClient(spec)


def _restored_environment(plan: _Plan) -> dict[str, Any]:
    """The host's interpreter and PYTHONPATH in the model's restored environment, built or
    unpacked on this machine first if needed (under a file lock: once per machine)."""
    from spark_pyfunc import _env_prebuilt, _environments

    started = time.perf_counter()
    if plan.prebuilt_env is not None:
        from spark_pyfunc._shipping import fetch_file

        python = _env_prebuilt.restore_prebuilt(
            fetch_file(plan.prebuilt_env),
            plan.prebuilt_env.sha256,
            plan.env_cache_dir,
            plan.env_build_timeout,
        )
    else:
        assert plan.env is not None
        python = _environments.ensure_env(
            plan.env, plan.env_cache_dir, plan.env_build_timeout, plan.env_uv_offline_first
        )
    logger.debug("model environment %s ready in %.3fs", python, time.perf_counter() - started)
    return {"python": python, "env": _environments.host_environment(plan.env_cache_dir)}


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
    plan: _Plan,
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


def _score_batches(plan: _Plan, batches: Iterator[Any]) -> Iterator[pd.Series | pd.DataFrame]:
    scorer: _InProcess | ModelHostClient | None = None

    def split(batch: Any) -> list[pd.DataFrame]:
        frame = _bind(batch, plan.input_names)
        step = plan.batch_size or len(frame) or 1
        return [frame.iloc[start : start + step] for start in range(0, len(frame), step)]

    def score(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.Series | pd.DataFrame]:
        nonlocal scorer
        scorer = _InProcess(plan) if plan.scope == "process" else _host_client(plan)
        return _fitted(scorer, plan, chunks, len, fit_prediction)

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


def _arrow_udf_factory() -> Any:
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


def _model_errors_first(results: Iterator[Any]) -> Iterator[Any]:
    """``results``; an error from the model host is raised without the relay's frames
    (generators and sockets of this worker): ahead of the model's own traceback, which its
    message ends with, they read as the cause."""
    try:
        yield from results
    except SparkPyfuncError as exc:
        if exc.remote_traceback is None and not isinstance(exc, HostError):
            raise
        raise exc.with_traceback(None)  # noqa: B904 - the same error, its cause kept


def _score_arrow_batches(plan: _Plan, batches: Iterator[Any]) -> Iterator[pa.Array]:
    client: ModelHostClient | None = None

    def split(batch: Any) -> list[pa.RecordBatch]:
        record = _bind_arrow(batch, plan.input_names, plan.timezone)
        step = plan.batch_size or record.num_rows or 1
        return [record.slice(start, step) for start in range(0, record.num_rows, step)]

    def score(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.Array]:
        nonlocal client
        client = _host_client(plan)
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


# ------------------------------------------------------------------------ the public API


class SparkPyfuncUDF:
    """What ``spark_udf`` returns: call it with columns to get a prediction column.

    ``udf("a", "b")`` binds the columns positionally to the signature's input names (without
    a signature: "0", "1", ...; columns beyond the inputs are ignored), ``udf()`` takes the
    columns named as in the signature, and ``udf(F.struct(...))`` passes the struct's fields
    as a DataFrame; a struct among other columns is one input, a column of dicts (as MLflow).
    """

    def __init__(self, plan: _Plan, signature_names: tuple[str, ...] | None) -> None:
        self._plan = plan
        self._signature_names = signature_names

    @property
    def result_type(self) -> DataType:
        return self._plan.result_type

    @property
    def scope(self) -> str:
        return self._plan.scope

    @property
    def shipped(self) -> ShippedModel:
        return self._plan.shipped

    def __call__(self, *cols: str | Column) -> Column:
        names = self._signature_names
        if not cols:
            if not names:
                raise InvalidArgumentError(
                    "this model's signature does not name its inputs: pass the columns explicitly"
                )
            cols = tuple(F.col(f"`{n}`") for n in names)
        elif names is not None and len(cols) > len(names):
            cols = cols[: len(names)]  # as MLflow: columns beyond the signature's inputs are unused
        plan = _Plan(**{**self._plan.__dict__, "input_names": names})
        columns = [F.col(c) if isinstance(c, str) else c for c in cols]
        arrow_udf = _arrow_udf_factory()
        if plan.scope == "executor" and arrow_udf is not None and relayable(plan.result_type):

            def relay(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
                return _model_errors_first(_score_arrow_batches(plan, batches))

            return arrow_udf(relay, plan.result_type)(*columns)

        # typing.Union, not "|": pandas_udf reads these hints and does not know types.UnionType.
        def predict(batches: Iterator[Union[pd.Series, pd.DataFrame]]) -> Iterator[pd.DataFrame]:  # noqa: UP007
            return _model_errors_first(_score_batches(plan, batches))

        udf = pandas_udf(predict, plan.result_type)  # type: ignore[call-overload]
        return udf(*columns)


def _conf(spark: Any, key: str, default: str) -> str:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # pragma: no cover - Connect sessions may refuse unknown keys
        value = None
    return default if value is None else str(value)


def _setting(spark: Any, setting: _config.Setting) -> Any:
    """A ``spark.pyfunc.*`` setting of the session, parsed (InvalidArgumentError names it)."""
    return setting.read(_conf(spark, setting.key, "") or None)


def spark_udf(
    spark: Any,
    model_uri: str | os.PathLike,
    result_type: str | DataType | None = None,
    env_manager: str | None = None,
    params: dict | None = None,
    extra_env: dict[str, str] | None = None,
    *,
    model_config: dict | None = None,
    method: str = "predict",
    scope: str = "auto",
    batch_size: int | None = None,
    prebuilt_env_uri: str | os.PathLike | None = None,
) -> SparkPyfuncUDF:
    """Build a Spark UDF that scores an MLflow-format pyfunc model, one copy per executor.

    A drop-in for ``mlflow.pyfunc.spark_udf`` (same first arguments), without MLflow: the
    model directory is shipped to the executors through Spark's own file distribution and,
    with ``scope="executor"``, loaded once per executor in a model host process that the
    executor's Python workers share (``ps aux | grep spark_pyfunc`` shows it).

    Args:
        spark: the SparkSession (classic or Spark Connect).
        model_uri: the model, as for ``mlflow.pyfunc.spark_udf``: a directory on the driver
            (a path, ``PathLike`` or ``file:`` URI), ``runs:/<run id>/<path>``,
            ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
            ``models:/<name>/<stage>``, ``models:/<name>/latest``, or a store URI
            (``s3://``, ``gs://``, ``abfss://``, ``hdfs://``, ``dbfs:/``). A URI is resolved
            here, on the driver (through MLflow when it is installed, with your tracking and
            registry settings; else object stores through fsspec), downloaded once per
            process and version, and shipped: executors need no registry or credentials.
        result_type: the Spark type of the predictions, a ``DataType`` or a DDL string
            (``"double"``, ``"array<float>"``, ``"label string, score double"``); default:
            from the signature's outputs (one output: its type; several: a struct; none:
            ``double``, as MLflow).
        env_manager: ``None`` or ``"local"``: the executors' own Python environment;
            ``"uv"``, ``"virtualenv"`` or ``"conda"``: the model's own environment
            (``python_env.yaml``, ``requirements.txt`` or ``conda.yaml``, by MLflow's rules),
            built once per executor machine into ``spark.pyfunc.env.cacheDir`` and run by the
            model host (so the scope is ``"executor"``; ``"process"`` is refused).
        params: inference parameters, checked on the driver against the params schema.
        extra_env: environment variables for the model's process, as in MLflow: set in
            the Python worker while the model loads and predicts (``scope="process"``), or
            in the model host's environment (``scope="executor"``; hosts differ by them).
        model_config: given to the model as ``context.model_config`` on the executors.
        method: the python model's method to call (``"predict_proba"``, ...). Its default
            result type is ``double`` (MLflow's without a signature): MLflow records the
            outputs of ``predict`` only.
        scope: ``"executor"`` (one host per executor), ``"process"`` (one copy per Python
            worker, like MLflow) or ``"auto"`` (the host for models of at least
            ``spark.pyfunc.scope.autoThresholdBytes``, default 64 MiB, on disk).
        batch_size: at most this many rows per call of the model (default: Spark's Arrow
            batch, ``spark.sql.execution.arrow.maxRecordsPerBatch``).
        prebuilt_env_uri: an environment archive made by ``spark-pyfunc build-env`` (a path
            or ``file:`` URI on the driver), shipped to the executors and unpacked there
            instead of building (no package registry needed); ``env_manager`` must then be
            None, ``"uv"`` or ``"virtualenv"``.

    Returns:
        A :class:`SparkPyfuncUDF`: call it with columns (positional, bound to the signature's
        input names), with none (the columns named in the signature) or with one struct.

    Raises:
        InvalidArgumentError: an argument or a ``spark.pyfunc.*`` setting is invalid; the
            message names it.
        ModelURIError: ``model_uri`` cannot be resolved (unknown run, model, alias, bucket;
            MLflow or the store's extra not installed); the message names it and why.
        EnvironmentSetupError: ``env_manager`` is not local and the model describes no
            environment (the environment itself is built on the executors, where a failed
            build fails the task with this error and the tail of the build log).
        ModelFormatError: the directory is not a pyfunc model.
        MissingDependencyError: the model's loader module (``mlflow.sklearn``, ...) is not
            importable on the driver; the message says what to install, there and on the
            executors.
        SchemaEnforcementError: ``params`` do not match the params schema.
        ShippingError: the model could not be packed or registered with Spark.

    Example:
        >>> from pyspark.sql import functions as F
        >>> predict = spark_udf(spark, "models/scorer", scope="executor")  # doctest: +SKIP
        >>> df.withColumn("prediction", predict("x1", "x2"))  # doctest: +SKIP
        >>> df.withColumn("prediction", predict(F.struct("x1", "x2")))  # doctest: +SKIP
    """
    if scope not in _config.SCOPES:
        raise InvalidArgumentError(f"scope must be one of {_config.SCOPES}, not {scope!r}")
    manager = _env_manager(env_manager, prebuilt_env_uri, scope)
    if manager != "local":
        scope = "executor"  # only the host runs in the model's environment
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise InvalidArgumentError(f"batch_size must be a positive integer, not {batch_size!r}")
    if not isinstance(method, str) or not method.isidentifier():
        raise InvalidArgumentError(f"method must be the name of a model method, not {method!r}")
    _check_extra_env(extra_env)
    from spark_pyfunc import schema as sch
    from spark_pyfunc._format import read_metadata
    from spark_pyfunc._loading import check_loader
    from spark_pyfunc._uris import resolve_model_uri

    clock = time.perf_counter()
    path = resolve_model_uri(model_uri)
    resolved = time.perf_counter()
    metadata = read_metadata(path)
    if manager == "local":  # else the loader module comes with the model's environment
        check_loader(metadata, f"model {os.fspath(model_uri)!r}")
    checked_params = sch.enforce_params(params, metadata.get_params_schema())
    try:
        config_key = json.dumps(model_config, sort_keys=True) if model_config else ""
    except TypeError as exc:
        raise InvalidArgumentError(f"model_config must be JSON-serialisable: {exc}") from exc
    # The signature describes predict: another method's default is MLflow's without outputs.
    dtype = (
        parse_result_type(result_type)
        if result_type is not None
        else result_type_from_signature(
            metadata.get_output_schema() if method == "predict" else None
        )
    )
    host_mode = _setting(spark, _config.HOST_MODE)
    env = prebuilt = None
    if prebuilt_env_uri is not None:
        prebuilt = _ship_prebuilt_env(spark, prebuilt_env_uri)
    elif manager != "local":
        from spark_pyfunc._env_spec import read_environment

        env = read_environment(path, manager)
    checked = time.perf_counter()
    _ship_package_if_needed(spark)
    shipped = deliver(spark, path, _setting)
    logger.debug(
        "spark_udf on the driver: model URI resolved in %.3fs, model and environment read in "
        "%.3fs, package and model shipped in %.3fs",
        resolved - clock,
        checked - resolved,
        time.perf_counter() - checked,
    )
    if scope == "auto":
        threshold = _setting(spark, _config.AUTO_THRESHOLD)
        scope = "executor" if shipped.model_size >= threshold else "process"
    if scope == "executor":
        _warn_if_a_host_cannot_fit(spark, shipped, os.fspath(model_uri))
    inputs = metadata.get_input_schema()
    names = (
        tuple(str(n) for n in inputs.input_names())
        if inputs is not None and inputs.has_input_names()
        else None
    )
    plan = _Plan(
        shipped=shipped,
        scope=scope,
        method=method,
        params=checked_params,
        model_config=model_config,
        result_type=dtype,
        input_names=names,
        batch_size=batch_size,
        idle_timeout=_setting(spark, _config.IDLE_TIMEOUT),
        start_timeout=_setting(spark, _config.START_TIMEOUT),
        host_mode=host_mode,
        config_key=config_key,
        timezone=_conf(spark, "spark.sql.session.timeZone", "") or None,
        model_uri=os.fspath(model_uri),
        host_log_dir=_setting(spark, _config.HOST_LOG_DIR),
        host_processes=_setting(spark, _config.HOST_PROCESSES),
        executor_cores=_executor_cores(spark),
        batching=_setting(spark, _config.BATCHING),
        batch_max_wait_ms=_setting(spark, _config.BATCH_MAX_WAIT_MS),
        batch_max_rows=_setting(spark, _config.BATCH_MAX_ROWS),
        batch_calls=_setting(spark, _config.BATCH_CALLS),
        pipeline_depth=_setting(spark, _config.PIPELINE_DEPTH),
        extra_env=dict(extra_env) if extra_env else None,
        env=env,
        prebuilt_env=prebuilt,
        env_cache_dir=_setting(spark, _config.ENV_CACHE_DIR),
        env_build_timeout=_setting(spark, _config.ENV_BUILD_TIMEOUT),
        env_uv_offline_first=_setting(spark, _config.ENV_UV_OFFLINE_FIRST),
    )
    logger.info(
        "spark_udf: model %s (%d bytes) -> %s, scope=%s, result type %s, env_manager=%s",
        path,
        shipped.model_size,
        shipped.archive_name,
        scope,
        dtype.simpleString(),
        manager,
    )
    return SparkPyfuncUDF(plan, names)


def _check_extra_env(extra_env: Any) -> None:
    """extra_env must be names and values of environment variables: strings, as os.environ
    takes them (refused on the driver, not as a task failure on every executor)."""
    if extra_env is None:
        return
    if not isinstance(extra_env, dict):
        raise InvalidArgumentError(
            f"extra_env must be a dict of environment variables, not {type(extra_env).__name__}"
        )
    bad = sorted(
        repr(k)
        for k, v in extra_env.items()
        if not isinstance(k, str) or not k or "=" in k or not isinstance(v, str)
    )
    if bad:
        raise InvalidArgumentError(
            f"extra_env: {', '.join(bad)}: environment variable names and values must be "
            "strings (names non-empty and without '=')"
        )


#: The memory warnings given (one per model and settings, not one per spark_udf call).
_MEMORY_WARNED: set[tuple] = set()


def _warn_if_a_host_cannot_fit(spark: Any, shipped: ShippedModel, model: str) -> None:
    """Warn, once, when the session's executor memory settings clearly leave no room for one
    host copy of the model (estimated from its size on disk): better said here than as a
    container killed by YARN or Kubernetes in the middle of a job."""
    settings = {
        "pyspark_memory": _conf(spark, "spark.executor.pyspark.memory", "") or None,
        "memory_overhead": _conf(spark, "spark.executor.memoryOverhead", "") or None,
        "executor_cores": _executor_cores(spark),
    }
    key = (shipped.sha256, tuple(settings.items()))
    if key in _MEMORY_WARNED:
        return
    message = host_memory_warning(shipped.model_size, model=model, **settings)
    if message is not None:
        _MEMORY_WARNED.add(key)
        logger.warning("%s", message)
        warnings.warn(message, UserWarning, stacklevel=3)


def _executor_cores(spark: Any) -> int | None:
    """The cores of each executor, if the driver knows them: ``spark.executor.cores``, or
    the master URL of a local or local-cluster run."""
    cores = _conf(spark, "spark.executor.cores", "").strip()
    if cores.isdigit() and int(cores) > 0:
        return int(cores)
    try:
        master = spark.sparkContext.master
    except Exception:  # Spark Connect: no SparkContext on the client
        return None
    local = re.fullmatch(r"local\[(\d+)(?:,\d+)?\]", master)
    if local:
        return int(local.group(1))
    cluster = re.fullmatch(r"local-cluster\[\s*\d+\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    if cluster:
        return int(cluster.group(1))
    return None


def _env_manager(env_manager: str | None, prebuilt_env_uri: Any, scope: str) -> str:
    """The environment manager, checked against the other arguments (MLflow's rules)."""
    if env_manager is not None and env_manager not in _config.ENV_MANAGERS:
        raise InvalidArgumentError(
            f"env_manager must be one of {list(_config.ENV_MANAGERS)} or None, not {env_manager!r}"
        )
    manager = env_manager or "local"
    if prebuilt_env_uri is not None:
        if env_manager not in (None, "uv", "virtualenv"):
            raise InvalidArgumentError(
                f"prebuilt_env_uri={os.fspath(prebuilt_env_uri)!r} is a virtualenv environment: "
                f"env_manager must be None, 'uv' or 'virtualenv' with it, not {env_manager!r}"
            )
        manager = env_manager or "virtualenv"
    if manager != "local" and scope == "process":
        raise InvalidArgumentError(
            f"scope='process' loads the model in Spark's Python workers, which run in the "
            f"cluster's environment; env_manager={manager!r} restores the model's environment "
            "for the executor's model host: use scope='executor' or 'auto'"
        )
    return manager


def _ship_prebuilt_env(spark: Any, uri: str | os.PathLike) -> ShippedModel:
    from spark_pyfunc._shipping import ship_file

    archive = local_path(uri)
    if not archive.is_file():
        raise InvalidArgumentError(
            f"prebuilt_env_uri={os.fspath(uri)!r}: no such file (an archive made by "
            "'spark-pyfunc build-env MODEL OUT.tar.gz')"
        )
    return ship_file(spark, archive, "spark_pyfunc-env-")


def _ship_package_if_needed(spark: Any) -> None:
    """Ship spark_pyfunc as a zip to executors that may not have it (spark.pyfunc.shipPackage).

    ``auto`` ships unless the executors' Python is known to be the driver's: a local master
    with no other Python configured. The driver cannot import-test the executors, and
    shipping costs one small zip per session, so an unknown Python (a cluster, Spark Connect)
    gets it; the zip comes first on the executors' sys.path, so they run the driver's version.
    """
    choice = _setting(spark, _config.SHIP_PACKAGE)
    if choice == "false":
        return
    if choice == "auto" and _executors_share_python(spark):
        return
    from spark_pyfunc._shipping import ship_package

    names = ship_package(spark)
    logger.info("spark_udf: shipped spark_pyfunc to the executors as %s", names)


def _executors_share_python(spark: Any) -> bool:
    configured = (
        _conf(spark, "spark.pyspark.python", "")
        or _conf(spark, "spark.executorEnv.PYSPARK_PYTHON", "")
        or os.environ.get("PYSPARK_PYTHON", "")
    )
    if configured:
        # The same bin directory: the same environment (realpath would equate every venv
        # of one base interpreter, whatever their packages).
        found = shutil.which(configured)
        here = os.path.dirname(os.path.abspath(sys.executable))
        return found is not None and os.path.dirname(os.path.abspath(found)) == here
    try:
        master = spark.sparkContext.master
    except Exception:  # Spark Connect: the server's executors are unknown here
        return False
    return master.startswith(("local[", "local-cluster[")) or master == "local"
