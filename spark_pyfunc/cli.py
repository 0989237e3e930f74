"""The ``spark-pyfunc`` console script: score files with a model, describe a model, run a demo.

Only the command line lives here: argparse, the rewording of library errors into flags, the
one-line error reports and exit statuses. The work is done by ``scoring`` (batch scoring),
``_describe`` (info) and ``_spark_session`` (Java check, embedded session). Every failure
ends as one line on stderr (``--verbose`` shows the whole story).

pyspark is imported only inside the functions that need it: ``info``, ``--help`` and the
pre-Spark checks stay fast, and the missing-Java message can come before anything touches Spark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from spark_pyfunc._cli_args import (
    MODEL_HELP,
    Parser,
    add_score_arguments,
    parse_columns,
    parse_conf,
    parse_params,
)
from spark_pyfunc._commit import CommitState, gate
from spark_pyfunc._config import PROG, SCOPES
from spark_pyfunc._describe import describe, info_lines
from spark_pyfunc._error_line import first_line, is_expected
from spark_pyfunc._paths import local_path
from spark_pyfunc._spark_session import DEFAULT_MASTER, runtime_conf, spark_session
from spark_pyfunc._version import __version__
from spark_pyfunc.errors import (
    InvalidArgumentError,
    UsageError,
)
from spark_pyfunc.scoring import (
    prepare_score,
    score,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


__all__ = [
    "EXIT_STATUSES",
    "build_parser",
    "main",
    "parse_columns",
    "parse_params",
    "submit_main",
]

logger = logging.getLogger(__name__)


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
        if not verbose and (len(str(exc).splitlines()) > 1 or not is_expected(exc)):
            # before the error, which stays the last line: the model's own, for its errors
            print(f"{PROG}: run with --verbose for details", file=sys.stderr)
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return code


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """spark_pyfunc's own logs on stderr: warnings only, INFO with --verbose.

    Without --verbose the root logger is muted too: py4j logs a traceback through it for
    every call that Ctrl-C interrupts (``logging.exception``), dozens of lines before ours.
    """
    root = logging.getLogger()
    muted = logging.NullHandler()
    root_level = root.level
    if not verbose:
        root.addHandler(muted)  # also keeps logging.exception from calling basicConfig
        root.setLevel(logging.CRITICAL + 1)
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
        root.removeHandler(muted)
        root.setLevel(root_level)


#: The library's keyword arguments -> the flags of ``score`` that set them.
_FLAGS = {
    "bad_records": "--bad-records",
    "batch_size": "--batch-size",
    "method": "--method",
    "model_config": "--model-config",
    "columns": "--columns",
    "input_format": "--input-format",
    "mode": "--mode",
    "output_column": "--output-column",
    "output_format": "--output-format",
    "params": "--param",
    "result_type": "--result-type",
    "scope": "--scope",
}
_KEYWORD = re.compile(rf"\b({'|'.join(_FLAGS)})=(?:'([^']*)')?")


def _reworded(message: str) -> str:
    """A library message in the CLI's words: ``mode='append'`` -> ``--mode append``,
    ``columns=`` -> ``--columns``.

    Example:
        >>> _reworded("pass mode='overwrite' to replace it, or columns= to bind them")
        'pass --mode overwrite to replace it, or --columns to bind them'
    """

    def flag(match: re.Match[str]) -> str:
        value = match.group(2)
        return _FLAGS[match.group(1)] + (f" {value}" if value is not None else "")

    return _KEYWORD.sub(flag, message)


@contextlib.contextmanager
def _in_flags() -> Iterator[None]:
    """Reword the scoring library's argument errors; one about a keyword argument becomes a
    UsageError (exit status 2), as argparse's own errors are."""
    try:
        yield
    except InvalidArgumentError as exc:
        message = _reworded(str(exc))
        if message == str(exc) and exc.argument is None:
            raise
        cls = UsageError if exc.argument is not None else InvalidArgumentError
        raise cls(message) from exc


