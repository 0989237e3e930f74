"""The examples in the package's docstrings run, as doctests, wherever they need no Spark.

Examples that need a SparkSession are marked ``# doctest: +SKIP``; every other one runs here,
in a fresh directory (the save/load examples write models into it).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

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


README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_configuration_table_is_the_declared_settings() -> None:
    """The README's table is settings_table(), so a setting added, renamed or given another
    default in _config.py cannot leave the docs behind."""
    from spark_pyfunc._config import SETTINGS, settings_table

    assert settings_table() in README.read_text()
    assert all(setting.doc for setting in SETTINGS.values()), "a setting without a doc"


def test_every_setting_key_is_declared_once() -> None:
    from spark_pyfunc import _config

    declared = [v for v in vars(_config).values() if isinstance(v, _config.Setting)]
    assert sorted(s.key for s in declared) == sorted(_config.SETTINGS)
    flags = [s.flag for s in declared if s.flag]
    assert len(flags) == len(set(flags))
