"""One MLflow-written model for the parity tests: ``Parity(case)`` returns what ``case`` says.

Saved with ``mlflow.pyfunc.save_model`` and pickled by value, so that MLflow's own spark_udf
and spark_pyfunc's load the very same model in Spark's workers and in the model host.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import mlflow.pyfunc
import numpy as np
import pandas as pd

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: The variable the "env" case reports from the model's process.
ENV_NAME = "SPARK_PYFUNC_PARITY_X"


class Parity(mlflow.pyfunc.PythonModel):
    """Each case returns a function of the first input column ``x`` (or of what it saw)."""

    def __init__(self, case: str) -> None:
        self.case = case

    def predict(self, context, model_input, params=None):
        df, n = model_input, len(model_input)
        x = df.iloc[:, 0]
        if self.case == "columns":  # the input columns the model saw, by name
            return pd.Series([",".join(map(str, df.columns))] * n)
        if self.case == "mixed":  # outputs of three dtypes
            v = x.to_numpy(dtype=np.float64)
            return pd.DataFrame(
                {
                    "label": [f"class{int(a) % 2}" for a in v],
                    "p": v / 10,
                    "n": v.astype(np.int64) * 2,
                }
            )
        if self.case == "pairs":  # a (rows, 2) tensor
            v = x.to_numpy(dtype=np.float64)
            return np.stack([v, v * 2], axis=1).astype(np.int64)
        if self.case == "vector":  # a 1-D tensor: one value per row
            return x.to_numpy(dtype=np.float64) * 1.5
        if self.case == "struct_input":  # what the struct column "obj" holds, as seen
            return pd.Series(
                [
                    f"{type(o).__name__}:{a}:{o['u']!r}:{o['s']}"
                    for a, o in zip(df["x"], df["obj"], strict=True)
                ]
            )
        if self.case == "nan_arrays":  # an array field that is a list with NaN, None or NaN
            cells = [[1.0, float("nan")], None, float("nan")]
            return pd.DataFrame(
                {"a": [cells[int(a) % 3] for a in x], "b": x.to_numpy(dtype=np.float64)}
            )
        if self.case == "described":  # the second input's values, with their types
            return pd.Series([_describe(v) for v in df.iloc[:, 1]])
        if self.case == "datetime":
            return pd.Series([f"{type(t).__name__}:{t}" for t in df["t"]])
        if self.case == "array_struct":  # per row, a list of dicts
            return [[{"n": int(a), "s": f"s{a}"}, {"n": -int(a), "s": None}] for a in x]
        if self.case == "map":  # one column of dicts, a missing value among them
            return pd.DataFrame({"m": [{f"k{int(a)}": float(a), "z": None} for a in x]})
        if self.case == "dtypes":  # one output of each common dtype
            v = x.to_numpy(dtype=np.float64)
            return pd.DataFrame(
                {
                    "i32": v.astype(np.int32),
                    "i64": v.astype(np.int64) * 2,
                    "s": [f"s{int(a)}" for a in v],
                    "f32": (v / 4).astype(np.float32),
                    "f64": v / 10,
                    "b": v.astype(np.int64) % 2 == 1,
                }
            )
        if self.case == "index_list":  # per row, the input columns as a pandas.Index
            return [df.columns] * n
        if self.case == "matrices":  # per row, a 2-D array (a (2, 3) tensor)
            return [np.arange(6, dtype=np.float64).reshape(2, 3) * a for a in x]
        if self.case == "big_ints":  # int64 values that no float or double holds exactly
            return pd.DataFrame({"n": x.to_numpy(dtype=np.int64) * 2 + (2**53 + 1)})
        if self.case == "params":
            return pd.Series([repr(sorted((params or {}).items()))] * n)
        if self.case == "env":
            return pd.Series([os.environ.get(ENV_NAME, "<unset>")] * n)
        raise ValueError(self.case)


def _describe(value) -> str:
    """A value with the types of everything in it: what the model was handed, exactly."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, np.ndarray)):
        return f"{type(value).__name__}[" + ", ".join(_describe(v) for v in value) + "]"
    return f"{type(value).__name__}:{value}"