#: The exit statuses of every command, in --help and in the README (tests check both).
EXIT_STATUSES = """exit status:
  0    done; OUTPUT written (also when Ctrl-C or an error came after OUTPUT was
       committed: a line on stderr says OUTPUT was written)
  1    the model, INPUT, OUTPUT, a setting or Spark failed; OUTPUT is as it was
  2    usage: a missing or malformed argument or flag; nothing ran
  130  interrupted (Ctrl-C) before OUTPUT was committed; OUTPUT is as it was and
       the same command can be run again"""


#: MODEL, for score and info: every form spark_udf takes, resolved on the driver.


def _host_log_dir(args: argparse.Namespace) -> str | None:
    """DIR of --host-log-dir, made absolute (and created), or a kept temp dir with --verbose."""
    if args.host_log_dir is not None:
        directory = local_path(args.host_log_dir)
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"--host-log-dir {args.host_log_dir!r} is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        return str(directory)
    if args.verbose:
        return tempfile.mkdtemp(prefix="spark-pyfunc-host-logs-")
    return None


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
        "bad_records": args.bad_records,
        "progress": sys.stderr.isatty() if args.progress is None else args.progress,
        "method": args.method,
        "model_config": args.model_config,
        "batch_size": args.batch_size,
    }


def _run_score_command(
    args: argparse.Namespace, session: Callable[[dict[str, str]], contextlib.AbstractContextManager]
) -> int:
    """Check, start Spark through ``session``, score, print the summary."""
    options = _score_options(args)
    with _in_flags():
        prepare_score(args.model, args.input, args.output, **options)
    options["host_log_dir"] = _host_log_dir(args)
    if options["host_log_dir"] is not None:
        logger.info("model host logs go to %s", options["host_log_dir"])
    conf = parse_conf(args.conf)
    gate("before-spark")
    state = CommitState()
    summary = None
    try:
        with session(conf) as spark, _in_flags(), _plain_ctrl_c():
            summary = score(
                spark, args.model, args.input, args.output, **options, commit_state=state
            )
            gate("stop")
    except BaseException as exc:
        if not state.committed:
            raise  # OUTPUT is as it was: the error (or Ctrl-C: 130) says so
        # OUTPUT is in place and nothing undoes that: a Ctrl-C (or a failure) while Spark
        # stops must not read as if it were not.
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else first_line(exc)
        written = summary.output if summary is not None else args.output
        print(f"{PROG}: {what} after OUTPUT was written: {written} is complete", file=sys.stderr)
    if state.interrupted:
        print(
            f"{PROG}: Ctrl-C came while OUTPUT was being committed: it was written", file=sys.stderr
        )
    if summary is not None:
        print("\n".join(summary.lines()))
        if args.report is not None:
            _write_report(args.report, summary.to_dict())
    return 0


