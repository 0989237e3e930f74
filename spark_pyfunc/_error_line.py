"""The one line the CLI prints for a failure: the model's own ``Type: message`` for an error
from the model (the last Python traceback in Spark's message), the telling cause of a Java
error, else the exception's first line."""

from __future__ import annotations

import re
from typing import Any

from spark_pyfunc.errors import SparkPyfuncError

__all__ = ["first_line", "is_expected", "is_spark_error"]


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


def first_line(exc: BaseException) -> str:
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
    if not isinstance(exc, SparkPyfuncError) and not is_spark_error(exc):
        line = f"{type(exc).__name__}: {line}"
    return line


def is_spark_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("pyspark", "py4j"))


def is_expected(exc: BaseException) -> bool:
    return isinstance(exc, (SparkPyfuncError, OSError)) or is_spark_error(exc)
