"""Model classes used by the Spark UDF tests.

They are pickled by value (see ``save``), so Spark's Python workers and the model host can
unpickle them without the tests directory on their path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd

from spark_pyfunc import save_model
from spark_pyfunc.python_model import PythonModel

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FEATURES = [f"f{i}" for i in range(8)]


def _main_module() -> str:
    """``spark_pyfunc._host`` in the model host, ``pyspark.daemon`` in a Spark Python worker."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else "-"


def _record(context, event: str, key: str = "counter") -> None:
    """Append ``event pid main-module`` to the file named by model_config[key], if any."""
    path = (context.model_config or {}).get(key)
    if path:
        with open(path, "a") as fh:
            fh.write(f"{event} {os.getpid()} {_main_module()}\n")


def records(path: Path, event: str | None = None) -> list[tuple[str, int, str]]:
    """The ``(event, pid, main module)`` lines ``_record`` wrote, optionally of one event."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(e, int(p), m) for e, p, m in rows if event is None or e == event]


class Linear(PythonModel):
    """y = X @ w + bias * scale; w from an artifact, bias from model_config."""

    def load_context(self, context):
        self.w = np.load(context.artifacts["weights"])
        self.bias = float((context.model_config or {}).get("bias", 0.0))
        _record(context, "load")

    def predict(self, context, model_input, params=None):
        scale = (params or {}).get("scale", 1.0)
        x = model_input[FEATURES].to_numpy(dtype=np.float64)
        return pd.Series(x @ self.w + self.bias * scale, name="y")

    def logits(self, context, model_input, params=None):
        return -self.predict(context, model_input, params)


#: The weights of the Linear model that save_linear saves.
LINEAR_WEIGHTS = np.linspace(-1, 1, 8)


def save_linear(root: Path, example_rows: int = 3, **kwargs) -> Path:
    """Linear with LINEAR_WEIGHTS as its artifact, saved as ``root/model`` with an input
    example of ``example_rows`` rows (its signature); ``kwargs`` go to save_model."""
    np.save(root / "w.npy", LINEAR_WEIGHTS)
    example = pd.DataFrame(np.ones((example_rows, 8)), columns=FEATURES)
    artifacts = {"weights": str(root / "w.npy")}
    return save(Linear(), root / "model", artifacts=artifacts, input_example=example, **kwargs)


class SlowLinear(Linear):
    """Linear, sleeping model_config["delay"] seconds per batch: a job long enough to hurt."""

    def predict(self, context, model_input, params=None):
        import time

        time.sleep(float((context.model_config or {}).get("delay", 0.0)))
        return super().predict(context, model_input, params)


class Probe(PythonModel):
    """Reports what it saw: the host/worker pid, batch sizes and nulls, for UDF semantics tests.

    The pid is that of the process that loaded this copy: a prefork host's serving children
    report their parent, the host.
    """

    def load_context(self, context):
        _record(context, "load")
        self.pid = os.getpid()

    def predict(self, context, model_input, params=None):
        n = len(model_input)
        _record(context, f"predict:{n}", key="calls")
        return pd.DataFrame(
            {
                "pid": np.full(n, self.pid, dtype=np.int64),
                "rows": np.full(n, n, dtype=np.int64),
                "nulls": model_input.isna().sum(axis=1).astype(np.int64),
                "tag": [str((params or {}).get("tag", "none"))] * n,
            }
        )


class Echo(PythonModel):
    """Returns its input columns unchanged: what reaches the model is what comes back."""

    def predict(self, context, model_input, params=None):
        return model_input.copy()


class Describe(PythonModel):
    """One string per row naming each input's dtype and value: what exactly the model saw."""

    def predict(self, context, model_input, params=None):
        columns = list(model_input.columns)
        return pd.Series(
            [
                " | ".join(
                    f"{c}:{model_input[c].dtype}:{model_input[c].iloc[i]!r}" for c in columns
                )
                for i in range(len(model_input))
            ]
        )


