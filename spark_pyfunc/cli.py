"""The ``spark-pyfunc`` console script: score files with a model, describe a model, run a demo.

A data engineer can score a file or inspect a model without writing a Spark job. Everything that
can go wrong without Spark (the model directory, the input, the output, the options) is checked
before the JVM starts, so a typo costs milliseconds; every failure ends as one line on stderr
(``--verbose`` shows the whole story). ``score()`` is shared with ``scripts/score_job.py``, the
same scoring as a ``spark-submit`` application.

pyspark is imported only inside the functions that need it: ``info``, ``--help`` and the
pre-Spark checks stay fast, and the missing-Java message can come before anything touches Spark.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_pyfunc import __version__
from spark_pyfunc.errors import SchemaEnforcementError, SparkPyfuncError
from spark_pyfunc.format import read_metadata

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_pyfunc.format import ModelMetadata

PROG = "spark-pyfunc"
FORMATS = ("parquet", "csv", "json")
MODES = ("error", "overwrite", "append")
SCOPES = ("auto", "executor", "process")
DEFAULT_MASTER = "local[*]"

_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}
# Compression suffixes Spark reads transparently: "x.csv.gz" is a csv file.
_COMPRESSIONS = {".gz", ".bz2", ".zst", ".lz4", ".snappy", ".deflate", ".xz"}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_INSTALL_JAVA = (
    "install one (e.g. `sudo apt-get install openjdk-17-jre-headless`, "
    "`brew install openjdk@17`) or set JAVA_HOME to a Java 17 or 21 installation"
)

logger = logging.getLogger(__name__)


class UsageError(SparkPyfuncError):
    """A command-line argument is wrong: exit status 2, as for argparse's own errors."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- checks


def _local_path(path: str) -> Path | None:
    """The local file behind ``path``, or None for a remote URI (hdfs://, s3a://, ...)."""
    if path.startswith("file:"):
        return Path(re.sub(r"^file:(//)?", "", path))
    if _URI.match(path) and not re.match(r"^[A-Za-z]:[\\/]", path):
        return None
    return Path(path).expanduser()


def _format_of_name(path: str) -> str | None:
    suffixes = [s.lower() for s in Path(path.rstrip("/")).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes.pop()
    return _EXTENSIONS.get(suffixes[-1]) if suffixes else None


def _format_of_dir(path: Path) -> str | None:
    """The one format of the data files in a directory Spark wrote (part-*.parquet, ...)."""
    found = {
        _format_of_name(child.name)
        for child in path.iterdir()
        if child.is_file() and not child.name.startswith(("_", "."))
    }
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def _resolve_format(path: str, given: str | None, local: Path | None, role: str) -> str:
    if given is not None:
        return given
    fmt = _format_of_name(path)
    if fmt is None and local is not None and local.is_dir():
        fmt = _format_of_dir(local)
    if fmt is None:
        option = "--input-format" if role == "INPUT" else "--output-format"
        raise UsageError(
            f"cannot tell the format of {role} {path!r} from its name; name it *.parquet, "
            f"*.csv or *.json, or pass {option} (or --format) {'|'.join(FORMATS)}"
        )
    return fmt


def _check_input(path: str) -> Path | None:
    local = _local_path(path)
    if local is None:
        return None
    if any(c in str(local) for c in "*?[") and "{" not in str(local):  # Spark's globs
        if not glob.glob(str(local)):
            raise SparkPyfuncError(f"INPUT {path!r} matches no file")
        return local
    if not local.exists():
        raise SparkPyfuncError(f"INPUT {path!r} does not exist")
    wanted = os.R_OK | (os.X_OK if local.is_dir() else 0)
    if not os.access(local, wanted):
        raise SparkPyfuncError(f"INPUT {path!r} is not readable (permission denied)")
    return local


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; each value is JSON when it parses (2.0, true, [1,2]), else text."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param {item!r} must look like NAME=VALUE")
        if name in params:
            raise UsageError(f"--param {name!r} is given twice")
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    return params


