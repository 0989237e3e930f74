"""The chaos harness's model: ``y = 2 * x + id``, shipped to the hosts as a code path.

Its ``load_context`` says in the host's log when the model's own load starts and ends, so
that the harness can tell a host that is loading from one still importing (before the
product records its stage in a file), and reads an optional ballast artifact in full, so
that a load takes a while (``--model-mib``). ``predict_ms`` in the model config slows each
call, so that a job lasts long enough for a kill to land anywhere in it.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

# spark_pyfunc's base class, not MLflow's: a uv environment's host has no MLflow.
from spark_pyfunc.python_model import PythonModel

__all__ = ["LOAD_DONE", "LOAD_START", "DoubleXPlusId"]

LOAD_START = "chaos model: load_context started"
LOAD_DONE = "chaos model: load_context done"

logger = logging.getLogger("chaos_model")


class DoubleXPlusId(PythonModel):
    """``y = 2 * x + id`` in doubles: exact, so the harness can compare with pandas."""

    def load_context(self, context):
        logger.info(LOAD_START)
        ballast = (context.artifacts or {}).get("ballast")
        self.ballast = b""
        if ballast:
            with open(ballast, "rb") as fh:
                self.ballast = fh.read()  # held: the model is this big in memory
        self.predict_s = float((context.model_config or {}).get("predict_ms", 0)) / 1000.0
        logger.info(LOAD_DONE)

    def predict(self, context, model_input, params=None):
        if self.predict_s:
            time.sleep(self.predict_s)
        # the UDF's columns (x, id), by position: without a signature they are not named
        x = model_input.iloc[:, 0].astype("float64")
        ids = model_input.iloc[:, 1].astype("float64")
        return pd.Series(2.0 * x + ids, name="y")
