"""Model signatures: types, specs and their JSON, inference, and enforcement.

The classes read and write exactly the JSON that MLflow stores under ``signature`` in an
MLmodel file, so a model saved by either side loads on the other. Enforcement reproduces
MLflow's rules (what is converted, what is refused) so that a model scores the same here as
under ``mlflow.pyfunc``; the few places where it is deliberately stricter or more lenient
are marked in the docstrings.

The names in ``__all__`` are the whole public surface; they live in private modules, one
concern each, layered so that imports flow one way (``tests/test_layering.py`` checks it):

- ``_types``: DataType, Array, Object/Property, Map, AnyType, SparkMLVector, and their JSON.
- ``_coerce``: safe casts of a value, a list or a column to a type, and of a param value.
  The specs need them too (a ParamSpec checks its default), so they sit below the specs.
- ``_specs``: ColSpec, TensorSpec, Schema, ParamSpec, ParamSchema, ModelSignature.
- ``_infer``: infer_schema, infer_signature, from example data.
- ``_enforce``: enforce_schema, enforce_params, which shape model input into what a
  signature describes.
"""

from typing import Any  # noqa: F401 (see the end of the module)

import numpy as np  # noqa: F401 (see the end of the module)

from spark_pyfunc.schema._enforce import enforce_params, enforce_schema
from spark_pyfunc.schema._infer import infer_schema, infer_signature
from spark_pyfunc.schema._specs import (
    ColSpec,
    ModelSignature,
    ParamSchema,
    ParamSpec,
    Schema,
    TensorSpec,
)
from spark_pyfunc.schema._types import (
    AnyType,
    Array,
    ColType,  # noqa: F401 (see the end of the module)
    DataType,
    Map,
    Object,
    Property,
    SparkMLVector,
)

__all__ = [
    "AnyType",
    "Array",
    "ColSpec",
    "DataType",
    "Map",
    "ModelSignature",
    "Object",
    "ParamSchema",
    "ParamSpec",
    "Property",
    "Schema",
    "SparkMLVector",
    "TensorSpec",
    "enforce_params",
    "enforce_schema",
    "infer_schema",
    "infer_signature",
]

# Name the public module, not the private one, in reprs, pickles and help(): a pickled
# signature then loads whatever module a name moves to inside this package. The classes'
# field annotations are then resolved here by typing.get_type_hints(), which is why Any,
# np and ColType are imported above although nothing here uses them.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
