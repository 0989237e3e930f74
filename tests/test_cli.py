"""The spark-pyfunc console script end to end: score, info, demo, and every error path.

Scoring runs in-process through ``main([...])`` on the shared local[2] session (the CLI reuses an
active session and leaves it running); the demo, Ctrl-C and a few error cases run as real
subprocesses through the installed console script, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import psutil
import pyspark
import pytest
import yaml
from udf_models import FailsOnSomeRows

from spark_pyfunc import load_model, save_model
from spark_pyfunc._demo import FEATURES, LogisticScorer, build_model, example_features
from spark_pyfunc.cli import main, parse_columns, parse_params
from spark_pyfunc.errors import UsageError
from spark_pyfunc.python_model import PythonModel
from spark_pyfunc.schema import ColSpec, DataType, ModelSignature, Schema

CONF_HOST_LOG_DIR = "spark.pyfunc.host.logDir"

#: Printed before an error that --verbose would tell more about (the error stays last).
VERBOSE_HINT = "spark-pyfunc: run with --verbose for details"

CONSOLE_SCRIPT = Path(sys.executable).with_name("spark-pyfunc")

# The models below are pickled by value, so Spark's workers need no tests directory on their path.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Slow(PythonModel):
    """Writes its pid to model_config["started"], then takes a minute per batch."""

    def predict(self, context, model_input, params=None):
        with open(context.model_config["started"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(60)
        return pd.Series(np.zeros(len(model_input)))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("cli") / "model", seed=1)


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    frame = example_features(300, seed=3)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    return frame


@pytest.fixture(scope="module")
def parquet_input(tmp_path_factory, features) -> Path:
    path = tmp_path_factory.mktemp("in") / "features.parquet"
    features.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def csv_input(tmp_path_factory, features) -> Path:
    path = tmp_path_factory.mktemp("in") / "features.csv"
    features.to_csv(path, index=False)
    return path


def expected(model_dir: Path, features: pd.DataFrame, **params) -> pd.DataFrame:
    model = load_model(model_dir)
    return model.predict(features[list(FEATURES)], params=params or None)


def read_output(path: Path, fmt: str) -> pd.DataFrame:
    """All part files of a Spark output directory, sorted by id."""
    if fmt == "parquet":
        frame = pd.read_parquet(path)
    else:
        parts = sorted(path.glob(f"part-*.{fmt}"))
        assert parts, f"no part files in {path}"
        if fmt == "csv":
            frame = pd.concat([pd.read_csv(p) for p in parts])
        else:
            frame = pd.concat([pd.read_json(p, lines=True) for p in parts])
    return frame.sort_values("id").reset_index(drop=True)


def struct_fields(column: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(list(column))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x != VERBOSE_HINT]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("spark-pyfunc: error: ")
    return lines[0]


# ------------------------------------------------------------------ parsing, no Spark


def test_params_are_json_when_they_parse_and_text_otherwise():
    parsed = parse_params(["threshold=0.8", "on=true", "ids=[1, 2]", "name=eu-west", "eq=a=b"])
    assert parsed == {"threshold": 0.8, "on": True, "ids": [1, 2], "name": "eu-west", "eq": "a=b"}


@pytest.mark.parametrize("item", ["threshold", "=0.5", " =1"])
def test_param_without_name_or_value_is_a_usage_error(item):
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_params([item])


def test_param_given_twice_is_a_usage_error():
    with pytest.raises(UsageError, match="'threshold' is given twice"):
        parse_params(["threshold=0.1", "threshold=0.2"])


def test_columns_refuse_empty_and_repeated_names():
    assert parse_columns(" a, b ") == ("a", "b")
    with pytest.raises(UsageError, match="empty column name"):
        parse_columns("a,,b")
    with pytest.raises(UsageError, match="repeats a"):
        parse_columns("a,b,a")


def test_help_and_version_exit_zero(capsys):
    assert main(["--help"]) == 0
    assert "score" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "spark-pyfunc" in capsys.readouterr().out


# ------------------------------------------------------------------- errors, no Spark


def test_missing_arguments_is_a_usage_error_on_one_line(capsys):
    code, _, err = run_cli(capsys, "score", "model-only")
    assert code == 2
    line = one_error_line(err)
    assert "INPUT" in line and "OUTPUT" in line and "spark-pyfunc score --help" in line


def test_missing_model_directory(capsys, tmp_path, parquet_input):
    missing = tmp_path / "no-such-model"
    code, _, err = run_cli(capsys, "score", missing, parquet_input, tmp_path / "out.parquet")
    assert code == 1
    assert str(missing) in one_error_line(err)


def test_directory_without_mlmodel(capsys, tmp_path, parquet_input):
    (tmp_path / "not-a-model").mkdir()
    code, _, err = run_cli(
        capsys, "score", tmp_path / "not-a-model", parquet_input, tmp_path / "out.parquet"
    )
    assert code == 1
    assert "MLmodel" in one_error_line(err)


def test_unresolvable_model_uri_is_named(capsys, tmp_path, parquet_input, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, _, err = run_cli(capsys, "score", "runs:/abc/model", parquet_input, tmp_path / "o.json")
    assert code == 1
    # MLflow may log its own INFO lines first (creating the store); ours is the last line.
    line = err.strip().splitlines()[-1]
    assert line.startswith("spark-pyfunc: error: cannot resolve model URI 'runs:/abc/model'")
    assert "abc" in line.split("runs:/abc/model", 1)[1]  # the reason names the run
    assert not (tmp_path / "o.json").exists()


def test_missing_input(capsys, tmp_path, model_dir):
    missing = tmp_path / "nothing.parquet"
    code, _, err = run_cli(capsys, "score", model_dir, missing, tmp_path / "out.parquet")
    assert code == 1
    line = one_error_line(err)
    assert str(missing) in line and "does not exist" in line


def test_glob_input_matching_nothing(capsys, tmp_path, model_dir):
    code, _, err = run_cli(
        capsys, "score", model_dir, tmp_path / "part-*.parquet", tmp_path / "out.parquet"
    )
    assert code == 1
    assert "matches no file" in one_error_line(err)


def test_unreadable_input(capsys, tmp_path, model_dir, features, monkeypatch):
    path = tmp_path / "secret.parquet"
    features.to_parquet(path)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads every file: deny access the way the kernel would
        real_access = os.access
        monkeypatch.setattr(
            "spark_pyfunc.scoring.os.access",
            lambda p, mode: str(p) != str(path) and real_access(p, mode),
        )
    code, _, err = run_cli(capsys, "score", model_dir, path, tmp_path / "out.parquet")
    assert code == 1
    assert "not readable" in one_error_line(err)


def test_input_spark_cannot_read(spark, capsys, tmp_path, model_dir):
    path = tmp_path / "corrupt.parquet"
    path.write_text("id,f0\n1,2\n")
    code, _, err = run_cli(capsys, "score", model_dir, path, tmp_path / "out.parquet")
    assert code == 1
    line = one_error_line(err)
    assert "corrupt.parquet" in line and "Traceback" not in err


def test_existing_output_with_mode_error(capsys, tmp_path, model_dir, parquet_input):
    out = tmp_path / "scored.parquet"
    out.mkdir()
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, out)
    assert code == 1
    line = one_error_line(err)
    assert str(out) in line and "--mode overwrite" in line


def test_output_equal_to_input_is_refused(capsys, model_dir, parquet_input):
    code, _, err = run_cli(
        capsys, "score", model_dir, parquet_input, parquet_input, "--mode", "overwrite"
    )
    assert code == 2
    assert "same path" in one_error_line(err)


def test_unknown_format_needs_an_option(capsys, tmp_path, model_dir, parquet_input):
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, tmp_path / "scored.out")
    assert code == 2
    line = one_error_line(err)
    assert "scored.out" in line and "--output-format" in line


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("threshold", "NAME=VALUE"),
        ("cutoff=0.3", "no param 'cutoff'; its params are: threshold"),
        ("threshold=not-a-number", "threshold"),
    ],
)
def test_bad_param(capsys, tmp_path, model_dir, parquet_input, param, message):
    code, _, err = run_cli(
        capsys, "score", model_dir, parquet_input, tmp_path / "o.parquet", "--param", param
    )
    assert code == 2
    assert message in one_error_line(err)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("a,,b", "empty column name"),
        (",".join(f"c{i}" for i in range(9)), "gives 9 columns but the model takes 8 inputs"),
        ("f0,f1", "the required inputs f2, f3, f4, f5, f6, f7 are left without a column"),
    ],
)
def test_bad_columns(capsys, tmp_path, model_dir, parquet_input, columns, message):
    code, _, err = run_cli(
        capsys, "score", model_dir, parquet_input, tmp_path / "o.parquet", "--columns", columns
    )
    assert code == 2
    assert message in one_error_line(err)


def test_params_for_a_model_without_params_schema(capsys, tmp_path, parquet_input):
    weights = tmp_path / "w.npy"
    np.save(weights, np.zeros(len(FEATURES) + 1))
    model = tmp_path / "plain"
    save_model(
        model,
        python_model=LogisticScorer(),
        artifacts={"weights": str(weights)},
        input_example=example_features(3),
    )
    code, _, err = run_cli(
        capsys, "score", model, parquet_input, tmp_path / "o.parquet", "--param", "threshold=1"
    )
    assert code == 2
    assert "takes no params" in one_error_line(err)


# ------------------------------------------------------------------------------- info


def test_info_text(capsys, model_dir):
    code, out, _ = run_cli(capsys, "info", model_dir)
    assert code == 0
    metadata = load_model(model_dir).metadata
    assert str(model_dir) in out
    assert "python_function" in out and "mlflow.pyfunc.model" in out
    assert metadata.model_uuid in out
    assert "inputs:" in out and "outputs:" in out
    for name in (*FEATURES, "probability", "label"):
        assert name in out
    param_line = next(line for line in out.splitlines() if "threshold" in line)
    assert param_line.split() == ["threshold", "double", "0.5"]
    assert "weights" in out and "requirements:" in out and "cloudpickle" in out


def test_info_shows_model_config(capsys, sized_model, tmp_path):
    model = tmp_path / "configured"
    save_model(model, python_model=Sized(), model_config={"threshold": 0.8, "name": "x"})
    code, out, _ = run_cli(capsys, "info", model)
    assert code == 0
    at = out.splitlines().index("model_config:")
    shown = sorted(line.split() for line in out.splitlines()[at + 1 : at + 3])
    assert shown == [["name", '"x"'], ["threshold", "0.8"]]
    code, out, _ = run_cli(capsys, "info", model, "--json")
    assert json.loads(out)["model_config"] == {"threshold": 0.8, "name": "x"}
    code, out, _ = run_cli(capsys, "info", sized_model)
    assert "model_config  -" in out


def test_info_json_is_a_stable_dict(capsys, model_dir):
    code, out, _ = run_cli(capsys, "info", model_dir, "--json")
    assert code == 0
    info = json.loads(out)
    assert set(info) == {
        "model", "path", "model_config", "flavors", "loader_module", "model_uuid",
        "utc_time_created", "model_size_bytes", "python_version", "cloudpickle_version",
        "mlflow_version", "methods",
        "inputs", "outputs", "params", "artifacts", "requirements",
    }  # fmt: skip
    assert info["path"] == str(model_dir.resolve()) or info["path"] == str(model_dir)
    assert info["loader_module"] == "mlflow.pyfunc.model"
    assert "python_function" in info["flavors"]
    assert info["inputs"] == [{"name": f, "type": "double", "required": True} for f in FEATURES]
    assert [o["name"] for o in info["outputs"]] == ["probability", "label"]
    assert info["params"] == [{"name": "threshold", "type": "double", "default": 0.5}]
    assert list(info["artifacts"]) == ["weights"]
    assert info["model_size_bytes"] > 0
    assert info["python_version"].startswith(f"{sys.version_info.major}.")
    assert any(r.startswith("cloudpickle") for r in info["requirements"])


def test_info_on_missing_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", tmp_path / "gone", "--json")
    assert code == 1
    assert str(tmp_path / "gone") in one_error_line(err)


# ------------------------------------------------------------- scoring on local Spark


def test_score_parquet_to_parquet(spark, capsys, tmp_path, model_dir, parquet_input, features):
    out = tmp_path / "scored.parquet"
    started = time.perf_counter()
    code, stdout, err = run_cli(capsys, "score", model_dir, parquet_input, out)
    wall = time.perf_counter() - started
    assert code == 0, err
    summary = dict(line.split(None, 1) for line in stdout.strip().splitlines())
    assert summary["rows"] == f"{len(features):,}"
    # The seconds are the job's, within the command's own wall time, and the rate is rows over
    # them (the printed seconds are rounded to 0.01, the rate to 1 row/s).
    seconds, rate = float(summary["seconds"]), float(summary["rows/s"].replace(",", ""))
    assert 0 < seconds <= wall + 0.01
    low, high = len(features) / (seconds + 0.005), len(features) / max(seconds - 0.005, 1e-9)
    assert low - 0.5 <= rate <= high + 0.5
    assert summary["output"] == f"{out} (parquet)"
    assert summary["scope"] == "process"  # a 1 KiB model is below the auto threshold
    got = read_output(out, "parquet")
    assert list(got.columns) == [*features.columns, "prediction"]
    pd.testing.assert_frame_equal(got[features.columns], features)
    pred = struct_fields(got["prediction"])
    want = expected(model_dir, features)
    np.testing.assert_allclose(pred["probability"], want["probability"])
    np.testing.assert_array_equal(pred["label"], want["label"])
    assert spark.sparkContext._jsc is not None  # the shared session was left running


def test_score_csv_to_json_with_param(spark, capsys, tmp_path, model_dir, csv_input, features):
    out = tmp_path / "scored.json"
    code, _, err = run_cli(capsys, "score", model_dir, csv_input, out, "--param", "threshold=0.9")
    assert code == 0, err
    got = read_output(out, "json")
    pred = struct_fields(got["prediction"])
    want = expected(model_dir, features, threshold=0.9)
    assert 0 < want["label"].sum() < len(want)  # the threshold matters for this data
    np.testing.assert_allclose(pred["probability"], want["probability"])
    np.testing.assert_array_equal(pred["label"], want["label"])


def test_struct_predictions_written_as_csv_get_one_column_per_field(
    spark, capsys, tmp_path, model_dir, parquet_input, features
):
    out = tmp_path / "scored.csv"
    code, _, err = run_cli(
        capsys, "score", model_dir, parquet_input, out, "--output-column", "churn"
    )
    assert code == 0, err
    got = read_output(out, "csv")
    assert list(got.columns) == [*features.columns, "churn_probability", "churn_label"]
    want = expected(model_dir, features)
    np.testing.assert_allclose(got["churn_probability"], want["probability"])
    np.testing.assert_array_equal(got["churn_label"], want["label"])


def test_modes_overwrite_and_append(spark, capsys, tmp_path, model_dir, parquet_input, features):
    out = tmp_path / "scored.parquet"
    assert main(["score", str(model_dir), str(parquet_input), str(out)]) == 0
    assert main(["score", str(model_dir), str(parquet_input), str(out)]) == 1
    assert "--mode overwrite" in one_error_line(capsys.readouterr().err)
    assert main(["score", str(model_dir), str(parquet_input), str(out), "--mode", "overwrite"]) == 0
    assert len(read_output(out, "parquet")) == len(features)
    assert main(["score", str(model_dir), str(parquet_input), str(out), "--mode", "append"]) == 0
    got = read_output(out, "parquet")
    assert len(got) == 2 * len(features)
    assert (got["id"].value_counts() == 2).all()


def test_columns_bind_input_columns_to_model_inputs_in_order(
    spark, capsys, tmp_path, model_dir, features
):
    renamed = features.rename(columns={f: f"x_{f}" for f in FEATURES})
    source = tmp_path / "renamed.parquet"
    renamed.to_parquet(source, index=False)
    out = tmp_path / "scored.parquet"
    columns = ",".join(f"x_{f}" for f in FEATURES)
    code, _, err = run_cli(capsys, "score", model_dir, source, out, "--columns", columns)
    assert code == 0, err
    pred = struct_fields(read_output(out, "parquet")["prediction"])
    np.testing.assert_allclose(pred["probability"], expected(model_dir, features)["probability"])


def test_result_type_picks_a_scalar(spark, capsys, tmp_path, model_dir, parquet_input, features):
    out = tmp_path / "p.parquet"
    code, _, err = run_cli(
        capsys, "score", model_dir, parquet_input, out, "--result-type", "double",
        "--output-column", "p", "--scope", "executor",
    )  # fmt: skip
    assert code == 0, err
    got = read_output(out, "parquet")
    np.testing.assert_allclose(got["p"], expected(model_dir, features)["probability"])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_column_errors_are_found_before_spark_starts(
    capsys, tmp_path, model_dir, features, monkeypatch, fmt
):
    import spark_pyfunc.cli

    def no_spark(*args, **kwargs):
        raise AssertionError("Spark was started")

    monkeypatch.setattr(spark_pyfunc.cli, "spark_session", no_spark)
    source = tmp_path / f"in.{fmt}"
    write = {
        "parquet": lambda f, p: f.to_parquet(p, index=False),
        "csv": lambda f, p: f.to_csv(p, index=False),
        "json": lambda f, p: f.to_json(p, orient="records", lines=True),
    }[fmt]
    write(features, source)
    out = tmp_path / "o.parquet"
    columns = ",".join([*FEATURES[:-1], "nope"])
    code, _, err = run_cli(capsys, "score", model_dir, source, out, "--columns", columns)
    # a column INPUT lacks is about INPUT, as a missing signature column is: status 1 both
    assert code == 1
    assert "--columns names nope, not in INPUT" in one_error_line(err)

    code, _, err = run_cli(capsys, "score", model_dir, source, out, "--output-column", "id")
    assert code == 2
    assert "already has a column 'id'" in one_error_line(err)

    write(features.drop(columns=["f3"]), source)
    code, _, err = run_cli(capsys, "score", model_dir, source, out)
    assert code == 1
    assert "has no column f3, required by the model's signature" in one_error_line(err)
    assert not out.exists()


def test_errors_found_once_spark_reads_the_input(spark, capsys, tmp_path, model_dir, features):
    source = tmp_path / "in.parquet"
    features.to_parquet(source, index=False)
    out = tmp_path / "o.parquet"

    code, _, err = run_cli(capsys, "score", model_dir, source, out, "--result-type", "doubel")
    assert code == 2
    line = one_error_line(err)
    assert "--result-type 'doubel' is not a valid Spark type: [PARSE_SYNTAX_ERROR]" in line
    assert "end of input" in line  # Spark's reason, not an empty one


def test_failure_inside_spark_is_one_line(spark, capsys, tmp_path, model_dir, features):
    broken = features.astype({"f2": str})
    broken["f2"] = "not a number"
    source = tmp_path / "broken.csv"
    broken.to_csv(source, index=False)
    code, _, err = run_cli(capsys, "score", model_dir, source, tmp_path / "o.parquet")
    assert code == 1
    line = one_error_line(err)
    assert "SchemaEnforcementError" in line and "f2" in line
    assert "Traceback" not in err

    code, _, err = run_cli(capsys, "score", model_dir, source, tmp_path / "o.parquet", "--verbose")
    assert code == 1
    assert "Traceback" in err  # --verbose keeps the whole story


def test_demo_can_keep_its_model_and_data_for_info_and_score(spark, capsys, tmp_path):
    model, data = tmp_path / "demo_model", tmp_path / "demo_data.parquet"
    code, out, err = run_cli(
        capsys, "demo", "--rows", "1000", "--save-model", model, "--save-data", data
    )
    assert code == 0, err
    assert "1,000 rows" in out and str(model) in out
    assert main(["info", str(model)]) == 0
    out_dir = tmp_path / "scored.parquet"
    assert main(["score", str(model), str(data), str(out_dir)]) == 0
    got = pd.read_parquet(out_dir)
    want = load_model(model).predict(got[list(FEATURES)])
    np.testing.assert_allclose(struct_fields(got["prediction"])["probability"], want["probability"])


# ---------------------------------------------------------------- real subprocesses


def _cli_command() -> list[str]:
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "spark_pyfunc.cli"]


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SPARK_PYFUNC_CLI_TEST") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_demo_subprocess_prints_throughput_and_leaves_nothing_behind(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    tag = uuid.uuid4().hex
    env = {**os.environ, "TMPDIR": str(scratch), "SPARK_PYFUNC_CLI_TEST": tag}
    env.pop("PYSPARK_PYTHON", None)  # the CLI must point Spark's workers at its interpreter
    done = subprocess.run(
        [*_cli_command(), "demo", "--rows", "50000"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "50,000 rows in" in done.stdout and "rows/s" in done.stdout
    assert "scope=executor" in done.stdout and "Preview" in done.stdout
    assert "probability" in done.stdout and "label" in done.stdout
    assert "Traceback" not in done.stderr and " ERROR " not in done.stderr
    assert not [p for p in scratch.iterdir() if p.name.startswith("spark-pyfunc-")]
    deadline = time.monotonic() + 30
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = _tagged(tag)
    assert not leftover, [p.cmdline() for p in leftover]


def test_error_subprocess_is_one_line_with_status_1(tmp_path, parquet_input):
    done = subprocess.run(
        [*_cli_command(), "score", str(tmp_path / "nope"), str(parquet_input), "o.parquet"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert str(tmp_path / "nope") in one_error_line(done.stderr)
    assert done.stdout == ""


def test_usage_error_subprocess_has_status_2(tmp_path):
    done = subprocess.run(
        [*_cli_command(), "score", "--mode", "sometimes", "m", "i.csv", "o.csv"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--mode" in one_error_line(done.stderr)


def _without_java_env(path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = path
    return env


def test_no_java_gives_install_instructions(tmp_path, model_dir, parquet_input):
    empty = tmp_path / "bin"
    empty.mkdir()
    command = [sys.executable, "-m", "spark_pyfunc.cli"]
    for argv in (
        ["score", str(model_dir), str(parquet_input), str(tmp_path / "o.parquet")],
        ["demo"],
    ):
        done = subprocess.run(
            [*command, *argv], env=_without_java_env(str(empty)),
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 1
        line = one_error_line(done.stderr)
        assert "Java 17 or 21" in line and "apt-get install openjdk-17-jre-headless" in line
        assert "JAVA_HOME" in line


def test_java_home_without_java_and_old_java(tmp_path):
    command = [sys.executable, "-m", "spark_pyfunc.cli", "demo"]
    env = _without_java_env(os.environ["PATH"])
    env["JAVA_HOME"] = str(tmp_path / "jdk")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"JAVA_HOME={tmp_path / 'jdk'} has no bin/java" in one_error_line(done.stderr)

    fake = tmp_path / "old" / "bin"
    fake.mkdir(parents=True)
    java = fake / "java"
    # Older than the running PySpark accepts: Java 11 for PySpark 4, Java 7 for 3.5.
    spark4 = int(pyspark.__version__.split(".")[0]) >= 4
    old, shown = ('11.0.2" 2019-01-15', 11) if spark4 else ('1.7.0_80"', 7)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{old}' >&2\n")
    java.chmod(0o755)
    done = subprocess.run(
        command, env=_without_java_env(f"{fake}:{os.environ['PATH']}"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert "needs Java" in line and f"is Java {shown}" in line


# ------------------------------------------------- nothing lost: atomic OUTPUT, failures


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (hidden ones too) by relative name, with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def failing_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("failing") / "model"
    save_model(path, python_model=FailsOnSomeRows(), input_example=example_features(3))
    return path


def test_failed_runs_keep_the_previous_output_byte_for_byte(
    spark, capsys, tmp_path, model_dir, failing_model, parquet_input, features
):
    assert (features["f0"] > 2.0).any()  # the failing model does fail on this data
    out = tmp_path / "scored.parquet"
    assert main(["score", str(model_dir), str(parquet_input), str(out)]) == 0
    before = snapshot(out)
    assert any(name.startswith("part-") for name in before)
    capsys.readouterr()
    for mode in ("overwrite", "append"):
        code, _, err = run_cli(
            capsys, "score", failing_model, parquet_input, out, "--mode", mode,
            "--output-column", "doubled",
        )  # fmt: skip
        assert code == 1, mode
        assert "f0 above 2.0: refusing to score this batch" in one_error_line(err)
        assert snapshot(out) == before, mode
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.parquet"], mode


def test_a_failed_run_leaves_nothing_so_the_same_command_runs_again(
    spark, capsys, tmp_path, model_dir, failing_model, parquet_input
):
    out = tmp_path / "new" / "dir" / "scored.parquet"  # parents are made, and removed again
    command = ["score", failing_model, parquet_input, out]
    for _ in range(2):  # the second run fails the same way, not with "already exists"
        code, _, err = run_cli(capsys, *command)
        assert code == 1
        assert "refusing to score this batch" in one_error_line(err)
        assert list(tmp_path.iterdir()) == []
    # A result type the predictions do not fit fails inside Spark too, and leaves nothing.
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, out, "--result-type", "int")
    assert code == 1
    assert "int" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, out)
    assert code == 0, err
    assert len(read_output(out, "parquet")) == 300


def test_overwrite_replaces_a_previous_file_and_append_adds_part_files(
    spark, capsys, tmp_path, model_dir, parquet_input, features
):
    out = tmp_path / "scored.json"
    out.write_text("not spark output\n")
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, out, "--mode", "overwrite")
    assert code == 0, err
    assert out.is_dir() and len(read_output(out, "json")) == len(features)
    first = snapshot(out)
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, out, "--mode", "append")
    assert code == 0, err
    after = snapshot(out)
    # Every file of the first run is still there, unchanged; the new part files came in beside.
    for name, data in first.items():
        if "_SUCCESS" not in name:
            assert after[name] == data
    assert len(read_output(out, "json")) == 2 * len(features)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.json"]


def test_remote_output_is_refused_before_spark(capsys, tmp_path, model_dir, parquet_input):
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, "s3a://bucket/out.parquet")
    assert code == 1
    line = one_error_line(err)
    assert "'s3a://bucket/out.parquet'" in line and "local" in line


# ----------------------------------------------------------- malformed csv and json rows


@pytest.fixture(scope="module")
def json_with_bad_rows(tmp_path_factory, features) -> Path:
    path = tmp_path_factory.mktemp("bad") / "features.json"
    features.to_json(path, orient="records", lines=True)
    with path.open("a") as fh:
        fh.write('{"id": 1000, "f0": 0.5, "f1": \n')  # cut short
        fh.write("id=1001 f0=0.1\n")
    return path


@pytest.fixture(scope="module")
def csv_with_bad_rows(tmp_path_factory, features) -> Path:
    path = tmp_path_factory.mktemp("bad") / "features.csv"
    features.to_csv(path, index=False)
    with path.open("a") as fh:
        fh.write("1000,0.5,0.25\n")  # 3 fields of 9
    return path


@pytest.mark.parametrize(
    ("fixture", "bad", "first"),
    [
        ("json_with_bad_rows", 2, '{"id": 1000, "f0": 0.5, "f1": '),
        ("csv_with_bad_rows", 1, "1000,0.5,0.25"),
    ],
)
def test_malformed_rows_fail_by_default_naming_count_and_first(
    spark, capsys, tmp_path, model_dir, features, request, fixture, bad, first
):
    source = request.getfixturevalue(fixture)
    fmt = source.suffix[1:]
    code, _, err = run_cli(capsys, "score", model_dir, source, tmp_path / "o.parquet")
    assert code == 1
    line = one_error_line(err)
    rows = f"{bad} malformed {fmt} row{'s' if bad > 1 else ''} (of {len(features) + bad})"
    assert f"INPUT {str(source)!r} has {rows}; the first: {first!r}" in line
    assert "--bad-records skip" in line and "--bad-records keep" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fixture", ["json_with_bad_rows", "csv_with_bad_rows"])
def test_bad_records_skip_scores_only_the_good_rows(
    spark, capsys, tmp_path, model_dir, features, request, fixture
):
    source = request.getfixturevalue(fixture)
    out = tmp_path / "o.parquet"
    code, stdout, err = run_cli(capsys, "score", model_dir, source, out, "--bad-records", "skip")
    assert code == 0, err
    skipped = 2 if fixture.startswith("json") else 1
    assert f"rows      {len(features):,}" in stdout
    assert f"skipped   {skipped:,} malformed rows" in stdout
    assert f"skipped {skipped} malformed rows of INPUT" in err
    got = read_output(out, "parquet")
    assert "_corrupt_record" not in got.columns
    pd.testing.assert_frame_equal(got[features.columns], features, check_dtype=False)
    want = expected(model_dir, features)
    np.testing.assert_allclose(struct_fields(got["prediction"])["probability"], want["probability"])


def test_bad_records_keep_scores_every_row_and_keeps_the_raw_text(
    spark, capsys, tmp_path, model_dir, features, json_with_bad_rows
):
    out = tmp_path / "o.json"
    code, stdout, err = run_cli(
        capsys, "score", model_dir, json_with_bad_rows, out, "--bad-records", "keep"
    )
    assert code == 0, err
    assert f"rows      {len(features) + 2:,}" in stdout
    got = pd.concat([pd.read_json(p, lines=True) for p in out.glob("part-*.json")])
    raw = got["_corrupt_record"].dropna().str.rstrip("\n").tolist()
    assert sorted(raw) == sorted(['{"id": 1000, "f0": 0.5, "f1": ', "id=1001 f0=0.1"])
    good = got[got["_corrupt_record"].isna()].sort_values("id").reset_index(drop=True)
    want = expected(model_dir, features)
    np.testing.assert_allclose(
        struct_fields(good["prediction"])["probability"], want["probability"]
    )


# ------------------------------------------------ inputs and outputs: URIs, formats, JSON


def test_file_uris_and_explicit_formats(spark, capsys, tmp_path, model_dir, features):
    source = tmp_path / "features.data"  # no extension that tells the format
    features.to_json(source, orient="records", lines=True)
    out = tmp_path / "scored.out"
    code, stdout, err = run_cli(
        capsys, "score", model_dir, source.as_uri(), out.as_uri(),
        "--input-format", "json", "--output-format", "csv",
    )  # fmt: skip
    assert code == 0, err
    assert f"output    {out} (csv)" in stdout
    got = pd.concat([pd.read_csv(p) for p in out.glob("part-*.csv")]).sort_values("id")
    np.testing.assert_allclose(
        got["prediction_probability"], expected(model_dir, features)["probability"]
    )
    again = tmp_path / "again.out"
    code, _, err = run_cli(
        capsys, "score", model_dir, f"file:{source}", f"file://{again}", "--format", "json"
    )
    assert code == 0, err
    got = read_output(again, "json")
    pd.testing.assert_frame_equal(got[features.columns], features, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "again.out",
        "features.data",
        "scored.out",
    ]


def test_file_uri_on_another_host_is_refused(capsys, tmp_path, model_dir, parquet_input):
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, "file://elsewhere/o.json")
    assert code == 1
    assert "'file://elsewhere/o.json'" in one_error_line(err)


# --------------------------------------------------------------- loader modules, no Spark


def _with_loader(tmp_path: Path, loader: str) -> Path:
    """A model directory whose MLmodel names another flavor's loader module."""
    path = tmp_path / "flavored"
    save_model(path, python_model=LogisticScorer(), input_example=example_features(3))
    mlmodel = path / "MLmodel"
    raw = yaml.safe_load(mlmodel.read_text())
    pyfunc = raw["flavors"]["python_function"]
    pyfunc["loader_module"] = loader
    pyfunc.pop("python_model", None)
    pyfunc["data"] = "data"
    (path / "data").mkdir()
    mlmodel.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("loader", "blocked", "install"),
    [
        ("mlflow.sklearn", "mlflow", "pip install mlflow"),
        ("acme_flavors.pyfunc", None, "pip install acme_flavors"),
    ],
)
def test_missing_loader_module_is_found_before_spark_starts(
    tmp_path, parquet_input, loader, blocked, install
):
    model = _with_loader(tmp_path, loader)
    # No java on PATH: had Spark been started, the error would be about Java.
    empty = tmp_path / "bin"
    empty.mkdir()
    env = _without_java_env(str(empty))
    block = f"sys.modules[{blocked!r}] = None; " if blocked else ""
    code = (
        f"import sys; {block}from spark_pyfunc.cli import main; "
        f"sys.exit(main(['score', {str(model)!r}, {str(parquet_input)!r}, 'o.parquet']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert f"MODEL {str(model)!r} is loaded by its loader_module {loader}" in line
    assert install in line
    assert not (tmp_path / "o.parquet").exists()


# --------------------------------------------------------------------- progress, host logs


def parts_of(out: Path) -> list[pd.DataFrame]:
    """The part files of an output directory, in partition order."""
    return [pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))]


