"""The model hosts' status files, read back: on this machine (``spark-pyfunc hosts``) and
from every executor (:func:`host_report`), as a table.

The files are written by the hosts (``_status.py``); this module only reads them. On the
driver, :func:`host_report` runs one small Spark job whose tasks each read the status files
of their executor's own directory (SparkFiles' root, where the hosts of that executor keep
their pid and status files) and send them back; it uses only the DataFrame API, so it works
on Spark Connect as on a classic session.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from spark_pyfunc._status import WRITE_EVERY, read_statuses, statuses_on_machine

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "HOST_COLUMNS",
    "host_report",
    "host_rows",
    "host_summary",
    "hosts_text",
    "machine_hosts",
]

logger = logging.getLogger(__name__)

#: The columns of :func:`host_report` (and of ``spark-pyfunc hosts --json``'s objects), in
#: order; ``executor_dir`` and ``machine`` say where the host runs.
HOST_COLUMNS = [
    "machine",
    "executor_dir",
    "pid",
    "state",
    "mode",
    "batching",
    "serving_processes",
    "model_uri",
    "model_sha256",
    "load_seconds",
    "uptime_seconds",
    "requests",
    "model_calls",
    "rows",
    "errors",
    "rows_per_second",
    "predict_seconds",
    "predict_ms_p50",
    "predict_ms_p99",
    "queue_wait_ms_p50",
    "queue_wait_ms_p99",
    "pss_mib",
    "peak_pss_mib",
    "restarts",
    "restart_reasons",
    "exit_reason",
    "started_at",
    "updated_at",
    "log",
    "status_file",
]


def host_rows(statuses: list[dict]) -> list[dict]:
    """Status files' figures as flat rows with :data:`HOST_COLUMNS` (oldest first)."""
    rows = []
    for status in statuses:
        row = {column: status.get(column) for column in HOST_COLUMNS}
        row["executor_dir"] = os.path.dirname(str(status.get("status_file", ""))) or None
        exit_record = status.get("exit")
        row["exit_reason"] = exit_record.get("reason") if isinstance(exit_record, dict) else None
        if row["state"] == "dead":
            row["exit_reason"] = "gone without a word: killed by SIGKILL (out of memory?)"
        rows.append(row)
    return sorted(rows, key=lambda r: (r.get("started_at") or 0, r.get("pid") or 0))


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def hosts_text(rows: list[dict]) -> str:
    """``spark-pyfunc hosts``'s table: one line per host, then why hosts ended or restarted
    and where their logs are."""
    if not rows:
        return "no model host status found"
    header = ["PID", "STATE", "MODE", "PROCS", "LOAD s", "UP s", "REQUESTS", "ROWS", "ERRORS"]
    header += ["ROWS/s", "P50 ms", "P99 ms", "WAIT P99", "PSS MiB", "PEAK MiB", "RESTARTS"]
    header.append("MODEL")
    table = [header]
    for r in rows:
        mode = f"{r['mode']}+batching" if r.get("batching") and r.get("mode") else r.get("mode")
        table.append(
            [
                str(r["pid"]),
                _cell(r["state"]),
                _cell(mode),
                _cell(r["serving_processes"]),
                _cell(r["load_seconds"], 2),
                _cell(r["uptime_seconds"], 0),
                _cell(r["requests"]),
                _cell(r["rows"]),
                _cell(r["errors"]),
                _cell(r["rows_per_second"], 0),
                _cell(r["predict_ms_p50"], 2),
                _cell(r["predict_ms_p99"], 2),
                _cell(r["queue_wait_ms_p99"], 2),
                _cell(r["pss_mib"]),
                _cell(r["peak_pss_mib"]),
                _cell(r["restarts"]),
                _cell(r["model_uri"]),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    for r in rows:
        notes = []
        if r.get("exit_reason"):
            notes.append(f"ended: {r['exit_reason']}")
        for reason in r.get("restart_reasons") or []:
            notes.append(f"restarted after host {reason}")
        notes.append(f"log: {r['log']}")
        lines.append(f"pid {r['pid']}: " + "; ".join(notes))
    return "\n".join(lines)


def machine_hosts(directories: list[str] | None = None) -> list[dict]:
    """The hosts on this machine (or in ``directories``) as rows, for ``spark-pyfunc hosts``."""
    return host_rows(statuses_on_machine(directories))


# ------------------------------------------------------------------------ from the driver


def _collect(batches: Iterator[pd.DataFrame], since: float | None) -> Iterator[pd.DataFrame]:
    """A task of :func:`host_report`: the status files of this executor's hosts."""
    from pyspark import SparkFiles

    for _ in batches:
        pass
    directory = os.path.abspath(SparkFiles.getRootDirectory())
    statuses = read_statuses(directory)
    deadline = time.monotonic() + WRITE_EVERY + 1.0
    # A serving host writes every WRITE_EVERY seconds: wait for writes after ``since``, so
    # the figures cover the job that just ended.
    while since is not None and time.monotonic() < deadline:
        stale = [
            s for s in statuses
            if s["state"] in ("loading", "serving") and float(s.get("updated_at", 0)) < since
        ]  # fmt: skip
        if not stale:
            break
        time.sleep(0.1)
        statuses = read_statuses(directory)
    time.sleep(0.2)  # let the other executors take tasks of this job too
    yield pd.DataFrame(
        {
            "machine": [socket.gethostname()],
            "executor_dir": [directory],
            "statuses": [json.dumps(statuses, default=str)],
        }
    )


def _expected_executors(spark: SparkSession) -> int | None:
    """The executors the cluster has now (classic sessions; None on Spark Connect)."""
    context = getattr(spark, "sparkContext", None)
    try:
        jsc = context._jsc  # type: ignore[union-attr]
        size = int(jsc.sc().getExecutorMemoryStatus().size())  # the driver included
    except Exception:  # Spark Connect: no SparkContext
        return None
    return size - 1 if size > 1 else 1


def host_report(
    spark: SparkSession, *, tasks: int | None = None, since: float | None = None
) -> pd.DataFrame:
    """One row per model host of the application's executors, live or exited.

    A small Spark job reads every executor's host status files (their model, mode, load
    time, requests, rows, errors, predict and queue-wait p50/p99, memory, restarts) and
    brings them to the driver. Tasks land where Spark puts them, so an executor may get
    none: the result says how many executors answered (``attrs["executors_answered"]``, of
    ``attrs["executors_expected"]``, None where the session cannot tell, as on Spark
    Connect) and warns when some did not.

    Args:
        spark: the session whose executors to ask (classic or Spark Connect).
        tasks: tasks of the job (default: four per core of the cluster, at least 8).
        since: wait (up to a few seconds) for each serving host to have written its figures
            after this time (``time.time()``), such as the end of a scoring job.

    Returns:
        A pandas DataFrame with the columns ``_report.HOST_COLUMNS``; empty if no host ran.

    Raises:
        InvalidArgumentError: ``tasks`` is not a positive integer.

    Example:
        >>> report = spark_pyfunc.host_report(spark)  # doctest: +SKIP
        >>> report[["machine", "pid", "rows", "predict_ms_p99", "pss_mib"]]  # doctest: +SKIP
    """
    from spark_pyfunc.errors import InvalidArgumentError

    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1):
        raise InvalidArgumentError(f"tasks= must be a positive integer, not {tasks!r}")
    expected = _expected_executors(spark)
    if tasks is None:
        try:
            cores = int(spark.sparkContext.defaultParallelism)
        except Exception:  # Spark Connect
            cores = int(spark.conf.get("spark.default.parallelism", "8") or 8)
        tasks = max(4 * cores, 8)
    frame = spark.range(tasks, numPartitions=tasks).mapInPandas(
        lambda batches: _collect(batches, since),
        "machine string, executor_dir string, statuses string",
    )
    answers = frame.toPandas().drop_duplicates(["machine", "executor_dir"])
    statuses = []
    for machine, text in zip(answers["machine"], answers["statuses"], strict=True):
        statuses += [dict(s, machine=machine) for s in json.loads(text)]
    report = pd.DataFrame(host_rows(statuses), columns=HOST_COLUMNS)
    answered = len(answers)
    report.attrs["executors_answered"] = answered
    report.attrs["executors_expected"] = expected
    coverage = f"{answered} of {expected if expected is not None else '?'} executors answered"
    report.attrs["coverage"] = coverage
    if expected is not None and answered < expected:
        warnings.warn(f"host_report: {coverage}; run it again for the others", stacklevel=2)
    logger.info("host_report: %s, %d hosts", coverage, len(report))
    return report


def host_summary(report: pd.DataFrame, seconds: float) -> dict[str, Any]:
    """The hosts' part of a scoring run's summary, from a :func:`host_report` of its app.

    ``predict_share`` is the model's own time over the time the serving processes had: the
    rest went to moving data (Spark, Arrow, pandas) or to waiting.
    """
    if report.empty:
        return {"host_loads": 0, "host_restarts": 0, "predict_share": None, "peak_host_mib": None}
    slots = report["serving_processes"].fillna(1).clip(lower=1).sum()
    predict = float(report["predict_seconds"].fillna(0).sum())
    peak = report["peak_pss_mib"].dropna()
    return {
        "host_loads": int(len(report)),
        "host_load_seconds_max": _float(report["load_seconds"].max()),
        "host_restarts": int(report["restarts"].fillna(0).sum()),
        "restart_reasons": [r for rs in report["restart_reasons"].dropna() for r in rs],
        "predict_seconds": round(predict, 6),
        "predict_share": round(predict / (seconds * slots), 4) if seconds > 0 else None,
        "peak_host_mib": _float(peak.max()) if not peak.empty else None,
        "executors_answered": report.attrs.get("executors_answered"),
        "executors_expected": report.attrs.get("executors_expected"),
    }


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)
