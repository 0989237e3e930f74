"""Signature layer: MLflow-identical JSON, inference and enforcement, checked against MLflow."""

from __future__ import annotations

import datetime as dt
import decimal
import doctest
import json
import logging
import pickle
import typing
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from spark_pyfunc.errors import SchemaEnforcementError, SchemaError
from spark_pyfunc.schema import (
    AnyType,
    Array,
    ColSpec,
    DataType,
    Map,
    ModelSignature,
    Object,
    ParamSchema,
    ParamSpec,
    Property,
    Schema,
    SparkMLVector,
    TensorSpec,
    enforce_params,
    enforce_schema,
    infer_schema,
    infer_signature,
)


@pytest.fixture
def mlflow_api():
    """MLflow's schema classes and private enforcement functions, the reference we match."""
    pytest.importorskip("mlflow")
    import mlflow.models as models
    import mlflow.models.utils as utils
    import mlflow.types.schema as types

    return models, utils, types


def col_json(t: str | dict, name: str | None = "a", required: bool = True) -> str:
    d = dict(t) if isinstance(t, dict) else {"type": t}
    if name is not None:
        d["name"] = name
    d["required"] = required
    return json.dumps([d])


def tensor_json(dtype: str, shape: list[int], name: str | None = None) -> str:
    d = {"name": name} if name else {}
    d.update({"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}})
    return json.dumps([d])


ARRAY_LONG = {"type": "array", "items": {"type": "long"}}
OBJECT_XY = {
    "type": "object",
    "properties": {
        "x": {"type": "long", "required": True},
        "y": {"type": "string", "required": False},
    },
}
MAP_DOUBLE = {"type": "map", "values": {"type": "double"}}

# --------------------------------------------------------------------------- JSON


SCHEMA_JSONS = [
    *(col_json(t.value) for t in DataType),
    col_json("double", required=False),
    json.dumps([{"type": "long"}, {"type": "string"}]),
    col_json(ARRAY_LONG),
    col_json({"type": "array", "items": {"type": "array", "items": {"type": "binary"}}}),
    col_json(OBJECT_XY, required=False),
    col_json(
        {
            "type": "object",
            "properties": {
                "z": {"type": "map", "values": {"type": "any"}, "required": True},
                "b": {"type": "array", "items": OBJECT_XY, "required": False},
            },
        }
    ),
    col_json(MAP_DOUBLE),
    col_json({"type": "map", "values": ARRAY_LONG}),
    col_json("any"),
    col_json({"type": "sparkml_vector"}),
    tensor_json("float32", [-1, 3, 4]),
    tensor_json("str", [-1]),
    tensor_json("bytes", [-1, 2], name="img"),
    json.dumps(
        [
            {"name": "x", "type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}},
            {"name": "y", "type": "tensor", "tensor-spec": {"dtype": "object", "shape": [2]}},
        ]
    ),
]


@pytest.mark.mlflow
@pytest.mark.parametrize("text", SCHEMA_JSONS)
def test_schema_json_round_trips_through_mlflow(mlflow_api, text):
    _, _, types = mlflow_api
    ours = Schema.from_json(text)
    theirs = types.Schema.from_json(text)
    assert ours.to_json() == theirs.to_json()
    assert types.Schema.from_json(ours.to_json()) == theirs
    assert Schema.from_json(theirs.to_json()) == ours


@pytest.mark.mlflow
def test_constructed_types_serialise_like_mlflow(mlflow_api):
    _, _, t = mlflow_api
    ours = Schema(
        [
            ColSpec(DataType.double, "a"),
            ColSpec("string", "b", required=False),
            ColSpec(Array(Array(DataType.long)), "c"),
            ColSpec(Object([Property("y", Map(AnyType())), Property("x", "boolean", False)]), "d"),
            ColSpec(Map(Object([Property("k", DataType.datetime)])), "e"),
            ColSpec(AnyType(), "f", required=False),
        ]
    )
    theirs = t.Schema(
        [
            t.ColSpec(t.DataType.double, "a"),
            t.ColSpec("string", "b", required=False),
            t.ColSpec(t.Array(t.Array(t.DataType.long)), "c"),
            t.ColSpec(
                t.Object([t.Property("y", t.Map(t.AnyType())), t.Property("x", "boolean", False)]),
                "d",
            ),
            t.ColSpec(t.Map(t.Object([t.Property("k", t.DataType.datetime)])), "e"),
            t.ColSpec(t.AnyType(), "f", required=False),
        ]
    )
    assert ours.to_json() == theirs.to_json()
    assert TensorSpec(np.float32, (-1, 2), "t").to_dict()["tensor-spec"] == {
        "dtype": "float32",
        "shape": [-1, 2],
    }


@pytest.mark.mlflow
def test_param_schema_and_signature_round_trip_through_mlflow(mlflow_api):
    models, _, t = mlflow_api
    specs = [
        ("n", "long", 3, None),
        ("x", "double", 0.5, None),
        ("f", "float", 2, None),
        ("s", "string", "hi", None),
        ("b", "boolean", False, None),
        ("when", "datetime", "2024-02-03T04:05:06", None),
        ("ids", "long", [1, 2], (-1,)),
        ("days", "datetime", ["2024-01-01"], (-1,)),
        ("none", "integer", None, None),
    ]
    ours = ParamSchema([ParamSpec(*s) for s in specs])
    theirs = t.ParamSchema([t.ParamSpec(*s) for s in specs])
    assert ours.to_json() == theirs.to_json()
    assert ParamSchema.from_json(theirs.to_json()) == ours
    assert ours.defaults()["f"] == 2.0 and isinstance(ours.defaults()["f"], float)
    assert ours.defaults()["when"] == dt.datetime(2024, 2, 3, 4, 5, 6)

    obj_param = ParamSpec("cfg", Object([Property("k", DataType.long)]), {"k": 1})
    assert t.ParamSpec.from_json_dict(**obj_param.to_dict()).to_dict() == obj_param.to_dict()

    sig = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, "a")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1,))]),
        params=ours,
    )
    mlflow_sig = models.ModelSignature.from_dict(sig.to_dict())
    assert mlflow_sig.to_dict() == sig.to_dict()
    assert ModelSignature.from_dict(mlflow_sig.to_dict()) == sig

    no_params = ModelSignature(inputs=Schema([ColSpec(DataType.long)]))
    assert no_params.to_dict() == {
        "inputs": '[{"type": "long", "required": true}]',
        "outputs": None,
        "params": None,
    }
    assert no_params.to_dict() == models.ModelSignature.from_dict(no_params.to_dict()).to_dict()
    assert ModelSignature.from_dict({"inputs": no_params.to_dict()["inputs"]}) == no_params