def test_progress_writes_the_same_files_as_no_progress(
    spark, capsys, tmp_path, model_dir, parquet_input, features
):
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, tmp_path / "quiet.parquet")
    assert code == 0 and "scoring" not in err  # not a terminal: no progress
    code, _, err = run_cli(
        capsys, "score", model_dir, parquet_input, tmp_path / "no.parquet", "--no-progress"
    )
    assert code == 0 and err == ""

    out = tmp_path / "shown.parquet"
    code, _, err = run_cli(capsys, "score", model_dir, parquet_input, out, "--progress")
    assert code == 0, err
    assert "scoring (finished tasks)" in err  # tqdm's bar, labelled as what it counts
    # the same part files, the same rows in the same order: progress only watches
    with_progress, without = parts_of(out), parts_of(tmp_path / "no.parquet")
    assert len(with_progress) == len(without)
    for shown, quiet in zip(with_progress, without, strict=True):
        pd.testing.assert_frame_equal(shown, quiet)
    pd.testing.assert_frame_equal(pd.read_parquet(out)[features.columns], features)


def test_progress_without_tqdm_prints_plain_lines(
    spark, capsys, tmp_path, model_dir, parquet_input, features, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    code, out, err = run_cli(
        capsys, "score", model_dir, parquet_input, tmp_path / "o.parquet", "--progress"
    )
    assert code == 0, err
    lines = [x for x in err.splitlines() if x.startswith("spark-pyfunc: scoring: ")]
    assert lines, err
    done, total = lines[-1].split(": ")[2].split(" tasks")[0].split(" / ")
    assert done == total and int(total) >= 1, lines
    assert lines[-1].endswith("(Spark counts a task when it ends)")
    assert ", 0 running, after " in lines[-1]  # the final line: nothing runs any more
    assert "rows/s" in out  # the rate is the summary's, over the whole run


def test_host_log_dir_is_set_for_the_job_and_named_at_the_end(
    spark, capsys, tmp_path, model_dir, parquet_input, monkeypatch
):
    import spark_pyfunc._udf

    seen = []
    real = spark_pyfunc._udf.spark_udf

    def spy(session, *args, **kwargs):
        seen.append(session.conf.get(CONF_HOST_LOG_DIR, None))
        return real(session, *args, **kwargs)

    monkeypatch.setattr(spark_pyfunc._udf, "spark_udf", spy)
    logs = tmp_path / "logs" / "hosts"
    code, stdout, err = run_cli(
        capsys, "score", model_dir, parquet_input, tmp_path / "o.parquet",
        "--host-log-dir", logs,
    )  # fmt: skip
    assert code == 0, err
    assert seen == [str(logs)] and logs.is_dir()
    assert f"host logs {logs}" in stdout
    assert spark.conf.get(CONF_HOST_LOG_DIR, None) is None  # the session is left as it was

    code, stdout, err = run_cli(
        capsys, "score", model_dir, parquet_input, tmp_path / "v.parquet", "--verbose"
    )
    assert code == 0, err
    kept = Path(stdout.split("host logs ", 1)[1].splitlines()[0])
    try:
        assert kept.is_dir() and kept.name.startswith("spark-pyfunc-host-logs-")
        assert seen[-1] == str(kept)
    finally:
        kept.rmdir()


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path, parquet_input):
    started = tmp_path / "started"
    model = tmp_path / "slow"
    # A declared signature: an input example would run the slow predict here, in the test.
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, name) for name in FEATURES]),
        outputs=Schema([ColSpec(DataType.double)]),
    )
    save_model(
        model, python_model=Slow(), signature=signature, model_config={"started": str(started)}
    )
    work = tmp_path / "work"
    work.mkdir()
    tag = uuid.uuid4().hex
    env = {**os.environ, "SPARK_PYFUNC_CLI_TEST": tag}
    command = [*_cli_command(), "score", str(model), str(parquet_input), "out.parquet"]
    # A terminal's Ctrl-C reaches the whole foreground process group: its own session here.
    proc = subprocess.Popen(
        [*command, "--scope", "executor"], env=env, cwd=work, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the model never started scoring"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    # Java 17+ prints this when Spark's JVM starts, before anything runs; it is not ours.
    lines = [x for x in err.splitlines() if not x.startswith("WARNING: Using incubator modules")]
    assert lines == ["spark-pyfunc: interrupted"], err
    assert list(work.iterdir()) == []  # no OUTPUT, no hidden staging directory
    deadline = time.monotonic() + 30
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = _tagged(tag)
    assert not leftover, [p.cmdline() for p in leftover]


# ------------------------------------------------- --method, --model-config, --batch-size, --conf


class Sized(PythonModel):
    """predict: 7 (a long, as the signature says); predict_proba: the rows of the call plus
    model_config["offset"], a double."""

    def predict(self, context, model_input, params=None):
        return pd.Series(np.full(len(model_input), 7, dtype=np.int64))

    def predict_proba(self, context, model_input, params=None):
        offset = (context.model_config or {}).get("offset", 0.0)
        return pd.Series(np.full(len(model_input), len(model_input) + offset, dtype=float))


@pytest.fixture(scope="module")
def sized_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sized") / "model"
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "x")]), outputs=Schema([ColSpec(DataType.long)])
    )
    save_model(path, python_model=Sized(), signature=signature)
    return path


