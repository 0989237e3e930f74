"""save_model and load_model: our own round trip, MLflow compatibility both ways, and errors.

MLflow (mlflow-skinny, in the ``test`` extra) is the reference: a directory we write must load
in ``mlflow.pyfunc.load_model`` and predict the same, and a custom pyfunc directory MLflow
writes must load here and predict the same. "Without MLflow" cases run in a subprocess whose
``import mlflow`` fails.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from format_models import (
    Config,
    Failing,
    Linear,
    Methods,
    NoContext,
    NoParams,
    Outputs,
    frame,
)

from spark_pyfunc import (
    MissingDependencyError,
    ModelExistsError,
    ModelFormatError,
    ModelSaveError,
    SchemaEnforcementError,
    load_model,
    save_model,
)
from spark_pyfunc._format import METHODS_KEY, read_metadata
from spark_pyfunc.python_model import PythonModel

HERE = Path(__file__).resolve().parent


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, str]:
    """A file artifact (weights) and a directory artifact (extras/bias.txt)."""
    np.save(tmp_path / "weights.npy", np.array([1.0, -2.0]))
    extras = tmp_path / "extras"
    extras.mkdir()
    (extras / "bias.txt").write_text("0.25")
    return {"weights": str(tmp_path / "weights.npy"), "extras": str(extras)}


def expected_linear(data: pd.DataFrame, scale=1.0, offset=0.0, threshold=0.0) -> pd.DataFrame:
    score = data[["a", "b"]].to_numpy() @ np.array([1.0, -2.0]) * scale + 0.25 + offset
    return pd.DataFrame({"score": score, "label": score > threshold})


def run_without_mlflow(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import mlflow`` raises ModuleNotFoundError."""
    prelude = "import sys; sys.modules['mlflow'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------- our round trip


def test_round_trip_with_artifacts_params_and_model_config(tmp_path, artifacts):
    path = tmp_path / "model"
    meta = save_model(
        path,
        python_model=Linear(),
        artifacts=artifacts,
        input_example=(frame(3), {"scale": 1.0}),
        model_config={"offset": 1.0, "threshold": 0.5},
    )
    assert (path / "artifacts" / "weights.npy").is_file()
    assert (path / "artifacts" / "extras" / "bias.txt").read_text() == "0.25"
    assert meta.signature is not None
    assert [s.name for s in meta.signature.params.params] == ["scale"]
    assert meta.signature.outputs.input_names() == ["score", "label"]

    model = load_model(path)
    data = frame(6)
    pd.testing.assert_frame_equal(
        model.predict(data, params={"scale": 2.0}),
        expected_linear(data, scale=2.0, offset=1.0, threshold=0.5),
    )
    # Params default from the schema; model_config given at load time overrides the saved one.
    overridden = load_model(path, model_config={"offset": 0.0})
    pd.testing.assert_frame_equal(
        overridden.predict(data), expected_linear(data, offset=0.0, threshold=0.5)
    )
    assert isinstance(model.unwrap_python_model(), Linear)
    assert model.metadata.model_uuid and model.metadata.model_size_bytes > 0
    assert model.metadata.cloudpickle_version and model.metadata.python_version


