"""The public API: everything in ``__all__`` resolves, and the format layer stays Spark-free."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

import spark_pyfunc
from spark_pyfunc import errors


def test_every_public_name_resolves_to_its_definition() -> None:
    """Each name of ``__all__`` is the object its defining module holds (a lazy entry
    pointing at the wrong module, or a name missing from it, fails here)."""
    for name in spark_pyfunc.__all__:
        value = getattr(spark_pyfunc, name)
        if name == "__version__":
            assert isinstance(value, str) and value.count(".") >= 1
        elif name.endswith("Error"):
            assert value is getattr(errors, name), name
        else:
            module = importlib.import_module(f"spark_pyfunc.{spark_pyfunc._LAZY[name]}")
            assert value is getattr(module, name), name
            assert value.__module__ == module.__name__, name
    assert set(spark_pyfunc.__all__) <= set(dir(spark_pyfunc))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = spark_pyfunc.nothing_here


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
    """``import spark_pyfunc`` does not import the UDF module (nor pyspark); the first
    ``spark_pyfunc.spark_udf`` does, and returns that module's function."""
    code = (
        "import sys, spark_pyfunc; "
        "before = sorted(m for m in ('spark_pyfunc.udf', 'pyspark') if m in sys.modules); "
        "f = spark_pyfunc.spark_udf; "
        "print(repr((before, f is sys.modules['spark_pyfunc.udf'].spark_udf, "
        "'pyspark' in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert ast.literal_eval(out.strip()) == ([], True, True)


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