def test_schema_accessors():
    named = Schema(
        [ColSpec(DataType.long, "a"), ColSpec(DataType.string, "b", False), ColSpec("double", "c")]
    )
    assert named.input_names() == ["a", "b", "c"]
    assert named.required_input_names() == ["a", "c"]
    assert named.optional_input_names() == ["b"]
    assert named.has_input_names() and not named.is_tensor_spec() and len(named) == 3
    unnamed = Schema([ColSpec(DataType.long), ColSpec(DataType.long)])
    assert unnamed.input_names() == [0, 1] and not unnamed.has_input_names()
    tensors = Schema([TensorSpec(np.float64, (-1, 2), "x")])
    assert tensors.is_tensor_spec() and tensors.inputs[0].required
    assert DataType.string.to_numpy() == np.dtype(object)
    assert DataType.datetime.to_pandas() == np.dtype("datetime64[ns]")
    assert DataType.integer.to_numpy() == np.int32 and DataType("float") is DataType.float
    assert SparkMLVector().item is DataType.double and SparkMLVector() != Array(DataType.double)
    props = Object([Property("b", DataType.long), Property("a", DataType.long)]).properties
    assert [p.name for p in props] == ["a", "b"]  # sorted, as MLflow writes them
    with pytest.raises(AttributeError):
        ColSpec(DataType.long, "a").name = "b"  # type: ignore[misc]


def test_the_package_exports_todays_names_as_its_own():
    """Callers, pickles and help() name spark_pyfunc.schema, never the private module that
    holds a name, so names can move inside the package without breaking a saved pickle."""
    import spark_pyfunc.schema as public

    assert sorted(public.__all__) == [
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
    assert all(getattr(public, n).__module__ == "spark_pyfunc.schema" for n in public.__all__)
    for cls in (getattr(public, n) for n in public.__all__ if n[0].isupper()):
        typing.get_type_hints(cls)  # resolved in the module the class names as its own
    signature = ModelSignature(
        Schema(
            [ColSpec(Array(DataType.long), "a"), ColSpec(Object([Property("k", AnyType())]), "o")]
        ),
        params=ParamSchema([ParamSpec("p", DataType.double, 1.0)]),
    )
    blob = pickle.dumps(signature)
    assert b"spark_pyfunc.schema." not in blob and b"spark_pyfunc.schema" in blob
    assert pickle.loads(blob) == signature


def test_docstring_examples_run():
    """The examples in the public names' docstrings, run as doctests (none needs Spark)."""
    import spark_pyfunc.schema as public

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(verbose=False)
    examples = [
        test
        for name in public.__all__
        for test in finder.find(getattr(public, name), name, module=False, globs={})
        if test.examples
    ]
    assert {t.name for t in examples} >= {
        "DataType.simple_string",
        "enforce_params",
        "enforce_schema",
        "infer_schema",
        "infer_signature",
    }
    for test in examples:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (DataType.double, "double"),
        (DataType.integer, "integer"),
        (DataType.datetime, "datetime"),
        (AnyType(), "any"),
        (Array(DataType.long), "array<long>"),
        (SparkMLVector(), "sparkml_vector"),
        (Map(DataType.double), "map<string, double>"),
        (Object([Property("b", "string"), Property("a", "long")]), "struct<a: long, b: string>"),
        (Object([Property("a", "long", required=False)]), "struct<a?: long>"),
        (
            Array(Object([Property("x", Map(Array("double"))), Property("y", AnyType())])),
            "array<struct<x: map<string, array<double>>, y: any>>",
        ),
        (ColSpec(Array("long"), "a", required=False), "array<long>"),
        (ColSpec(Map(SparkMLVector())), "map<string, sparkml_vector>"),
        (TensorSpec(np.float64, (-1, 3), "t"), "tensor<float64>(-1, 3)"),
        (TensorSpec(np.dtype("U"), (-1,)), "tensor<str>(-1)"),
        (TensorSpec(np.uint8, (-1, 28, 28)), "tensor<uint8>(-1, 28, 28)"),
    ],
)
def test_simple_string_writes_a_type_in_one_short_string(spec, text):
    assert spec.simple_string() == text