def test_code_paths_are_copied_and_importable_at_load(tmp_path):
    pkg = tmp_path / "src" / "scoring_helpers"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def double(x):\n    return x * 2\n")
    module = tmp_path / "uses_helpers.py"
    module.write_text(
        textwrap.dedent(
            """
            import scoring_helpers
            from spark_pyfunc import PythonModel

            class Doubler(PythonModel):
                def predict(self, context, model_input, params=None):
                    return scoring_helpers.double(model_input["a"])
            """
        )
    )
    path = tmp_path / "model"
    save = f"""
        import sys; sys.path[:0] = [{str(tmp_path)!r}, {str(tmp_path / "src")!r}]
        from uses_helpers import Doubler
        from spark_pyfunc import save_model
        save_model({str(path)!r}, python_model=Doubler(),
                   code_paths=[{str(module)!r}, {str(pkg)!r}])
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(save)], check=True, timeout=120)
    assert (path / "code" / "scoring_helpers" / "__init__.py").is_file()
    # A fresh interpreter with neither directory on its path: the model's code/ provides both.
    proc = run_without_mlflow(
        f"""
        import pandas as pd
        from spark_pyfunc import load_model
        print(list(load_model({str(path)!r}).predict(pd.DataFrame({{"a": [1.0, 2.5]}}))))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2.0, 5.0]"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("frame", lambda d: pd.DataFrame({"total": d.a + d.b, "diff": d.a - d.b})),
        ("series", lambda d: pd.Series(d.a + d.b, name="total")),
        ("array", lambda d: (d.a + d.b).to_numpy() * 10.0),
    ],
)
def test_outputs_come_back_as_the_model_returns_them(tmp_path, kind, expected):
    save_model(tmp_path / "m", python_model=Outputs(), input_example=(frame(2), {"kind": "frame"}))
    data = frame(4)
    got = load_model(tmp_path / "m").predict(data, params={"kind": kind})
    want = expected(data)
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want)
    else:
        np.testing.assert_array_equal(got, want)


def test_custom_inference_methods_get_the_same_enforcement(tmp_path):
    save_model(tmp_path / "m", python_model=Methods(), input_example=(frame(3), {"shift": 0.0}))
    model = load_model(tmp_path / "m")
    data = frame(5)
    logits = data.a.to_numpy() - data.b.to_numpy() + 1.0
    np.testing.assert_allclose(model.invoke("logits", data, params={"shift": 1.0}), logits)
    np.testing.assert_allclose(
        model.invoke("predict_proba", data, params={"shift": 1.0}), 1 / (1 + np.exp(-logits))
    )
    with pytest.raises(SchemaEnforcementError, match="'b'"):
        model.invoke("logits", data[["a"]])
    with pytest.raises(ModelFormatError, match="no inference method 'load_context'"):
        model.invoke("load_context", data)
    with pytest.raises(ModelFormatError, match="no inference method 'nope'"):
        model.invoke("nope", data)


class _Kinds(PythonModel):
    """Every kind of attribute a python model may have: which are inference methods."""

    class Nested:  # a class: invoke would instantiate it, not an inference method
        pass

    def __init__(self):
        self.scorer = lambda context, model_input: model_input  # set on the instance
        self.threshold = 0.5

    def predict(self, context, model_input, params=None):
        return model_input

    @staticmethod
    def as_static(model_input):
        return model_input

    @classmethod
    def as_class(cls, model_input):
        return model_input

    @property
    def loud(self):  # a property is never run to find out
        raise AssertionError("save_model ran a property")

    def _private(self, context, model_input):
        return model_input


class _Dynamic(PythonModel):
    """Answers any name: its methods cannot be listed."""

    def predict(self, context, model_input, params=None):
        return model_input

    def __getattr__(self, name):
        return self.predict


def test_save_model_records_the_inference_methods_that_spark_udf_checks(tmp_path):
    saved = save_model(tmp_path / "m", python_model=Methods())
    flavor = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["spark_pyfunc_methods"] == ["logits", "predict", "predict_proba"]
    assert saved.declared_methods == ("logits", "predict", "predict_proba")
    kinds = save_model(tmp_path / "k", python_model=_Kinds())
    assert kinds.declared_methods == ("as_class", "as_static", "predict", "scorer")
    assert save_model(tmp_path / "d", python_model=_Dynamic()).declared_methods is None
    assert METHODS_KEY not in read_metadata(tmp_path / "d").pyfunc_conf


def test_a_malformed_methods_field_is_a_format_error(tmp_path):
    save_model(tmp_path / "m", python_model=Methods())
    mlmodel = tmp_path / "m" / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    doc["flavors"]["python_function"]["spark_pyfunc_methods"] = "predict"
    mlmodel.write_text(yaml.safe_dump(doc))
    with pytest.raises(ModelFormatError, match="spark_pyfunc_methods must be a list"):
        _ = read_metadata(tmp_path / "m").declared_methods


