"""The package version, in a leaf module: setup.cfg reads it, and modules that write it
(the CLI's ``--version``, MLmodel files) import it without importing the package root."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
