"""Imports flow one way: a module imports only modules of a lower layer, read from the source.

``TIERS`` gives each module of the package its layer; a module may import one of a strictly
lower layer, never one beside it (same layer) or above it. Every module must have a layer, so
a new module has to be placed. Imports inside functions and ``if TYPE_CHECKING:`` count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

import spark_pyfunc

PACKAGE_DIR = Path(spark_pyfunc.__file__).parent

#: The tiers, bottom up; a module may import only modules of a lower tier (docs/architecture.md
#: draws the same graph). Leaves; the signature; the format layer; the host's plumbing (serving
#: a connection below prefork's processes below the host's supervisor); the worker and driver
#: side of the UDF; the batch-scoring library; the console script.
TIERS: list[list[str]] = [
    ["errors", "_version"],
    ["_config", "_paths", "_locks", "_faultpoints", "_sizing", "_protocol"],
    ["schema._types", "_wire", "_spark_session", "_uris", "_pieces"],
    ["_progress", "_commit", "_input", "_error_line"],
    ["schema._coerce", "_rendezvous", "_shipping", "_batching", "_cache"],
    ["schema._specs", "_status", "_direct"],
    ["schema._infer", "schema._enforce", "_distribution"],
    ["schema"],
    ["_format", "_result_types"],
    ["python_model"],
    ["_loading", "_saving", "_env_spec", "_serving"],
    ["_launcher", "_environments", "_prefork"],
    ["_host", "_client", "_describe", "_env_prebuilt"],
    ["_placement"],
    ["_relay"],
    ["_udf", "_report"],
    ["scoring", "_demo", ""],
    ["_cli_args"],
    ["cli"],
    ["score_job"],
]

#: Module -> layer.
LAYERS: dict[str, int] = {
    f"spark_pyfunc.{name}" if name else "spark_pyfunc": layer
    for layer, names in enumerate(TIERS)
    for name in names
}

#: Folders (relative to the package) whose every module must be in LAYERS: all of them.
CHECKED = [""]

#: The modules that may import pyspark (the host and the format layer never do), and those
#: of them that may do so at module level: the others import it inside functions, so that
#: ``info``, ``--help`` and the host's archive code start without it.
PYSPARK_IMPORTERS = {
    "spark_pyfunc._udf",
    "spark_pyfunc._relay",
    "spark_pyfunc._placement",
    "spark_pyfunc._result_types",
    "spark_pyfunc._report",
    "spark_pyfunc._shipping",
    "spark_pyfunc._distribution",
    "spark_pyfunc.scoring",
    "spark_pyfunc._spark_session",
    "spark_pyfunc._demo",
    "spark_pyfunc.cli",
}
PYSPARK_AT_MODULE_LEVEL = {
    "spark_pyfunc._udf",
    "spark_pyfunc._relay",
    "spark_pyfunc._result_types",
}


def module_name(path: Path, package_dir: Path) -> str:
    """``.../spark_pyfunc/schema/_types.py`` -> ``spark_pyfunc.schema._types``."""
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def imported_modules(
    source: str, module: str, is_package: bool, known: Collection[str]
) -> set[str]:
    """The modules that the import statements in ``source`` import, wherever they stand
    (in functions and ``if TYPE_CHECKING:`` blocks too: they are part of the graph).

    ``from a import b`` imports the module ``a.b`` when that is one of ``known``, else ``a``;
    relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def layering_violations(layers: Mapping[str, int], imports: Mapping[str, set[str]]) -> list[str]:
    """One line per import of a module that is not in a strictly lower layer."""
    return [
        f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
        for module, targets in sorted(imports.items())
        for target in sorted(targets)
        if target in layers and target != module and layers[target] >= layers[module]
    ]


def import_graph(package_dir: Path, folders: list[str]) -> dict[str, set[str]]:
    """Module -> the modules it imports, for every module under ``folders``."""
    modules = package_modules(package_dir)
    graph = {}
    for name, path in modules.items():
        if any(path.is_relative_to(package_dir / folder) for folder in folders):
            source = path.read_text(encoding="utf-8")
            graph[name] = imported_modules(source, name, path.name == "__init__.py", modules)
    return graph


def test_imports_flow_one_way() -> None:
    graph = import_graph(PACKAGE_DIR, CHECKED)
    assert sorted(set(graph) - set(LAYERS)) == [], "modules without a layer in LAYERS"
    assert sorted(set(LAYERS) - set(graph)) == [], "LAYERS names modules that do not exist"
    assert layering_violations(LAYERS, graph) == []
    # Not vacuous: the edge that broke the ParamSpec cycle is seen, as is the front module's,
    # a lazy import inside a function, and the launcher's rendezvous without the server module.
    assert "spark_pyfunc.schema._coerce" in graph["spark_pyfunc.schema._specs"]
    assert "spark_pyfunc.schema._enforce" in graph["spark_pyfunc.schema"]
    assert "spark_pyfunc._loading" in graph["spark_pyfunc._host"]
    assert "spark_pyfunc._rendezvous" in graph["spark_pyfunc._launcher"]
    assert "spark_pyfunc._launcher" in graph["spark_pyfunc._client"]
    assert "spark_pyfunc._host" not in graph["spark_pyfunc._client"]
    assert "spark_pyfunc" not in set().union(*graph.values()), "an import of the package root"