def _write_report(path: str, report: dict[str, Any]) -> None:
    """``--report FILE.json``: the summary for scripts, written whole or not at all."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)


@contextlib.contextmanager
def _plain_ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt and does nothing else while the job runs.

    PySpark's own SIGINT handler cancels every job from inside the handler, over py4j: on
    PySpark 3.5 that call re-enters the main thread's py4j connection in the middle of the
    running call and ends as a Py4JNetworkError instead of an interrupt. ``score`` cancels
    its own job group when interrupted, outside the handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _info_command(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(info_lines(info)))
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from spark_pyfunc._demo import run_demo

    if args.rows <= 0:
        raise UsageError(f"--rows must be positive: {args.rows}")
    if args.save_data is not None and os.path.exists(args.save_data):
        raise InvalidArgumentError(f"--save-data {args.save_data!r} already exists")
    if args.save_model is not None and os.path.exists(args.save_model):
        raise InvalidArgumentError(f"--save-model {args.save_model!r} already exists")
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


def _build_env_command(args: argparse.Namespace) -> int:
    from spark_pyfunc._env_prebuilt import pack_env

    if os.path.exists(args.out):
        raise InvalidArgumentError(f"OUT {args.out!r} already exists")
    out = pack_env(args.model, args.out, args.env_manager, args.cache_dir)
    print(f"{out} ({os.path.getsize(out) / 2**20:.1f} MiB): pass it as prebuilt_env_uri")
    return 0


def _hosts_command(args: argparse.Namespace) -> int:
    """``spark-pyfunc hosts``: the model hosts on this machine, from their status files."""
    from spark_pyfunc._report import hosts_text, machine_hosts

    rows = machine_hosts(args.dir)
    print(json.dumps(rows, indent=1, default=str) if args.json else hosts_text(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Score MLflow-format Python models in Spark, one model copy per executor.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score_parser = commands.add_parser(
        "score",
        help="score a parquet/csv/json file with a model",
        description="Score INPUT with MODEL and write INPUT's columns plus the predictions.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_score_arguments(score_parser)
    score_parser.add_argument(
        "--master", help=f"Spark master (default: an embedded {DEFAULT_MASTER} session)"
    )

    info_parser = commands.add_parser("info", help="describe a model directory")
    info_parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
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

    env_parser = commands.add_parser(
        "build-env",
        help="build a model's Python environment into an archive for prebuilt_env_uri",
        description="Build the environment MODEL describes (python_env.yaml, requirements.txt "
        "or conda.yaml) with this machine's Python and pack it as OUT (.tar.gz), for "
        "spark_udf(..., prebuilt_env_uri=OUT) on executors without a package registry. The "
        "executors' Python must have this one's major.minor version.",
    )
    env_parser.add_argument("model", metavar="MODEL", help="model directory")
    env_parser.add_argument("out", metavar="OUT", help="the archive to write (.tar.gz)")
    env_parser.add_argument(
        "--env-manager", choices=("uv", "virtualenv"), default="uv", help="the builder"
    )
    env_parser.add_argument(
        "--cache-dir", help="where environments are built (default ~/.cache/spark_pyfunc/envs)"
    )
    env_parser.add_argument("--verbose", action="store_true", help="logs and full tracebacks")

    hosts_parser = commands.add_parser(
        "hosts",
        help="list the model hosts on this machine: model, rows, latency, memory, restarts",
        description="List this user's model hosts on this machine, live and recently exited, "
        "from the status files they keep beside their pid files (found through the links in "
        "the socket directory, <tmp>/spark_pyfunc-<uid>).",
    )
    hosts_parser.add_argument("--json", action="store_true", help="print a JSON list")
    hosts_parser.add_argument(
        "--dir",
        action="append",
        metavar="DIR",
        help="read the status files in DIR (an executor's directory) instead; repeatable",
    )
    hosts_parser.add_argument("--verbose", action="store_true", help="full tracebacks")
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

            def session(conf: dict[str, str]) -> contextlib.AbstractContextManager:
                return spark_session(args.master, verbose=args.verbose, conf=conf)

            return _guarded(lambda: _run_score_command(args, session), args.verbose)
        if args.command == "info":
            return _guarded(lambda: _info_command(args), args.verbose)
        if args.command == "hosts":
            return _guarded(lambda: _hosts_command(args), args.verbose)
        if args.command == "build-env":
            return _guarded(lambda: _build_env_command(args), args.verbose)
        return _guarded(lambda: _demo_command(args), args.verbose)


def submit_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of spark_pyfunc/score_job.py: ``score`` in the session spark-submit
    configured."""
    parser = Parser(
        prog="score_job.py",
        description='spark-submit "$(python -m spark_pyfunc.score_job --path)" MODEL INPUT '
        "OUTPUT [options]: "
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
        def session(conf: dict[str, str]) -> Iterator[SparkSession]:
            from pyspark.sql import SparkSession

            builder = SparkSession.builder.appName(f"{PROG} score_job")
            for key, value in conf.items():
                builder = builder.config(key, value)
            spark = builder.getOrCreate()
            try:
                with runtime_conf(spark, conf):
                    yield spark
            finally:
                spark.stop()

        return _guarded(lambda: _run_score_command(args, session), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
