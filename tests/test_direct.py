"""Direct reads without Spark: the driver's manifest, path safety, the route's choice, filling
the machine's cache from a real S3 endpoint (moto's server on 127.0.0.1) with every file
checked, a store changed after the manifest, and the fallback when the store is unreachable.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from support.moto_s3 import free_port, gets, moto_server, point_at, upload_dir

from spark_pyfunc import _direct
from spark_pyfunc._cache import read_events
from spark_pyfunc._direct import (
    DirectSource,
    StoreUnreachable,
    build_source,
    check_relpath,
    direct_location,
    probe,
)
from spark_pyfunc._distribution import Delivery, choose_route, deliver, materialize
from spark_pyfunc.errors import ShippingError

BUCKET = "direct"


def _model(root: Path) -> Path:
    """A model-shaped directory: MLmodel, a nested artifact, a binary blob."""
    (root / "artifacts" / "deep").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "artifacts" / "deep" / "weights.txt").write_text("1 2 3\n")
    (root / "artifacts" / "blob.bin").write_bytes(os.urandom(300_000))
    return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict]:
    """moto's S3 server with a model under ``model/``; the environment points at it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as endpoint, pytest.MonkeyPatch.context() as mp:
        point_at(mp, endpoint)
        model = _model(tmp_path_factory.mktemp("driver") / "model")
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        upload_dir(client, BUCKET, "model", model)
        yield {"endpoint": endpoint, "model": model, "client": client, "log": log}


def _delivery(source: DirectSource, cache: Path) -> Delivery:
    return Delivery(
        archive_name="direct-test",
        sha256=source.key,
        model_size=source.size,
        route="direct",
        direct=source,
        cache_dir=str(cache),
    )


# ----------------------------------------------------------------------- the manifest


def test_the_manifest_names_every_file_with_its_size_and_sha256(tmp_path):
    model = _model(tmp_path / "m")
    source = build_source("s3://b/m", model)
    assert [rel for rel, _, _ in source.files] == [
        "MLmodel",
        "artifacts/blob.bin",
        "artifacts/deep/weights.txt",
    ]
    assert source.files[1][1] == 300_000
    assert source.size == sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    # Same content elsewhere: same key (one cache entry); one byte changed: another key.
    again = build_source("s3://b/other", _copy(model, tmp_path / "copy"))
    assert again.key == source.key
    (tmp_path / "copy" / "MLmodel").write_text("flavors: {} \n")
    assert build_source("s3://b/other", tmp_path / "copy").key != source.key


def _copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def test_a_symlink_in_the_model_is_refused(tmp_path):
    model = _model(tmp_path / "m")
    (model / "link").symlink_to(model / "MLmodel")
    with pytest.raises(ShippingError, match="link is a symlink"):
        build_source("/Volumes/x", model)


@pytest.mark.parametrize(
    "rel", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\..\\b", "a\0b", "a/.."]
)
def test_paths_that_leave_the_model_directory_are_refused(rel):
    with pytest.raises(ShippingError, match="not a path inside the model directory"):
        check_relpath(rel, "s3://b/m")


def test_a_manifest_with_an_unsafe_path_reads_nothing(tmp_path):
    source = DirectSource(str(tmp_path / "m"), (("../outside", 1, "0" * 64),))
    with pytest.raises(ShippingError, match="'../outside'"):
        materialize(_delivery(source, tmp_path / "cache"))
    assert not (tmp_path / "cache" / "staging" / "outside").exists()
    assert not list((tmp_path / "cache" / "entries").iterdir())


# ----------------------------------------------------------------------- the route


@pytest.mark.parametrize(
    ("uri", "declared", "location"),
    [
        ("s3://b/m", False, "s3://b/m"),
        ("s3a://b/m", False, "s3a://b/m"),
        ("gs://b/m", False, "gs://b/m"),
        ("abfss://c@a.dfs.core.windows.net/m", False, "abfss://c@a.dfs.core.windows.net/m"),
        ("hdfs://nn/m", False, "hdfs://nn/m"),
        ("dbfs:/models/m", False, "/dbfs/models/m"),
        ("/Volumes/cat/schema/vol/m", False, "/Volumes/cat/schema/vol/m"),
        ("file:///dbfs/m", False, "/dbfs/m"),
        ("/tmp/m", False, None),
        ("/tmp/m", True, "/tmp/m"),
        ("file:///tmp/m", True, "/tmp/m"),
        ("/dbfsx/m", False, None),
        ("ftp://host/m", True, None),
    ],
)
def test_where_executors_can_read_a_model_themselves(uri, declared, location):
    assert direct_location(uri, declared)[0] == location


def test_a_registry_uri_is_read_where_mlflow_stores_it(monkeypatch):
    found = {"models:/m/3": "s3://bucket/1/abc/artifacts/model", "runs:/r/model": None}
    monkeypatch.setattr(_direct, "storage_location", found.get)
    location, why = direct_location("models:/m/3", False)
    assert location == "s3://bucket/1/abc/artifacts/model"
    assert "models:/m/3 is stored at s3://bucket" in why
    assert direct_location("runs:/r/model", True) == (
        None,
        "MLflow gives no storage location for runs:/r/model",
    )