def test_simple_string_of_types_read_from_mlflow_json():
    texts = [spec.simple_string() for text in SCHEMA_JSONS for spec in Schema.from_json(text)]
    assert texts == [
        *(t.value for t in DataType),  # the names MLflow writes
        "double",
        "long",
        "string",
        "array<long>",
        "array<array<binary>>",
        "struct<x: long, y?: string>",
        "struct<b?: array<struct<x: long, y?: string>>, z: map<string, any>>",
        "map<string, double>",
        "map<string, array<long>>",
        "any",
        "sparkml_vector",
        "tensor<float32>(-1, 3, 4)",
        "tensor<str>(-1)",
        "tensor<bytes>(-1, 2)",
        "tensor<int64>(-1)",
        "tensor<object>(2)",
    ]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Schema([]), "non-empty"),
        (
            lambda: Schema([ColSpec(DataType.long, "a"), ColSpec(DataType.long)]),
            "named and unnamed",
        ),
        (
            lambda: Schema([ColSpec(DataType.long, "a"), TensorSpec(np.float64, (-1,), "b")]),
            "mix ColSpec and TensorSpec",
        ),
        (
            lambda: Schema([ColSpec("long", "a"), ColSpec("double", "a")]),
            "duplicated input names ['a']",
        ),
        (
            lambda: Schema([ColSpec(DataType.long, required=False)]),
            "unnamed inputs cannot be optional",
        ),
        (
            lambda: Schema([TensorSpec(np.float64, (-1,)), TensorSpec(np.float64, (-1,))]),
            "must name each",
        ),
        (lambda: ColSpec("decimal", "price"), "column 'price': unknown type 'decimal'"),
        (lambda: Array(5), "Array item"),
        (lambda: Object([]), "non-empty list of Property"),
        (
            lambda: Object([Property("k", "long"), Property("k", "string")]),
            "duplicated property names ['k']",
        ),
        (
            lambda: TensorSpec(np.dtype("<U5"), (-1,), "t"),
            "TensorSpec 't': dtype <U5 carries a size",
        ),
        (lambda: TensorSpec(np.float64, (-1, "x")), "shape must be a tuple of ints"),
        (lambda: ParamSpec("p", DataType.binary, b"x"), "param 'p': type DataType.binary"),
        (lambda: ParamSpec("p", DataType.long, 1, shape=(2,)), "shape must be None or (-1,)"),
        (lambda: ParamSpec("p", DataType.long, "seven"), "param 'p': cannot safely convert str"),
        (lambda: ParamSchema([ParamSpec("p", "long", 1), ParamSpec("p", "long", 2)]), "['p']"),
        (lambda: ModelSignature(), "at least one"),
        (lambda: ModelSignature(inputs="a:long"), "inputs must be a Schema"),
    ],
)
def test_malformed_schemas_are_schema_errors(build, fragment):
    with pytest.raises(SchemaError) as info:
        build()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "schema: invalid JSON"),
        ('{"type": "long"}', "expected a JSON list"),
        ('[{"name": "a"}]', "schema entry 0: expected a JSON object with a 'type' key"),
        (
            '[{"type": "long"}, {"type": "array", "name": "b"}]',
            "schema entry 1: type 'array' needs",
        ),
        (
            '[{"type": "object", "properties": {"p": {"type": "int"}}}]',
            "property 'p': unknown type 'int'",
        ),
        ('[{"type": "tensor", "tensor-spec": {"dtype": "float64"}}]', "'dtype' and 'shape'"),
    ],
)
def test_malformed_schema_json_names_the_entry(text, fragment):
    with pytest.raises(SchemaError) as info:
        Schema.from_json(text)
    assert fragment in str(info.value)


def test_malformed_signature_dict_names_the_field():
    with pytest.raises(SchemaError, match="signature field 'params': .*invalid JSON"):
        ModelSignature.from_dict({"inputs": '[{"type": "long"}]', "params": "[oops"})
    with pytest.raises(SchemaError, match="signature field 'outputs': .*JSON string, got int"):
        ModelSignature.from_dict({"outputs": 3})
    with pytest.raises(SchemaError, match="params schema entry 0 .*'p'.*unknown type 'blob'"):
        ParamSchema.from_json('[{"name": "p", "type": "blob", "default": 1}]')


# --------------------------------------------------------------------------- enforcement vs MLflow


def _frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


