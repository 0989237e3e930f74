"""The benchmark's models and input data, and the hand-written pandas UDF baseline.

Every model takes the same 8 double features, so one no-op floor serves all of them. The
features are a pure function of the row id, computed the same way by Spark (a JVM expression)
and by numpy (for the reference predictions every approach is checked against).

All models are written by MLflow (``mlflow.pyfunc.save_model`` with a ``PythonModel``
subclass), so the benchmark also exercises spark_pyfunc reading MLflow-written directories.
This module is shipped to executors with ``SparkContext.addPyFile``: the hand-written UDF's
model cache must live in an importable module to survive across tasks of a reused worker.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

N_FEATURES = 8
FEATURES = [f"x{i}" for i in range(N_FEATURES)]
_MULT = [7919, 104729, 1299709, 15485863, 32452843, 49979687, 67867967, 86028121]
_MOD = 1_000_003


def features_np(ids: np.ndarray) -> pd.DataFrame:
    """Feature values for row ids, in [-0.5, 0.5): exact in IEEE doubles on JVM and numpy."""
    ids = ids.astype(np.int64)
    pairs = enumerate(zip(FEATURES, _MULT, strict=True))
    return pd.DataFrame({n: ((ids * m + i) % _MOD) / _MOD - 0.5 for i, (n, m) in pairs})


def features_spark(spark: Any, rows: int, partitions: int, start: int = 0) -> Any:
    """The same features as a Spark DataFrame (``id`` plus ``x0..x7``), computed in the JVM."""
    from pyspark.sql import functions as F

    df = spark.range(start, start + rows, numPartitions=partitions)
    return df.select(
        "id",
        *[
            (((F.col("id") * m + i) % _MOD) / F.lit(float(_MOD)) - 0.5).alias(n)
            for i, (n, m) in enumerate(zip(FEATURES, _MULT, strict=True))
        ],
    )


def _python_model_base() -> type:
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", n) for n in FEATURES]),
        outputs=Schema([ColSpec("double")]),
    )


def _matrix(model_input: pd.DataFrame) -> np.ndarray:
    return model_input[FEATURES].to_numpy(dtype=np.float64)


def _model_classes() -> dict[str, type]:
    """The PythonModel subclasses, defined lazily so importing this module needs no MLflow."""
    base = _python_model_base()

    class LinearModel(base):  # type: ignore[misc, valid-type]
        """The trivial model: per-row cost is all framework overhead."""

        def __init__(self, weights: np.ndarray, bias: float) -> None:
            self.weights = weights
            self.bias = bias

        def predict(self, context, model_input, params=None):  # noqa: ANN001
            return _matrix(model_input) @ self.weights + self.bias

    class TableModel(base):  # type: ignore[misc, valid-type]
        """A big model fully read into memory (np.load, no mmap): one copy costs its size."""

        def load_context(self, context) -> None:  # noqa: ANN001
            self.table = np.load(context.artifacts["table"])

        def predict(self, context, model_input, params=None):  # noqa: ANN001
            x = _matrix(model_input)
            n = len(self.table)
            idx = ((x[:, 0] + 0.5) * (n - 1)).astype(np.int64)
            return self.table[idx] + self.table[(idx * 31 + 7) % n] * x[:, 1]

    class SklearnModel(base):  # type: ignore[misc, valid-type]
        """A real scikit-learn forest, pickled as an artifact and unpickled in load_context."""

        def load_context(self, context) -> None:  # noqa: ANN001
            with open(context.artifacts["forest"], "rb") as f:
                self.forest = pickle.load(f)

        def predict(self, context, model_input, params=None):  # noqa: ANN001
            return self.forest.predict(_matrix(model_input))

    return {"trivial": LinearModel, "table": TableModel, "sklearn": SklearnModel}


def _save(path: Path, python_model: Any, artifacts: dict[str, str] | None = None) -> None:
    """Save with MLflow, pickling the model class by value (executors lack this module)."""
    import cloudpickle
    import mlflow.pyfunc

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        mlflow.pyfunc.save_model(
            str(path),
            python_model=python_model,
            artifacts=artifacts,
            signature=_signature(),
            # Explicit requirements: MLflow would otherwise load the model in a subprocess to
            # infer them, which for a 256 MiB model takes longer than the benchmark itself.
            pip_requirements=["numpy", "pandas", "scikit-learn", "cloudpickle"],
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def build_trivial(path: Path) -> None:
    weights = np.linspace(-1.0, 1.0, N_FEATURES)
    _save(path, _model_classes()["trivial"](weights, 0.25))


def build_table(path: Path, scratch: Path, mib: int = 256) -> None:
    """A ``mib`` MiB float64 table saved as an .npy artifact."""
    table = np.random.default_rng(0).standard_normal(mib * 1024 * 1024 // 8)
    npy = scratch / "table.npy"
    np.save(npy, table)
    del table
    _save(path, _model_classes()["table"](), {"table": str(npy)})
    npy.unlink()


def build_sklearn(path: Path, scratch: Path, train_rows: int = 200_000, trees: int = 12) -> None:
    """A fully grown RandomForestRegressor (a few hundred MiB pickled) on generated data."""
    from sklearn.ensemble import RandomForestRegressor

    x = features_np(np.arange(10**7, 10**7 + train_rows) * 13)
    m = x.to_numpy()
    noise = np.random.default_rng(1).normal(0.0, 0.1, train_rows)
    y = np.sin(6 * m[:, 0]) + m[:, 1] * m[:, 2] + np.abs(m[:, 3]) + noise
    forest = RandomForestRegressor(n_estimators=trees, random_state=0, n_jobs=-1)
    forest.fit(m, y)
    forest.n_jobs = None  # predict single-threaded inside each Spark task, like the others
    pkl = scratch / "forest.pkl"
    with pkl.open("wb") as f:
        pickle.dump(forest, f, protocol=pickle.HIGHEST_PROTOCOL)
    del forest
    _save(path, _model_classes()["sklearn"](), {"forest": str(pkl)})
    pkl.unlink()


BUILDERS = {"trivial": build_trivial, "table": build_table, "sklearn": build_sklearn}


def build(name: str, path: Path, scratch: Path) -> None:
    if name == "trivial":
        build_trivial(path)
    else:
        BUILDERS[name](path, scratch)


# ------------------------------------------------------------- the hand-written baseline

_MODELS: dict[str, Any] = {}


def _cached_model(path: str) -> Any:
    """Load once per Python worker: what a careful user writes by hand."""
    model = _MODELS.get(path)
    if model is None:
        import mlflow.pyfunc

        model = _MODELS[path] = mlflow.pyfunc.load_model(path)
    return model


def handwritten_predict(path: str, *cols: pd.Series) -> pd.Series:
    frame = pd.DataFrame(dict(zip(FEATURES, cols, strict=True)), copy=False)
    return pd.Series(np.asarray(_cached_model(path).predict(frame), dtype=np.float64))
