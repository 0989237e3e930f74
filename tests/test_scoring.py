"""The batch-scoring library's checks before Spark: its errors name keywords, not CLI flags.

The CLI's wording of the same errors (``--mode``, exit status 2) is tested in test_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spark_pyfunc._demo import FEATURES, build_model
from spark_pyfunc.cli import _reworded
from spark_pyfunc.errors import InvalidArgumentError
from spark_pyfunc.scoring import prepare_score


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("scoring") / "model")


@pytest.fixture
def csv_input(tmp_path) -> Path:
    path = tmp_path / "in.csv"
    pd.DataFrame({f: [1.0, 2.0] for f in FEATURES}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("options", "keyword", "expected"),
    [
        ({"mode": "replace"}, "mode", "mode= must be one of error, overwrite, append: 'replace'"),
        ({"scope": "gpu"}, "scope", "scope= must be one of auto, executor, process: 'gpu'"),
        ({"bad_records": "drop"}, "bad_records", "bad_records= must be one of fail, skip, keep"),
        ({"output_column": ""}, "output_column", "output_column= must not be empty"),
        ({"columns": ["x"] * 9}, "columns", "columns= gives 9 columns but the model takes 8"),
        ({"params": {"nope": 1}}, "params", "the model has no param 'nope'"),
        ({"params": {"threshold": "high"}}, "params", "params=: "),
    ],
)
def test_an_argument_error_names_the_keyword(
    model, csv_input, tmp_path, options, keyword, expected
):
    with pytest.raises(InvalidArgumentError) as caught:
        prepare_score(model, str(csv_input), str(tmp_path / "out.parquet"), **options)
    assert type(caught.value) is InvalidArgumentError  # the library raises no UsageError
    assert caught.value.argument == keyword
    assert expected in str(caught.value)
    assert "--" not in str(caught.value)


def test_an_existing_output_names_the_mode_keyword_and_no_argument(model, csv_input, tmp_path):
    """Not a wrong argument but a state of the filesystem: exit status 1 in the CLI."""
    with pytest.raises(InvalidArgumentError) as caught:
        prepare_score(model, str(csv_input), str(tmp_path))
    assert caught.value.argument is None
    assert "pass mode='overwrite' to replace it" in str(caught.value)


def test_a_good_job_is_prepared_without_spark(model, csv_input, tmp_path):
    job = prepare_score(model, str(csv_input), str(tmp_path / "o"), output_format="json")
    assert (job.input_format, job.output_format, job.mode) == ("csv", "json", "error")
    assert job.model == model and job.params is None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("mode= must be one of error: 'x'", "--mode must be one of error: 'x'"),
        ("pass mode='overwrite' to replace it", "pass --mode overwrite to replace it"),
        ("params=: bad value", "--param: bad value"),
        ("result_type= 'doubel' is not valid", "--result-type 'doubel' is not valid"),
        ("bad_records='skip' or bad_records='keep'", "--bad-records skip or --bad-records keep"),
        (
            "the model's params are: a, b; mode is fine",
            "the model's params are: a, b; mode is fine",
        ),
    ],
)
def test_the_cli_rewords_keywords_into_flags(message, expected):
    assert _reworded(message) == expected


def test_the_cli_turns_a_keyword_error_into_a_usage_error(model, csv_input, tmp_path, capsys):
    from spark_pyfunc.cli import main

    out = str(tmp_path / "o.parquet")
    assert main(["score", str(model), str(csv_input), out, "--output-column", ""]) == 2
    assert "error: --output-column must not be empty" in capsys.readouterr().err
