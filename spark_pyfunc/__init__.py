"""spark_pyfunc: score MLflow-format Python models in Spark with one model copy per executor."""

from __future__ import annotations

__version__ = "0.1.0"

# The public API is re-exported here as the modules land (see docs/architecture.md).
__all__ = ["__version__"]
