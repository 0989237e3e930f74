"""A model whose every prediction depends on every byte of its artifact, for shipping tests.

Pickled by reference: saved with this file as a code path, so executors import it from the
model directory.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from spark_pyfunc.python_model import PythonModel


def blob_digest(path: str) -> int:
    """The first 60 bits of the file's sha256, as an integer (fits a Spark long)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return int(digest.hexdigest()[:15], 16)


class BlobModel(PythonModel):
    """Predicts, for every row, the digest of its ``blob`` artifact as the host read it."""

    def load_context(self, context) -> None:
        self.digest = blob_digest(context.artifacts["blob"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return pd.Series([self.digest] * len(model_input), dtype="int64")