def test_a_model_without_the_methods_field_names_its_methods_where_it_loads(tmp_path):
    save_model(tmp_path / "m", python_model=Methods())
    mlmodel = tmp_path / "m" / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    del doc["flavors"]["python_function"]["spark_pyfunc_methods"]  # as MLflow writes it
    mlmodel.write_text(yaml.safe_dump(doc))
    model = load_model(tmp_path / "m")
    assert model.metadata.declared_methods is None
    model.metadata.check_method("nope", "model 'm'")  # not declared: left to the loaded model
    with pytest.raises(ModelFormatError, match="its methods are logits, predict, predict_proba"):
        model.invoke("nope", frame(2))


def test_predict_without_context_or_params_arguments(tmp_path, caplog):
    save_model(tmp_path / "nc", python_model=NoContext())
    save_model(tmp_path / "np", python_model=NoParams())
    data = frame(3)
    with caplog.at_level(logging.WARNING, logger="spark_pyfunc"):
        np.testing.assert_allclose(load_model(tmp_path / "nc").predict(data), data.a)
        np.testing.assert_allclose(load_model(tmp_path / "np").predict(data), data.a + 1.0)
    assert caplog.records == []  # a model without context/params is normal, not a warning
    # ... whereas params it never declared are dropped, with a warning naming them.
    with caplog.at_level(logging.WARNING, logger="spark_pyfunc"):
        got = load_model(tmp_path / "nc").predict(data, params={"scale": 2.0})
    np.testing.assert_allclose(got, data.a)
    assert any("scale" in r.getMessage() for r in caplog.records), caplog.records


def test_artifacts_given_as_file_uris_are_the_local_files(tmp_path, artifacts, monkeypatch):
    monkeypatch.chdir(tmp_path / "extras")  # a file: URI read as a relative path would miss
    uris = {
        "weights": Path(artifacts["weights"]).as_uri(),  # file:///...
        "extras": f"file:{artifacts['extras']}",  # file:/...
    }
    save_model(tmp_path / "m", python_model=Linear(), artifacts=uris, input_example=frame(3))
    assert (tmp_path / "m" / "artifacts" / "weights.npy").read_bytes() == Path(
        artifacts["weights"]
    ).read_bytes()
    assert (tmp_path / "m" / "artifacts" / "extras" / "bias.txt").read_text() == "0.25"
    with pytest.raises(ModelSaveError, match="file://elsewhere/w.npy"):
        save_model(
            tmp_path / "m2", python_model=Linear(), artifacts={"w": "file://elsewhere/w.npy"}
        )


def test_input_is_enforced_before_predict(tmp_path, artifacts):
    save_model(tmp_path / "m", python_model=Linear(), artifacts=artifacts, input_example=frame(3))
    model = load_model(tmp_path / "m")
    with pytest.raises(SchemaEnforcementError, match="'b'"):
        model.predict(frame(3)[["a"]])
    # Extra columns are dropped, float32 widens to float64; strings never become doubles.
    data = frame(3).astype(np.float32).assign(extra="x")
    pd.testing.assert_frame_equal(
        model.predict(data), expected_linear(frame(3).astype(np.float32).astype(np.float64))
    )
    with pytest.raises(SchemaEnforcementError, match="'a'"):
        model.predict(frame(3).assign(a="text"))


def test_signature_inference_failure_saves_without_signature(tmp_path):
    meta = save_model(tmp_path / "m", python_model=Failing(), input_example=frame(2))
    assert meta.signature is None
    assert (tmp_path / "m" / "input_example.json").is_file()


