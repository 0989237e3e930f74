"""Model distribution on a real multi-process cluster: the broadcast route, the machine-wide
cache across applications, corrupt entries, eviction, racing applications, driver egress.

Executors of a local-cluster share this machine, so they share one cache directory: one
fill serves them all, which is exactly the cache's promise on a real machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import get_session, stop_active_session

from spark_pyfunc import spark_udf
from spark_pyfunc._cache import read_events

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from ship_bench import SocketSampler  # noqa: E402

WORKTREE = str(Path(__file__).resolve().parents[1])
MASTER = "local-cluster[2,1,1024]"
#: Three executors for the egress test, driver ports fixed so its sockets can be told apart.
EGRESS_MASTER = "local-cluster[3,1,1024]"
EGRESS_PORTS = {"spark.driver.port": "47110", "spark.driver.blockManager.port": "47111"}
BASE = {"spark.task.maxFailures": "1", "spark.pyfunc.shipping": "broadcast"}


def _blob_model(root: Path, size: int, seed: int = 0) -> tuple[Path, int]:
    from ship_models import BlobModel, blob_digest

    from spark_pyfunc import save_model

    blob = root.parent / f"{root.name}.bin"
    blob.write_bytes(os.urandom(size) + bytes([seed]))
    save_model(
        root,
        python_model=BlobModel(),
        artifacts={"blob": str(blob)},
        code_paths=[str(Path(__file__).parent / "ship_models.py")],
    )
    return root, blob_digest(str(blob))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, int]:
    return _blob_model(tmp_path_factory.mktemp("models") / "blob", 3 << 20)


def _session(spark_tmp: str, cache: Path, master: str = MASTER, **extra: str):
    conf = {
        **BASE,
        "spark.pyfunc.cache.dir": str(cache),
        "spark.pyfunc.shipping.chunkBytes": str(1 << 20),  # a 3 MiB model: 4 broadcasts
        **extra,
    }
    return get_session(master, spark_tmp, conf)


def _score(spark, path: Path, scope: str, rows: int = 16) -> list[int]:
    predict = spark_udf(spark, str(path), result_type="long", scope=scope)
    frame = spark.range(0, rows, numPartitions=8).select(predict("id").alias("n"))
    return [row.n for row in frame.collect()]


def _count(cache: Path, event: str) -> int:
    return sum(1 for e in read_events(cache) if e["event"] == event)


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_broadcast_route_scores_exactly_and_a_second_application_fetches_nothing(
    spark_tmp, tmp_path, model, scope, caplog
):
    path, digest = model
    cache = tmp_path / "cache"
    spark = _session(spark_tmp, cache)
    with caplog.at_level("INFO", logger="spark_pyfunc._distribution"):
        assert _score(spark, path, scope) == [digest] * 16
    assert "broadcast route" in caplog.text
    fills = [e for e in read_events(cache) if e["event"] == "fill"]
    assert [e["detail"] for e in fills] == ["broadcast"], "one fill for the machine"
    entries = list((cache / "entries").iterdir())
    assert len(entries) == 1 and (entries[0] / "model" / "MLmodel").is_file()
    assert list((cache / "staging").iterdir()) == []

    # A second application (a new SparkContext, new executors) on the same machine.
    stop_active_session()
    spark = _session(spark_tmp, cache, **{"spark.app.name": "second"})
    hits = _count(cache, "hit")
    assert _score(spark, path, scope) == [digest] * 16
    assert _count(cache, "fill") == 1, "the second application fetched or unpacked again"
    assert _count(cache, "hit") > hits


def test_a_flipped_byte_in_the_cache_is_refetched(spark_tmp, tmp_path, model):
    path, digest = model
    cache = tmp_path / "cache"
    spark = _session(spark_tmp, cache)
    assert _score(spark, path, "executor") == [digest] * 16
    [entry] = (cache / "entries").iterdir()
    blob = next((entry / "model" / "artifacts").iterdir())
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    stop_active_session()  # the next application's workers check the entry before use
    spark = _session(spark_tmp, cache, **{"spark.app.name": "after-flip"})
    assert _score(spark, path, "executor") == [digest] * 16
    corrupt = [e for e in read_events(cache) if e["event"] == "corrupt"]
    assert corrupt and blob.name in corrupt[0]["detail"]
    assert _count(cache, "fill") == 2
    assert blob.read_bytes() != bytes(data)


def test_eviction_spares_the_entry_a_live_application_uses(spark_tmp, tmp_path, model):
    path, digest = model
    cache = tmp_path / "cache"
    spark = _session(spark_tmp, cache)
    assert _score(spark, path, "executor") == [digest] * 16
    [used] = [p.name for p in (cache / "entries").iterdir()]
    # Another application fills the same cache, capped at 1 byte: everything idle goes.
    code = f"""
        from spark_pyfunc._cache import ModelCache
        def fill(dest):
            (dest / "w.bin").write_bytes(b"w" * 1024)
        ModelCache({str(cache)!r}, 1).get("{"e" * 64}", fill)
    """
    env = {**os.environ, "PYTHONPATH": WORKTREE}
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True)
    left = {p.name for p in (cache / "entries").iterdir()}
    assert used in left, "evicted an entry live executors use"
    assert not any(e["key"] == used for e in read_events(cache) if e["event"] == "evict")
    # ...and the live application goes on scoring from it, fetching nothing.
    assert _score(spark, path, "executor") == [digest] * 16
    assert _count(cache, "fill") == 2  # its own and the other application's


_RACER = """
import sys
from pyspark.sql import SparkSession
from spark_pyfunc import spark_udf
spark = (SparkSession.builder.master("local[1]").appName(sys.argv[3])
         .config("spark.ui.enabled", "false").config("spark.task.maxFailures", "1")
         .config("spark.pyfunc.cache.dir", sys.argv[2]).getOrCreate())