class Shapes(PythonModel):
    """Returns what it is told to (via params), to test result-type fitting."""

    def predict(self, context, model_input, params=None):
        kind = (params or {}).get("kind", "double")
        n = len(model_input)
        x = model_input["x"].to_numpy()
        if kind == "double":
            return x * 1.5
        if kind == "fraction":
            return pd.Series(x + 0.5)
        if kind == "int":
            return pd.Series(x.astype(np.int64) * 2)
        if kind == "array":
            return np.stack([x, x * 2, x * 3], axis=1)
        if kind == "string":
            return pd.Series([f"row-{v:g}" for v in x])
        if kind == "too_few":
            return pd.Series(x[: max(n - 1, 0)])
        if kind == "raise":
            raise RuntimeError("the model refused this batch")
        raise ValueError(kind)


class Blocking(PythonModel):
    """A load that announces itself (file model_config["loading"]: pid) and then waits for
    the file model_config["release"]: a host that is provably mid-load, as long as needed."""

    def load_context(self, context):
        import time

        config = context.model_config or {}
        announce = Path(f"{config['loading']}.{os.getpid()}")
        announce.write_text(str(os.getpid()))
        announce.rename(config["loading"])  # atomic: whoever sees the file can read the pid
        while not Path(config["release"]).exists():
            time.sleep(0.05)

    def predict(self, context, model_input, params=None):
        return pd.Series(np.zeros(len(model_input)))


class Gate(PythonModel):
    """2a + b, but each predict first leaves ``request-<pid>`` in model_config["gate"] and
    waits there for a ``release`` file: a request provably in progress for as long as a test
    needs (to kill its server mid-request, say)."""

    def predict(self, context, model_input, params=None):
        import time

        gate = Path((context.model_config or {})["gate"])
        (gate / f"request-{os.getpid()}").touch()
        while not (gate / "release").exists():
            time.sleep(0.02)
        return pd.DataFrame({"score": 2 * model_input["a"] + model_input["b"]})


class Broken(PythonModel):
    """A model whose load fails, so its host cannot start."""

    def load_context(self, context):
        raise RuntimeError("weights-are-corrupt: this model cannot load")

    def predict(self, context, model_input, params=None):
        raise AssertionError("never loaded")


class Typed(PythonModel):
    """One column of the Spark type named by params["kind"], computed from the long ``x``:
    ``TYPED_VALUES`` below gives the same values in Python, for the tests to compare."""

    def predict(self, context, model_input, params=None):
        kind = (params or {}).get("kind", "long")
        x = model_input["x"].to_numpy().astype(np.int64)
        values = typed_values(kind, x)
        if kind == "struct":  # a struct result is a frame with one column per field
            return pd.DataFrame(values)
        return pd.Series(values, name=kind)


def typed_values(kind: str, x: np.ndarray) -> object:
    """What Typed returns for ``kind`` (a numpy array or a list of Python values)."""
    import datetime as dt

    if kind == "long":
        return x * 3_000_000_000
    if kind == "int":
        return (x * 7).astype(np.int32)
    if kind == "float":
        return (x / 4).astype(np.float32)
    if kind == "double":
        return x / 3
    if kind == "boolean":
        return x % 2 == 0
    if kind == "string":
        return np.array([f"é-{v}" for v in x], dtype=object)
    if kind == "binary":
        return [bytes([v % 256, 0, 255]) for v in x]
    if kind == "array<double>":
        return [np.array([v, v + 0.5]) for v in x]
    if kind == "array<string>":
        return [[str(v)] * int(v % 3) for v in x]
    if kind == "struct":
        return [{"n": int(v), "s": f"s{v}"} for v in x]
    if kind == "array<struct>":
        return [[{"n": int(v), "s": f"s{v}"}] * 2 for v in x]
    if kind == "date":
        return [dt.date(2024, 1, 1) + dt.timedelta(days=int(v)) for v in x]
    if kind == "timestamp":
        return pd.Series(pd.Timestamp("2024-03-10 01:30:00") + pd.to_timedelta(x, unit="h"))
    if kind == "map":
        return [{f"k{v}": float(v), "z": None} for v in x]
    raise ValueError(kind)


class FailsOnSomeRows(PythonModel):
    """Doubles f0, but refuses batches holding an f0 above 2 (a few rows of the test data)."""

    def predict(self, context, model_input, params=None):
        if (model_input["f0"] > 2.0).any():
            raise ValueError("f0 above 2.0: refusing to score this batch")
        return pd.Series(model_input["f0"] * 2.0)


def save(model, path: Path, **kwargs) -> Path:
    save_model(str(path), python_model=model, **kwargs)
    return path