def parse_columns(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ("a", "b"), refusing empty and repeated names."""
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names):
        raise UsageError(f"--columns {text!r} has an empty column name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--columns {text!r} repeats {', '.join(repeated)}")
    return names


def _check_params(params: dict[str, Any], metadata: ModelMetadata) -> dict[str, Any] | None:
    """Refuse unknown names (spark_udf would only warn) and values the params schema refuses."""
    if not params:
        return None
    from spark_pyfunc.schema import enforce_params

    signature = metadata.signature
    schema = signature.params if signature is not None else None
    if schema is None:
        raise UsageError(
            f"the model takes no params (its signature has no params schema), but --param "
            f"{', '.join(params)} was given"
        )
    known = [p.name for p in schema.params]
    unknown = [n for n in params if n not in known]
    if unknown:
        raise UsageError(
            f"the model has no param {', '.join(map(repr, unknown))}; "
            f"its params are: {', '.join(known)}"
        )
    try:
        return enforce_params(params, schema)
    except SchemaEnforcementError as exc:
        raise UsageError(f"--param: {exc}") from exc


def _input_names(metadata: ModelMetadata) -> tuple[list[str], set[str]] | None:
    """The signature's input names and the required ones, or None when inputs are unnamed."""
    signature = metadata.signature
    inputs = signature.inputs if signature is not None else None
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
) -> ScoreJob:
    """Check everything that does not need Spark: model, input, output, formats, options."""
    for value, allowed, what in (
        (mode, MODES, "--mode"),
        (scope, SCOPES, "--scope"),
        (input_format, (*FORMATS, None), "--input-format"),
        (output_format, (*FORMATS, None), "--output-format"),
    ):
        if value not in allowed:
            raise UsageError(f"{what} must be one of {', '.join(filter(None, allowed))}: {value!r}")
    if not output_column:
        raise UsageError("--output-column must not be empty")
    model_text = os.fspath(model)
    model_path = _local_path(model_text)
    if model_path is None:
        raise SparkPyfuncError(
            f"MODEL {model_text!r} is not a local directory; download it first (for example "
            "with `mlflow artifacts download`) and pass the local path"
        )
    metadata = read_metadata(model_path)
    local_in = _check_input(input)
    local_out = _local_path(output)
    in_format = _resolve_format(input, input_format, local_in, "INPUT")
    out_format = _resolve_format(output, output_format, local_out, "OUTPUT")
    if local_in is not None and local_out is not None and local_in.resolve() == local_out.resolve():
        raise UsageError(f"INPUT and OUTPUT are the same path {input!r}; write somewhere else")
    if mode == "error" and local_out is not None and local_out.exists():
        raise SparkPyfuncError(
            f"OUTPUT {output!r} already exists; pass --mode overwrite to replace it "
            "or --mode append to add to it"
        )
    if columns is not None:
        columns = tuple(columns)
        named = _input_names(metadata)
        if named is not None:
            names, required = named
            if len(columns) > len(names):
                raise UsageError(
                    f"--columns gives {len(columns)} columns but the model takes "
                    f"{len(names)} inputs: {', '.join(names)}"
                )
            unbound = [n for n in names[len(columns) :] if n in required]
            if unbound:
                raise UsageError(
                    f"--columns binds {len(columns)} columns to the inputs "
                    f"{', '.join(names[: len(columns)])} in order; the required inputs "
                    f"{', '.join(unbound)} are left without a column"
                )
    return ScoreJob(
        model=model_path,
        metadata=metadata,
        input=str(local_in.resolve()) if local_in is not None else input,
        output=str(local_out.resolve()) if local_out is not None else output,
        input_format=in_format,
        output_format=out_format,
        columns=columns,
        output_column=output_column,
        result_type=result_type,
        mode=mode,
        params=_check_params(params or {}, metadata),
        scope=scope,
    )


# ---------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring run did: printed by the CLI, returned to callers of ``score``."""

    rows: int
    seconds: float
    output: str
    output_format: str
    scope: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def lines(self) -> list[str]:
        return [
            f"rows      {self.rows:,}",
            f"seconds   {self.seconds:,.2f}",
            f"rows/s    {self.rows_per_second:,.0f}",
            f"scope     {self.scope}",
            f"output    {self.output} ({self.output_format})",
        ]


