"""Model shipping on a real multi-process cluster: 2 executors in their own JVMs, 2 cores each.

Only a cluster shows that the archive really travels through Spark's file server, that each
executor unpacks it once into its own working directory although several Python workers ask at
the same time, and that two models shipped in one session live side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from spark_pyfunc._shipping import ship_model

pytestmark = pytest.mark.slow


def _model(root: Path, text: str) -> Path:
    (root / "artifacts").mkdir(parents=True)
    (root / "model.txt").write_text(text)
    (root / "artifacts" / "blob.bin").write_bytes(text.encode() * 1000)
    return root


def test_each_executor_unpacks_each_model_once(cluster_spark, tmp_path):
    from pyspark.sql.functions import pandas_udf

    first = ship_model(cluster_spark, _model(tmp_path / "a", "model A"))
    second = ship_model(cluster_spark, _model(tmp_path / "b", "model B"))
    assert first.archive_name != second.archive_name
    assert ship_model(cluster_spark, tmp_path / "a") == first
    listed = [uri.rsplit("/", 1)[-1] for uri in cluster_spark.sparkContext.listFiles]
    assert listed.count(first.archive_name) == listed.count(second.archive_name) == 1

    @pandas_udf(
        "root string, pid long, a string, b string, a_unpacks long, b_unpacks long, "
        "a_inode long, spilled boolean, models string"
    )
    def probe(ids: pd.Series) -> pd.DataFrame:
        from spark_pyfunc import _shipping as shipping

        if not hasattr(shipping, "_counting_extract"):
            # Python workers are reused across tasks: wrap the extractor only once per worker.
            real = shipping.safe_extract

            def counting(archive, dest):
                with open(Path(archive).with_suffix(".unpacks"), "a") as handle:
                    handle.write(f"{os.getpid()}\n")
                real(archive, dest)

            shipping.safe_extract = shipping._counting_extract = counting
        a_dir, b_dir = shipping.materialize(first), shipping.materialize(second)
        root = a_dir.parent

        def unpacks(shipped) -> int:
            return len((root / f"{shipped.stem}.unpacks").read_text().splitlines())

        row = {
            "root": str(root),
            "pid": os.getpid(),
            "a": (a_dir / "model.txt").read_text(),
            "b": (b_dir / "model.txt").read_text(),
            "a_unpacks": unpacks(first),
            "b_unpacks": unpacks(second),
            "a_inode": a_dir.stat().st_ino,
            # Spark itself untars added *.tar files into its root; the archive must avoid that.
            "spilled": (root / "model.txt").exists(),
            "models": ",".join(
                sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
            ),
        }
        return pd.DataFrame([row] * len(ids))

    out = (
        cluster_spark.range(0, 64, numPartitions=16)
        .select(probe("id").alias("p"))
        .select("p.*")
        .toPandas()
    )

    assert out["root"].nunique() == 2, "expected both executors to run tasks"
    assert set(out["a"]) == {"model A"} and set(out["b"]) == {"model B"}
    assert not out["spilled"].any()
    per_executor = out.groupby("root").agg(
        a_unpacks=("a_unpacks", "max"),
        b_unpacks=("b_unpacks", "max"),
        inodes=("a_inode", "nunique"),
        models=("models", "last"),
    )
    assert (per_executor["a_unpacks"] == 1).all()
    assert (per_executor["b_unpacks"] == 1).all()
    assert (per_executor["inodes"] == 1).all()
    both = {first.stem, second.stem}
    assert all(both <= set(models.split(",")) for models in per_executor["models"])