# (input, schema JSON): both sides must accept with equal results, or both refuse.
ENFORCEMENT_CASES = [
    (_frame(a=[1, 2]), col_json("long")),
    (_frame(a=np.array([1, 2], np.int32)), col_json("long")),
    (_frame(a=np.array([1, 2], np.int8)), col_json("integer")),
    (_frame(a=np.array([1, 2], np.uint32)), col_json("long")),
    (_frame(a=np.array([1, 2], np.uint32)), col_json("integer")),
    (_frame(a=np.array([1, 2], np.uint64)), col_json("long")),
    (_frame(a=np.array([1, 2], np.int32)), col_json("double")),
    (_frame(a=np.array([1, 2], np.int32)), col_json("float")),
    (_frame(a=[1, 2]), col_json("double")),
    (_frame(a=[0, 1]), col_json("double")),  # MLflow lets 0/1 flags through
    (_frame(a=[1.0, 2.0]), col_json("long")),
    (_frame(a=[1.0, np.nan]), col_json("long")),
    (_frame(a=[1.5, 2.0]), col_json("float")),
    (_frame(a=np.array([1.5, 2.0], np.float32)), col_json("double")),
    (_frame(a=[True, False]), col_json("long")),
    (_frame(a=[1, 0]), col_json("boolean")),
    (_frame(a=[True, None]), col_json("boolean")),
    (_frame(a=pd.array([1, 2], dtype="Int64")), col_json("long")),
    (_frame(a=[1, 2]), col_json("string")),
    (_frame(a=["x", None]), col_json("string")),
    (_frame(a=pd.array(["x", None], dtype="string")), col_json("string")),
    (_frame(a=[b"x", None]), col_json("binary")),
    (_frame(a=[dt.date(2020, 1, 2), dt.date(2021, 3, 4)]), col_json("datetime")),
    (_frame(a=["2020-01-01"]), col_json("datetime")),
    (_frame(a=["not a date"]), col_json("datetime")),
    (_frame(a=np.array(["2020-01-01"], "datetime64[s]")), col_json("datetime")),
    (_frame(a=pd.to_datetime(["2020-01-01"]).tz_localize("UTC")), col_json("datetime")),
    (_frame(a=[1, 2]), col_json("datetime")),
    (_frame(a=[decimal.Decimal("1.25"), None]), col_json("double")),
    (_frame(a=[1, "x"]), col_json("any")),
    (_frame(a=[[1, 2], [3]]), col_json(ARRAY_LONG)),
    (_frame(a=[np.array([1, 2], np.int32), np.array([3], np.int32)]), col_json(ARRAY_LONG)),
    (_frame(a=[np.array([1.0, 2.0]), np.array([3.0])]), col_json(ARRAY_LONG)),
    (_frame(a=[[1.5], [3]]), col_json(ARRAY_LONG)),
    (_frame(a=[[1, None]]), col_json(ARRAY_LONG)),
    (_frame(a=[[1.0, None]]), col_json({"type": "array", "items": {"type": "double"}})),
    (_frame(a=[[1, 2], None]), col_json(ARRAY_LONG)),
    (_frame(a=[[1, 2], None]), col_json(ARRAY_LONG, required=False)),
    (_frame(a=[[[1], [2, 3]], []]), col_json({"type": "array", "items": ARRAY_LONG})),
    (_frame(a=[["x", "y"], []]), col_json({"type": "array", "items": {"type": "string"}})),
    (_frame(a=[1, 2]), col_json(ARRAY_LONG)),
    (_frame(a=[{"x": 1}, {"x": 2, "y": "s"}]), col_json(OBJECT_XY)),
    (_frame(a=[{"y": "s"}]), col_json(OBJECT_XY)),
    (_frame(a=[{"x": 1.5}]), col_json(OBJECT_XY)),
    (_frame(a=[{"x": 1, "z": 2}]), col_json(OBJECT_XY)),
    (_frame(a=[{"x": 1}, None]), col_json(OBJECT_XY, required=False)),
    (_frame(a=["x"]), col_json(OBJECT_XY)),
    (_frame(a=[{"k": 1.5, "j": 2.5}, {}]), col_json(MAP_DOUBLE)),
    (_frame(a=[{"k": "s"}]), col_json(MAP_DOUBLE)),
    (_frame(a=[{1: 1.5}]), col_json(MAP_DOUBLE)),
    # shape of the input
    (
        {"a": 1, "b": "x"},
        json.dumps([{"type": "long", "name": "a"}, {"type": "string", "name": "b"}]),
    ),
    (
        {"a": [1, 2], "b": [3, 4]},
        json.dumps([{"type": "long", "name": "a"}, {"type": "long", "name": "b"}]),
    ),
    ({"a": ["x", "y"]}, col_json("string")),
    ({"a": [1, 2]}, col_json(ARRAY_LONG)),
    ([{"a": 1}, {"a": 2}], col_json("long")),
    (pd.Series([1, 2], name="a"), col_json("long")),
    (pd.Series([1, 2]), col_json("long", name=None)),
    (["u", "v"], col_json("string", name=None)),
    ("u", col_json("string", name=None)),
    (np.array([[1, 2], [3, 4]]), json.dumps([{"type": "long"}, {"type": "long"}])),
    (_frame(a=[1], b=[2], c=[3]), json.dumps([{"type": "long"}, {"type": "long"}])),
    (_frame(a=[1]), json.dumps([{"type": "long"}, {"type": "long"}])),
    (
        _frame(c=["z"], a=[1]),
        json.dumps(
            [{"type": "long", "name": "a"}, {"type": "double", "name": "b", "required": False}]
        ),
    ),
    # tensors
    (np.zeros((3, 4)), tensor_json("float64", [-1, 4])),
    (np.zeros((3, 4)), tensor_json("float64", [-1, 5])),
    (np.zeros((3, 4)), tensor_json("float64", [-1, 4, 1])),
    (np.zeros((3, 4), np.float32), tensor_json("float64", [-1, 4])),
    (np.array(["a", "bc"]), tensor_json("str", [-1])),
    (np.array([[1.0], [2.0, 3.0]], dtype=object), tensor_json("float64", [-1, -1])),
    (pd.DataFrame(np.zeros((3, 4))), tensor_json("float64", [-1, 4])),
    (pd.DataFrame(np.zeros((3, 4))), tensor_json("float64", [-1, 3])),
    (_frame(x=[1.0, 2.0]), tensor_json("float32", [-1])),
    (_frame(x=[1.0, 2.0]), tensor_json("float32", [-1, 2])),
    (_frame(x=[[1.0, 2.0, 3.0, 4.0]]), tensor_json("float32", [-1, 2, 2])),
    (_frame(x=[[1.0, 2.0], [3.0]]), tensor_json("float32", [-1, 2])),
    (_frame(x=[np.array([1.0, 2.0]), np.array([3.0, 4.0])]), tensor_json("float64", [-1, 2])),
    (_frame(x=[[1.0, 2.0]]), tensor_json("float64", [2, -1])),
    ({"x": np.zeros((2, 3))}, tensor_json("float64", [-1, 3], name="x")),
    ({"x": np.zeros((2, 3))}, tensor_json("float32", [-1, 3], name="x")),
    ({"x": [1.0, 2.0]}, tensor_json("float64", [-1], name="x")),
    (np.zeros((2, 3)), tensor_json("float64", [-1, 3], name="x")),
    ([1.0], tensor_json("float64", [-1], name="x")),
    (
        _frame(x=[[1.0, 2.0], [3.0, 4.0]], y=[1, 2]),
        json.dumps(
            [
                {
                    "name": "x",
                    "type": "tensor",
                    "tensor-spec": {"dtype": "float32", "shape": [-1, 2]},
                },
                {"name": "y", "type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}},
            ]
        ),
    ),
]


def _assert_same_output(ours, theirs):
    if isinstance(theirs, pd.DataFrame):
        pd.testing.assert_frame_equal(ours, theirs)
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for k in theirs:
            np.testing.assert_array_equal(ours[k], theirs[k])
            assert ours[k].dtype == theirs[k].dtype
    else:
        np.testing.assert_array_equal(ours, theirs)
        assert ours.dtype == theirs.dtype


@pytest.mark.mlflow
@pytest.mark.parametrize(("data", "text"), ENFORCEMENT_CASES)
def test_enforcement_matches_mlflow(mlflow_api, data, text):
    _, utils, types = mlflow_api
    copy = (lambda: data.copy()) if hasattr(data, "copy") else (lambda: data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = utils._enforce_schema(copy(), types.Schema.from_json(text))
    except Exception:  # MlflowException, or a bare pandas error for some inputs
        with pytest.raises(SchemaEnforcementError):
            enforce_schema(copy(), Schema.from_json(text))
        return
    _assert_same_output(enforce_schema(copy(), Schema.from_json(text)), theirs)


def test_enforcement_keeps_the_index_and_does_not_touch_the_input():
    frame = pd.DataFrame(
        {"x": np.array([1, 2, 3], np.int32), "o": [{"k": 1}, {"k": 2}, {"k": 3}]},
        index=[10, 5, 7],
    )
    schema = Schema([ColSpec(DataType.long, "x"), ColSpec(Object([Property("k", "long")]), "o")])
    out = enforce_schema(frame, schema)
    assert list(out.index) == [10, 5, 7]
    assert out["x"].dtype == np.int64 and frame["x"].dtype == np.int32
    assert out["o"].tolist() == [{"k": 1}, {"k": 2}, {"k": 3}]
    assert out["o"].iloc[0] is not frame["o"].iloc[0]


def test_array_columns_from_spark_are_checked_by_dtype_and_stay_arrays():
    """Spark hands array columns to pandas UDFs as numpy arrays, one per row."""
    rows = [np.array([1, 2], np.int32), np.array([], np.int32), np.array([3], np.int32)]
    out = enforce_schema(pd.DataFrame({"a": rows}), Schema([ColSpec(Array(DataType.long), "a")]))
    assert all(isinstance(v, np.ndarray) for v in out["a"])
    assert out["a"][0].dtype == np.int64 and out["a"][2].dtype == np.int64  # empty: as given
    assert [v.tolist() for v in out["a"]] == [[1, 2], [], [3]]

    words = [np.array(["x", None], dtype=object), np.array(["y"], dtype=object)]
    out = enforce_schema(pd.DataFrame({"w": words}), Schema([ColSpec(Array("string"), "w")]))
    assert out["w"].iloc[0] is words[0]  # strings are not copied, None is kept

    nested = [np.array([np.array([1.0]), np.array([2.0, 3.0])], dtype=object)]
    out = enforce_schema(
        pd.DataFrame({"n": nested}), Schema([ColSpec(Array(Array(DataType.double)), "n")])
    )
    assert [v.tolist() for v in out["n"].iloc[0]] == [[1.0], [2.0, 3.0]]

    with pytest.raises(SchemaEnforcementError, match=r"column 'a', row 1: .*float64 to int64"):
        enforce_schema(
            pd.DataFrame({"a": [np.array([1]), np.array([1.5])]}),
            Schema([ColSpec(Array(DataType.long), "a")]),
        )


def test_tensor_column_from_spark_is_stacked_and_cast():
    """MLflow's docs promise the cast; it skips it for numpy rows, we do not."""
    rows = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0, 8.0])]
    out = enforce_schema(
        pd.DataFrame({"img": rows}), Schema([TensorSpec(np.float32, (-1, 2, 2), "img")])
    )
    assert out["img"].dtype == np.float32 and out["img"].shape == (2, 2, 2)
    empty = enforce_schema(pd.DataFrame({"v": []}), Schema([TensorSpec(np.float64, (-1, 3))]))
    assert empty.shape == (0, 3)


