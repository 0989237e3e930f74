"""The embedded Spark session of the CLI, and the Java check that must come before it.

Spark's own message for a missing or old Java is a JVM stack trace after seconds of start-up;
``check_java`` says the same in one line before anything touches Spark.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from spark_pyfunc._config import PROG
from spark_pyfunc.errors import (
    EnvironmentSetupError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


__all__ = [
    "DEFAULT_MASTER",
    "check_java",
    "runtime_conf",
    "spark_session",
]

DEFAULT_MASTER = "local[*]"
_INSTALL_JAVA = (
    "install one (e.g. `sudo apt-get install openjdk-17-jre-headless`, "
    "`brew install openjdk@17`) or set JAVA_HOME to a Java 17 or 21 installation"
)
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
logger = logging.getLogger(__name__)


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
            raise EnvironmentSetupError(
                f"Spark needs Java 17 or 21, but JAVA_HOME={home} has no bin/java; "
                f"point JAVA_HOME at a Java installation or {_INSTALL_JAVA}"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise EnvironmentSetupError(
                f"Spark needs Java 17 or 21 and there is no `java` on PATH (JAVA_HOME is not "
                f"set): {_INSTALL_JAVA}"
            )
        java = found
    spark4 = int(pyspark.__version__.split(".")[0]) >= 4
    needed, supported = (17, "17 or 21") if spark4 else (8, "8, 11 or 17")
    major = _java_major(java)
    if major is not None and major < needed:
        raise EnvironmentSetupError(
            f"Spark {pyspark.__version__} needs Java {supported}, but {java} is Java {major}: "
            f"{_INSTALL_JAVA}"
        )
    return java


@contextlib.contextmanager
def spark_session(
    master: str | None,
    *,
    verbose: bool = False,
    app_name: str = PROG,
    conf: Mapping[str, str] | None = None,
) -> Iterator[SparkSession]:
    """The active session if there is one (left running), else an embedded one (stopped after).

    ``conf`` (``--conf``) configures the embedded session; on the active one it is set for the
    block (settings Spark fixes at start cannot be: the error names them).

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
        with runtime_conf(active, conf or {}):
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
            # The CLI shows rows scored itself (--progress); Spark's stage bar would fight it.
            .config("spark.ui.showConsoleProgress", "false")
        )
        if master.startswith("local"):
            # An embedded session needs no network: keep the driver on the loopback interface.
            builder = builder.config("spark.driver.host", "127.0.0.1").config(
                "spark.driver.bindAddress", "127.0.0.1"
            )
        for key, value in (conf or {}).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        try:
            yield spark
        finally:
            spark.stop()


@contextlib.contextmanager
def runtime_conf(spark: SparkSession, conf: Mapping[str, str]) -> Iterator[None]:
    """``conf`` set on a running session for the block, the previous values put back."""
    previous: dict[str, str | None] = {}
    try:
        for key, value in conf.items():
            current = spark.conf.get(key, None)
            if current == value:
                continue
            previous[key] = current
            try:
                spark.conf.set(key, value)
            except Exception as exc:  # a setting Spark fixes when it starts
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                raise InvalidArgumentError(
                    f"--conf {key}={value}: the running Spark session refuses it: {reason}"
                ) from exc
        yield
    finally:
        for key, value in previous.items():
            with contextlib.suppress(Exception):
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
