"""INPUT of ``spark-pyfunc score`` before Spark reads it: where it is, its format, its
columns (a parquet footer, a csv header, the first json line), so that a wrong path, format
or column costs milliseconds, not a Spark start.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from pathlib import Path

from spark_pyfunc._paths import is_remote, local_path
from spark_pyfunc.errors import InvalidArgumentError

__all__ = [
    "CORRUPT_RECORD",
    "FORMATS",
    "bad_argument",
    "check_input",
    "local_input",
    "peek_columns",
    "resolve_format",
]

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "json")
#: Where Spark's csv/json readers put the text of a row they cannot parse.
CORRUPT_RECORD = "_corrupt_record"
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


def bad_argument(keyword: str, message: str) -> InvalidArgumentError:
    """An error in the keyword argument ``keyword``; the message names it as ``keyword=``,
    which the CLI rewords into its flag (``output_column=`` -> ``--output-column``)."""
    error = InvalidArgumentError(message)
    error.argument = keyword
    return error


def local_input(path: str) -> Path | None:
    """The local file behind INPUT, or None for a remote URI that Spark reads as it is."""
    return None if is_remote(path) else local_path(path)


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


def resolve_format(path: str, given: str | None, local: Path | None, role: str) -> str:
    if given is not None:
        return given
    fmt = _format_of_name(path)
    if fmt is None and local is not None and local.is_dir():
        fmt = _format_of_dir(local)
    if fmt is None:
        keyword = "input_format" if role == "INPUT" else "output_format"
        raise bad_argument(
            keyword,
            f"cannot tell the format of {role} {path!r} from its name; name it *.parquet, "
            f"*.csv or *.json, or pass {keyword}= {'|'.join(FORMATS)}",
        )
    return fmt


def check_input(path: str) -> Path | None:
    local = local_input(path)
    if local is None:
        return None
    if any(c in str(local) for c in "*?[") and "{" not in str(local):  # Spark's globs
        if not glob.glob(str(local)):
            raise InvalidArgumentError(f"INPUT {path!r} matches no file")
        return local
    if not local.exists():
        raise InvalidArgumentError(f"INPUT {path!r} does not exist")
    wanted = os.R_OK | (os.X_OK if local.is_dir() else 0)
    if not os.access(local, wanted):
        raise InvalidArgumentError(f"INPUT {path!r} is not readable (permission denied)")
    return local


def peek_columns(local: Path | None, fmt: str) -> list[str] | None:
    """INPUT's column names read without Spark (a parquet footer, a csv header, the keys
    of the first json line), or None when they cannot be read that way."""
    if local is None:
        return None
    try:
        if any(c in str(local) for c in "*?[{"):
            files = sorted(Path(p) for p in glob.glob(str(local)))
        elif local.is_dir():
            files = sorted(
                p for p in local.rglob("*")
                if p.is_file() and not p.name.startswith(("_", "."))
            )  # fmt: skip
        else:
            files = [local]
        if fmt != "parquet":  # compressed text is left to Spark
            files = [f for f in files if not set(f.suffixes) & _COMPRESSIONS]
        if not files:
            return None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(files[0]).names)
        with open(files[0], encoding="utf-8", newline="") as handle:
            first = handle.readline()
        if fmt == "csv":
            return next(csv.reader([first])) if first.strip() else None
        value = json.loads(first) if first.strip() else None
        return None if not isinstance(value, dict) else list(value)
    except (OSError, ValueError, UnicodeDecodeError, StopIteration):
        return None  # Spark reads it, and says what is wrong
    except Exception as exc:  # pyarrow's own errors: leave the verdict to Spark
        logger.debug("could not read the columns of %s without Spark: %s", local, exc)
        return None