def module_level_imports(source: str) -> set[str]:
    """Top modules imported outside functions and ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_spark_side_imports_pyspark() -> None:
    graph = import_graph(PACKAGE_DIR, CHECKED)
    importers = {m for m, targets in graph.items() if any(t.startswith("pyspark") for t in targets)}
    assert importers <= PYSPARK_IMPORTERS, sorted(importers - PYSPARK_IMPORTERS)
    assert "spark_pyfunc._shipping" in importers  # not vacuous
    at_top = {
        name
        for name, path in package_modules(PACKAGE_DIR).items()
        if "pyspark" in module_level_imports(path.read_text(encoding="utf-8"))
    }
    assert at_top == PYSPARK_AT_MODULE_LEVEL


def test_coercion_does_not_depend_on_specs_or_enforcement() -> None:
    """The cycle the schema split broke: ParamSpec used enforcement, which used ParamSpec."""
    graph = import_graph(PACKAGE_DIR, CHECKED)
    within = {m for m in graph["spark_pyfunc.schema._coerce"] if m.startswith("spark_pyfunc.")}
    assert within == {"spark_pyfunc.errors", "spark_pyfunc.schema._types"}


KNOWN = {"pkg", "pkg.low", "pkg.mid", "pkg.high", "pkg.sub", "pkg.sub.leaf"}


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("import pkg.low", "pkg.mid", False, {"pkg.low"}),
        ("from pkg.low import thing", "pkg.mid", False, {"pkg.low"}),
        ("from pkg import low, thing", "pkg.mid", False, {"pkg.low", "pkg"}),
        ("from . import low", "pkg.mid", False, {"pkg.low"}),
        ("from .low import thing", "pkg.mid", False, {"pkg.low"}),
        ("from ..mid import thing", "pkg.sub.leaf", False, {"pkg.mid"}),
        ("from .leaf import thing", "pkg.sub", True, {"pkg.sub.leaf"}),
        ("def f():\n    from pkg.high import thing", "pkg.mid", False, {"pkg.high"}),
        ("if TYPE_CHECKING:\n    import pkg.high", "pkg.mid", False, {"pkg.high"}),
        ("import numpy as np", "pkg.mid", False, {"numpy"}),
    ],
)
def test_imports_are_read_from_every_form_of_import(source, module, is_package, expected) -> None:
    assert imported_modules(source, module, is_package, KNOWN) == expected


def test_upward_and_sideways_imports_are_violations() -> None:
    layers = {"pkg.low": 0, "pkg.mid": 1, "pkg.side": 1, "pkg.high": 2}
    graph = {
        "pkg.low": {"pkg.mid", "numpy"},
        "pkg.mid": {"pkg.low", "pkg.side"},
        "pkg.side": {"pkg.low"},
        "pkg.high": {"pkg.low", "pkg.mid", "pkg.side"},
    }
    assert layering_violations(layers, graph) == [
        "pkg.low (layer 0) imports pkg.mid (layer 1)",
        "pkg.mid (layer 1) imports pkg.side (layer 1)",
    ]


def test_every_module_of_a_checked_folder_needs_a_layer(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "low.py", "sub/__init__.py", "sub/leaf.py"):
        (package / name).write_text("from pkg import low\n", encoding="utf-8")
    graph = import_graph(package, ["sub"])
    assert graph == {"pkg.sub": {"pkg.low"}, "pkg.sub.leaf": {"pkg.low"}}
    assert sorted(import_graph(package, [""])) == ["pkg", "pkg.low", "pkg.sub", "pkg.sub.leaf"]


def test_a_relaying_worker_and_the_host_import_only_what_they_use() -> None:
    # Every Python worker of an executor imports _udf and _client to relay (one per core),
    # and every model host _host and _loading, so each import is paid once per core:
    # urllib.request (http.client, email, ssl: about 2 MiB) for a driver-side URI helper,
    # psutil (0.75 MiB) and filelock 4 (21 modules, 0.6 MiB) where /proc and flock do.
    code = (
        "import sys, spark_pyfunc._udf, spark_pyfunc._host, spark_pyfunc._loading; "
        "from spark_pyfunc._client import ModelHostClient; "
        "print(sorted(m for m in ('ssl', 'http.client', 'email', 'urllib.request', 'psutil', "
        "'filelock') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