# ------------------------------------------------------------------------------- errors


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(ModelExistsError, match=str(tmp_path / "m")):
        save_model(tmp_path / "m", python_model=NoParams())
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
    save_model(tmp_path / "empty", python_model=NoParams())  # an empty directory is fine
    (tmp_path / "empty2").mkdir()
    save_model(tmp_path / "empty2", python_model=NoParams())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"python_model": NoParams}, "instance, not the class"),
        ({"python_model": object()}, "predict method"),
        ({"python_model": NoParams(), "artifacts": {"w": "/no/such/file"}}, "/no/such/file"),
        ({"python_model": NoParams(), "artifacts": {"w": "s3://bucket/w"}}, "s3: URI"),
        ({"python_model": NoParams(), "code_paths": ["/no/such/code.py"]}, "/no/such/code.py"),
        ({"python_model": NoParams(), "metadata": ["not", "a", "dict"]}, "metadata"),
    ],
)
def test_bad_save_arguments_are_named_and_leave_nothing(tmp_path, kwargs, message):
    with pytest.raises(ModelSaveError, match=message):
        save_model(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_a_pickle_needing_a_missing_module_names_it(tmp_path):
    (tmp_path / "private_mod.py").write_text(
        "from spark_pyfunc import PythonModel\n"
        "class M(PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return model_input\n"
    )
    path = tmp_path / "m"
    save = f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        from private_mod import M
        from spark_pyfunc import save_model
        save_model({str(path)!r}, python_model=M())
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(save)], check=True, timeout=120)
    with pytest.raises(MissingDependencyError, match="private_mod") as info:
        load_model(path)
    assert info.value.module == "private_mod"
    assert "code_paths" in str(info.value)


def test_a_loader_module_that_is_not_installed_is_named(tmp_path):
    save_model(tmp_path / "m", python_model=NoParams())
    content = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())
    content["flavors"]["python_function"]["loader_module"] = "sklearn_flavor_nowhere.loader"
    (tmp_path / "m" / "MLmodel").write_text(yaml.safe_dump(content))
    with pytest.raises(MissingDependencyError, match="sklearn_flavor_nowhere"):
        load_model(tmp_path / "m")


def test_other_loader_modules_are_delegated_to(tmp_path, monkeypatch):
    (tmp_path / "my_flavor.py").write_text(
        "import pandas as pd\n"
        "class Wrapper:\n"
        "    def __init__(self, path, config):\n"
        "        self.path, self.config = path, config\n"
        "    def predict(self, data, params=None):\n"
        "        return pd.Series([self.config.get('k', 0)] * len(data))\n"
        "def _load_pyfunc(path, model_config=None):\n"
        "    return Wrapper(path, model_config or {})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model_dir = tmp_path / "m"
    (model_dir / "data").mkdir(parents=True)
    (model_dir / "MLmodel").write_text(
        yaml.safe_dump(
            {"flavors": {"python_function": {"loader_module": "my_flavor", "data": "data"}}}
        )
    )
    model = load_model(model_dir, model_config={"k": 7})
    assert list(model.predict(frame(2))) == [7, 7]
    assert model.metadata.loader_module == "my_flavor"
    with pytest.raises(ModelFormatError, match="no python model to unwrap"):
        model.unwrap_python_model()


# ---------------------------------------------------------------- MLflow, both directions


@pytest.fixture
def mlflow():
    return pytest.importorskip("mlflow")


@pytest.mark.mlflow
def test_mlflow_loads_our_model_and_predicts_the_same(mlflow, tmp_path, artifacts):
    path = tmp_path / "ours"
    save_model(
        path,
        python_model=Linear(),
        artifacts=artifacts,
        input_example=(frame(3), {"scale": 1.0}),
        model_config={"offset": 0.5, "threshold": 0.1},
    )
    data = frame(7)
    theirs = mlflow.pyfunc.load_model(str(path))
    ours = load_model(path)
    for params in (None, {"scale": 3.0}):
        pd.testing.assert_frame_equal(
            theirs.predict(data, params=params), ours.predict(data, params=params)
        )
    pd.testing.assert_frame_equal(
        theirs.predict(data, params={"scale": 3.0}),
        expected_linear(data, scale=3.0, offset=0.5, threshold=0.1),
    )
    assert theirs.metadata.signature.to_dict() == ours.metadata.signature.to_dict()
    assert theirs.metadata.model_uuid == ours.metadata.model_uuid
    # model_config given at load time reaches load_context in both.
    theirs = mlflow.pyfunc.load_model(str(path), model_config={"offset": 2.0})
    pd.testing.assert_frame_equal(
        theirs.predict(data), load_model(path, model_config={"offset": 2.0}).predict(data)
    )


@pytest.mark.mlflow
@pytest.mark.parametrize("kind", ["frame", "series", "array"])
def test_mlflow_and_we_agree_on_every_output_kind(mlflow, tmp_path, kind):
    from mlflow_models import MlflowOutputs

    save_model(tmp_path / "ours", python_model=Outputs(), input_example=(frame(2), {"kind": kind}))
    mlflow.pyfunc.save_model(
        str(tmp_path / "theirs"), python_model=MlflowOutputs(),
        input_example=(frame(2), {"kind": kind}),
    )  # fmt: skip
    data = frame(5)
    results = [
        mlflow.pyfunc.load_model(str(tmp_path / "ours")).predict(data, params={"kind": kind}),
        mlflow.pyfunc.load_model(str(tmp_path / "theirs")).predict(data, params={"kind": kind}),
        load_model(tmp_path / "ours").predict(data, params={"kind": kind}),
        load_model(tmp_path / "theirs").predict(data, params={"kind": kind}),
    ]
    for other in results[1:]:
        assert type(other) is type(results[0])
        np.testing.assert_array_equal(np.asarray(other), np.asarray(results[0]))


@pytest.mark.mlflow
def test_we_load_an_mlflow_written_model_and_predict_the_same(mlflow, tmp_path, artifacts):
    from mlflow_models import MlflowLinear

    path = tmp_path / "theirs"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=MlflowLinear(),
        artifacts=artifacts,
        input_example=(frame(3), {"scale": 1.0}),
        model_config={"offset": 0.5, "threshold": 0.1},
    )
    data = frame(7)
    ours, theirs = load_model(path), mlflow.pyfunc.load_model(str(path))
    for params in (None, {"scale": 3.0}):
        pd.testing.assert_frame_equal(
            ours.predict(data, params=params), theirs.predict(data, params=params)
        )
    assert ours.metadata.mlflow_version == mlflow.__version__
    assert ours.metadata.signature.to_dict() == theirs.metadata.signature.to_dict()
    assert set(ours.metadata.artifact_paths()) == {"weights", "extras"}
    pd.testing.assert_frame_equal(
        load_model(path, model_config={"offset": 2.0}).predict(data),
        mlflow.pyfunc.load_model(str(path), model_config={"offset": 2.0}).predict(data),
    )