def _session(master: str = "local-cluster[2,1,1024]") -> SimpleNamespace:
    return SimpleNamespace(
        sparkContext=SimpleNamespace(master=master, applicationId="app-1"),
        conf=SimpleNamespace(get=lambda key, default=None: default),
    )


@pytest.mark.parametrize(
    ("master", "wanted", "location", "route"),
    [
        ("local-cluster[2,1,1024]", "auto", "s3://b/m", "direct"),
        ("spark://host:7077", "auto", "s3://b/m", "direct"),
        ("local[2]", "auto", "s3://b/m", "files"),  # the driver is the executor
        ("spark://host:7077", "auto", None, "broadcast"),  # today's choice for local paths
        ("local[2]", "direct", "/tmp/m", "direct"),
        ("spark://host:7077", "files", "s3://b/m", "files"),
    ],
)
def test_the_route_for_each_session_and_location(master, wanted, location, route):
    assert choose_route(_session(master), wanted, location, "why")[0] == route


def test_direct_for_a_model_executors_cannot_read_says_why():
    with pytest.raises(ShippingError, match=r"direct: executors cannot read .*\(a local path"):
        choose_route(_session(), "direct", None, "a local path (...)")


# ----------------------------------------------------------------------- filling from S3


def test_a_machine_fills_its_cache_from_the_store_once(s3, tmp_path):
    source = build_source(f"s3://{BUCKET}/model", s3["model"])
    cache = tmp_path / "cache"
    before = gets(s3["log"], BUCKET, "model/artifacts/blob.bin")
    got = materialize(_delivery(source, cache))
    assert (got / "artifacts" / "blob.bin").read_bytes() == (
        s3["model"] / "artifacts" / "blob.bin"
    ).read_bytes()
    assert (got / "artifacts" / "deep" / "weights.txt").read_text() == "1 2 3\n"
    assert gets(s3["log"], BUCKET, "model/artifacts/blob.bin") == before + 1
    assert [(e["event"], e["detail"]) for e in read_events(cache)] == [
        ("fill", "direct"),
        ("hit", ""),
    ]
    assert got.parent.name == source.key


def test_s3a_uris_are_read_as_s3(s3, tmp_path):
    source = build_source(f"s3a://{BUCKET}/model", s3["model"])
    got = materialize(_delivery(source, tmp_path / "cache"))
    assert (got / "MLmodel").read_text() == "flavors: {}\n"


def test_a_file_changed_in_the_store_is_read_twice_then_refused(s3, tmp_path, caplog):
    source = build_source(f"s3://{BUCKET}/model", s3["model"])
    data = bytearray((s3["model"] / "artifacts" / "deep" / "weights.txt").read_bytes())
    data[0] ^= 0x01  # one flipped bit, same size
    s3["client"].put_object(Bucket=BUCKET, Key="model/artifacts/deep/weights.txt", Body=bytes(data))
    cache = tmp_path / "cache"
    try:
        with (
            caplog.at_level(logging.WARNING, logger="spark_pyfunc._direct"),
            pytest.raises(ShippingError) as raised,
        ):
            materialize(_delivery(source, cache))
    finally:
        s3["client"].upload_file(
            str(s3["model"] / "artifacts" / "deep" / "weights.txt"),
            BUCKET,
            "model/artifacts/deep/weights.txt",
        )
    message = str(raised.value)
    assert f"s3://{BUCKET}/model" in message and "artifacts/deep/weights.txt" in message
    assert "after a second read" in message and "not loaded" in message
    assert [r.getMessage() for r in caplog.records] == [
        f"model s3://{BUCKET}/model: artifacts/deep/weights.txt does not match the driver's "
        "manifest, reading it again"
    ]
    assert not list((cache / "entries").iterdir()), "a mismatching model was kept"
    assert not list((cache / "staging").iterdir())


def test_a_torn_read_is_read_again_and_used(s3, tmp_path, monkeypatch, caplog):
    source = build_source(f"s3://{BUCKET}/model", s3["model"])
    real_get = _direct._Store.get
    torn: list[str] = []

    def get_once_torn(self, rel, target):
        real_get(self, rel, target)
        if rel == "artifacts/blob.bin" and not torn:
            torn.append(rel)
            with open(target, "r+b") as handle:
                handle.truncate(1000)

    monkeypatch.setattr(_direct._Store, "get", get_once_torn)
    with caplog.at_level(logging.WARNING, logger="spark_pyfunc._direct"):
        got = materialize(_delivery(source, tmp_path / "cache"))
    assert torn and len(caplog.records) == 1
    assert (got / "artifacts" / "blob.bin").stat().st_size == 300_000


