"""Batch scoring of files with a model: the library behind ``spark-pyfunc score``.

``prepare_score`` checks everything that can go wrong without Spark (the model directory, the
input, the output, the options) so a typo costs milliseconds; ``score`` runs the job in a
given session through ``spark_udf`` and writes OUTPUT atomically (a hidden sibling renamed
into place). ``scripts/score_job.py`` runs the same code under ``spark-submit``.

Argument errors are :class:`~spark_pyfunc.errors.InvalidArgumentError` naming the keyword
(``mode``, ``columns``, ``params``...) and the paths ``model``, ``input``, ``output``; the
CLI rewords them with its flags. pyspark is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_pyfunc._commit import staged_output
from spark_pyfunc._config import HOST_LOG_DIR, PROG, SCOPES
from spark_pyfunc._format import read_metadata
from spark_pyfunc._input import (
    CORRUPT_RECORD,
    FORMATS,
    bad_argument,
    check_input,
    peek_columns,
    resolve_format,
)
from spark_pyfunc._loading import check_loader
from spark_pyfunc._paths import is_remote, local_path
from spark_pyfunc._progress import Progress
from spark_pyfunc._uris import resolve_model_uri
from spark_pyfunc.errors import (
    InvalidArgumentError,
    SchemaEnforcementError,
    SparkPyfuncError,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_pyfunc._format import ModelMetadata

__all__ = [
    "BAD_RECORDS",
    "CORRUPT_RECORD",
    "FORMATS",
    "MODES",
    "ScoreJob",
    "ScoreSummary",
    "prepare_score",
    "score",
    "staged_output",
]

MODES = ("error", "overwrite", "append")
BAD_RECORDS = ("fail", "skip", "keep")
logger = logging.getLogger(__name__)


def _local_output(path: str) -> Path:
    """OUTPUT as a local path: the atomic commit renames directories, which needs a local
    filesystem (Hadoop's object stores have no atomic directory rename)."""
    if is_remote(path):
        raise InvalidArgumentError(
            f"OUTPUT {path!r} is not a local path or file: URI; spark-pyfunc score writes "
            "OUTPUT to a temporary sibling and renames it into place, which needs a local "
            "filesystem: write locally and copy it, or use spark_udf in your own Spark job"
        )
    return local_path(path).resolve()


def _check_params(params: dict[str, Any], metadata: ModelMetadata) -> dict[str, Any] | None:
    """Refuse unknown names (spark_udf would only warn) and values the params schema refuses."""
    if not params:
        return None
    from spark_pyfunc.schema import enforce_params

    schema = metadata.get_params_schema()
    if schema is None:
        raise bad_argument(
            "params",
            f"the model takes no params (its signature has no params schema), but params= "
            f"{', '.join(params)} was given",
        )
    known = [p.name for p in schema.params]
    unknown = [n for n in params if n not in known]
    if unknown:
        raise bad_argument(
            "params",
            f"the model has no param {', '.join(map(repr, unknown))}; "
            f"its params are: {', '.join(known)}",
        )
    try:
        return enforce_params(params, schema)
    except SchemaEnforcementError as exc:
        raise bad_argument("params", f"params=: {exc}") from exc


def _input_names(metadata: ModelMetadata) -> tuple[list[str], set[str]] | None:
    """The signature's input names and the required ones, or None when inputs are unnamed."""
    inputs = metadata.get_input_schema()
    if inputs is None or not inputs.has_input_names():
        return None
    return [str(n) for n in inputs.input_names()], {str(n) for n in inputs.required_input_names()}


@dataclass(frozen=True)
class ScoreJob:
    """A score request checked on the driver before Spark starts."""

    model: Path
    metadata: ModelMetadata
    input: str
    output: str
    input_format: str
    output_format: str
    columns: tuple[str, ...] | None
    output_column: str
    result_type: str | None
    mode: str
    params: dict[str, Any] | None
    scope: str
    bad_records: str = "fail"
    progress: bool = False
    host_log_dir: str | None = None
    method: str = "predict"
    model_config: dict[str, Any] | None = None
    batch_size: int | None = None


def prepare_score(
    model: str | os.PathLike,
    input: str,
    output: str,
    *,
    columns: Sequence[str] | None = None,
    result_type: str | None = None,
    output_column: str = "prediction",
    input_format: str | None = None,
    output_format: str | None = None,
    mode: str = "error",
    params: dict[str, Any] | None = None,
    scope: str = "auto",
    bad_records: str = "fail",
    progress: bool = False,
    host_log_dir: str | None = None,
    method: str = "predict",
    model_config: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> ScoreJob:
    """Check everything that does not need Spark: model, input, output, formats, options,
    and INPUT's columns where they can be read without Spark (parquet, plain csv and json)."""
    if not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
        raise bad_argument("method", f"method= must name a method of the model: {method!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0
    ):
        raise bad_argument("batch_size", f"batch_size= must be a positive integer: {batch_size!r}")
    if model_config is not None and not isinstance(model_config, dict):
        raise bad_argument("model_config", "model_config= must be a JSON object (a dict)")
    for value, allowed, what in (
        (mode, MODES, "mode"),
        (scope, SCOPES, "scope"),
        (bad_records, BAD_RECORDS, "bad_records"),
        (input_format, (*FORMATS, None), "input_format"),
        (output_format, (*FORMATS, None), "output_format"),
    ):
        if value not in allowed:
            raise bad_argument(
                what, f"{what}= must be one of {', '.join(filter(None, allowed))}: {value!r}"
            )
    if not output_column:
        raise bad_argument("output_column", "output_column= must not be empty")
    model_text = os.fspath(model)
    model_path = resolve_model_uri(model_text)
    metadata = read_metadata(model_path)
    check_loader(metadata, f"MODEL {model_text!r}")
    metadata.check_method(method, f"MODEL {model_text!r}")
    local_in = check_input(input)
    local_out = _local_output(output)
    in_format = resolve_format(input, input_format, local_in, "INPUT")
    out_format = resolve_format(output, output_format, local_out, "OUTPUT")
    if local_in is not None and local_in.resolve() == local_out:
        raise bad_argument(
            "output", f"INPUT and OUTPUT are the same path {input!r}; write somewhere else"
        )
    if mode == "error" and (local_out.exists() or local_out.is_symlink()):
        raise InvalidArgumentError(
            f"OUTPUT {output!r} already exists; pass mode='overwrite' to replace it "
            "or mode='append' to add to it"
        )
    if mode == "append" and local_out.exists() and not local_out.is_dir():
        raise InvalidArgumentError(
            f"OUTPUT {output!r} is a file; mode='append' adds to a directory"
        )
    if columns is not None:
        columns = tuple(columns)
        named = _input_names(metadata)
        if named is not None:
            names, required = named
            if len(columns) > len(names):
                raise bad_argument(
                    "columns",
                    f"columns= gives {len(columns)} columns but the model takes "
                    f"{len(names)} inputs: {', '.join(names)}",
                )
            unbound = [n for n in names[len(columns) :] if n in required]
            if unbound:
                raise bad_argument(
                    "columns",
                    f"columns= binds {len(columns)} columns to the inputs "
                    f"{', '.join(names[: len(columns)])} in order; the required inputs "
                    f"{', '.join(unbound)} are left without a column",
                )
    job = ScoreJob(
        model=model_path,
        metadata=metadata,
        input=str(local_in.resolve()) if local_in is not None else input,
        output=str(local_out),
        input_format=in_format,
        output_format=out_format,
        columns=columns,
        output_column=output_column,
        result_type=result_type,
        mode=mode,
        params=_check_params(params or {}, metadata),
        scope=scope,
        bad_records=bad_records,
        progress=progress,
        host_log_dir=host_log_dir,
        method=method,
        model_config=model_config,
        batch_size=batch_size,
    )
    available = peek_columns(local_in, in_format)
    if available is not None:  # a wrong column found now, not once Spark read INPUT
        _bound_columns(job, [c for c in available if c != CORRUPT_RECORD])
        _check_output_column(job, available)
    return job


def _check_output_column(job: ScoreJob, available: Sequence[str]) -> None:
    if job.output_column in available:
        raise bad_argument(
            "output_column",
            f"INPUT already has a column {job.output_column!r}; name the predictions "
            "with output_column=",
        )


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring run did: printed by the CLI, returned to callers of ``score``."""

    rows: int
    seconds: float
    output: str
    output_format: str
    scope: str
    skipped: int | None = None
    host_log_dir: str | None = None
    #: The model hosts' part (_report.host_summary): loads, restarts, predict share, peak
    #: memory; None where no host ran (scope="process").
    hosts: dict[str, Any] | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def lines(self) -> list[str]:
        lines = [
            f"rows      {self.rows:,}",
            f"seconds   {self.seconds:,.2f}",
            f"rows/s    {self.rows_per_second:,.0f}",
            f"scope     {self.scope}",
            f"output    {self.output} ({self.output_format})",
        ]
        if self.skipped is not None:
            lines.append(f"skipped   {self.skipped:,} malformed rows")
        if self.host_log_dir is not None:
            lines.append(f"host logs {self.host_log_dir}")
        return lines + _host_lines(self.hosts)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values (``spark-pyfunc score --report``)."""
        return dict(vars(self), rows_per_second=round(self.rows_per_second, 1))


def _host_lines(hosts: dict[str, Any] | None) -> list[str]:
    """The summary's lines about the model hosts."""
    if hosts is None:
        return []
    if not hosts["host_loads"]:
        return ["hosts     none reported"]
    share = hosts["predict_share"]
    lines = [
        f"hosts     {hosts['host_loads']} loaded (slowest load "
        f"{hosts['host_load_seconds_max']:.2f} s; {hosts['executors_answered']} of "
        f"{hosts['executors_expected'] or '?'} executors answered)",
        f"restarts  {hosts['host_restarts']}",
        f"predict   {hosts['predict_seconds']:,.2f} s in the model"
        + (f", {share:.0%} of the serving processes' time" if share is not None else ""),
    ]
    if hosts["peak_host_mib"] is not None:
        lines.append(f"peak-mem  {hosts['peak_host_mib']:,.1f} MiB in one host (PSS)")
    lines += [f"restart   {reason}" for reason in hosts.get("restart_reasons", [])]
    return lines


def _bound_columns(job: ScoreJob, available: list[str]) -> list[tuple[str, str]]:
    """Pairs (input column, model input name) in the model's order."""
    named = _input_names(job.metadata)
    if job.columns is not None:
        missing = [c for c in job.columns if c not in available]
        if missing:  # about INPUT's content, as a missing signature column: not a usage error
            raise InvalidArgumentError(
                f"columns= names {', '.join(missing)}, not in INPUT {job.input!r} "
                f"(its columns: {', '.join(available)})"
            )
        names = named[0] if named is not None else list(job.columns)
        return list(zip(job.columns, names, strict=False))
    if named is None:
        logger.info("the model's signature names no inputs: passing every INPUT column")
        return [(c, c) for c in available]
    names, required = named
    absent = [n for n in names if n in required and n not in available]
    if absent:
        raise InvalidArgumentError(
            f"INPUT {job.input!r} has no column {', '.join(absent)}, required by the model's "
            f"signature (its columns: {', '.join(available)}); pass columns= to bind INPUT "
            "columns to the model's inputs in order"
        )
    return [(n, n) for n in names if n in available]


def _read(spark: SparkSession, job: ScoreJob) -> DataFrame:
    """INPUT as a DataFrame; csv and json get a ``_corrupt_record`` column for bad rows.

    Spark's permissive readers turn a row they cannot parse into nulls; the raw text is kept
    only when the schema has the corrupt-record column, so the inferred schema gets one.
    """
    from pyspark.sql.types import StringType

    reader = spark.read.format(job.input_format)
    if job.input_format == "parquet":
        return reader.load(job.input)
    reader = reader.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT_RECORD)
    if job.input_format == "csv":
        reader = reader.option("header", True)
        schema = reader.option("inferSchema", True).load(job.input).schema
        reader = reader.option("inferSchema", False)
    else:
        schema = reader.load(job.input).schema
    if CORRUPT_RECORD not in schema.fieldNames():
        schema = schema.add(CORRUPT_RECORD, StringType(), True)
    return reader.schema(schema).load(job.input)


def _malformed(frame: DataFrame, job: ScoreJob) -> tuple[int, int, str | None]:
    """(rows, malformed rows, the first malformed row's text) of INPUT, in one pass.

    "First" is by file name, then by position: the partitions of one file keep its order.
    """
    from pyspark.sql import functions as F

    data = [c for c in frame.columns if c != CORRUPT_RECORD]
    if not data:
        raise SparkPyfuncError(f"INPUT {job.input!r} has no well-formed {job.input_format} row")
    bad = F.col(CORRUPT_RECORD)
    placed = frame.select(
        # Spark refuses a scan that reads only the corrupt-record column, so the data columns
        # are read too: a hash of them cannot be optimised away as a struct's count would be.
        F.hash(*[F.col(f"`{c}`") for c in data]).alias("data"),
        bad,
        F.struct(F.input_file_name(), F.monotonically_increasing_id()).alias("place"),
    )
    row = placed.select(
        F.count(F.lit(1)).alias("rows"),
        F.max("data").alias("data"),
        F.count(bad).alias("bad"),
        F.min_by(bad, F.when(bad.isNotNull(), F.col("place"))).alias("first"),
    ).first()
    return int(row["rows"]), int(row["bad"]), row["first"]


def _refuse_malformed(job: ScoreJob, rows: int, bad: int, first: str | None) -> None:
    shown = (first or "").rstrip("\r\n")
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    raise InvalidArgumentError(
        f"INPUT {job.input!r} has {bad:,} malformed {job.input_format} row"
        f"{'s' if bad != 1 else ''} (of {rows:,}); the first: {shown!r}. Fix them, or pass "
        "bad_records='skip' to score only the well-formed rows, or bad_records='keep' to "
        f"score every row and keep the raw text in a {CORRUPT_RECORD} column"
    )


def _result_type(text: str | None) -> Any:
    """``result_type`` parsed, keeping Spark's reason (``[PARSE_SYNTAX_ERROR] ...``) on one line."""
    if text is None:
        return None
    from spark_pyfunc._result_types import parse_result_type

    try:
        return parse_result_type(text)
    except SparkPyfuncError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        reason = re.sub(r"\s*SQLSTATE: \w+\.?", "", lines[0]) if lines else type(cause).__name__
        raise bad_argument(
            "result_type", f"result_type= {text!r} is not a valid Spark type: {reason}"
        ) from exc


@contextlib.contextmanager
def _host_log_conf(spark: SparkSession, directory: str | None) -> Iterator[None]:
    """Set ``spark.pyfunc.host.logDir`` for this job, and put back what the session had."""
    if directory is None:
        yield
        return
    previous = spark.conf.get(HOST_LOG_DIR.key, None)
    spark.conf.set(HOST_LOG_DIR.key, directory)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(HOST_LOG_DIR.key)
        else:
            spark.conf.set(HOST_LOG_DIR.key, previous)


@contextlib.contextmanager
def _job_group(spark: SparkSession) -> Iterator[str]:
    """Run the block's Spark jobs in a group of their own; on any failure (Ctrl-C included)
    cancel them and wait until their tasks stopped, so that no task writes after cleanup."""
    sc = spark.sparkContext
    group = f"spark-pyfunc-score-{uuid.uuid4().hex}"
    sc.setJobGroup(group, f"{PROG} score", interruptOnCancel=True)
    try:
        yield group
    except BaseException:
        with contextlib.suppress(Exception):
            _cancel_and_wait(sc, group)
        raise
    finally:
        with contextlib.suppress(Exception):
            for key in (
                "spark.jobGroup.id",
                "spark.job.description",
                "spark.job.interruptOnCancel",
            ):
                sc.setLocalProperty(key, None)  # type: ignore[arg-type]  # None removes it


def _cancel_and_wait(sc: Any, group: str, timeout: float = 120.0) -> None:
    sc.cancelJobGroup(group)
    tracker = sc.statusTracker()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = 0
        for job_id in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job_id)
            for stage_id in info.stageIds if info is not None else ():
                stage = tracker.getStageInfo(stage_id)
                active += stage.numActiveTasks if stage is not None else 0
        if not active:
            return
        time.sleep(0.2)
    logger.warning("tasks of the cancelled job were still running after %.0f s", timeout)