@pytest.mark.mlflow
def test_mlflow_loads_a_model_that_records_its_methods(mlflow, tmp_path):
    from mlflow_models import MlflowMethods

    save_model(tmp_path / "ours", python_model=Methods())
    assert load_model(tmp_path / "ours").metadata.declared_methods is not None
    data = frame(4)
    theirs = mlflow.pyfunc.load_model(str(tmp_path / "ours"))
    np.testing.assert_array_equal(theirs.predict(data), load_model(tmp_path / "ours").predict(data))
    np.testing.assert_allclose(
        theirs.unwrap_python_model().logits(None, data), data.a.to_numpy() - data.b.to_numpy()
    )
    # MLflow records no methods: such a model is checked where it loads, as before
    mlflow.pyfunc.save_model(str(tmp_path / "mlflow"), python_model=MlflowMethods())
    assert read_metadata(tmp_path / "mlflow").declared_methods is None


@pytest.mark.mlflow
def test_mlflow_custom_methods_and_no_context_predict(mlflow, tmp_path):
    from mlflow_models import MlflowMethods, MlflowNoContext

    mlflow.pyfunc.save_model(str(tmp_path / "methods"), python_model=MlflowMethods())
    mlflow.pyfunc.save_model(str(tmp_path / "nc"), python_model=MlflowNoContext())
    data = frame(4)
    methods = load_model(tmp_path / "methods")
    np.testing.assert_allclose(methods.invoke("logits", data), data.a - data.b)
    np.testing.assert_array_equal(
        methods.predict(data), mlflow.pyfunc.load_model(str(tmp_path / "methods")).predict(data)
    )
    np.testing.assert_allclose(
        load_model(tmp_path / "nc").predict(data),
        mlflow.pyfunc.load_model(str(tmp_path / "nc")).predict(data),
    )


