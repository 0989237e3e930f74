"""The examples in the package's docstrings run, as doctests, wherever they need no Spark.

Examples that need a SparkSession are marked ``# doctest: +SKIP``; every other one runs here,
in a fresh directory (the save/load examples write models into it).
"""

from __future__ import annotations

import ast
import doctest
import importlib
import io
import pkgutil
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

import spark_pyfunc


def docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(spark_pyfunc.__path__, "spark_pyfunc."):
        module = importlib.import_module(info.name)
        found += [test for test in finder.find(module) if test.examples]
    return found


EXAMPLES = docstring_examples()


def test_the_entry_points_have_examples() -> None:
    names = {test.name for test in EXAMPLES}
    assert {
        "spark_pyfunc._udf.spark_udf",
        "spark_pyfunc._saving.save_model",
        "spark_pyfunc._loading.load_model",
        "spark_pyfunc._loading.PyFuncModel.predict",
        "spark_pyfunc._loading.PyFuncModel.invoke",
        "spark_pyfunc._paths.local_path",
        "spark_pyfunc.cli._reworded",
    } <= names


@pytest.mark.parametrize("test", EXAMPLES, ids=lambda test: test.name)
def test_a_docstring_example_runs(test: doctest.DocTest, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{test.name}: see the doctest output above"


README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_configuration_table_is_the_declared_settings() -> None:
    """The README's table is settings_table(), so a setting added, renamed or given another
    default in _config.py cannot leave the docs behind."""
    from spark_pyfunc._config import SETTINGS, settings_table

    assert settings_table() in README.read_text()
    assert all(setting.doc for setting in SETTINGS.values()), "a setting without a doc"


def test_every_setting_key_is_declared_once() -> None:
    from spark_pyfunc import _config

    declared = [v for v in vars(_config).values() if isinstance(v, _config.Setting)]
    assert sorted(s.key for s in declared) == sorted(_config.SETTINGS)
    flags = [s.flag for s in declared if s.flag]
    assert len(flags) == len(set(flags))


#: Path-like names of Python files (``_udf.py``, ``schema/_types.py``, ``scripts/bench.py``).
_PY_FILE = re.compile(r"(?<![\w/.\-])((?:[\w.\-]+/)*[\w\-]+\.py)\b")
#: Dotted names in the package (``spark_pyfunc._launcher.HostSpec``).
_DOTTED = re.compile(r"\bspark_pyfunc(?:\.\w+)+")
#: A stale name the test finds in a module another change is rewriting right now; each entry
#: must still be there (the test says when to drop it), so none outlives its fix.
_BEING_REWRITTEN: set[tuple[str, str]] = set()


def _doc_texts(root: Path) -> Iterator[tuple[str, str]]:
    """(where, text) of every doc page, and of every docstring and comment of the package."""
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        yield page.relative_to(root).as_posix(), page.read_text(encoding="utf-8")
    for path in sorted((root / "spark_pyfunc").rglob("*.py")):
        where, source = path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield where, ast.get_docstring(node, clean=False) or ""
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                yield where, token.string


def _dotted_exists(name: str, package: Path) -> bool:
    """``spark_pyfunc.a.b...``: ``a`` is a module or subpackage (or a public name of the
    package root), and so on down subpackages; what follows a module is its attributes."""
    parts = name.split(".")[1:]
    here = package
    for depth, part in enumerate(parts):
        if (here / f"{part}.py").is_file():
            return True
        if (here / part / "__init__.py").is_file():
            here = here / part
            continue
        return depth > 0 or part in spark_pyfunc.__all__
    return True


def test_every_module_named_in_the_docs_exists() -> None:
    """A module renamed, split or removed leaves no page or docstring pointing at it: every
    ``_name.py``, ``dir/name.py`` and ``spark_pyfunc.name`` quoted in README.md, docs/ and
    the package's docstrings and comments names a file of the repository (a bare
    ``name.py``: one anywhere in it; a path: from the root or from the package)."""
    root = README.parent
    files = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if not any(part.startswith(".") or part == "build" for part in p.relative_to(root).parts)
    }
    names = {Path(f).name for f in files}
    stale = set()
    for where, text in _doc_texts(root):
        for match in _PY_FILE.finditer(text):
            ref = match.group(1)
            ok = (ref in files or f"spark_pyfunc/{ref}" in files) if "/" in ref else ref in names
            if not ok:
                stale.add((where, ref))
        for match in _DOTTED.finditer(text):
            if not _dotted_exists(match.group(0), root / "spark_pyfunc"):
                stale.add((where, match.group(0)))
    assert stale - _BEING_REWRITTEN == set(), "docs naming modules that do not exist"
    fixed = _BEING_REWRITTEN - stale
    assert not fixed, f"fixed now: drop {fixed} from _BEING_REWRITTEN"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_docs_links_between_pages_resolve() -> None:
    """A page moved or a heading renamed (docs/benchmark.md's investigations moved to
    docs/investigations/) leaves no link in README.md or docs/ pointing at nothing."""
    root = README.parent
    broken = []
    for page in [README, *sorted((root / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append((page.name, target))
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append((page.name, target))
    assert broken == []