def score(
    spark: SparkSession,
    model: str | os.PathLike,
    input: str,
    output: str,
    **options: Any,
) -> ScoreSummary:
    """Score INPUT with MODEL through ``spark_udf`` and write INPUT's columns plus predictions.

    OUTPUT is written to a hidden sibling and renamed into place only when the whole job
    succeeded (see :func:`staged_output`): a failure leaves OUTPUT as it was.

    Args:
        spark: the session to score in.
        model: the model directory (or ``file:`` URI).
        input: the file, directory or glob to score (local, ``file:``, or any URI Spark reads).
        output: the local OUTPUT path (or ``file:`` URI).
        options: those of :func:`prepare_score`, and ``commit_state``: a
            :class:`~spark_pyfunc._commit.CommitState` that records whether OUTPUT was
            committed (for a caller that must tell a Ctrl-C before the commit from one after).

    Returns:
        A :class:`ScoreSummary`.

    Raises:
        SparkPyfuncError: with one telling line for every failure the CLI knows of.

    Example:
        >>> score(spark, "models/scorer", "in.csv", "out.parquet").rows  # doctest: +SKIP
        20000

    A struct prediction written as csv becomes one ``<output_column>_<field>`` column per
    field, since csv has no nested columns.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    from spark_pyfunc._udf import spark_udf

    commit_state = options.pop("commit_state", None)
    job = prepare_score(model, input, output, **options)
    dtype = _result_type(job.result_type)
    frame = _read(spark, job)
    corrupt = CORRUPT_RECORD in frame.columns and job.input_format != "parquet"
    _check_output_column(job, frame.columns)
    data_columns = [c for c in frame.columns if not (corrupt and c == CORRUPT_RECORD)]
    pairs = _bound_columns(job, data_columns)
    started = time.perf_counter()
    with (
        _host_log_conf(spark, job.host_log_dir),
        staged_output(job.output, job.mode, commit_state) as stage,
        _job_group(spark) as group,
    ):
        total = None
        bad_rows = None
        if corrupt and job.bad_records == "fail":
            total, bad, first = _malformed(frame, job)
            if bad:
                _refuse_malformed(job, total, bad, first)
        if corrupt and job.bad_records == "skip":
            bad_rows = Observation("spark_pyfunc_malformed")
            frame = frame.observe(bad_rows, F.count(F.col(CORRUPT_RECORD)).alias("bad"))
            frame = frame.where(F.col(CORRUPT_RECORD).isNull())
        kept = [*data_columns, CORRUPT_RECORD] if corrupt and job.bad_records == "keep" else []
        frame = frame.select(*[F.col(f"`{c}`") for c in kept or data_columns])
        udf = spark_udf(
            spark,
            job.model,
            result_type=dtype,
            params=job.params,
            scope=job.scope,
            method=job.method,
            model_config=job.model_config,
            batch_size=job.batch_size,
        )
        inputs = F.struct(*[F.col(f"`{column}`").alias(name) for column, name in pairs])
        scored = frame.withColumn(job.output_column, udf(inputs))
        if job.output_format == "csv" and isinstance(udf.result_type, StructType):
            column = F.col(f"`{job.output_column}`")
            scored = scored.select(
                *[F.col(f"`{c}`") for c in frame.columns],
                *[
                    column[f.name].alias(f"{job.output_column}_{f.name}")
                    for f in udf.result_type.fields
                ],
            )
        observation = Observation("spark_pyfunc_score")
        writer = scored.observe(observation, F.count(F.lit(1)).alias("rows")).write
        writer = writer.format(job.output_format).mode("error")
        if job.output_format == "csv":
            writer = writer.option("header", True)
        with Progress(spark, group) if job.progress else contextlib.nullcontext():
            writer.save(str(stage))
        rows = int(observation.get["rows"])
    seconds = time.perf_counter() - started
    hosts = None
    if udf.scope == "executor":  # what the hosts did, while the session is up
        from spark_pyfunc._report import host_report, host_summary

        hosts = host_summary(host_report(spark, since=time.time()), seconds)
    skipped = int(bad_rows.get["bad"]) if bad_rows is not None else None
    if skipped:
        logger.warning("skipped %d malformed rows of INPUT %s", skipped, job.input)
    logger.info("scored %d rows in %.2f s with scope=%s", rows, seconds, udf.scope)
    return ScoreSummary(
        rows, seconds, job.output, job.output_format, udf.scope, skipped, job.host_log_dir, hosts
    )
