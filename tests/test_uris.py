"""Model URIs resolved on the driver, against real components: an MLflow tracking store and
model registry (sqlite, in tmp_path) and an S3-compatible server (moto's server mode) on
127.0.0.1, started and stopped by these tests.

"No MLflow on the driver" is simulated the way Python itself spells a missing module: a
``None`` in ``sys.modules`` makes ``import mlflow`` raise ImportError; likewise for s3fs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import pytest
from format_models import FEATURES
from mlflow_models import MlflowLinear
from support.moto_s3 import moto_server, point_at, upload_dir

from spark_pyfunc import ModelURIError, _uris, load_model, spark_udf
from spark_pyfunc._describe import describe
from spark_pyfunc.cli import main as cli_main
from spark_pyfunc.scoring import prepare_score

pytestmark = pytest.mark.mlflow

NAME = "scorer"
BUCKET = "models"


def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(rng.normal(size=(n, 2)), columns=FEATURES)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch) -> Iterator[_uris._Cache]:
    """Each test downloads into a cache of its own (removed after it), so what one test
    downloaded cannot make another's download a cache hit."""
    cache = _uris._Cache()
    monkeypatch.setattr(_uris, "_cache", cache)
    yield cache
    if cache._root is not None:
        import shutil

        shutil.rmtree(cache._root, ignore_errors=True)


