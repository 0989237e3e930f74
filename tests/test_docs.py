"""The examples in the package's docstrings run, as doctests, wherever they need no Spark.

Examples that need a SparkSession are marked ``# doctest: +SKIP``; every other one runs here,
in a fresh directory (the save/load examples write models into it).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import spark_pyfunc


def docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(spark_pyfunc.__path__, "spark_pyfunc."):
        module = importlib.import_module(info.name)
        found += [test for test in finder.find(module) if test.examples]
    return found


EXAMPLES = docstring_examples()


def test_the_entry_points_have_examples() -> None:
    names = {test.name for test in EXAMPLES}
    assert {
        "spark_pyfunc._udf.spark_udf",
        "spark_pyfunc._saving.save_model",
        "spark_pyfunc._loading.load_model",
        "spark_pyfunc._loading.PyFuncModel.predict",
        "spark_pyfunc._loading.PyFuncModel.invoke",
        "spark_pyfunc._paths.local_path",
        "spark_pyfunc.cli._reworded",
    } <= names


@pytest.mark.parametrize("test", EXAMPLES, ids=lambda test: test.name)
def test_a_docstring_example_runs(test: doctest.DocTest, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{test.name}: see the doctest output above"
