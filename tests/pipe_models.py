"""Model classes for the pipelining tests.

Pickled by reference: a host started by the tests imports this module from the client's
``sys.path`` (pytest puts tests/ on it); on Spark the model carries it as a code path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spark_pyfunc.python_model import PythonModel

#: How long the gate waits to be opened (a test that died leaves it shut).
GATE_TIMEOUT = 300.0


class Tagged(PythonModel):
    """y = 2a + b and z = b, so a reply is as large as its request (inputs ``a``, ``b``).

    Records its evidence in model_config["dir"]: ``loads`` (a ``<pid>`` line per load) and
    ``calls`` (``<host pid> <rows> <a of each row, comma-separated>`` per call, so a test sees
    which requests shared a call and which were sent again; only for calls of at most 1,000
    rows). A call holding the row a == model_config["gate"] touches ``at-<host pid>`` there
    and waits for the file ``go``: the host is provably busy with that request, as long as
    the test needs. A call with a negative ``a`` raises ValueError naming it; one holding
    a == model_config["crash"] ends the process serving it (as a segfault would).
    ``model_config["cost"]`` seconds are slept per call (a device's fixed cost).
    """

    def load_context(self, context):
        self.config = dict(context.model_config or {})
        self.host = os.getpid()  # also in a prefork host's serving children
        if self.config.get("dir"):
            with open(Path(self.config["dir"]) / "loads", "a") as f:
                f.write(f"{self.host}\n")

    def predict(self, context, model_input, params=None):
        a = model_input["a"].to_numpy()
        folder = Path(self.config["dir"]) if self.config.get("dir") else None
        if folder is not None and len(a) <= 1000:
            with open(folder / "calls", "a") as f:
                f.write(f"{self.host} {len(a)} {','.join(str(int(v)) for v in a)}\n")
        gate = self.config.get("gate")
        if folder is not None and gate is not None and np.any(a == gate):
            (folder / f"at-{self.host}").write_text(str(os.getpid()))
            deadline = time.monotonic() + GATE_TIMEOUT
            while not (folder / "go").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gate in {folder} was never opened")
                time.sleep(0.02)
        time.sleep(float(self.config.get("cost", 0.0)))
        if self.config.get("crash") is not None and np.any(a == self.config["crash"]):
            os._exit(3)
        if np.any(a < 0):
            raise ValueError(f"negative a: {a[a < 0][0]:g}")
        return pd.DataFrame({"y": 2 * model_input["a"] + model_input["b"], "z": model_input["b"]})


class Contained(PythonModel):
    """y = 2x + id (inputs ``id``, ``x``), for the cluster pipelining tests: host_models.Faulty's
    gates and evidence, but the ``predict`` gate holds the call that *contains* the row
    model_config["gate_id"] (a batching host may put its request behind another in one call).

    Records in model_config["gates_dir"]: ``loads`` (a ``<pid>`` line per load) and ``calls``
    (``<host pid> <ids, comma-separated>`` per call).
    """

    def load_context(self, context):
        self.host = os.getpid()  # also in a prefork host's serving children
        directory = (context.model_config or {}).get("gates_dir")
        if directory:
            with open(Path(directory) / "loads", "a") as f:
                f.write(f"{self.host}\n")

    def predict(self, context, model_input, params=None):
        config = context.model_config or {}
        directory = config.get("gates_dir")
        ids = model_input["id"].to_numpy()
        if directory:
            with open(Path(directory) / "calls", "a") as f:
                f.write(f"{self.host} {','.join(str(int(i)) for i in ids)}\n")
            if "predict" in config.get("gates", ()) and np.any(ids == config.get("gate_id")):
                folder = Path(directory)
                (folder / f"at-predict-{self.host}").write_text(str(os.getpid()))
                deadline = time.monotonic() + GATE_TIMEOUT
                while not (folder / "go-predict").exists():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the predict gate in {folder} was never opened")
                    time.sleep(0.02)
        return pd.DataFrame({"y": 2.0 * model_input["x"] + model_input["id"]})
