"""The ``spark-pyfunc score`` arguments: their parsers and their declaration.

Kept apart from the console script (cli.py) so that the command's flags, and the parsers that
turn their text into the library's keywords (``--param``, ``--columns``, ``--model-config``,
``--conf``), read in one place.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from spark_pyfunc._config import DEFAULT_SCOPE, HOST_LOG_DIR, SCOPES
from spark_pyfunc._paths import local_path
from spark_pyfunc.errors import (
    UsageError,
)
from spark_pyfunc.scoring import (
    BAD_RECORDS,
    CORRUPT_RECORD,
    FORMATS,
    MODES,
)

if TYPE_CHECKING:
    pass


__all__ = [
    "MODEL_HELP",
    "Parser",
    "add_score_arguments",
    "parse_columns",
    "parse_conf",
    "parse_model_config",
    "parse_params",
]

MODEL_HELP = (
    "model directory (MLflow pyfunc format) or model URI: file:, runs:/ID/PATH, "
    "models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/STAGE, models:/NAME/latest, "
    "s3://, gs://, abfss://, hdfs://, dbfs:/ (downloaded first, through MLflow when installed)"
)


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


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


def parse_model_config(text: str) -> dict[str, Any]:
    """``'{"k": 1}'`` or ``@file.json`` -> the JSON object, refusing anything else."""
    source = f"--model-config {text!r}"
    if text.startswith("@"):
        try:
            text = local_path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{source}: cannot read the file: {exc.strerror or exc}") from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object, like '{{\"threshold\": 0.8}}'")
    return value


def parse_conf(items: Sequence[str]) -> dict[str, str]:
    """``["spark.k=v", ...]`` -> dict, refusing items without ``=`` and repeated keys."""
    conf: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--conf {item!r} must look like KEY=VALUE")
        if key in conf:
            raise UsageError(f"--conf {key!r} is given twice")
        conf[key] = value
    return conf


def parse_columns(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ("a", "b"), refusing empty and repeated names."""
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names):
        raise UsageError(f"--columns {text!r} has an empty column name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--columns {text!r} repeats {', '.join(repeated)}")
    return names


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``score``, shared with score_job.py (which has no --master)."""
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("input", metavar="INPUT", help="input file or directory")
    parser.add_argument("output", metavar="OUTPUT", help="output directory Spark writes")
    parser.add_argument(
        "--report",
        metavar="FILE.json",
        help="also write the summary (rows, time, host loads, restarts, memory) as JSON",
    )
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
        "--method",
        default="predict",
        help="the model's method to call, e.g. predict_proba (default: predict); its result "
        "type defaults to double, as MLflow's: the signature describes predict. Checked "
        "before Spark starts when the model lists its methods ('info' shows them)",
    )
    parser.add_argument(
        "--model-config",
        type=parse_model_config,
        metavar="JSON|@FILE",
        help="model_config given to the model: a JSON object, or @FILE holding one",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="at most N rows per call of the model (default: Spark's Arrow batch)",
    )
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark or spark.pyfunc.* setting for this run, e.g. "
        "spark.pyfunc.host.mode=prefork; repeatable",
    )
    parser.add_argument(
        "--scope",
        choices=SCOPES,
        default=DEFAULT_SCOPE,
        help="one model copy per executor, per Python worker, or chosen by model size",
    )
    parser.add_argument(
        "--bad-records",
        choices=BAD_RECORDS,
        default="fail",
        help="csv/json rows Spark cannot parse: fail with their count and the first one "
        "(default), skip them, or keep them (scored from nulls), with the raw text in "
        f"{CORRUPT_RECORD}",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the finished tasks of the job on stderr (default: only on a terminal); "
        "OUTPUT is the same either way",
    )
    parser.add_argument(
        "--host-log-dir",
        metavar="DIR",
        help=f"keep the model hosts' logs in DIR (sets {HOST_LOG_DIR.key}); with --verbose "
        "a new temporary directory is used unless this is given",
    )
    parser.add_argument("--verbose", action="store_true", help="logs and full tracebacks")