def test_decimal_columns_become_double_but_strings_do_not():
    """Stricter than MLflow, which also parses numeric strings into a double column."""
    out = enforce_schema(
        pd.DataFrame({"p": [decimal.Decimal("2.5"), 1]}), Schema([ColSpec("double", "p")])
    )
    assert out["p"].tolist() == [2.5, 1.0]
    with pytest.raises(SchemaEnforcementError, match="column 'p'.*str values such as '2.5'"):
        enforce_schema(pd.DataFrame({"p": ["2.5"]}), Schema([ColSpec("double", "p")]))


# --------------------------------------------------------------------------- error messages


def test_missing_columns_are_all_named_with_the_extras():
    schema = Schema(
        [
            ColSpec("long", "a"),
            ColSpec("long", "b"),
            ColSpec("long", "c"),
            ColSpec("long", "d", False),
        ]
    )
    with pytest.raises(SchemaEnforcementError) as info:
        enforce_schema(pd.DataFrame({"b": [1], "zz": [2], "yy": [3]}), schema)
    message = str(info.value)
    assert "['a', 'c']" in message and "['zz', 'yy']" in message and "'d'" in message


def test_optional_columns_may_be_missing_and_extras_are_dropped(caplog):
    schema = Schema([ColSpec("long", "a"), ColSpec("string", "b", required=False)])
    with caplog.at_level(logging.WARNING, logger="spark_pyfunc"):
        for _ in range(3):
            out = enforce_schema(pd.DataFrame({"extra_q7": [0], "a": [1]}), schema)
    assert list(out.columns) == ["a"]
    warned = [r for r in caplog.records if "extra_q7" in r.getMessage()]
    assert len(warned) == 1 and warned[0].name.startswith("spark_pyfunc")
    out = enforce_schema(pd.DataFrame({"b": ["x"], "a": [1]}), schema)
    assert list(out.columns) == ["a", "b"]


