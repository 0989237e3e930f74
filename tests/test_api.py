"""The public API: everything in ``__all__`` resolves, and the format layer stays Spark-free."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import pytest

import spark_pyfunc
from spark_pyfunc import errors


def test_every_public_name_resolves_to_its_definition() -> None:
    """Each name of ``__all__`` is the object its defining module holds (a lazy entry
    pointing at the wrong module, or a name missing from it, fails here)."""
    for name in spark_pyfunc.__all__:
        value = getattr(spark_pyfunc, name)
        if name == "__version__":
            assert isinstance(value, str) and value.count(".") >= 1
        elif name.endswith("Error"):
            assert value is getattr(errors, name), name
        else:
            module = importlib.import_module(f"spark_pyfunc.{spark_pyfunc._LAZY[name]}")
            assert value is getattr(module, name), name
            assert value.__module__ == module.__name__, name
    assert set(spark_pyfunc.__all__) <= set(dir(spark_pyfunc))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = spark_pyfunc.nothing_here


PUBLIC_MODULES = (
    "spark_pyfunc",
    "spark_pyfunc.cli",
    "spark_pyfunc.errors",
    "spark_pyfunc.python_model",
    "spark_pyfunc.schema",
    "spark_pyfunc.scoring",
)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_a_public_module_exports_exactly_its_all(name: str) -> None:
    """``__all__`` is the module's surface: no duplicates, every name resolves, and every
    public class or function the module defines is in it (a forgotten export fails here)."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for member in exported:
        assert getattr(module, member) is not None, member
    defined = {
        member
        for member, value in vars(module).items()
        if not member.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert sorted(defined - set(exported)) == [], "defined here but not exported"
    star: dict[str, object] = {}
    exec(f"from {name} import *", star)  # what a star import really gives
    assert sorted(set(star) - {"__builtins__"}) == sorted(exported)


def test_private_modules_are_not_exported_by_the_package() -> None:
    assert not [n for n in spark_pyfunc.__all__ if n.startswith("_") and n != "__version__"]
    for private in ("_udf", "_host", "_client", "_wire", "_loading", "_saving", "_format"):
        importlib.import_module(f"spark_pyfunc.{private}")
    assert {"udf", "host", "client", "wire", "loading", "saving", "format"}.isdisjoint(
        name for _, name, _ in pkgutil.iter_modules(spark_pyfunc.__path__)
    )


def test_errors_share_one_base() -> None:
    errors = [getattr(spark_pyfunc, n) for n in spark_pyfunc.__all__ if n.endswith("Error")]
    assert len(errors) >= 10
    assert all(issubclass(e, spark_pyfunc.SparkPyfuncError) for e in errors)


def imported_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``import <imports>``."""
    code = f"import sys, {imports}; print(repr(sorted(m for m in {modules!r} if m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return ast.literal_eval(out.strip())


def test_importing_the_package_or_the_host_does_not_import_pyspark_or_mlflow() -> None:
    imports = "spark_pyfunc, spark_pyfunc._host, spark_pyfunc._client"
    assert imported_after(imports, ("pyspark", "mlflow")) == []


def test_spark_udf_is_loaded_on_first_use() -> None:
    """``import spark_pyfunc`` does not import the UDF module (nor pyspark); the first
    ``spark_pyfunc.spark_udf`` does, and returns that module's function."""
    code = (
        "import sys, spark_pyfunc; "
        "before = sorted(m for m in ('spark_pyfunc._udf', 'pyspark') if m in sys.modules); "
        "f = spark_pyfunc.spark_udf; "
        "print(repr((before, f is sys.modules['spark_pyfunc._udf'].spark_udf, "
        "'pyspark' in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert ast.literal_eval(out.strip()) == ([], True, True)


def test_a_worker_relaying_to_the_host_does_not_import_the_format_layer() -> None:
    """A Spark worker with scope="executor" imports spark_pyfunc._udf to run the UDF; the
    model is in the host, so the signature/loading modules would only cost memory there."""
    format_layer = (
        "spark_pyfunc.schema",
        "spark_pyfunc._format",
        "spark_pyfunc._loading",
        "spark_pyfunc._saving",
        "yaml",
        "mlflow",
    )
    assert imported_after("spark_pyfunc._udf", format_layer) == []


def test_the_error_tree_in_errors_docstring_is_the_real_hierarchy() -> None:
    """errors.py opens with the hierarchy drawn as a tree; each class's parent in the drawing
    is its first base, and every error of the module is drawn (so the drawing cannot rot)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.split("The hierarchy::", 1)[1].split("\n\n", 2)[1].splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*)(?:[├└]── )?(\w+Error)", line)
        assert match, line
        depth = match.start(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, match.group(2)))
    assert sorted(parents) == sorted(errors.__all__)
    for name, parent in parents.items():
        base = getattr(errors, name).__mro__[1]
        assert (base.__name__ if parent else base) == (parent or Exception), name


@pytest.mark.parametrize(
    ("name", "rebuilt"),
    [
        ("SchemaEnforcementError", errors.SchemaEnforcementError),
        ("InvalidArgumentError", errors.InvalidArgumentError),
        ("ResultTypeError", errors.ResultTypeError),
        ("HostError", errors.PredictionError),  # carries fields the reply does not
        ("PredictionError", errors.PredictionError),
        ("ZeroDivisionError", errors.PredictionError),  # the model's own
        ("Exception", errors.PredictionError),
    ],
)
def test_an_error_from_the_host_is_rebuilt_by_the_documented_rule(name, rebuilt) -> None:
    from spark_pyfunc._client import _remote_error

    reply = {"error": name, "message": "the text", "traceback": "Traceback: line 1"}
    exc = _remote_error(reply, "predict", 1234)
    assert type(exc) is rebuilt
    assert exc.remote_traceback == "Traceback: line 1"
    assert "the text" in str(exc)
    if rebuilt is errors.PredictionError:
        assert f"raised {name}" in str(exc) and "(pid 1234)" in str(exc)
        assert str(exc).endswith(f"{name}: the text")


@pytest.mark.parametrize(
    ("closing", "name"),
    [
        ("ValueError: bad\nsecond line", "ValueError"),
        ("models.Refused: bad\nsecond line", "Refused"),
    ],
)
def test_a_model_error_ends_with_its_own_line_once(closing: str, name: str) -> None:
    """The message ends as the model's traceback does: its frames, then its ``Type: message``
    (said once); the host's relay frames are left out, ``remote_traceback`` keeps them."""
    from spark_pyfunc._client import _remote_error

    tb = (
        "Traceback (most recent call last):\n"
        '  File "/x/site-packages/spark_pyfunc/_host.py", line 140, in handle\n'
        "    output = self.model.invoke(method, frame)\n"
        '  File "m.py", line 3, in predict\n'
        f"{closing}\n"
    )
    reply = {"error": name, "message": "bad\nsecond line", "traceback": tb}
    text = str(_remote_error(reply, "predict", 7))
    assert text.count("bad\nsecond line") == 1, text
    assert text.startswith(f"the model's predict raised {name} in the model host (pid 7):\n")
    assert text.endswith(f'  File "m.py", line 3, in predict\n{closing}'), text
    assert "_host.py" not in text and "invoke" not in text
    assert _remote_error(reply, "predict", 7).remote_traceback == tb


def test_a_traceback_that_ends_otherwise_gets_the_closing_line() -> None:
    from spark_pyfunc._client import _remote_error

    tb = "Traceback (most recent call last):\nValueError: other text"
    reply = {"error": "ValueError", "message": "bad", "traceback": tb}
    assert str(_remote_error(reply, "predict", 7)).endswith(f"{tb}\nValueError: bad")


def test_a_load_failure_ends_with_the_models_traceback() -> None:
    from spark_pyfunc._launcher import ending_with_traceback as _ending_with_traceback

    tail = (
        "2026-01-01 00:00:00,000 1 INFO spark_pyfunc._host: starting\n"
        "2026-01-01 00:00:01,000 1 ERROR spark_pyfunc._host: model host failed\n"
        "Traceback (most recent call last):\n"
        '  File "/x/spark_pyfunc/_host.py", line 773, in main\n'
        "    model = load_model(args.model_dir)\n"
        '  File "model.py", line 9, in load_context\n'
        "    raise RuntimeError('corrupt')\n"
        "RuntimeError: corrupt\n"
        "2026-01-01 00:00:01,100 1 INFO spark_pyfunc._host: model host 1 stopped"
    )
    cut = _ending_with_traceback(tail)
    assert cut.endswith(
        '  File "model.py", line 9, in load_context\n'
        "    raise RuntimeError('corrupt')\nRuntimeError: corrupt"
    ), cut
    assert "_host.py" not in cut and "starting" in cut
    assert _ending_with_traceback("no traceback here") == "no traceback here"


def test_an_error_raised_here_has_no_remote_traceback() -> None:
    assert errors.SchemaError("x").remote_traceback is None
    assert errors.PredictionError("x").remote_traceback is None
    assert isinstance(errors.InvalidArgumentError("x"), ValueError)
    assert not issubclass(errors.UsageError, ValueError)  # argparse would swallow its message
