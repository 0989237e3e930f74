"""The direct route on a real multi-process cluster: executors read a model stored in S3
(moto's server on 127.0.0.1) themselves, each into its own cache; the driver serves no copy.
And the fallback: executors that cannot reach the store get the model from the driver.

Each executor gets a cache of its own (a relative ``spark.pyfunc.cache.dir`` is below the
executor's working directory), so each plays one machine reading the store once.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conftest import get_session, stop_active_session
from support.moto_s3 import free_port, gets, moto_server, s3_env, upload_dir

from spark_pyfunc import spark_udf
from spark_pyfunc._cache import read_events
from spark_pyfunc._uris import resolve_model_uri

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from ship_bench import SocketSampler  # noqa: E402

MASTER = "local-cluster[2,1,1024]"
BUCKET = "direct-models"
BLOB = "model/artifacts/blob.bin"


@pytest.fixture(scope="module")
def s3_model(tmp_path_factory) -> Iterator[dict]:
    """A 3 MiB blob model in moto's S3; the driver's environment points at the server."""
    from test_cluster_distribution import _blob_model

    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as endpoint, pytest.MonkeyPatch.context() as mp:
        env = s3_env(endpoint)
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        path, digest = _blob_model(tmp_path_factory.mktemp("models") / "blob", 3 << 20, seed=5)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        upload_dir(client, BUCKET, "model", path)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        yield {
            "uri": f"s3://{BUCKET}/model",
            "digest": digest,
            "env": env,
            "log": log,
            "size": size,
        }
    stop_active_session()


def _session(spark_tmp: str, cache: str, executor_env: dict[str, str], **extra: str):
    conf = {
        "spark.task.maxFailures": "1",
        "spark.pyfunc.cache.dir": cache,
        **{f"spark.executorEnv.{k}": v for k, v in executor_env.items()},
        **extra,
    }
    return get_session(MASTER, spark_tmp, conf)


def _caches(spark_tmp: str, spark, name: str) -> list[Path]:
    """Each executor's cache directory (below its working directory) that was created.

    Executors work in ``spark.worker.dir``, or in PySpark's own ``work/`` where the JVM was
    started before that setting was read."""
    import pyspark

    app = spark.sparkContext.applicationId
    roots = [Path(spark_tmp) / "work", Path(pyspark.__file__).parent / "work"]
    return sorted(p for root in roots for p in root.glob(f"{app}/*/{name}") if p.is_dir())


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Cache directories to remove after the test (they may lie in PySpark's work/)."""
    found: list[Path] = []
    yield found
    for path in found:
        shutil.rmtree(path, ignore_errors=True)


def _archives(spark) -> list[str]:
    return [f for f in spark.sparkContext.listFiles if "spark_pyfunc-model-" in f]


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_executors_read_a_model_in_s3_themselves(spark_tmp, s3_model, scope, caplog, cleanup):
    stop_active_session()
    ports = {
        "spark.driver.port": str(free_port()),
        "spark.driver.blockManager.port": str(free_port()),
    }
    name = f"direct-cache-{scope}"
    spark = _session(
        spark_tmp, name, s3_model["env"], **{"spark.pyfunc.shipping": "direct"}, **ports
    )
    resolve_model_uri(s3_model["uri"])  # the driver's own download (once per process)
    driver_gets = gets(s3_model["log"], BUCKET, BLOB)
    with caplog.at_level(logging.INFO, logger="spark_pyfunc._distribution"):
        predict = spark_udf(spark, s3_model["uri"], result_type="long", scope=scope)
    assert f"direct route for {s3_model['uri']}" in caplog.text
    frame = spark.range(0, 16, numPartitions=8).select(predict("id").alias("n"))
    with SocketSampler() as sampler:
        assert [row.n for row in frame.collect()] == [s3_model["digest"]] * 16

    assert _archives(spark) == [], "the driver registered the model archive"
    caches = _caches(spark_tmp, spark, name)
    cleanup.extend(caches)
    assert caches, "no executor filled a cache"
    fills = [
        [(e["event"], e["detail"]) for e in read_events(c) if e["event"] == "fill"] for c in caches
    ]
    assert fills == [[("fill", "direct")]] * len(caches), "one direct read per machine"
    # Each machine read the blob from S3 once (one of them in spark_udf's probe).
    assert gets(s3_model["log"], BUCKET, BLOB) - driver_gets == len(caches)
    sent = sampler.sent_from_ports({int(p) for p in ports.values()})
    # Tasks and results did cross the driver's sockets (the count is real); no model did.
    assert 0 < sent < min(1 << 20, s3_model["size"] // 3), f"the driver sent {sent} bytes"
    stop_active_session()


def test_executors_that_cannot_reach_the_store_get_the_model_from_the_driver(
    spark_tmp, s3_model, caplog, cleanup
):
    stop_active_session()
    unreachable = {**s3_model["env"], "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    name = "fallback-cache"
    spark = _session(spark_tmp, name, unreachable)  # shipping=auto
    with caplog.at_level(logging.INFO, logger="spark_pyfunc._distribution"):
        predict = spark_udf(spark, s3_model["uri"], result_type="long", scope="executor")
    lines = [r for r in caplog.records if r.name == "spark_pyfunc._distribution"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, caplog.text
    assert f"fallback from direct: an executor cannot read {s3_model['uri']}" in lines[0].message
    frame = spark.range(0, 16, numPartitions=8).select(predict("id").alias("n"))
    assert [row.n for row in frame.collect()] == [s3_model["digest"]] * 16
    assert len(_archives(spark)) == 1
    cleanup.extend(_caches(spark_tmp, spark, name))
    details = {e["detail"] for c in cleanup for e in read_events(c) if e["event"] == "fill"}
    assert details == {"files"}
    stop_active_session()
