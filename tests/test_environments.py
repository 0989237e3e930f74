"""The model's own environment (env_manager): which file wins, the cache, atomic builds.

Builds are real: uv (and the standard library's venv) create environments in a temporary
cache, installing from the package index this machine uses; a pure-Python package pinned by
the model (``six==1.15.0``, not the test environment's own six) shows which packages the
host's interpreter sees.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import cloudpickle
import pandas as pd
import psutil
import pytest

from spark_pyfunc import _env_prebuilt as prebuilt
from spark_pyfunc import _env_spec as env_spec
from spark_pyfunc import _environments as envs
from spark_pyfunc import _rendezvous, save_model, spark_udf
from spark_pyfunc._client import ModelHostClient
from spark_pyfunc._env_spec import EnvSpec
from spark_pyfunc._launcher import HostSpec
from spark_pyfunc._shipping import package_zips
from spark_pyfunc.cli import main
from spark_pyfunc.errors import (
    EnvironmentSetupError,
    InvalidArgumentError,
    ShippingError,
    UnsafePathError,
)
from spark_pyfunc.python_model import PythonModel

cloudpickle.register_pickle_by_value(sys.modules[__name__])

PINNED = "1.15.0"


class ReportsSix(PythonModel):
    """Reports the six it imports, its interpreter and pid; records its loads."""

    def load_context(self, context):
        path = (context.model_config or {}).get("loads")
        if path:
            with open(path, "a") as fh:
                fh.write(f"{os.getpid()} {sys.executable}\n")

    def predict(self, context, model_input, params=None):
        import six

        n = len(model_input)
        return pd.DataFrame(
            {"six": [six.__version__] * n, "python": [sys.executable] * n, "pid": [os.getpid()] * n}
        )


def six_model(path: Path, requirements: list[str] | None = None) -> Path:
    save_model(path, ReportsSix(), pip_requirements=requirements or [f"six=={PINNED}"])
    return path


def builds(cache: Path) -> list[dict]:
    log = cache / "builds.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def leftovers(cache: Path) -> list[str]:
    """Directories of the cache other than finished environments and the package shim."""
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and not (p / envs.MARKER).is_file())


# ------------------------------------------------------------------ which file wins


def test_python_env_yaml_wins_and_own_package_lines_are_dropped(tmp_path):
    model = six_model(tmp_path / "m", ["six==1.15.0", "spark-pyfunc==0.1.0"])
    (model / "conda.yaml").write_text(
        "dependencies:\n- python=3.9.1\n- pip:\n  - from-conda==1\n", encoding="utf-8"
    )
    spec = env_spec.read_environment(model, "uv")
    assert spec.source == "python_env.yaml"
    assert spec.requirements == ("six==1.15.0",)  # -r requirements.txt inlined, ours dropped
    assert spec.python == "{}.{}.{}".format(*sys.version_info[:3])
    assert any(d.startswith("pip") for d in spec.build_dependencies)


def test_without_python_env_requirements_txt_with_conda_yaml_python(tmp_path):
    model = six_model(tmp_path / "m")
    (model / "python_env.yaml").unlink()
    (model / "conda.yaml").write_text(
        "dependencies:\n- python=3.10.4\n- pip\n- pip:\n  - other==2\n", encoding="utf-8"
    )
    spec = env_spec.read_environment(model, "virtualenv")
    assert (spec.source, spec.python, spec.requirements) == (
        "requirements.txt",
        "3.10.4",
        ("six==1.15.0",),
    )


def test_conda_yaml_alone_gives_its_pip_list(tmp_path):
    model = six_model(tmp_path / "m")
    (model / "python_env.yaml").unlink()
    (model / "requirements.txt").unlink()
    (model / "conda.yaml").write_text(
        "dependencies:\n- python=3.11.2\n- pip:\n  - six==1.14.0\n", encoding="utf-8"
    )
    spec = env_spec.read_environment(model, "uv")
    assert (spec.source, spec.python, spec.requirements) == (
        "conda.yaml",
        "3.11.2",
        ("six==1.14.0",),
    )


def test_a_model_without_environment_files_is_refused_by_name(tmp_path):
    model = six_model(tmp_path / "m")
    for name in ("python_env.yaml", "requirements.txt", "conda.yaml"):
        (model / name).unlink()
    with pytest.raises(
        EnvironmentSetupError, match=r"describes no environment.*env_manager='local'"
    ):
        env_spec.read_environment(model, "uv")


def test_a_requirements_file_outside_the_model_is_refused(tmp_path):
    model = six_model(tmp_path / "m")
    (tmp_path / "secret.txt").write_text("six\n")
    (model / "requirements.txt").write_text("-r ../secret.txt\n")
    with pytest.raises(UnsafePathError, match=r"\.\./secret\.txt"):
        env_spec.read_environment(model, "uv")


def test_conda_without_conda_on_the_machine_names_what_is_missing(tmp_path, monkeypatch):
    model = six_model(tmp_path / "m")
    spec = env_spec.read_environment(model, "conda")
    assert spec.conda_yaml and "six==1.15.0" in spec.conda_yaml
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CONDA_EXE", raising=False)
    with pytest.raises(EnvironmentSetupError, match="conda, mamba or micromamba"):
        envs.ensure_env(spec, tmp_path / "cache", timeout=60)
    assert leftovers(tmp_path / "cache") == []


# ------------------------------------------------------------------ the cache key


def test_the_cache_key_covers_python_requirements_and_spark_pyfunc_version(monkeypatch):
    spec = EnvSpec("uv", "3.11.7", ("six==1.15.0",))
    key = spec.key("3.11.7")
    assert EnvSpec("virtualenv", "3.11.7", ("six==1.15.0",)).key("3.11.7") == key
    assert spec.key("3.11.8") != key
    assert EnvSpec("uv", "3.11.7", ("six==1.16.0",)).key("3.11.7") != key
    assert EnvSpec("conda", "3.11.7", ("six==1.15.0",)).key("3.11.7") != key
    monkeypatch.setattr(env_spec, "__version__", "999.0")
    assert spec.key("3.11.7") != key


# ------------------------------------------------------------------ building


def test_uv_builds_once_and_the_host_runs_in_the_environment(tmp_path, monkeypatch):
    # Executors that forbid bytecode (as this machine's shell does): the host in the
    # model's environment writes it all the same, so that later hosts start faster.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    model = six_model(tmp_path / "m")
    cache = tmp_path / "cache"
    spec = env_spec.read_environment(model, "uv")
    python = envs.ensure_env(spec, cache, timeout=600)
    assert envs.ensure_env(spec, cache, timeout=600) == python
    assert [b["how"] for b in builds(cache)] == ["built"]
    assert leftovers(cache) == []
    host = HostSpec(
        model_dir=str(model),
        key="envtest1",
        state_dir=str(tmp_path / "state"),
        python=python,
        env=envs.host_environment(cache),
    )
    site = Path(python).parent.parent / "lib"
    assert not list(site.glob("python*/site-packages/pandas/__pycache__/*.pyc"))
    # This interpreter has another six (pandas' python-dateutil needs one) or none at all: the
    # host's comes from the environment.
    here = subprocess.run(
        [sys.executable, "-c", "import six; print(six.__version__)"],
        capture_output=True,
        text=True,
    )
    assert here.stdout.strip() != PINNED
    with ModelHostClient(host) as client:
        out = client.predict(pd.DataFrame({"x": [1, 2]}))
        os.kill(client.host_pid, signal.SIGTERM)
    assert set(out["six"]) == {PINNED}
    assert set(out["python"]) == {python}
    # What the host imported is compiled in the environment now (the model's six among it).
    assert list(site.glob("python*/site-packages/pandas/__pycache__/*.pyc"))
    assert list(site.glob("python*/site-packages/pyarrow/__pycache__/*.pyc"))
    assert list(site.glob("python*/site-packages/__pycache__/six.*.pyc"))


def _installs(cache: Path) -> list[tuple[str, bool]]:
    """The build log's ``uv pip install`` runs: (how, whether it succeeded), in order."""
    runs, command = [], ""
    for line in next(cache.glob("*.log")).read_text().splitlines():
        if line.startswith("$ "):
            command = line
        elif line.startswith("# ") and ", exit code " in line and " pip install " in command:
            how = "offline" if command.endswith("--offline") else "index"
            runs.append((how, line.endswith("exit code 0")))
    return runs


