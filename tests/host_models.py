"""Model classes for the model host tests.

Pickled by reference: the host imports this module, which it finds because the client hands
its own ``sys.path`` (pytest puts tests/ on it) to the host.
"""

from __future__ import annotations

import os
import threading
import time

import pandas as pd

from spark_pyfunc.python_model import PythonModel

FEATURES = ["a", "b"]
#: Params the saved signature declares (with these defaults).
PARAMS = {"scale": 1.0, "fail": "", "sleep": 0.0, "crash": False}


class Counting(PythonModel):
    """score = (2a + b) * scale + offset.

    load_context appends a line to model_config["count_file"] (to count loads), takes
    ``offset`` from model_config, sleeps ``load_delay`` seconds and raises if ``fail_load``.
    predict raises for ``fail``, dies for ``crash`` and sleeps ``sleep`` seconds (params).
    """

    def load_context(self, context):
        config = dict(context.model_config or {})
        if config.get("count_file"):
            with open(config["count_file"], "a") as f:
                f.write(f"load {os.getpid()}\n")
        time.sleep(float(config.get("load_delay", 0.0)))
        if config.get("alloc_bytes"):  # more memory than the machine has: MemoryError
            self.blob = bytearray(int(config["alloc_bytes"]))
        if config.get("fail_load"):
            raise RuntimeError("load_context failed on purpose")
        self.offset = float(config.get("offset", 0.0))

    def predict(self, context, model_input, params=None):
        params = params or {}
        if params.get("fail"):
            raise ValueError(f"predict refused: {params['fail']}")
        if params.get("crash"):
            os._exit(3)  # the process serving the request dies, as a segfault would
        if params.get("sleep"):
            time.sleep(float(params["sleep"]))
        score = (2 * model_input["a"] + model_input["b"]) * float(params.get("scale", 1.0))
        return pd.DataFrame({"score": score + self.offset})

    def describe(self, context, model_input, params=None):
        """A custom inference method: one string per row."""
        return [f"a={a:g} b={b:g}" for a, b in zip(model_input["a"], model_input["b"], strict=True)]

    def whoami(self, context, model_input, params=None):
        """The pid of the process running predict, on every row."""
        return pd.DataFrame({"pid": [os.getpid()] * len(model_input)})


class Threaded(Counting):
    """Counting, with a background thread started by load_context (as onnxruntime's session
    pools or a model refreshing a cache would): forking the loaded process is unsafe."""

    def load_context(self, context):
        super().load_context(context)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stop.wait, daemon=True)
        self._thread.start()