@pytest.mark.parametrize(
    ("frame", "spec", "fragments"),
    [
        (pd.DataFrame({"b": [1.5]}), ColSpec("long", "b"), ["column 'b'", "float64", "int64"]),
        (pd.DataFrame({"b": [1.0, None]}), ColSpec("long", "b"), ["column 'b'", "Hint", "double"]),
        (pd.DataFrame({"b": [1.5, None]}), ColSpec("long", "b"), ["column 'b'", "float64"]),
        (pd.DataFrame({"w": [2**40]}), ColSpec("integer", "w"), ["column 'w'", "int64", "int32"]),
        (pd.DataFrame({"t": ["nope"]}), ColSpec("datetime", "t"), ["column 't'", "datetime64[ns]"]),
        (
            pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}),
            ColSpec("long", "n"),
            ["column 'n'", "Int64", "int64", "Hint"],
        ),
        (
            pd.DataFrame({"o": [{"x": 1, "y": 2}]}),
            ColSpec(Object([Property("x", "long"), Property("y", "string")]), "o"),
            ["column 'o', row 0, key 'y'", "int", "string"],
        ),
        (
            pd.DataFrame({"o": [{"x": 1}, {"y": "s", "q": 1}]}),
            ColSpec(Object([Property("x", "long"), Property("y", "string", False)]), "o"),
            ["column 'o', row 1", "missing required key(s) ['x']", "['q'] not in the signature"],
        ),
        (
            pd.DataFrame({"m": [{"k": [1]}, {"k": [2.5]}]}),
            ColSpec(Map(Array(DataType.long)), "m"),
            ["column 'm', row 1, key 'k'", "float64", "int64"],
        ),
    ],
)
def test_conversion_errors_name_column_and_types(frame, spec, fragments):
    with pytest.raises(SchemaEnforcementError) as info:
        enforce_schema(frame, Schema([spec]))
    for fragment in fragments:
        assert fragment in str(info.value)
    hinted = "Hint" in str(info.value)
    assert hinted == ("Hint" in fragments)


def test_tensor_errors_name_input_and_both_types():
    schema = Schema([TensorSpec(np.float64, (-1, 3), "pixels")])
    with pytest.raises(SchemaEnforcementError, match="input 'pixels': dtype float32 .* float64"):
        enforce_schema({"pixels": np.zeros((2, 3), np.float32)}, schema)
    with pytest.raises(SchemaEnforcementError, match=r"'pixels': shape \(2, 4\) .*\(-1, 3\)"):
        enforce_schema({"pixels": np.zeros((2, 4))}, schema)
    with pytest.raises(SchemaEnforcementError, match=r"missing required input\(s\) \['pixels'\]"):
        enforce_schema({"other": np.zeros((2, 3))}, schema)