@pytest.mark.mlflow
def test_without_mlflow_our_and_mlflows_models_load_but_type_hints_say_to_install_it(
    mlflow, tmp_path, artifacts
):
    from mlflow_models import MlflowConfig, MlflowHinted

    save_model(tmp_path / "ours", python_model=Config(), model_config={"k": "v"})
    mlflow.pyfunc.save_model(
        str(tmp_path / "theirs"), python_model=MlflowConfig(), model_config={"k": "w"}
    )
    mlflow.pyfunc.save_model(str(tmp_path / "hinted"), python_model=MlflowHinted())
    proc = run_without_mlflow(
        f"""
        import json, pandas as pd
        from spark_pyfunc import load_model, MissingDependencyError
        data = pd.DataFrame({{"a": [1.0]}})
        ours = load_model({str(tmp_path / "ours")!r}).predict(data)
        theirs = load_model({str(tmp_path / "theirs")!r}).predict(data)
        try:
            load_model({str(tmp_path / "hinted")!r})
            error = None
        except MissingDependencyError as exc:
            error = [exc.module, exc.install, str(exc)]
        print(json.dumps({{
            "ours": ours.to_dict("list"), "theirs": theirs.to_dict("list"), "error": error
        }}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ours"] == {"k": ["v"]}
    assert result["theirs"] == {"k": ["w"]}  # MLflow's base class is not needed to load it
    module, install, message = result["error"]
    assert module.split(".")[0] == "mlflow" and install == "mlflow"
    assert "pip install mlflow" in message


@pytest.mark.mlflow
def test_mlflow_written_models_load_without_importing_mlflow_unless_predict_is_hinted(
    mlflow, tmp_path, artifacts
):
    """Loading an MLflow-written model costs no MLflow import (about 65 MiB in every model
    host or worker), except where MLflow's base class changes what predict gets: a type hint
    on model_input, which MLflow validates and converts the input to."""
    from mlflow_models import MlflowHinted, MlflowLinear

    mlflow.pyfunc.save_model(
        str(tmp_path / "linear"),
        python_model=MlflowLinear(),
        artifacts=artifacts,
        input_example=(frame(3), {"scale": 1.0}),
    )
    mlflow.pyfunc.save_model(str(tmp_path / "hinted"), python_model=MlflowHinted())
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import json, sys
                import pandas as pd
                from spark_pyfunc import load_model
                model = load_model({str(tmp_path / "linear")!r})
                bases = [c.__module__ for c in type(model.unwrap_python_model()).__mro__]
                model.predict(pd.DataFrame({{"a": [1.0], "b": [2.0]}}))
                linear = "mlflow" in sys.modules
                hinted = load_model({str(tmp_path / "hinted")!r}).predict(["x", "y"])
                print(json.dumps([linear, bases, hinted, "mlflow" in sys.modules]))
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    linear_imported_mlflow, bases, hinted, hinted_imported_mlflow = json.loads(proc.stdout)
    assert not linear_imported_mlflow and "spark_pyfunc.python_model" in bases
    assert hinted_imported_mlflow
    assert hinted == mlflow.pyfunc.load_model(str(tmp_path / "hinted")).predict(["x", "y"])
    assert hinted == ["list:X", "list:Y"]


def test_model_config_may_be_a_yaml_or_json_file(tmp_path):
    (tmp_path / "config.yaml").write_text("a: 1\nb: text\n")
    (tmp_path / "override.json").write_text('{"b": "json"}')
    save_model(tmp_path / "m", python_model=Config(), model_config=tmp_path / "config.yaml")
    got = load_model(tmp_path / "m", model_config=str(tmp_path / "override.json"))
    assert got.predict(frame(1)).to_dict("list") == {"a": ["1"], "b": ["json"]}
    (tmp_path / "list.yaml").write_text("- not a mapping\n")
    with pytest.raises(ModelFormatError, match="list.yaml must hold a mapping"):
        load_model(tmp_path / "m", model_config=tmp_path / "list.yaml")
    with pytest.raises(ModelSaveError, match="missing.yaml"):
        save_model(tmp_path / "m2", python_model=Config(), model_config=tmp_path / "missing.yaml")
