"""Model signatures; a package so that its concerns can move into layered modules."""

from spark_pyfunc.schema._specs import *  # noqa: F403
from spark_pyfunc.schema._specs import __all__ as __all__