def test_bad_input_kinds_are_refused_clearly():
    with pytest.raises(SchemaEnforcementError, match="needs a DataFrame, dict, list or array, got"):
        enforce_schema(object(), Schema([ColSpec("long", "a")]))
    with pytest.raises(SchemaEnforcementError, match="column 'a' appears more than once"):
        enforce_schema(pd.DataFrame([[1, 2]], columns=["a", "a"]), Schema([ColSpec("long", "a")]))
    with pytest.raises(SchemaError, match="needs a Schema"):
        enforce_schema(pd.DataFrame({"a": [1]}), [ColSpec("long", "a")])


# --------------------------------------------------------------------------- params


PARAMS = ParamSchema(
    [
        ParamSpec("n", DataType.long, 3),
        ParamSpec("x", DataType.double, 0.5),
        ParamSpec("flag", DataType.boolean, False),
        ParamSpec("ids", DataType.long, [1], shape=(-1,)),
        ParamSpec("when", DataType.datetime, "2024-01-01"),
    ]
)


def test_params_get_defaults_and_safe_conversions():
    out = enforce_params(
        {"x": 2, "ids": np.array([4, 5], np.int32), "flag": np.bool_(True)}, PARAMS
    )
    assert out == {"n": 3, "x": 2.0, "flag": True, "ids": [4, 5], "when": dt.date(2024, 1, 1)}
    assert type(out["x"]) is float and type(out["flag"]) is bool
    assert enforce_params(None, PARAMS) == PARAMS.defaults()
    assert enforce_params(None, None) is None and enforce_params({}, None) == {}


def test_bad_params_name_param_value_type_and_expected_type():
    with pytest.raises(SchemaEnforcementError) as info:
        enforce_params({"n": 1.5, "flag": 1, "ids": 3, "x": "big"}, PARAMS)
    message = str(info.value)
    for fragment in (
        "param 'n': cannot safely convert float 1.5 to long",
        "param 'flag': cannot safely convert int 1 to boolean",
        "param 'ids': expected a 1-D list of long, got int",
        "param 'x': cannot safely convert str 'big' to double",
    ):
        assert fragment in message
    with pytest.raises(SchemaEnforcementError, match="params must be a dict, got list"):
        enforce_params([1], PARAMS)


def test_unknown_params_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="spark_pyfunc"):
        out = enforce_params({"n": 4, "temperature": 0.1}, PARAMS)
        ignored = enforce_params({"temperature": 0.1}, None)
    assert "temperature" not in out and out["n"] == 4 and ignored == {}
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("spark_pyfunc")]
    assert len(messages) == 2 and all("temperature" in m for m in messages)


@pytest.mark.mlflow
@pytest.mark.parametrize(
    "params",
    [
        {"n": 7},
        {"n": np.int32(7)},
        {"n": True},
        {"x": 1},
        {"x": np.float32(1.5)},
        {"x": True},
        {"flag": 0},
        {"ids": [1, 2.5]},
        {"ids": [[1]]},
        {"when": "2023-05-06T07:08:09"},
        {"when": "yesterday"},
        {"n": None},
        {"unknown": 1},
    ],
)
def test_param_enforcement_matches_mlflow(mlflow_api, params):
    _, utils, t = mlflow_api
    theirs_schema = t.ParamSchema.from_json(PARAMS.to_json())
    try:
        theirs = utils._enforce_params_schema(dict(params), theirs_schema)
    except Exception:
        with pytest.raises(SchemaEnforcementError):
            enforce_params(dict(params), PARAMS)
        return
    ours = enforce_params(dict(params), PARAMS)
    assert ours == theirs
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}


# --------------------------------------------------------------------------- inference


INFERENCE_CASES = [
    pd.DataFrame(
        {
            "a": [1, 2],
            "b": [1.5, None],
            "c": ["x", None],
            "d": [True, False],
            "e": [b"x", b"y"],
            "f": pd.to_datetime(["2020-01-01", None]),
        }
    ),
    pd.DataFrame(
        {
            "i": np.array([1], np.int32),
            "f": np.array([1], np.float32),
            "u": np.array([1], np.uint32),
            "s": np.array([1], np.int8),
            "n": pd.array([None], dtype="Int64"),
            "t": pd.array(["x"], dtype="string"),
        }
    ),
    pd.DataFrame(
        {
            "a": [[1, 2], [3]],
            "b": [{"x": 1}, {"x": 2, "y": "s"}],
            "c": [np.array([1.0]), np.array([2.0])],
            "d": [None, None],
            "e": [[{"k": 1}], [{"k": 2, "j": [1.5]}]],
        }
    ),
    pd.DataFrame(np.zeros((2, 2))),
    pd.Series([1.0, 2.0], name="x"),
    pd.Series(["a", "b"]),
    {"a": 1, "b": "x", "c": [1, 2], "d": {"k": [1.0]}, "e": None},
    [{"a": 1, "b": "x"}, {"a": 2}],
    [{"a": 1, "b": None}, {"a": 2, "b": "y"}],
    np.zeros((3, 4, 5), np.float32),
    {"x": np.zeros((3, 4)), "y": np.array(["a", "b"])},
    ["a", "b"],
    [[1, 2], [3]],
    "hello",
    [],
    pd.DataFrame({"mixed": [1, "x"]}),
]


