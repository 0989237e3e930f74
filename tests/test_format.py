"""read_metadata and resolve_inside: what a model directory must hold, and every way it can't."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import yaml
from format_models import Linear, frame

from spark_pyfunc import load_model, save_model
from spark_pyfunc._format import read_metadata, resolve_inside
from spark_pyfunc.errors import ModelFormatError, UnsafePathError


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    weights = tmp_path / "weights.npy"
    np.save(weights, np.array([1.0, 2.0]))
    path = tmp_path / "model"
    save_model(
        path,
        python_model=Linear(),
        artifacts={"weights": str(weights)},
        input_example=(frame(3), {"scale": 1.0}),
        model_config={"threshold": 1.5},
        metadata={"owner": "tests"},
    )
    return path


def mlmodel(model_dir: Path) -> dict:
    return yaml.safe_load((model_dir / "MLmodel").read_text())


def rewrite(model_dir: Path, content: dict) -> None:
    (model_dir / "MLmodel").write_text(yaml.safe_dump(content))


def set_artifact_path(model_dir: Path, relpath: str) -> None:
    content = mlmodel(model_dir)
    content["flavors"]["python_function"]["artifacts"]["weights"]["path"] = relpath
    rewrite(model_dir, content)


# ------------------------------------------------------------------------------ good model


def test_metadata_of_a_saved_model(model_dir: Path) -> None:
    meta = read_metadata(model_dir)
    assert meta.path == model_dir
    assert meta.flavors.keys() == {"python_function"}
    assert meta.loader_module == "mlflow.pyfunc.model"
    assert meta.is_custom_pyfunc
    assert meta.python_version == platform.python_version()
    assert meta.cloudpickle_version == cloudpickle.__version__
    assert len(meta.model_uuid) == 32 and int(meta.model_uuid, 16) >= 0
    assert meta.utc_time_created and meta.mlflow_version is None
    assert meta.model_config == {"threshold": 1.5}
    assert meta.metadata == {"owner": "tests"}
    assert meta.saved_input_example_info["type"] == "dataframe"
    assert meta.get_input_schema().input_names() == ["a", "b"]
    assert meta.get_output_schema().input_names() == ["score", "label"]
    assert [p.name for p in meta.get_params_schema().params] == ["scale"]
    assert meta.artifact_paths() == {"weights": model_dir / "artifacts" / "weights.npy"}
    assert meta.python_model_path() == model_dir / "python_model.pkl"
    assert meta.code_path() is None
    assert meta.requirements()[1] == f"cloudpickle=={cloudpickle.__version__}"
    assert meta.requirements()[0].startswith("spark-pyfunc==")


def test_relative_path_is_made_absolute(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_dir.parent)
    assert read_metadata("model").path == model_dir


def test_a_symlink_inside_the_model_is_allowed(model_dir: Path) -> None:
    (model_dir / "artifacts" / "alias.npy").symlink_to("weights.npy")
    set_artifact_path(model_dir, "artifacts/alias.npy")
    assert read_metadata(model_dir).artifact_paths()["weights"] == (
        model_dir / "artifacts" / "alias.npy"
    )
    assert load_model(model_dir).predict(frame(3)).shape == (3, 2)


# ------------------------------------------------------------------------------ bad models


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="does not exist") as info:
        read_metadata(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFormatError, match="is not a directory") as info:
        read_metadata(tmp_path / "file")
    assert str(tmp_path / "file") in str(info.value)


def test_directory_without_mlmodel(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="has no MLmodel file") as info:
        read_metadata(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_malformed_yaml_names_file_and_position(model_dir: Path) -> None:
    (model_dir / "MLmodel").write_text("flavors:\n  python_function:\n    x: [1, 2\n")
    with pytest.raises(ModelFormatError) as info:
        read_metadata(model_dir)
    message = str(info.value)
    assert str(model_dir / "MLmodel") in message
    assert "not valid YAML at line 4, column 1" in message


def test_mlmodel_not_a_mapping(model_dir: Path) -> None:
    (model_dir / "MLmodel").write_text("- flavors\n- python_function\n")
    with pytest.raises(ModelFormatError, match="must be a YAML mapping, but it is a list") as info:
        read_metadata(model_dir)
    assert str(model_dir / "MLmodel") in str(info.value)


def test_empty_mlmodel(model_dir: Path) -> None:
    (model_dir / "MLmodel").write_text("")
    with pytest.raises(ModelFormatError, match="must be a YAML mapping, but it is empty"):
        read_metadata(model_dir)


def test_no_python_function_flavor_lists_the_flavors(model_dir: Path) -> None:
    rewrite(model_dir, {"flavors": {"sklearn": {"pickled_model": "m.pkl"}, "onnx": {}}})
    with pytest.raises(ModelFormatError) as info:
        read_metadata(model_dir)
    message = str(info.value)
    assert "no python_function flavor" in message and "flavors found: onnx, sklearn" in message
    assert str(model_dir / "MLmodel") in message


def test_no_flavors_at_all(model_dir: Path) -> None:
    rewrite(model_dir, {"model_uuid": "x"})
    with pytest.raises(ModelFormatError, match="flavors found: none"):
        read_metadata(model_dir)


def test_flavors_not_a_mapping(model_dir: Path) -> None:
    rewrite(model_dir, {"flavors": ["python_function"]})
    with pytest.raises(ModelFormatError, match="field flavors must be a mapping"):
        read_metadata(model_dir)


def test_python_function_without_loader_module(model_dir: Path) -> None:
    content = mlmodel(model_dir)
    del content["flavors"]["python_function"]["loader_module"]
    rewrite(model_dir, content)
    with pytest.raises(ModelFormatError, match="has no loader_module field") as info:
        read_metadata(model_dir)
    assert str(model_dir / "MLmodel") in str(info.value)


def test_custom_pyfunc_without_python_model_field(model_dir: Path) -> None:
    content = mlmodel(model_dir)
    del content["flavors"]["python_function"]["python_model"]
    rewrite(model_dir, content)
    with pytest.raises(ModelFormatError, match="no python_model field") as info:
        read_metadata(model_dir)
    assert str(model_dir / "MLmodel") in str(info.value)


def test_custom_pyfunc_python_model_file_missing(model_dir: Path) -> None:
    (model_dir / "python_model.pkl").unlink()
    with pytest.raises(ModelFormatError, match="is missing") as info:
        read_metadata(model_dir)
    assert str(model_dir / "python_model.pkl") in str(info.value)
    assert "python_function.python_model" in str(info.value)


def test_malformed_signature(model_dir: Path) -> None:
    content = mlmodel(model_dir)
    content["signature"]["inputs"] = "[{not json"
    rewrite(model_dir, content)
    with pytest.raises(ModelFormatError, match="field signature is malformed") as info:
        read_metadata(model_dir)
    assert "inputs" in str(info.value)


def test_artifact_entry_without_path(model_dir: Path) -> None:
    content = mlmodel(model_dir)
    content["flavors"]["python_function"]["artifacts"]["weights"] = "artifacts/weights.npy"
    rewrite(model_dir, content)
    with pytest.raises(ModelFormatError, match="artifact 'weights' must be a mapping with a path"):
        read_metadata(model_dir)


# ------------------------------------------------------------------------------ unsafe paths


def test_artifact_path_with_dotdot(model_dir: Path) -> None:
    set_artifact_path(model_dir, "../x")
    with pytest.raises(UnsafePathError, match="contains '..'") as info:
        read_metadata(model_dir)
    assert "artifact 'weights'" in str(info.value) and "'../x'" in str(info.value)


def test_artifact_dotdot_that_comes_back_inside_is_refused_too(model_dir: Path) -> None:
    set_artifact_path(model_dir, "artifacts/../artifacts/weights.npy")
    with pytest.raises(UnsafePathError, match="artifact 'weights'"):
        read_metadata(model_dir)


def test_absolute_artifact_path(model_dir: Path) -> None:
    set_artifact_path(model_dir, str(model_dir / "artifacts" / "weights.npy"))
    with pytest.raises(UnsafePathError, match="is absolute") as info:
        read_metadata(model_dir)
    assert "artifact 'weights'" in str(info.value)


def test_artifact_symlink_that_escapes(model_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.npy"
    np.save(outside, np.array([9.0, 9.0]))
    (model_dir / "artifacts" / "leak.npy").symlink_to(outside)
    set_artifact_path(model_dir, "artifacts/leak.npy")
    with pytest.raises(UnsafePathError, match="symbolic link") as info:
        load_model(model_dir)
    assert "artifact 'weights'" in str(info.value) and str(outside) in str(info.value)


def test_artifact_under_a_symlinked_directory_that_escapes(model_dir: Path, tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    np.save(tmp_path / "elsewhere" / "w.npy", np.array([1.0, 2.0]))
    (model_dir / "artifacts" / "linked").symlink_to(tmp_path / "elsewhere")
    set_artifact_path(model_dir, "artifacts/linked/w.npy")
    with pytest.raises(UnsafePathError, match="artifact 'weights'"):
        read_metadata(model_dir)


def test_code_directory_outside_the_model(model_dir: Path) -> None:
    content = mlmodel(model_dir)
    content["flavors"]["python_function"]["code"] = "../code"
    rewrite(model_dir, content)
    with pytest.raises(UnsafePathError, match="code directory"):
        read_metadata(model_dir)


def test_python_model_file_outside_the_model(model_dir: Path) -> None:
    content = mlmodel(model_dir)
    content["flavors"]["python_function"]["python_model"] = "/etc/passwd"
    rewrite(model_dir, content)
    with pytest.raises(UnsafePathError, match="python_model: path '/etc/passwd' is absolute"):
        read_metadata(model_dir)


@pytest.mark.parametrize(
    ("relpath", "error", "expected"),
    [
        ("../up", UnsafePathError, "contains '..'"),
        ("a/../../up", UnsafePathError, "contains '..'"),
        ("/abs/file", UnsafePathError, "is absolute"),
        ("", ModelFormatError, "non-empty string"),
        (None, ModelFormatError, "non-empty string"),
        (3, ModelFormatError, "non-empty string"),
    ],
)
def test_resolve_inside_refuses(tmp_path: Path, relpath, error, expected) -> None:
    with pytest.raises(error, match=expected) as info:
        resolve_inside(tmp_path, relpath, "the thing")
    assert str(info.value).startswith("the thing:")


def test_resolve_inside_keeps_names_and_allows_missing_files(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert resolve_inside(tmp_path, "link/x.bin", "x") == tmp_path / "link" / "x.bin"
    assert resolve_inside(str(tmp_path), "not/yet/there", "x") == tmp_path / "not/yet/there"


def test_resolve_inside_a_symlinked_model_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert resolve_inside(tmp_path / "alias", "f", "x") == tmp_path / "alias" / "f"