def _bound_columns(job: ScoreJob, available: list[str]) -> list[tuple[str, str]]:
    """Pairs (input column, model input name) in the model's order."""
    named = _input_names(job.metadata)
    if job.columns is not None:
        missing = [c for c in job.columns if c not in available]
        if missing:
            raise UsageError(
                f"--columns names {', '.join(missing)}, not in INPUT {job.input!r} "
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
        raise SparkPyfuncError(
            f"INPUT {job.input!r} has no column {', '.join(absent)}, required by the model's "
            f"signature (its columns: {', '.join(available)}); pass --columns to bind INPUT "
            "columns to the model's inputs in order"
        )
    return [(n, n) for n in names if n in available]


def _read(spark: SparkSession, job: ScoreJob) -> DataFrame:
    reader = spark.read.format(job.input_format)
    if job.input_format == "csv":
        reader = reader.option("header", True).option("inferSchema", True)
    return reader.load(job.input)


def score(
    spark: SparkSession,
    model: str | os.PathLike,
    input: str,
    output: str,
    **options: Any,
) -> ScoreSummary:
    """Score INPUT with MODEL through ``spark_udf`` and write INPUT's columns plus predictions.

    ``options`` are those of :func:`prepare_score`. A struct prediction written as csv becomes
    one ``<output_column>_<field>`` column per field, since csv has no nested columns.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    from spark_pyfunc.udf import parse_result_type, spark_udf

    job = prepare_score(model, input, output, **options)
    frame = _read(spark, job)
    if job.output_column in frame.columns:
        raise UsageError(
            f"INPUT already has a column {job.output_column!r}; name the predictions "
            "with --output-column"
        )
    pairs = _bound_columns(job, frame.columns)
    try:
        dtype = parse_result_type(job.result_type) if job.result_type is not None else None
    except SparkPyfuncError as exc:
        raise UsageError(f"--result-type: {exc}") from exc
    started = time.perf_counter()
    udf = spark_udf(spark, job.model, result_type=dtype, params=job.params, scope=job.scope)
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
    writer = writer.format(job.output_format).mode(job.mode)
    if job.output_format == "csv":
        writer = writer.option("header", True)
    writer.save(job.output)
    seconds = time.perf_counter() - started
    rows = int(observation.get["rows"])
    logger.info("scored %d rows in %.2f s with scope=%s", rows, seconds, udf.scope)
    return ScoreSummary(rows, seconds, job.output, job.output_format, udf.scope)


# ------------------------------------------------------------------------ Spark session


def _java_major(java: str) -> int | None:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def check_java() -> str:
    """Find the java Spark will launch (JAVA_HOME first, as spark-class does) and check it."""
    import pyspark

    home = os.environ.get("JAVA_HOME")
    if home:
        java = os.path.join(home, "bin", "java")
        if not os.access(java, os.X_OK):
            raise SparkPyfuncError(
                f"Spark needs Java 17 or 21, but JAVA_HOME={home} has no bin/java; "
                f"point JAVA_HOME at a Java installation or {_INSTALL_JAVA}"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise SparkPyfuncError(
                f"Spark needs Java 17 or 21 and there is no `java` on PATH (JAVA_HOME is not "
                f"set): {_INSTALL_JAVA}"
            )
        java = found
    spark4 = int(pyspark.__version__.split(".")[0]) >= 4
    needed, supported = (17, "17 or 21") if spark4 else (8, "8, 11 or 17")
    major = _java_major(java)
    if major is not None and major < needed:
        raise SparkPyfuncError(
            f"Spark {pyspark.__version__} needs Java {supported}, but {java} is Java {major}: "
            f"{_INSTALL_JAVA}"
        )
    return java


_LOG4J = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
logger.shell.name = org.apache.spark.api.python.PythonGatewayServer
logger.shell.level = {level}
"""


@contextlib.contextmanager
def spark_session(
    master: str | None, *, verbose: bool = False, app_name: str = PROG
) -> Iterator[SparkSession]:
    """The active session if there is one (left running), else an embedded one (stopped after).

    The embedded driver gets its own log4j2 file: Spark's ERROR logs of a failed task carry
    Java stack traces, which the CLI reduces to one line; ``verbose`` brings back WARN.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        running = active.sparkContext.master
        if master is not None and master != running:
            logger.warning(
                "reusing the active Spark session on %s, not --master %s", running, master
            )
        yield active
        return
    check_java()
    # Spark's Python workers must run this interpreter: the one spark_pyfunc is installed in.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="spark-pyfunc-") as scratch:
        log_conf = Path(scratch, "log4j2.properties")
        log_conf.write_text(_LOG4J.format(level="warn" if verbose else "fatal"))
        master = master or DEFAULT_MASTER
        builder = (
            SparkSession.builder.master(master)
            .appName(app_name)
            .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log_conf}")
            # Spark's progress bar is for a console: in a log file it is a wall of \r lines.
            .config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
        )
        if master.startswith("local"):
            # An embedded session needs no network: keep the driver on the loopback interface.
            builder = builder.config("spark.driver.host", "127.0.0.1").config(
                "spark.driver.bindAddress", "127.0.0.1"
            )
        spark = builder.getOrCreate()
        try:
            yield spark
        finally:
            spark.stop()


# ----------------------------------------------------------------------------- errors


def _exception_line(text: str) -> str:
    """The final exception's line of a Python traceback embedded in ``text``."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if "Traceback (most recent" in line)
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith((" ", "\t")):
            return re.sub(r"^(\w+\.)+(?=\w+: )", "", line)
    return lines[start]


def _java_message(java: Any) -> str:
    """The most telling message of a Java exception's cause chain.

    A wrapper ("Job aborted due to stage failure", "Exception thrown in awaitResult") says
    little; the first cause carrying a Spark error class (``[CANNOT_READ_FILE_FOOTER] ...``)
    names the file or column at fault, else the root cause does.
    """
    chain, seen = [], set()
    while java is not None and id(java) not in seen and len(chain) < 20:
        seen.add(id(java))
        chain.append(str(java.toString()))
        try:
            java = java.getCause()
        except Exception:  # py4j errors: keep what we have
            break
    if "Traceback (most recent" in chain[0]:
        return chain[0]
    for message in chain:
        if re.match(r"^(?:[\w$]+\.)*[\w$]+: \[[A-Z_]+(?:\.[A-Z_]+)*\]", message):
            return message
    return chain[-1] if len(chain) > 1 else chain[0]


def _first_line(exc: BaseException) -> str:
    """One meaningful line for any error Spark or spark_pyfunc raises."""
    text = str(exc)
    java = getattr(exc, "java_exception", None)  # py4j's Py4JJavaError
    if java is not None and "Traceback (most recent" not in text:
        text = _java_message(java)
    if "Traceback (most recent" in text:
        return _exception_line(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    line = re.sub(r"\s*SQLSTATE: \w+\.?$", "", line)
    # A Java class name before Spark's [ERROR_CLASS] adds nothing for the reader.
    line = re.sub(r"^(?:[a-z]\w*\.)+[A-Z]\w*: (?=\[)", "", line)
    if not isinstance(exc, SparkPyfuncError) and not _is_spark_error(exc):
        line = f"{type(exc).__name__}: {line}"
    return line


def _is_spark_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("pyspark", "py4j"))


def _guarded(action: Callable[[], int], verbose: bool) -> int:
    """Run a command; every failure becomes ``spark-pyfunc: error: ...`` and an exit status."""
    try:
        return action()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = 2 if isinstance(exc, UsageError) else 1
        if verbose and not isinstance(exc, UsageError):
            logger.exception("%s failed", PROG)
        line = _first_line(exc)
        if not verbose and (len(str(exc).splitlines()) > 1 or not _is_expected(exc)):
            line += " (run with --verbose for details)"
        print(f"{PROG}: error: {line}", file=sys.stderr)
        return code


def _is_expected(exc: BaseException) -> bool:
    return isinstance(exc, (SparkPyfuncError, OSError)) or _is_spark_error(exc)


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """spark_pyfunc's own logs on stderr: warnings only, INFO with --verbose."""
    package = logging.getLogger("spark_pyfunc")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
            if verbose
            else f"{PROG}: %(levelname)s: %(message)s"
        )
    )
    previous = package.level
    package.setLevel(logging.INFO if verbose else logging.WARNING)
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)


