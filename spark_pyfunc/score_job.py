"""``spark-pyfunc score`` as a spark-submit application, shipped in the package.

    spark-submit [--master ...] "$(python -m spark_pyfunc.score_job --path)" \\
        MODEL INPUT OUTPUT [options]

The options are those of ``spark-pyfunc score`` except ``--master`` (spark-submit sets the
master and every other Spark setting); ``--help`` lists them. ``--path`` alone prints this
file's path, for spark-submit, which takes a file, not a module.
"""

from __future__ import annotations

import sys

from spark_pyfunc.cli import submit_main

__all__ = ["main"]


def main() -> int:
    """Print this file's path (``--path``), or score in the session spark-submit configured."""
    if sys.argv[1:] == ["--path"]:
        print(__file__)
        return 0
    return submit_main()


if __name__ == "__main__":
    sys.exit(main())
