"""The public API: everything in ``__all__`` resolves, and the format layer stays Spark-free."""

from __future__ import annotations

import subprocess
import sys

import spark_pyfunc


def test_every_public_name_resolves() -> None:
    for name in spark_pyfunc.__all__:
        assert getattr(spark_pyfunc, name) is not None, name


def test_errors_share_one_base() -> None:
    errors = [getattr(spark_pyfunc, n) for n in spark_pyfunc.__all__ if n.endswith("Error")]
    assert len(errors) >= 10
    assert all(issubclass(e, spark_pyfunc.SparkPyfuncError) for e in errors)


def test_importing_the_package_or_the_host_does_not_import_pyspark_or_mlflow() -> None:
    code = (
        "import sys, spark_pyfunc, spark_pyfunc.host, spark_pyfunc.client;"
        "print(sorted(m for m in ('pyspark', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_spark_udf_is_loaded_on_first_use() -> None:
    from spark_pyfunc.udf import spark_udf

    assert spark_pyfunc.spark_udf is spark_udf


def test_a_worker_relaying_to_the_host_does_not_import_the_format_layer() -> None:
    """A Spark worker with scope="executor" imports spark_pyfunc.udf to run the UDF; the
    model is in the host, so the signature/loading modules would only cost memory there."""
    code = (
        "import sys, spark_pyfunc.udf;"
        "print(sorted(m for m in sys.modules if m in ("
        "'spark_pyfunc.schema', 'spark_pyfunc.format', 'spark_pyfunc.loading',"
        "'spark_pyfunc.saving', 'yaml', 'mlflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