@pytest.fixture(scope="module")
def x_input(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("x") / "x.parquet"
    pd.DataFrame({"x": np.arange(40.0)}).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_method_model_config_batch_size_and_conf(
    spark, capsys, tmp_path, sized_model, x_input, scope, monkeypatch
):
    config = tmp_path / "config.json"
    config.write_text('{"offset": 1000.0}')
    out = tmp_path / "o.parquet"
    key = "spark.pyfunc.host.mode"
    before = spark.conf.get(key, None)
    code, _, err = run_cli(
        capsys, "score", sized_model, x_input, out, "--scope", scope,
        "--method", "predict_proba", "--model-config", f"@{config}", "--batch-size", "6",
    )  # fmt: skip
    assert code == 0, err
    # predict_proba's own type (double, MLflow's default), not predict's long
    got = pd.read_parquet(out)["prediction"]
    assert got.dtype == np.float64 and got.min() >= 1000.0 and got.max() <= 1006.0, got

    import spark_pyfunc._udf

    seen = []
    real = spark_pyfunc._udf.spark_udf

    def spy(session, *args, **kwargs):
        seen.append(session.conf.get(key, None))
        return real(session, *args, **kwargs)

    monkeypatch.setattr(spark_pyfunc._udf, "spark_udf", spy)
    code, _, err = run_cli(
        capsys, "score", sized_model, x_input, tmp_path / "c.parquet", "--scope", scope,
        "--method", "predict_proba", "--model-config", '{"offset": 0}', "--conf", f"{key}=prefork",
    )  # fmt: skip
    assert code == 0, err
    assert seen == ["prefork"]  # --conf set for the run
    assert spark.conf.get(key, None) == before  # and only for the run
    assert pd.read_parquet(tmp_path / "c.parquet")["prediction"].max() <= 40.0

    code, _, err = run_cli(capsys, "score", sized_model, x_input, tmp_path / "p.parquet")
    assert code == 0 and pd.read_parquet(tmp_path / "p.parquet")["prediction"].dtype == np.int64


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-config", "[1]"], "must be a JSON object"),
        (["--model-config", "{nope"], "is not JSON"),
        (["--model-config", "@/no/such/file.json"], "cannot read the file"),
        (["--batch-size", "0"], "--batch-size must be a positive integer: 0"),
        (["--batch-size", "two"], "invalid int value"),
        (["--method", "_private"], "--method must name a method of the model"),
        (["--conf", "novalue"], "must look like KEY=VALUE"),
        (["--conf", "a=1", "--conf", "a=2"], "'a' is given twice"),
    ],
)
def test_bad_new_flags_are_usage_errors(capsys, tmp_path, sized_model, x_input, flags, message):
    code, _, err = run_cli(capsys, "score", sized_model, x_input, tmp_path / "o.parquet", *flags)
    assert code == 2, err
    assert message in one_error_line(err)


