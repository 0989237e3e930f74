"""A Spark Connect application for test_connect.py, run in its own interpreter.

``SparkSession.builder.remote("local[2]")`` starts a Connect server inside this process and
switches the process into Connect mode for good, so it cannot share pytest's process with the
classic sessions of the other tests. It prints one JSON object for the test to check.

    python connect_app.py MODEL_DIR COUNTER_FILE
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd

from spark_pyfunc import load_model, spark_udf


def main(model_dir: str, counter: str) -> None:
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.remote("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    try:
        features = [f"f{i}" for i in range(8)]
        rng = np.random.default_rng(11)
        data = pd.DataFrame(rng.normal(size=(2000, 8)), columns=features)
        df = spark.createDataFrame(data).repartition(6)
        config = {"bias": 1.5, "counter": counter}

        first = spark_udf(spark, model_dir, model_config=config, scope="executor")
        out1 = df.withColumn("pred", first(*features)).toPandas()
        # A second UDF over the same model and config must reuse the same host.
        second = spark_udf(spark, model_dir, model_config=config, scope="executor")
        out2 = df.withColumn("pred", second(*features)).toPandas()

        local = load_model(model_dir, model_config={"bias": config["bias"]})  # not counted
        expected1 = np.asarray(local.predict(out1[features]))
        expected2 = np.asarray(local.predict(out2[features]))
        result = {
            "session_type": type(spark).__module__,
            "rows": [len(out1), len(out2)],
            "max_abs_diff": [
                float(np.max(np.abs(out1["pred"].to_numpy() - expected1))),
                float(np.max(np.abs(out2["pred"].to_numpy() - expected2))),
            ],
            "driver_pid": os.getpid(),
        }
    finally:
        spark.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