def test_a_shared_mount_is_read_like_a_store(tmp_path):
    model = _model(tmp_path / "mount" / "m")
    source = build_source(str(model), model)
    got = materialize(_delivery(source, tmp_path / "cache"))
    assert (got / "artifacts" / "blob.bin").read_bytes() == (
        model / "artifacts" / "blob.bin"
    ).read_bytes()


# ----------------------------------------------------------------------- unreachable


def test_an_unreachable_endpoint_or_mount_is_told_apart(s3, tmp_path, monkeypatch):
    source = build_source(f"s3://{BUCKET}/model", s3["model"])
    assert probe(source) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    reason = probe(source)
    assert reason and "127.0.0.1" in reason
    # A task on an executor that cannot reach it (where the probe's could) names the URI.
    with pytest.raises(
        StoreUnreachable, match=rf"'s3://{BUCKET}/model' cannot be read from this executor: "
    ):
        materialize(_delivery(source, tmp_path / "cache"))
    missing = DirectSource(str(tmp_path / "not-mounted"), source.files)
    assert "not-mounted" in (probe(missing) or "")


_Row = namedtuple("_Row", "status detail")


class _LocalSession:
    """A classic session on a cluster as ``deliver`` sees it, whose one-task jobs run here,
    in this process, with this process's environment (the executor's, for the test)."""

    _apps = itertools.count()

    def __init__(self) -> None:
        self.added: list[str] = []
        self.sparkContext = SimpleNamespace(
            master="spark://cluster:7077",
            # Unique like Spark's (not id(self): a freed session's id comes back, and with it
            # that session's probe result).
            applicationId=f"app-{next(self._apps)}",
            listFiles=[],
            addFile=self.added.append,
        )
        self.conf = SimpleNamespace(get=lambda key, default=None: default)

    def range(self, *args: int) -> _LocalSession:
        return self

    def mapInPandas(self, fn, schema: str) -> SimpleNamespace:  # noqa: N802 - Spark's name
        return SimpleNamespace(
            collect=lambda: [_Row(*row) for frame in fn(iter([])) for row in frame.values]
        )


def _setting(values: dict):
    return lambda spark, item: values.get(item.key, item.default)


def test_auto_falls_back_to_files_with_one_line_when_executors_cannot_reach_the_store(
    s3, tmp_path, monkeypatch, caplog
):
    uri = f"s3://{BUCKET}/model"
    cache = {"spark.pyfunc.cache.dir": str(tmp_path / "cache")}
    spark = _LocalSession()
    with caplog.at_level(logging.INFO, logger="spark_pyfunc"):
        reached = deliver(spark, s3["model"], _setting(cache), uri)
    assert reached.route == "direct" and spark.added == []
    assert [r.getMessage() for r in caplog.records if "direct route" in r.getMessage()]

    caplog.clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    spark = _LocalSession()
    with caplog.at_level(logging.INFO, logger="spark_pyfunc"):
        fell_back = deliver(spark, s3["model"], _setting(cache), uri)
    assert fell_back.route == "files"
    assert [Path(p).name for p in spark.added] == [fell_back.archive_name]
    lines = [r for r in caplog.records if r.name.startswith("spark_pyfunc._distribution")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING
    text = lines[0].getMessage()
    assert "files route" in text and f"fallback from direct: an executor cannot read {uri}" in text
    assert "127.0.0.1" in text  # the reason: the endpoint that refused

    spark = _LocalSession()
    asked = {**cache, "spark.pyfunc.shipping": "direct"}
    with pytest.raises(ShippingError, match=rf"shipping=direct: an executor cannot read .*{uri}"):
        deliver(spark, s3["model"], _setting(asked), uri)
    assert spark.added == []


@pytest.mark.mlflow
def test_a_registered_model_stored_in_s3_is_read_there(s3, tmp_path, monkeypatch):
    """models:/ and an alias resolve on the driver to where MLflow stored the artifacts (a
    sqlite registry whose experiment keeps them in the S3 bucket), which executors read."""
    import mlflow
    from mlflow_models import MlflowLinear

    from spark_pyfunc._uris import resolve_model_uri

    weights = tmp_path / "w.npy"
    weights.write_bytes(b"\x93NUMPY")  # never loaded: only shipped and compared
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    experiment = mlflow.create_experiment("direct", artifact_location=f"s3://{BUCKET}/mlruns")
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=MlflowLinear(),
            artifacts={"weights": str(weights)},
            registered_model_name="directed",
        )
    mlflow.MlflowClient().set_registered_model_alias("directed", "champion", "1")
    uri = "models:/directed@champion"
    driver_copy = resolve_model_uri(uri)
    location, why = direct_location(uri, declared=False)
    assert location is not None and location.startswith(f"s3://{BUCKET}/mlruns/"), why
    source = build_source(location, driver_copy)
    got = materialize(_delivery(source, tmp_path / "cache"))
    assert (got / "MLmodel").read_bytes() == (driver_copy / "MLmodel").read_bytes()