@pytest.mark.mlflow
@pytest.mark.parametrize("data", INFERENCE_CASES)
def test_inferred_signature_matches_mlflow(mlflow_api, data):
    models, _, _ = mlflow_api
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = models.infer_signature(data, data).to_dict()
    assert infer_signature(data, data).to_dict() == theirs


@pytest.mark.mlflow
def test_inferred_params_match_mlflow(mlflow_api):
    models, _, _ = mlflow_api
    params = {
        "i": 1,
        "f": 1.5,
        "s": "x",
        "b": True,
        "l": [1, 2],
        "ls": ["a"],
        "d": dt.datetime(2020, 1, 2, 3, 4),
        "ld": [dt.date(2020, 1, 1)],
        "n": np.int32(3),
        "nf": np.float32(2.5),
        "o": {"k": 1, "z": "s"},
        "arr": np.array([1.0, 2.0]),
    }
    theirs = models.infer_signature(pd.DataFrame({"a": [1.0]}), params=params).to_dict()
    ours = infer_signature(pd.DataFrame({"a": [1.0]}), params=params)
    assert ours.to_dict() == theirs
    assert ours.params.defaults()["arr"] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"p": None}, "param 'p'"), ({"p": b"x"}, "param 'p'"), ({"p": [[1]]}, "param 'p'")],
)
def test_uninferable_params_name_the_param(params, fragment):
    with pytest.raises(SchemaError, match=fragment):
        infer_signature(pd.DataFrame({"a": [1.0]}), params=params)


def test_uninferable_data_falls_back_to_any_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="spark_pyfunc"):
        sig = infer_signature({"a": [1, "x"]}, pd.DataFrame({"y": [1.0]}))
    assert sig.inputs == Schema([ColSpec(AnyType())])
    assert sig.outputs == Schema([ColSpec(DataType.double, "y")])
    assert any("inputs" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- properties


_COLUMN_DTYPES = st.sampled_from(
    [np.bool_, np.int8, np.int32, np.int64, np.uint16, np.float32, np.float64]
)


@st.composite
def frames(draw) -> pd.DataFrame:
    """DataFrames of every scalar type MLflow supports, object columns with missing values."""
    n = draw(st.integers(1, 6))
    names = draw(
        st.lists(st.text("abcxyz_", min_size=1, max_size=4), min_size=1, max_size=5, unique=True)
    )
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(["numeric", "float_nan", "str", "bytes", "datetime", "list"]))
        if kind == "numeric":
            values = draw(hpd.series(dtype=draw(_COLUMN_DTYPES), index=hpd.range_indexes(n, n)))
            columns[name] = values.to_numpy()
        elif kind == "float_nan":
            floats = st.one_of(st.none(), st.floats(allow_nan=False, width=64))
            columns[name] = np.array(
                [np.nan if v is None else v for v in draw(st.lists(floats, min_size=n, max_size=n))]
            )
        elif kind == "str":
            columns[name] = draw(
                st.lists(st.one_of(st.none(), st.text(max_size=3)), min_size=n, max_size=n)
            )
        elif kind == "bytes":
            columns[name] = draw(st.lists(st.binary(max_size=3), min_size=n, max_size=n))
        elif kind == "datetime":
            days = draw(st.lists(st.integers(0, 40000), min_size=n, max_size=n))
            columns[name] = np.array(days, "datetime64[D]").astype("datetime64[ns]")
        else:
            ints = st.lists(st.integers(-(2**31), 2**31), max_size=3)
            columns[name] = draw(st.lists(ints, min_size=n, max_size=n))
    frame = pd.DataFrame(columns)
    for name, values in columns.items():  # keep list columns as lists, one per row
        if isinstance(values, list) and values and isinstance(values[0], list):
            frame[name] = pd.Series(values, dtype=object)
    return frame


@given(frames())
def test_enforcing_the_inferred_schema_is_the_identity(frame):
    schema = Schema.from_json(infer_schema(frame).to_json())
    expected = frame.copy()
    for spec in schema.inputs:  # small ints and uints are widened to the declared type
        if isinstance(spec.type, DataType) and spec.type.to_numpy() != np.dtype(object):
            expected[spec.name] = expected[spec.name].astype(spec.type.to_numpy())
    pd.testing.assert_frame_equal(enforce_schema(frame, schema), expected)


_PARAM_VALUES = st.one_of(
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=4),
    st.lists(st.text(max_size=3), min_size=1, max_size=4),
    st.dates().map(lambda d: dt.datetime(d.year, d.month, d.day, 12, 30)),
)


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), _PARAM_VALUES, max_size=5))
def test_params_round_trip(params):
    sig = infer_signature(pd.DataFrame({"a": [1.0]}), params=params or None)
    if not params:
        assert sig.params is None
        return
    restored = ModelSignature.from_dict(json.loads(json.dumps(sig.to_dict())))
    assert restored == sig
    assert restored.params.defaults() == params
    assert enforce_params(params, restored.params) == params
    assert enforce_params(None, restored.params) == params