def test_uv_installs_from_its_cache_alone_when_it_can(tmp_path, monkeypatch):
    # An empty uv cache of the test's own, and the model's pin alone (the host's packages
    # would be a download of ~100 MB), so what the cache holds is known.
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setattr(envs, "HOST_REQUIREMENTS", ())
    spec = EnvSpec("uv", None, (f"six=={PINNED}",))
    for name, offline_first, expected in [
        ("cold", True, [("offline", False), ("index", True)]),  # not in the cache: the index
        ("warm", True, [("offline", True)]),  # in the cache now: no index at all
        ("index", False, [("index", True)]),  # spark.pyfunc.env.uvOfflineFirst=false
    ]:
        cache = tmp_path / name
        python = envs.ensure_env(spec, cache, timeout=600, offline_first=offline_first)
        assert _installs(cache) == expected, name
        check = [python, "-c", "import six; print(six.__version__)"]
        out = subprocess.run(check, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == PINNED
        assert leftovers(cache) == []


def test_a_failed_build_raises_the_log_tail_and_leaves_no_environment(tmp_path):
    spec = EnvSpec("uv", None, ("this is not a requirement !!",), source="requirements.txt")
    cache = tmp_path / "cache"
    with pytest.raises(EnvironmentSetupError) as caught:
        envs.ensure_env(spec, cache, timeout=600)
    message = str(caught.value)
    assert "from the model's requirements.txt" in message
    assert "last lines of the build log" in message and "this is not a requirement" in message
    assert leftovers(cache) == [] and builds(cache) == []


def _build_in_child(spec: EnvSpec, cache: str, queue) -> None:
    queue.put(envs.ensure_env(spec, cache, timeout=600))


def test_two_processes_building_one_environment_build_it_once(tmp_path):
    spec = EnvSpec("uv", None, (f"six=={PINNED}",))
    cache = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(spec, cache, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert results[0] == results[1]
    assert len(builds(Path(cache))) == 1


@pytest.mark.slow  # a full venv + pip install of the host's stack: ~13 s (uv's tests stay fast)
def test_virtualenv_builds_with_the_model_pins(tmp_path):
    spec = EnvSpec("virtualenv", None, (f"six=={PINNED}",))
    python = envs.ensure_env(spec, tmp_path / "cache", timeout=900)
    out = subprocess.run(
        [python, "-c", "import six, pyarrow, pandas; print(six.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == PINNED


# ------------------------------------------------------------------ prebuilt archives


@pytest.mark.slow  # build-env installs and packs the host's whole stack: ~40 s
def test_a_prebuilt_archive_is_unpacked_once_into_a_working_environment(tmp_path):
    model = six_model(tmp_path / "m")
    archive = tmp_path / "env.tar.gz"
    argv = ["build-env", str(model), str(archive), "--cache-dir", str(tmp_path / "build-cache")]
    assert main(argv) == 0
    assert main(argv) == 1  # OUT exists: refused, not overwritten
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert envs.MARKER in names and not any(t.issym() for t in tarfile.open(archive))
    assert not any("__pycache__" in n for n in names)
    cache = tmp_path / "executor-cache"
    python = prebuilt.restore_prebuilt(archive, "ab" * 32, cache, timeout=300)
    assert prebuilt.restore_prebuilt(archive, "ab" * 32, cache, timeout=300) == python
    assert [b["how"] for b in builds(cache)] == ["unpacked"]
    out = subprocess.run(
        [python, "-c", "import six, pyarrow, pandas, cloudpickle, yaml; print(six.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == PINNED


def test_an_archive_with_a_symlink_is_refused_and_leaves_nothing(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    marker = tmp_path / envs.MARKER
    marker.write_text(json.dumps({"python_version": "{}.{}.0".format(*sys.version_info[:2])}))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(marker, arcname=envs.MARKER)
        link = tarfile.TarInfo("lib/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    cache = tmp_path / "cache"
    with pytest.raises(UnsafePathError, match="lib/escape"):
        prebuilt.restore_prebuilt(archive, "cd" * 32, cache, timeout=60)
    assert leftovers(cache) == [] and builds(cache) == []


def test_an_archive_for_another_python_is_refused_by_version(tmp_path):
    archive = tmp_path / "old.tar.gz"
    marker = tmp_path / envs.MARKER
    marker.write_text(json.dumps({"python_version": "2.7.18"}))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(marker, arcname=envs.MARKER)
    with pytest.raises(EnvironmentSetupError, match=r"built for Python 2\.7\.18"):
        prebuilt.restore_prebuilt(archive, "ef" * 32, tmp_path / "cache", timeout=60)
    assert leftovers(tmp_path / "cache") == []


# ------------------------------------------------------------------ executors without extras


def test_the_package_zip_holds_only_spark_pyfunc_and_imports_without_site_packages(tmp_path):
    own, deps = package_zips()
    import zipfile

    assert {n.split("/")[0] for n in zipfile.ZipFile(own).namelist()} == {"spark_pyfunc"}
    assert {n.split("/")[0] for n in zipfile.ZipFile(deps).namelist()} == {"yaml"}
    code = (
        "import sys; sys.modules['psutil'] = None; "
        "import spark_pyfunc._environments as e, spark_pyfunc._rendezvous as r; "
        "p = r.process(); print(type(p).__name__, p.is_running(), e.package_path(None))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(own), str(deps)]))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True, text=True, env=env, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout.split() == ["ProcProcess", "True", str(own)]


def test_the_proc_fallback_answers_as_psutil_does(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine, theirs = _rendezvous.ProcProcess(child.pid), psutil.Process(child.pid)
        assert mine.cmdline() == theirs.cmdline()
        assert tuple(mine.uids()) == tuple(theirs.uids())
        assert abs(mine.create_time() - theirs.create_time()) < 0.05
        assert mine.is_running() and mine.status() != _rendezvous.STATUS_ZOMBIE
        mine.kill()
        child.wait(30)  # reaped: gone
        assert not mine.is_running()
        with pytest.raises(_rendezvous.ProcessError):
            mine.status()
        with pytest.raises(_rendezvous.NoSuchProcess):
            _rendezvous.ProcProcess(child.pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_proc_fallback_sees_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = _rendezvous.ProcProcess(child.pid)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has exited, not reaped
    assert proc.status() == _rendezvous.STATUS_ZOMBIE
    child.wait()


# ------------------------------------------------------------------ spark_udf's arguments


def test_spark_udf_refuses_env_arguments_that_cannot_work(spark, tmp_path):
    model = six_model(tmp_path / "m")
    with pytest.raises(InvalidArgumentError, match=r"env_manager must be one of .*'pyenv'"):
        spark_udf(spark, str(model), env_manager="pyenv")
    with pytest.raises(InvalidArgumentError, match=r"scope='process'.*env_manager='uv'"):
        spark_udf(spark, str(model), env_manager="uv", scope="process")
    with pytest.raises(InvalidArgumentError, match=r"prebuilt_env_uri=.*not 'conda'"):
        spark_udf(spark, str(model), env_manager="conda", prebuilt_env_uri=str(tmp_path / "e"))
    with pytest.raises(InvalidArgumentError, match=r"prebuilt_env_uri='.*nope.tar.gz': no such"):
        spark_udf(spark, str(model), prebuilt_env_uri=str(tmp_path / "nope.tar.gz"))
    udf = spark_udf(spark, str(model), env_manager="uv")
    assert udf.scope == "executor"  # auto goes to the host, the only process in the env


def test_local_spark_scores_in_the_model_environment(spark, tmp_path):
    model = six_model(tmp_path / "m")
    cache = tmp_path / "cache"
    loads = tmp_path / "loads.txt"
    spark.conf.set("spark.pyfunc.env.cacheDir", str(cache))
    try:
        config = {"loads": str(loads)}
        udf = spark_udf(
            spark,
            str(model),
            "six string, python string, pid long",
            "uv",
            None,
            model_config=config,
        )
        out = spark.range(0, 40, numPartitions=4).select(udf("id").alias("r")).select("r.*")
        rows = out.toPandas()
    finally:
        spark.conf.unset("spark.pyfunc.env.cacheDir")
    assert set(rows["six"]) == {PINNED}
    assert rows["python"].nunique() == 1 and rows["python"][0].startswith(str(cache))
    assert len(loads.read_text().splitlines()) == 1  # one host loaded the model
    assert len(builds(cache)) == 1


def test_a_failing_build_fails_the_task_with_the_build_log(spark, tmp_path):
    model = six_model(tmp_path / "m", ["six==0.0.0.0.0-no-such-version"])
    cache = tmp_path / "cache"
    spark.conf.set("spark.pyfunc.env.cacheDir", str(cache))
    try:
        udf = spark_udf(spark, str(model), "six string, python string, pid long", "uv")
        with pytest.raises(Exception, match=r"EnvironmentSetupError(.|\n)*six"):
            spark.range(0, 4, numPartitions=1).select(udf("id")).collect()
    finally:
        spark.conf.unset("spark.pyfunc.env.cacheDir")
    assert leftovers(cache) == []


def test_an_archive_that_does_not_match_its_hash_is_refused(tmp_path, monkeypatch):
    from spark_pyfunc import _shipping

    (tmp_path / "spark_pyfunc-env-x.tarball").write_bytes(b"not what was shipped")
    monkeypatch.setattr(_shipping, "_spark_files_root", lambda name: tmp_path)
    shipped = _shipping.ShippedModel("spark_pyfunc-env-x.tarball", "0" * 64, 20)
    with pytest.raises(ShippingError, match="corrupt"):
        _shipping.fetch_file(shipped)
