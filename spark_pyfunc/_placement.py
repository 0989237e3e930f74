"""Where a task's model host runs and with what: the scoring plan a UDF carries, the task's GPU
addresses, the serving processes, the model's environment, and the host that follows from them.

A worker with ``scope="executor"`` turns the driver's :class:`ScoringPlan` and what only it
knows (its task's GPUs, its executor's directory) into a :class:`~spark_pyfunc._launcher.HostSpec`
and a client for that host (:func:`host_client`). Everything that makes two tasks' hosts differ
is in the host's key (:func:`host_variant`), so UDFs asking for different hosts never share one.
pyspark is imported inside the functions that run in a worker.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spark_pyfunc import _config
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._distribution import materialize
from spark_pyfunc._launcher import HostSpec, host_key
from spark_pyfunc._shipping import ShippedModel

if TYPE_CHECKING:
    from pyspark.sql.types import DataType

    from spark_pyfunc._env_spec import EnvSpec

__all__ = [
    "ScoringPlan",
    "host_client",
    "host_variant",
    "restored_environment",
    "serving_processes",
    "task_gpus",
    "task_slots",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringPlan:
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


def task_slots(executor_cores: int | None) -> int | None:
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


def serving_processes(configured: int | None, executor_cores: int | None) -> int | None:
    """A prefork host's serving processes: ``spark.pyfunc.host.processes`` as set, else the
    executor's task slots, but no more than the CPUs this worker may run on (None: the host
    counts them itself). More serving processes than CPUs add no parallelism, and each one
    costs the private pages its requests write (about 13 MiB for a random forest): an
    executor with 4 slots on 2 CPUs gets 2, which serve the other tasks' connections on
    threads."""
    if configured is not None:
        return configured
    slots = task_slots(executor_cores)
    return None if slots is None else min(slots, _config.usable_cpus())


def task_gpus() -> tuple[str, ...]:
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


def host_variant(plan: ScoringPlan, gpus: tuple[str, ...], processes: int | None) -> dict[str, Any]:
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


def host_client(plan: ScoringPlan) -> ModelHostClient:
    from pyspark import SparkFiles

    started = time.perf_counter()
    model_dir = materialize(plan.shipped)
    logger.debug("model %s unpacked in %.3fs", model_dir, time.perf_counter() - started)
    executor_dir = os.path.abspath(SparkFiles.getRootDirectory())
    kwargs = host_variant(
        plan, task_gpus(), serving_processes(plan.host_processes, plan.executor_cores)
    )
    if plan.env is not None or plan.prebuilt_env is not None:
        restored = restored_environment(plan)
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


def restored_environment(plan: ScoringPlan) -> dict[str, Any]:
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