predict = spark_udf(spark, sys.argv[1], result_type="long", scope="process")
print("ROWS", sorted({r.n for r in spark.range(4).select(predict("id").alias("n")).collect()}))
spark.stop()
"""


def test_two_applications_racing_for_one_entry_fill_it_once(tmp_path):
    path, digest = _blob_model(tmp_path / "race", 2 << 20, seed=7)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": WORKTREE, "SPARK_LOCAL_IP": "127.0.0.1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(path), str(cache), f"racer{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(f"ROWS [{digest}]" in out for out in outs), outs
    assert _count(cache, "fill") == 1
    assert _count(cache, "hit") >= 2


def test_driver_sends_about_one_copy_to_three_executors(spark_tmp, tmp_path):
    """The deliberate break: route "broadcast" through addFile again, and this goes red."""
    path, digest = _blob_model(tmp_path / "egress", 24 << 20, seed=3)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    stop_active_session()
    spark = _session(
        spark_tmp,
        tmp_path / "cache",
        EGRESS_MASTER,
        **EGRESS_PORTS,
        **{"spark.pyfunc.shipping.chunkBytes": str(8 << 20)},
    )
    predict = spark_udf(spark, str(path), result_type="long", scope="executor")
    frame = spark.range(0, 48, numPartitions=24).select(predict("id").alias("n"))
    with SocketSampler() as sampler:
        values = {row.n for row in frame.collect()}
    assert values == {digest}
    sent = sampler.sent_from_ports({int(port) for port in EGRESS_PORTS.values()})
    # At least one copy left the driver (the count is real), and far fewer than three.
    assert 0.9 * size < sent < 1.5 * size, f"driver sent {sent / size:.2f} model sizes"
    stop_active_session()


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_executors_that_replace_every_holder_of_the_pieces_still_get_the_model(
    spark_tmp, tmp_path, model, scope, caplog
):
    """Every executor that fetched the broadcast is lost (a machine gone, or dynamic
    allocation releasing idle executors); the driver had dropped its own pieces after
    seeding. The executors Spark starts in their place must still get the model."""
    from support.faults import executor_jvms
    from support.wait import wait_until

    path, digest = model
    spark = _session(spark_tmp, tmp_path / "cache")
    sc = spark.sparkContext
    predict = spark_udf(spark, str(path), result_type="long", scope=scope)

    def score() -> list[int]:
        frame = spark.range(0, 16, numPartitions=8).select(predict("id").alias("n"))
        return [row.n for row in frame.collect()]

    caplog.set_level("INFO", logger="spark_pyfunc._pieces")
    assert score() == [digest] * 16
    lost = executor_jvms()
    assert len(lost) == 2
    for jvm in lost:
        jvm.kill()
    assert wait_until(
        lambda: (
            len(executor_jvms()) == 2
            and not {p.pid for p in lost} & {p.pid for p in executor_jvms()}
            and sc._jsc.sc().getExecutorMemoryStatus().size() == 3
        ),
        timeout=120,
    ), "the cluster did not start two new executors"
    # The fault landed where claimed: no executor held the pieces, so the driver re-offered.
    assert wait_until(
        lambda: any("offers its copy again" in r.getMessage() for r in caplog.records),
        timeout=30,
    ), [r.getMessage() for r in caplog.records]
    assert score() == [digest] * 16
    assert wait_until(
        lambda: any("withdrew its copy" in r.getMessage() for r in caplog.records), timeout=30
    ), "the driver kept offering its pieces after the new executors fetched them"


@pytest.mark.parametrize("scope", ["process", "executor"])
def test_an_executor_killed_while_it_fills_the_cache_leaves_nothing_half_written(
    spark_tmp, tmp_path, model, scope
):
    """The executor (its JVM and the Python worker filling the machine's cache) is killed
    with the model's files staged but not yet renamed in: the replacement executor fills
    the entry again from scratch, nobody ever loads the staged files, results are exact."""
    import threading

    import psutil
    from support.faults import executor_jvms
    from support.wait import wait_until

    path, digest = model
    cache, evidence = tmp_path / "cache", tmp_path / "evidence"
    evidence.mkdir()
    spark = _session(
        spark_tmp,
        cache,
        "local-cluster[1,1,1024]",
        **{"spark.executorEnv.SPARK_PYFUNC_FAULTPOINTS": f"{evidence}:cache.filling"},
    )
    built: dict = {}
    # spark_udf seeds the broadcast on an executor, which fills the cache: held there.
    thread = threading.Thread(
        target=lambda: built.setdefault(
            "udf", spark_udf(spark, str(path), result_type="long", scope=scope)
        )
    )
    thread.start()
    assert wait_until(lambda: any(evidence.glob("at-cache.filling-*")), timeout=120)
    filler = int(next(evidence.glob("at-cache.filling-*")).name.rsplit("-", 1)[1])
    assert list((cache / "staging").glob("*/model/*")), "nothing staged at the stage"
    entries = cache / "entries"
    assert not entries.exists() or not any(entries.iterdir())
    jvms = executor_jvms()
    psutil.Process(filler).kill()
    for jvm in jvms:
        jvm.kill()
    thread.join(timeout=120)
    assert "udf" in built, "spark_udf did not return after its seed job failed"
    assert wait_until(
        lambda: len(executor_jvms()) == 1 and executor_jvms()[0].pid not in {j.pid for j in jvms},
        timeout=120,
    )
    (evidence / "go-cache.filling").touch()  # the replacement's fill goes through
    frame = spark.range(0, 16, numPartitions=4).select(built["udf"]("id").alias("n"))
    assert [row.n for row in frame.collect()] == [digest] * 16
    assert _count(cache, "fill") == 1  # only the replacement's fill completed
    assert not list((cache / "staging").iterdir())  # the killed fill's staging is gone
    assert len(list(evidence.glob("at-cache.filling-*"))) == 2  # the kill landed at the stage
