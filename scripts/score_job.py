"""A thin wrapper kept for old command lines: the entry point ships in the package as
``spark_pyfunc/score_job.py`` (``python -m spark_pyfunc.score_job --path`` prints its path).

    spark-submit [--master ...] scripts/score_job.py MODEL INPUT OUTPUT [options]
"""

from __future__ import annotations

import sys

from spark_pyfunc.score_job import main

if __name__ == "__main__":
    sys.exit(main())
