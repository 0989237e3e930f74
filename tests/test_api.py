"""The public API: everything in ``__all__`` resolves, and the format layer stays Spark-free."""

from __future__ import annotations

import ast
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


def imported_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``import <imports>``."""
    code = f"import sys, {imports}; print(repr(sorted(m for m in {modules!r} if m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return ast.literal_eval(out.strip())


def test_importing_the_package_or_the_host_does_not_import_pyspark_or_mlflow() -> None:
    imports = "spark_pyfunc, spark_pyfunc.host, spark_pyfunc.client"
    assert imported_after(imports, ("pyspark", "mlflow")) == []


def test_spark_udf_is_loaded_on_first_use() -> None:
    from spark_pyfunc.udf import spark_udf

    assert spark_pyfunc.spark_udf is spark_udf


def test_a_worker_relaying_to_the_host_does_not_import_the_format_layer() -> None:
    """A Spark worker with scope="executor" imports spark_pyfunc.udf to run the UDF; the
    model is in the host, so the signature/loading modules would only cost memory there."""
    format_layer = (
        "spark_pyfunc.schema",
        "spark_pyfunc.format",
        "spark_pyfunc.loading",
        "spark_pyfunc.saving",
        "yaml",
        "mlflow",
    )
    assert imported_after("spark_pyfunc.udf", format_layer) == []
