"""Shared fixtures: real Spark sessions (local[2] and a multi-process local-cluster).

Only one SparkContext can live in a JVM, so the fixtures share one session at a time and
switch master only when a test asks for the other kind. Test files that need the cluster are
named ``test_cluster_*.py`` so that pytest's file order keeps them together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, settings
from support.processes import wait_exited

# Property tests: the same examples on every run ("ci", the default: derandomized, no example
# database), so that the suite cannot pass or fail by luck. `HYPOTHESIS_PROFILE=explore` draws
# fresh random examples, many more of them (HYPOTHESIS_EXAMPLES per test), and keeps failures
# in .hypothesis/ to replay (docs/testing.md); what it finds becomes an @example.
settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "explore",
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "50000")),
    derandomize=False,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Spark's Python workers must run this interpreter (the virtualenv with spark_pyfunc in it).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Loopback only: without this Spark binds the driver to the machine's first interface address.
# Subprocesses (spark-submit, notebook kernels, the CLI) inherit it.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

#: Hosts that a test leaves behind exit after this long even if nothing stops them (the
#: default, 600 s, would keep them across the rest of the run); the fixture below stops them.
TEST_IDLE_TIMEOUT = "60"

LOCAL_MASTER = "local[2]"
CLUSTER_MASTER = "local-cluster[2,2,1024]"
#: Fault tests: one executor with 2 cores (two workers sharing one host), and no task retries,
#: so that only spark_pyfunc's own restart can save a job from a fault.
FAULT_MASTER = "local-cluster[1,2,1024]"
FAULT_CONF = {"spark.task.maxFailures": "1"}

_active: dict = {}


def get_session(master: str, tmp_root: str, conf: dict[str, str] | None = None):
    """Return a SparkSession on ``master`` with ``conf``, stopping the current one if it
    differs."""
    from pyspark.sql import SparkSession

    _start_gateway_bare()
    wanted = (master, tuple(sorted((conf or {}).items())))
    current = _active.get("session")
    if current is not None and _active.get("key") == wanted:
        return current
    if current is not None:
        current.stop()
        _active.clear()
    builder = (
        SparkSession.builder.master(master)
        .appName("spark_pyfunc-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.warehouse.dir", os.path.join(tmp_root, "warehouse"))
        .config("spark.local.dir", os.path.join(tmp_root, "spark-local"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={tmp_root}")
        .config("spark.pyfunc.host.idleTimeout", TEST_IDLE_TIMEOUT)
        .config("spark.pyfunc.cache.dir", os.path.join(tmp_root, "model-cache"))
    )
    if master.startswith("local-cluster"):
        builder = (
            builder.config("spark.executor.memory", "512m")
            # Spark's default, said explicitly: PySpark 3.5's builder keeps earlier options.
            .config("spark.task.maxFailures", "4")
        )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    if master.startswith("local-cluster"):
        _cluster_apps.append(session.sparkContext.applicationId)
    _active.update(session=session, master=master, key=wanted)
    return session


#: The local-cluster applications this run started. A local-cluster's Workers ignore
#: ``spark.worker.dir`` and keep each application's executor directories (logs, fetched
#: files) under $SPARK_HOME/work, inside the virtualenv's pyspark: removed at the end.
_cluster_apps: list[str] = []


@pytest.fixture(scope="session")
def spark_tmp(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("spark"))


@pytest.fixture
def spark(spark_tmp):
    """A local[2] session: for UDF semantics."""
    return get_session(LOCAL_MASTER, spark_tmp)


@pytest.fixture
def cluster_spark(spark_tmp):
    """A local-cluster with 2 executors of 2 cores each, in their own JVM and Python processes."""
    return get_session(CLUSTER_MASTER, spark_tmp)


@pytest.fixture
def fault_spark(spark_tmp):
    """A local-cluster with one 2-core executor and spark.task.maxFailures=1, for faults."""
    return get_session(FAULT_MASTER, spark_tmp, FAULT_CONF)


def _model_hosts(under: str) -> list[psutil.Process]:
    """This run's model hosts: their command line names a path under ``under`` (the run's
    pytest temp root), so other runs on the machine are never touched."""
    prefix = os.path.join(under, "")  # pytest-2/ must not match pytest-20/
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "spark_pyfunc._host" in cmdline and any(prefix in arg for arg in cmdline):
            found.append(proc)
    return found


def stop_model_hosts(under: str) -> None:
    """SIGTERM (hosts then remove their socket), SIGKILL what is left after a while. A host
    has stopped once it has exited: its zombie is init's to reap (see support.processes)."""
    hosts = _model_hosts(under)
    for proc in hosts:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    running = wait_exited(hosts, timeout=30)
    for proc in running:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    wait_exited(running, timeout=30)


@pytest.fixture(autouse=True)
def _stop_model_hosts_after_each_test(tmp_path_factory) -> Iterator[None]:
    """Each test starts its own hosts: none survives into the next test, whose results
    would then depend on which tests ran before it."""
    yield
    stop_model_hosts(str(tmp_path_factory.getbasetemp()))


# The tests' own model modules (every tests/*_models.py), imported by the tests and named in
# models' code_paths: found, not listed, so a new one is kept too.
_HELPER_MODULES = tuple(sorted(p.stem for p in Path(__file__).parent.glob("*_models.py")))


@pytest.fixture(autouse=True)
def _keep_helper_modules() -> Iterator[None]:
    """load_model() of a model whose code_paths hold a helper module forgets the module and
    puts the model's copy first on sys.path (as MLflow does). A later test's class, imported
    from the old module, would then no longer be the module's own, and cloudpickle would
    pickle it by value (no import in the host, so the host's import gates never open)."""
    path = list(sys.path)
    modules = {name: sys.modules[name] for name in _HELPER_MODULES if name in sys.modules}
    yield
    sys.path[:] = path
    sys.modules.update(modules)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store_in_tmp(tmp_path_factory) -> Iterator[None]:
    """MLflow's default tracking store is ./mlflow.db: a test that resolves a runs:/ or
    models:/ URI without its own store must not leave one in the working directory."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
        yield


@pytest.fixture(scope="session", autouse=True)
def _stop_spark_at_end() -> Iterator[None]:
    yield
    session = _active.pop("session", None)
    if session is not None:
        session.stop()
    import pyspark

    work = Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent) / "work"
    for app in _cluster_apps:
        shutil.rmtree(work / app, ignore_errors=True)


def stop_active_session() -> None:
    """Stop the shared session (the next fixture use starts a fresh one), before a test
    builds its own."""
    _start_gateway_bare()
    session = _active.pop("session", None)
    _active.clear()
    if session is not None:
        session.stop()


def _start_gateway_bare() -> None:
    """Start PySpark's JVM gateway with no settings of any test's. PySpark starts it with the
    first session's settings as JVM system properties, which every later SparkConf() loads:
    a run whose first session set ``spark.executor.cores=1`` gave the fault tests' 2-core
    cluster two 1-core executors."""
    from pyspark import SparkContext

    SparkContext._ensure_initialized()


# The fault tests' fixtures (faults, faulty_model, evidence_root), for every module that kills
# something; imported last, since tests/support/faults.py reads this module's constants.
from support.faults import evidence_root, faults, faulty_model  # noqa: E402, F401
