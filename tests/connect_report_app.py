"""A Spark Connect application for test_connect.py's host_report test, run in its own
interpreter (see connect_app.py): scores with one host, then prints host_report's rows and
coverage as one JSON object.

    python connect_report_app.py MODEL_DIR
"""

from __future__ import annotations

import json
import sys
import time

from spark_pyfunc import host_report, spark_udf


def main(model_dir: str) -> None:
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.remote("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    try:
        predict = spark_udf(spark, model_dir, scope="executor")
        frame = spark.range(0, 2000, numPartitions=4).selectExpr(
            *[f"cast(id as double) as f{i}" for i in range(8)]
        )
        frame.select(predict(*[f"f{i}" for i in range(8)]).alias("p")).groupBy().sum().collect()
        report = host_report(spark, since=time.time())
        result = {
            "session_type": type(spark).__module__,
            "rows": report[["state", "rows", "model_uri"]].to_dict("records"),
            "answered": report.attrs["executors_answered"],
            "expected": report.attrs["executors_expected"],
        }
    finally:
        spark.stop()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
