"""The Spark UDF: ``spark_udf(spark, model_uri, ...)`` -> a callable building a column.

Everything that can be checked on the driver is checked there, when the UDF is built: the
model directory and its MLmodel, ``params`` against the params schema, the result type and the
scope. The function that runs in Spark's Python workers is small: it binds the batch's columns to
the signature's input names, asks the executor's model host (``scope="executor"``) or a
per-worker model copy (``scope="process"``) for predictions, and fits them to the result type.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Union

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import DataType

from spark_pyfunc import _config
from spark_pyfunc._distribution import deliver
from spark_pyfunc._paths import local_path
from spark_pyfunc._placement import ScoringPlan
from spark_pyfunc._relay import (
    arrow_udf_factory,
    model_errors_first,
    score_arrow_batches,
    score_batches,
)
from spark_pyfunc._result_types import (
    parse_result_type,
    relayable,
    result_type_from_signature,
)
from spark_pyfunc._shipping import ShippedModel
from spark_pyfunc._sizing import host_memory_warning
from spark_pyfunc.errors import InvalidArgumentError

if TYPE_CHECKING:
    pass

# The signature (schema/) and the model (_loading.py) are read on the driver, and by workers
# with scope="process"; a worker relaying batches to the host never imports them.

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ the public API


class SparkPyfuncUDF:
    """What ``spark_udf`` returns: call it with columns to get a prediction column.

    ``udf("a", "b")`` binds the columns positionally to the signature's input names (without
    a signature: "0", "1", ...; columns beyond the inputs are ignored), ``udf()`` takes the
    columns named as in the signature, and ``udf(F.struct(...))`` passes the struct's fields
    as a DataFrame; a struct among other columns is one input, a column of dicts (as MLflow).
    """

    def __init__(self, plan: ScoringPlan, signature_names: tuple[str, ...] | None) -> None:
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
        plan = ScoringPlan(**{**self._plan.__dict__, "input_names": names})
        columns = [F.col(c) if isinstance(c, str) else c for c in cols]
        arrow_udf = arrow_udf_factory()
        if plan.scope == "executor" and arrow_udf is not None and relayable(plan.result_type):

            def relay(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
                return model_errors_first(score_arrow_batches(plan, batches))

            return arrow_udf(relay, plan.result_type)(*columns)

        # typing.Union, not "|": pandas_udf reads these hints and does not know types.UnionType.
        def predict(batches: Iterator[Union[pd.Series, pd.DataFrame]]) -> Iterator[pd.DataFrame]:  # noqa: UP007
            return model_errors_first(score_batches(plan, batches))

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
            outputs of ``predict`` only. Checked here when the model lists its methods
            (``save_model`` records them); otherwise a wrong name fails the tasks.
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
        InvalidArgumentError: an argument or a ``spark.pyfunc.*`` setting is invalid, or
            ``method`` is not among the methods the model lists; the message names it.
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
    metadata.check_method(method, f"model {os.fspath(model_uri)!r}")
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
    shipped = deliver(spark, path, _setting, model_uri)
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
    plan = ScoringPlan(
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