# ----------------------------------------------------------------------------- commands


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``score``, shared with scripts/score_job.py (which has no --master)."""
    parser.add_argument("model", metavar="MODEL", help="model directory (MLflow pyfunc format)")
    parser.add_argument("input", metavar="INPUT", help="input file or directory")
    parser.add_argument("output", metavar="OUTPUT", help="output directory Spark writes")
    parser.add_argument(
        "--columns",
        type=parse_columns,
        metavar="COL,COL",
        help="INPUT columns bound to the model's inputs in order, e.g. a,b "
        "(default: the signature's input names)",
    )
    parser.add_argument(
        "--result-type",
        help="Spark type of the predictions as DDL, e.g. 'double' or "
        "'label string, score double' (default: from the signature's outputs)",
    )
    parser.add_argument(
        "--output-column", default="prediction", help="name of the prediction column"
    )
    parser.add_argument("--format", choices=FORMATS, help="format of both INPUT and OUTPUT")
    parser.add_argument("--input-format", choices=FORMATS, help="format of INPUT")
    parser.add_argument("--output-format", choices=FORMATS, help="format of OUTPUT")
    parser.add_argument(
        "--mode", choices=MODES, default="error", help="what to do if OUTPUT exists"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a model param; VALUE is read as JSON when it parses (2.0, true, [1,2]), "
        "else as text; repeatable",
    )
    parser.add_argument(
        "--scope",
        choices=SCOPES,
        default="auto",
        help="one model copy per executor, per Python worker, or chosen by model size",
    )
    parser.add_argument("--verbose", action="store_true", help="logs and full tracebacks")


def _score_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "columns": args.columns,
        "result_type": args.result_type,
        "output_column": args.output_column,
        "input_format": args.input_format or args.format,
        "output_format": args.output_format or args.format,
        "mode": args.mode,
        "params": parse_params(args.param),
        "scope": args.scope,
    }


def run_score_command(
    args: argparse.Namespace, session: Callable[[], contextlib.AbstractContextManager]
) -> int:
    """Check, start Spark through ``session``, score, print the summary."""
    options = _score_options(args)
    prepare_score(args.model, args.input, args.output, **options)
    with session() as spark:
        summary = score(spark, args.model, args.input, args.output, **options)
    print("\n".join(summary.lines()))
    return 0


def describe(model: str | os.PathLike) -> dict[str, Any]:
    """A model's metadata as a plain dict: what ``info --json`` prints (keys are stable)."""
    metadata = read_metadata(Path(model))
    signature = metadata.signature

    def columns(schema: Any) -> list[dict[str, Any]] | None:
        if schema is None:
            return None
        return [
            {
                "name": spec.get("name", index),
                "type": _type_text(spec),
                "required": spec.get("required", True),
            }
            for index, spec in enumerate(schema.to_dict())
        ]

    params = signature.params if signature is not None else None
    artifacts = metadata.pyfunc_conf.get("artifacts") or {}
    return {
        "path": str(metadata.path),
        "flavors": sorted(metadata.flavors),
        "loader_module": metadata.loader_module,
        "model_uuid": metadata.model_uuid,
        "utc_time_created": metadata.utc_time_created,
        "model_size_bytes": metadata.model_size_bytes,
        "python_version": metadata.python_version,
        "cloudpickle_version": metadata.cloudpickle_version,
        "mlflow_version": metadata.mlflow_version,
        "inputs": columns(signature.inputs if signature is not None else None),
        "outputs": columns(signature.outputs if signature is not None else None),
        "params": (
            [
                {
                    "name": p["name"],
                    "type": p["type"] if p.get("shape") is None else f"{p['type']}[]",
                    "default": p.get("default"),
                }
                for p in json.loads(params.to_json())
            ]
            if params is not None
            else None
        ),
        "artifacts": {
            name: spec.get("path") if isinstance(spec, dict) else spec
            for name, spec in artifacts.items()
        },
        "requirements": list(metadata.requirements()),
    }