@pytest.fixture
def no_mlflow(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """The artifact URIs MLflow is asked to download: the real function, counted."""
    calls: list[str] = []
    real = mlflow.artifacts.download_artifacts

    def counted(*args, **kwargs):
        calls.append(kwargs.get("artifact_uri") or args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counted)
    return calls


# ------------------------------------------------------------------------ the registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[dict]:
    """A sqlite tracking store with one run that logged two versions of a model (offsets 1
    and 2), both registered as NAME; alias ``prod`` -> 1, version 1 in stage Production."""
    root = tmp_path_factory.mktemp("mlflow")
    weights = root / "w.npy"
    np.save(weights, np.array([1.0, -2.0]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        # artifacts in tmp too: the default is ./mlruns, in the working directory
        experiment = mlflow.create_experiment("uris", artifact_location=(root / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            for offset in (1.0, 2.0):
                mlflow.pyfunc.log_model(
                    name=f"model{int(offset)}",
                    python_model=MlflowLinear(),
                    artifacts={"weights": str(weights)},
                    input_example=_frame(3),
                    model_config={"offset": offset},
                    registered_model_name=NAME,
                )
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(NAME, "prod", "1")
        stages = hasattr(client, "transition_model_version_stage")  # deprecated since 2.9
        if stages:
            client.transition_model_version_stage(NAME, "1", "Production")
        expected = {
            version: mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(_frame())
            for version in ("1", "2")
        }
        yield {"run_id": run.info.run_id, "expected": expected, "stages": stages}


def _scored(spark, uri: str, scope: str = "process") -> pd.DataFrame:
    df = spark.createDataFrame(_frame())
    predict = spark_udf(spark, uri, result_type="score double, label boolean", scope=scope)
    return df.select(predict(*FEATURES).alias("p")).select("p.*").toPandas()


def _assert_version(out: pd.DataFrame, registry: dict, version: str, uri: str) -> None:
    expected = registry["expected"][version]
    np.testing.assert_allclose(out["score"], expected["score"], err_msg=uri)
    assert out["label"].tolist() == expected["label"].tolist(), uri


def test_local_forms_resolve_to_the_directory_without_a_copy(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    monkeypatch.chdir(tmp_path)
    for given in ("m", model, str(model), model.as_uri(), f"file:{model}"):
        assert _uris.resolve_model_uri(given) == model, given
    assert _uris._cache._root is None  # nothing was downloaded


@pytest.mark.parametrize(
    ("uri", "reference"),
    [
        ("models:/m/3", _uris._Reference("m", version="3")),
        ("models:/m@champion", _uris._Reference("m", alias="champion")),
        ("models:/m/Staging", _uris._Reference("m", stage="Staging")),
        ("models:/m/latest", _uris._Reference("m", latest=True)),
        ("models:/m-0a1b2c", _uris._Reference("m-0a1b2c")),  # an MLflow 3 logged model id
        ("models://profile@databricks/m/1", None),  # a registry of its own: MLflow's to read
    ],
)
def test_models_uri_forms(uri, reference):
    assert _uris._parse_models_uri(uri) == reference


def test_a_malformed_models_uri_names_the_forms(registry):
    with pytest.raises(ModelURIError, match=r"'models:/a/b/c' is not a models:/ URI.*@<alias>"):
        _uris.resolve_model_uri("models:/a/b/c")


def test_registry_uris_score_like_mlflow(spark, registry):
    run = registry["run_id"]
    cases = {
        f"runs:/{run}/model1": "1",
        f"runs:/{run}/model2": "2",
        f"models:/{NAME}/1": "1",
        f"models:/{NAME}/2": "2",
        f"models:/{NAME}@prod": "1",
        f"models:/{NAME}/latest": "2",
    }
    if registry["stages"]:
        cases[f"models:/{NAME}/Production"] = "1"
    for uri, version in cases.items():
        _assert_version(_scored(spark, uri), registry, version, uri)
    # load_model, info and score's checks take the same URIs.
    local = load_model(f"models:/{NAME}@prod").predict(_frame())
    np.testing.assert_allclose(local["score"], registry["expected"]["1"]["score"])
    assert describe(f"models:/{NAME}/2")["loader_module"] == "mlflow.pyfunc.model"


def test_a_repointed_alias_is_seen_by_the_next_spark_udf(spark, registry, downloads):
    client = mlflow.MlflowClient()
    uri = f"models:/{NAME}@prod"
    try:
        _assert_version(_scored(spark, uri, scope="executor"), registry, "1", uri)
        client.set_registered_model_alias(NAME, "prod", "2")
        _assert_version(_scored(spark, uri, scope="executor"), registry, "2", uri)
        client.set_registered_model_alias(NAME, "prod", "1")
        _assert_version(_scored(spark, uri, scope="process"), registry, "1", uri)
    finally:
        client.set_registered_model_alias(NAME, "prod", "1")
    # Each version was downloaded once, by its number; going back to 1 was a cache hit.
    assert downloads == [f"models:/{NAME}/1", f"models:/{NAME}/2"]


def test_the_same_uri_twice_downloads_once(registry, downloads, fresh_cache):
    uri = f"runs:/{registry['run_id']}/model1"
    first = _uris.resolve_model_uri(uri)
    assert _uris.resolve_model_uri(uri) == first
    # an alias and the version it names share the download
    assert _uris.resolve_model_uri(f"models:/{NAME}@prod") == _uris.resolve_model_uri(
        f"models:/{NAME}/1"
    )
    assert downloads == [uri, f"models:/{NAME}/1"]
    assert (first / "MLmodel").is_file()
    # the cache holds the two models and no staging directory
    assert sorted(p.name for p in fresh_cache.root().iterdir()) == sorted(
        [first.name, _uris.resolve_model_uri(f"models:/{NAME}/1").name]
    )


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("runs:/0123456789abcdef0123456789abcdef/model1", "Run .*not found"),
        (f"models:/{NAME}@nope", f"registered model '{NAME}' has no alias 'nope'"),
        ("models:/no_such_model@prod", "no registered model 'no_such_model'"),
        ("models:/no_such_model/latest", "no registered model 'no_such_model'"),
        (f"models:/{NAME}/7", "not found"),
    ],
)
def test_unresolvable_registry_uris_name_the_uri_and_why(registry, uri, reason, fresh_cache):
    with pytest.raises(ModelURIError, match=f"{_re(uri)}.*{reason}"):
        _uris.resolve_model_uri(uri)
    assert list(fresh_cache.root().iterdir()) == []  # no half download left


def test_without_mlflow_registry_uris_say_to_install_it(no_mlflow, registry, spark):
    uri = f"runs:/{registry['run_id']}/model1"
    for call in (_uris.resolve_model_uri, lambda u: spark_udf(spark, u)):
        with pytest.raises(ModelURIError, match=f"{_re(uri)}.*pip install mlflow"):
            call(uri)
    with pytest.raises(ModelURIError, match="models:/x@y.*pip install mlflow"):
        load_model("models:/x@y")


def _re(text: str) -> str:
    return re.escape(repr(text))


# -------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, with bucket BUCKET holding a model under ``model/``
    (offset 1, as registry version 1); yields the endpoint URL. Stopped at the end."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as endpoint, pytest.MonkeyPatch.context() as mp:
        point_at(mp, endpoint)
        model = tmp_path_factory.mktemp("s3-model") / "model"
        from mlflow_models import MlflowLinear as Linear

        weights = model.parent / "w.npy"
        np.save(weights, np.array([1.0, -2.0]))
        mlflow.pyfunc.save_model(
            str(model),
            python_model=Linear(),
            artifacts={"weights": str(weights)},
            input_example=_frame(3),
            model_config={"offset": 1.0},
        )
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        upload_dir(client, BUCKET, "model", model)
        yield endpoint


def _expected_s3() -> pd.DataFrame:
    frame = _frame()
    score = frame[FEATURES].to_numpy() @ np.array([1.0, -2.0]) + 1.0
    return pd.DataFrame({"score": score, "label": score > 0.0})


def _assert_s3_scores(spark, uri: str, scope: str) -> None:
    out = _scored(spark, uri, scope=scope)
    expected = _expected_s3()
    np.testing.assert_allclose(out["score"], expected["score"], err_msg=f"{uri} {scope}")
    assert out["label"].tolist() == expected["label"].tolist()


def test_s3_through_mlflow(spark, s3, downloads):
    uri = f"s3://{BUCKET}/model"
    _assert_s3_scores(spark, uri, "executor")
    _assert_s3_scores(spark, uri, "process")
    assert downloads == [uri]  # the second spark_udf was a cache hit


def test_s3_without_mlflow_through_fsspec(no_mlflow, spark, s3, caplog):
    assert "mlflow" not in [m for m in sys.modules if sys.modules[m] is not None]
    uri = f"s3://{BUCKET}/model"
    with caplog.at_level("INFO", logger="spark_pyfunc._uris"):
        path = _uris.resolve_model_uri(uri)
        _assert_s3_scores(spark, uri, "executor")
        _assert_s3_scores(spark, f"s3a://{BUCKET}/model", "process")
    downloaded = [r for r in caplog.records if r.getMessage().startswith("downloading model")]
    assert len(downloaded) == 2  # s3:// once for two uses, s3a:// once
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == (
        sorted(
            k["Key"].removeprefix("model/")
            for k in boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]
        )
    )


@pytest.mark.parametrize("through", ["mlflow", "fsspec"])
def test_s3_errors_name_the_uri(s3, through, request, fresh_cache):
    if through == "fsspec":
        request.getfixturevalue("no_mlflow")
    for uri, reason in (
        ("s3://no-such-bucket/model", "([Bb]ucket|no such|not exist)"),
        (f"s3://{BUCKET}/nothing-here", "(no MLmodel|no such directory|Not Found)"),
    ):
        with pytest.raises(ModelURIError, match=f"{_re(uri)}.*{reason}"):
            _uris.resolve_model_uri(uri)
    assert [p.name for p in fresh_cache.root().iterdir()] == []  # no staging dir left


def test_a_missing_store_extra_is_named():
    """In a fresh process where neither MLflow nor s3fs can be imported (fsspec keeps the
    filesystem classes it has imported, so this one must never have imported s3fs)."""
    code = (
        "import sys\n"
        "sys.modules['mlflow'] = sys.modules['s3fs'] = None\n"
        "from spark_pyfunc._uris import resolve_model_uri\n"
        "for uri in ('s3://b/m', 'gs://b/m', 'dbfs:/m', 'runs:/abc/m'):\n"
        "    try:\n"
        "        resolve_model_uri(uri)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout + done.stderr
    for line, pattern in zip(
        lines,
        (
            r"ModelURIError .*'s3://b/m'.*pip install \"spark-pyfunc\[s3\]\"",
            r"ModelURIError .*'gs://b/m'.*pip install \"spark-pyfunc\[gcs\]\"",
            r"ModelURIError .*'dbfs:/m'.*pip install mlflow",
            r"ModelURIError .*'runs:/abc/m'.*pip install mlflow",
        ),
        strict=True,
    ):
        assert re.match(pattern, line), line


def test_cli_info_takes_a_model_uri_and_names_a_bad_one(s3, registry, capsys):
    assert cli_main(["info", f"s3://{BUCKET}/model", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["loader_module"] == "mlflow.pyfunc.model"
    assert [c["name"] for c in info["inputs"]] == FEATURES
    # the URI the user gave, not the temporary download deleted at exit
    assert info["model"] == f"s3://{BUCKET}/model" and info["path"] is None
    assert cli_main(["info", f"models:/{NAME}@nope"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("spark-pyfunc: error: cannot resolve model URI")
    assert f"'models:/{NAME}@nope'" in error[-1] and "no alias 'nope'" in error[-1]


def test_score_takes_a_model_uri(s3, tmp_path):
    frame = _frame()
    frame.to_parquet(tmp_path / "in.parquet")
    job = prepare_score(
        f"s3://{BUCKET}/model", str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet")
    )
    assert (Path(job.model) / "MLmodel").is_file()


def test_the_cache_is_removed_at_exit(s3, tmp_path):
    """A real process: it downloads, prints the cache directory and exits; nothing is left."""
    code = (
        "from spark_pyfunc._uris import resolve_model_uri\n"
        f"path = resolve_model_uri('s3://{BUCKET}/model')\n"
        "assert (path / 'MLmodel').is_file()\n"
        "print(path.parent)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    cache = Path(done.stdout.strip().splitlines()[-1])
    assert cache.name.startswith("spark-pyfunc-models-")
    assert cache.is_absolute()
    assert not cache.exists()
