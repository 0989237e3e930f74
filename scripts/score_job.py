"""Score a file with a model as a spark-submit application.

    spark-submit [--master ...] scripts/score_job.py MODEL INPUT OUTPUT [options]

The options are those of ``spark-pyfunc score`` except ``--master`` (spark-submit sets the
master and every other Spark setting); ``--help`` lists them. The scoring is
``spark_pyfunc.scoring.score``, the same code the console script runs.
"""

from __future__ import annotations

import sys

from spark_pyfunc.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main())