def _type_text(spec: dict[str, Any]) -> str:
    """MLflow's JSON form of a column type as one short string (array<double>, ...)."""
    kind = spec.get("type")
    if kind == "tensor":
        tensor = spec.get("tensor-spec", {})
        return f"tensor<{tensor.get('dtype')}>{tuple(tensor.get('shape', ()))}"
    if kind == "array":
        return f"array<{_type_text(spec.get('items', {}))}>"
    if kind == "map":
        return f"map<string, {_type_text(spec.get('values', {}))}>"
    if kind == "object":
        fields = ", ".join(
            f"{name}{'' if p.get('required', True) else '?'}: {_type_text(p)}"
            for name, p in spec.get("properties", {}).items()
        )
        return f"object<{fields}>"
    return str(kind)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _size_text(size: int | None) -> str:
    if size is None:
        return "-"
    value, unit = float(size), "bytes"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({size:,} bytes)"


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def info_lines(info: dict[str, Any]) -> list[str]:
    """The human form of :func:`describe`."""
    lines = [
        f"model         {info['path']}",
        f"flavors       {', '.join(info['flavors'])} (loader module {info['loader_module']})",
        f"uuid          {_shown(info['model_uuid'])}",
        f"created       {_shown(info['utc_time_created'])} UTC",
        f"size          {_size_text(info['model_size_bytes'])}",
        f"python        {_shown(info['python_version'])}",
        f"cloudpickle   {_shown(info['cloudpickle_version'])}",
    ]
    if info["mlflow_version"]:
        lines.append(f"mlflow        {info['mlflow_version']}")
    for title in ("inputs", "outputs"):
        columns = info[title]
        if columns is None:
            lines.append(f"{title:<14}- (no signature)")
            continue
        lines.append(f"{title}:")
        lines += _table(
            [["name", "type", "required"]]
            + [[str(c["name"]), c["type"], "yes" if c["required"] else "no"] for c in columns]
        )
    if info["params"]:
        lines.append("params:")
        lines += _table(
            [["name", "type", "default"]]
            + [[p["name"], p["type"], json.dumps(p["default"])] for p in info["params"]]
        )
    else:
        lines.append("params        -")
    if info["artifacts"]:
        lines.append("artifacts:")
        lines += _table([[name, _shown(path)] for name, path in info["artifacts"].items()])
    lines.append("requirements:" if info["requirements"] else "requirements  -")
    lines += [f"  {r}" for r in info["requirements"]]
    return lines