def test_info_shows_the_methods_the_model_records(capsys, sized_model, tmp_path):
    code, out, _ = run_cli(capsys, "info", sized_model)
    assert code == 0 and "methods       predict, predict_proba" in out.splitlines()
    assert json.loads(run_cli(capsys, "info", sized_model, "--json")[1])["methods"] == [
        "predict",
        "predict_proba",
    ]
    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(sized_model, unrecorded)
    doc = yaml.safe_load((unrecorded / "MLmodel").read_text())
    del doc["flavors"]["python_function"]["spark_pyfunc_methods"]  # as MLflow writes it
    (unrecorded / "MLmodel").write_text(yaml.safe_dump(doc))
    code, out, _ = run_cli(capsys, "info", unrecorded)
    assert code == 0 and any(
        line.startswith("methods       not recorded") for line in out.splitlines()
    ), out
    assert json.loads(run_cli(capsys, "info", unrecorded, "--json")[1])["methods"] is None


def test_an_unknown_method_fails_before_spark_starts(capsys, tmp_path, sized_model, x_input):
    out = tmp_path / "o.parquet"
    code, _, err = run_cli(
        capsys, "score", sized_model, x_input, out, "--method", "predict_probaa", "--master", "x"
    )  # a master that cannot start: nothing gets that far
    assert code == 1, err  # the model cannot do it: not a malformed flag (2)
    line = one_error_line(err)
    assert f"--method predict_probaa is not a method of MODEL '{sized_model}'" in line
    assert line.endswith("its methods are predict, predict_proba")
    assert not out.exists()


def test_exit_statuses_are_in_help_and_readme(capsys):
    from spark_pyfunc.cli import EXIT_STATUSES

    assert main(["score", "--help"]) == 0
    assert EXIT_STATUSES in capsys.readouterr().out
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for status in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert status in readme, status
