"""A short spark_udf application for test_no_leaks.py, run in its own interpreter so that its
exit (atexit handlers, the Python daemon going away) is what the test observes.

    python leak_app.py MODEL_DIR
"""

from __future__ import annotations

import sys

from pyspark.sql import SparkSession

from spark_pyfunc import spark_udf


def main(model_dir: str) -> None:
    spark = (
        SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    )
    try:
        predict = spark_udf(spark, model_dir, scope="executor")
        df = spark.range(0, 5000, numPartitions=4).selectExpr(
            *[f"cast(id as double) * {i} as f{i}" for i in range(8)]
        )
        total = df.select(predict().alias("p")).groupBy().sum("p").collect()[0][0]
        print(total)
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