def _info_command(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(info_lines(info)))
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from spark_pyfunc.demo import run_demo

    if args.rows <= 0:
        raise UsageError(f"--rows must be positive: {args.rows}")
    if args.save_data is not None and os.path.exists(args.save_data):
        raise SparkPyfuncError(f"--save-data {args.save_data!r} already exists")
    if args.save_model is not None and os.path.exists(args.save_model):
        raise SparkPyfuncError(f"--save-model {args.save_model!r} already exists")
    with spark_session(args.master, verbose=args.verbose, app_name=f"{PROG} demo") as spark:
        run_demo(
            spark,
            rows=args.rows,
            seed=args.seed,
            scope=args.scope,
            model_path=args.save_model,
            data_path=args.save_data,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Score MLflow-format Python models in Spark, one model copy per executor.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score_parser = commands.add_parser(
        "score",
        help="score a parquet/csv/json file with a model",
        description="Score INPUT with MODEL and write INPUT's columns plus the predictions.",
    )
    add_score_arguments(score_parser)
    score_parser.add_argument(
        "--master", help=f"Spark master (default: an embedded {DEFAULT_MASTER} session)"
    )

    info_parser = commands.add_parser("info", help="describe a model directory")
    info_parser.add_argument("model", metavar="MODEL", help="model directory")
    info_parser.add_argument("--json", action="store_true", help="print a JSON object")
    info_parser.add_argument("--verbose", action="store_true", help="full tracebacks")

    demo_parser = commands.add_parser(
        "demo",
        help="save an example model, score generated data, show throughput",
        description="Build an example model, score generated data with spark_udf on an "
        "embedded Spark, show a preview and the throughput. Nothing is left behind unless "
        "--save-model/--save-data ask for it.",
    )
    demo_parser.add_argument("--rows", type=int, default=200_000, help="rows to generate")
    demo_parser.add_argument("--seed", type=int, default=42, help="seed of the generated data")
    demo_parser.add_argument(
        "--scope",
        choices=SCOPES,
        default="executor",
        help="where the model lives: once per executor (default), per Python worker, or auto",
    )
    demo_parser.add_argument(
        "--master", help=f"Spark master (default: an embedded {DEFAULT_MASTER} session)"
    )
    demo_parser.add_argument("--save-model", metavar="DIR", help="keep the model in DIR")
    demo_parser.add_argument(
        "--save-data", metavar="PATH", help="keep the generated data as parquet in PATH"
    )
    demo_parser.add_argument("--verbose", action="store_true", help="logs and full tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spark-pyfunc`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args_list
    with _logging(verbose):
        try:
            args = build_parser().parse_args(args_list)
        except UsageError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        if args.command == "score":
            session = functools.partial(spark_session, args.master, verbose=args.verbose)
            return _guarded(lambda: run_score_command(args, session), args.verbose)
        if args.command == "info":
            return _guarded(lambda: _info_command(args), args.verbose)
        return _guarded(lambda: _demo_command(args), args.verbose)


def submit_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/score_job.py: ``score`` in the session spark-submit configured."""
    parser = _Parser(
        prog="score_job.py",
        description="spark-submit scripts/score_job.py MODEL INPUT OUTPUT [options]: "
        "score INPUT with MODEL in the session spark-submit configured.",
    )
    add_score_arguments(parser)
    args_list = list(sys.argv[1:] if argv is None else argv)
    with _logging("--verbose" in args_list):
        try:
            args = parser.parse_args(args_list)
        except UsageError as exc:
            print(f"score_job.py: error: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:
            return int(exc.code or 0)

        @contextlib.contextmanager
        def session() -> Iterator[SparkSession]:
            from pyspark.sql import SparkSession

            spark = SparkSession.builder.appName(f"{PROG} score_job").getOrCreate()
            try:
                yield spark
            finally:
                spark.stop()

        return _guarded(lambda: run_score_command(args, session), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
