"""Model shipping: deterministic archives, safe extraction, once-per-executor unpacking."""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from spark_pyfunc import _shipping as shipping
from spark_pyfunc._shipping import (
    ShippedModel,
    build_archive,
    materialize,
    safe_extract,
    ship_model,
)
from spark_pyfunc.errors import ShippingError, UnsafePathError


def make_model(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` (relative path -> content) under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
    return root


FILES: dict[str, str | bytes] = {
    "MLmodel": "flavors: {}\n",
    "artifacts/weights.bin": bytes(range(256)) * 4,
    "code/helper.py": "X = 1\n",
    "python_model.pkl": b"\x80\x05pickle",
}


def members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return tar.getmembers()


# --------------------------------------------------------------------------- building


def test_same_content_in_two_directories_gives_the_same_archive(tmp_path):
    one = make_model(tmp_path / "one", FILES)
    two = make_model(tmp_path / "two", dict(reversed(FILES.items())))
    for path in two.rglob("*"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    (two / "code" / "helper.py").chmod(0o600)  # permission bits other than +x do not count

    first, first_path = build_archive(one)
    second, second_path = build_archive(two)

    assert first == second
    assert first.archive_name == f"spark_pyfunc-model-{first.sha256[:24]}.tarball"
    assert first.model_size == sum(len(c) for c in FILES.values())
    assert first_path == second_path
    assert first_path.read_bytes() == second_path.read_bytes()


def test_archive_headers_are_normalised(tmp_path):
    model = make_model(tmp_path / "m", FILES)
    (model / "empty").mkdir()
    (model / "code" / "run.sh").write_text("#!/bin/sh\n")
    (model / "code" / "run.sh").chmod(0o700)

    _, archive = build_archive(model)
    infos = members(archive)

    assert [m.name for m in infos] == [
        "MLmodel",
        "artifacts",
        "artifacts/weights.bin",
        "code",
        "code/helper.py",
        "code/run.sh",
        "empty",
        "python_model.pkl",
    ]
    modes = {m.name: m.mode for m in infos}
    assert modes["code/run.sh"] == 0o755
    assert modes["code/helper.py"] == 0o644
    assert modes["empty"] == modes["code"] == 0o755
    assert all(m.isdir() for m in infos if m.name in {"artifacts", "code", "empty"})
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in infos)


def test_a_changed_byte_changes_the_archive(tmp_path):
    model = make_model(tmp_path / "m", FILES)
    before, _ = build_archive(model)
    data = bytearray((model / "artifacts" / "weights.bin").read_bytes())
    data[100] ^= 1
    (model / "artifacts" / "weights.bin").write_bytes(bytes(data))

    after, archive = build_archive(model)

    assert after.sha256 != before.sha256
    assert after.archive_name != before.archive_name
    assert after.model_size == before.model_size
    with tarfile.open(archive) as tar:
        assert tar.extractfile("artifacts/weights.bin").read() == bytes(data)


def test_an_unchanged_directory_is_not_packed_again(tmp_path, monkeypatch):
    model = make_model(tmp_path / "m", FILES)
    first = build_archive(model)

    def fail(*args, **kwargs):
        raise AssertionError("the archive was packed again")

    monkeypatch.setattr(shipping, "_write_archive", fail)
    assert build_archive(model) == first
    (model / "new.txt").write_text("new")
    with pytest.raises(AssertionError, match="packed again"):
        build_archive(model)


def test_symlinks_inside_the_model_are_stored_as_their_targets(tmp_path):
    model = make_model(tmp_path / "m", FILES)
    (model / "alias.bin").symlink_to("artifacts/weights.bin")
    (model / "code_alias").symlink_to(model / "code")

    _, archive = build_archive(model)

    with tarfile.open(archive) as tar:
        alias = tar.getmember("alias.bin")
        assert alias.isreg()
        assert tar.extractfile(alias).read() == FILES["artifacts/weights.bin"]
        assert tar.getmember("code_alias").isdir()
        assert tar.extractfile("code_alias/helper.py").read() == b"X = 1\n"


@pytest.mark.parametrize("target_is_dir", [False, True])
def test_a_symlink_leaving_the_model_is_refused(tmp_path, target_is_dir):
    outside = tmp_path / "secret"
    if target_is_dir:
        outside.mkdir()
    else:
        outside.write_text("secret")
    model = make_model(tmp_path / "m", FILES)
    (model / "artifacts" / "leak").symlink_to(outside)

    with pytest.raises(UnsafePathError, match="artifacts/leak") as caught:
        build_archive(model)
    assert str(outside) in str(caught.value)


def test_a_symlink_loop_is_refused(tmp_path):
    model = make_model(tmp_path / "m", FILES)
    (model / "code" / "again").symlink_to(model)

    with pytest.raises(ShippingError, match="code/again.*loop"):
        build_archive(model)


def test_unshippable_inputs_are_named(tmp_path):
    with pytest.raises(ShippingError, match="nowhere"):
        build_archive(tmp_path / "nowhere")
    model = make_model(tmp_path / "m", FILES)
    os.mkfifo(model / "pipe")
    with pytest.raises(ShippingError, match="'pipe'.*fifo"):
        build_archive(model)
    (model / "pipe").unlink()
    (model / "dangling").symlink_to(model / "gone")
    with pytest.raises(ShippingError, match="dangling"):
        build_archive(model)


# --------------------------------------------------------------------------- safe_extract


def _evil_member(kind: str, outside: Path) -> tuple[tarfile.TarInfo, bytes]:
    data = b"pwned"
    if kind == "parent":
        info = tarfile.TarInfo("../evil")
    elif kind == "nested-parent":
        info = tarfile.TarInfo("sub/../../evil")
    elif kind == "absolute":
        info = tarfile.TarInfo(str(outside / "abs-evil"))
    else:
        info = tarfile.TarInfo("special")
        data = b""
        info.type = {
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chardev": tarfile.CHRTYPE,
        }[kind]
        info.linkname = str(outside / "target") if kind in {"symlink", "hardlink"} else ""
    info.size = len(data)
    return info, data


@pytest.mark.parametrize(
    "kind", ["parent", "nested-parent", "absolute", "symlink", "hardlink", "fifo", "chardev"]
)
def test_safe_extract_refuses_malicious_members(tmp_path, kind):
    box = tmp_path / "box"
    dest = box / "dest"
    dest.mkdir(parents=True)
    (box / "target").write_text("do not touch")
    archive = tmp_path / "evil.tar"
    evil, data = _evil_member(kind, box)
    with tarfile.open(archive, "w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        tar.addfile(evil, io.BytesIO(data))

    with pytest.raises(UnsafePathError) as caught:
        safe_extract(archive, dest)

    assert repr(evil.name) in str(caught.value)
    assert str(archive) in str(caught.value)
    # Every member is checked before anything is written.
    assert sorted(p.relative_to(box).as_posix() for p in box.rglob("*")) == ["dest", "target"]
    assert (box / "target").read_text() == "do not touch"


def test_safe_extract_unpacks_a_built_archive(tmp_path):
    model = make_model(tmp_path / "m", FILES)
    _, archive = build_archive(model)

    safe_extract(archive, tmp_path / "out")

    for rel, content in FILES.items():
        data = content.encode() if isinstance(content, str) else content
        assert (tmp_path / "out" / rel).read_bytes() == data


def test_safe_extract_names_an_unreadable_archive(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShippingError, match="bad.tar"):
        safe_extract(bad, tmp_path / "out")


# --------------------------------------------------------------------------- materialize


def _stage(tmp_path: Path, files: dict[str, str | bytes] = FILES) -> tuple[ShippedModel, Path]:
    """Build an archive and put it in a fake SparkFiles root, as addFile would."""
    shipped, archive = build_archive(make_model(tmp_path / "model", files))
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / shipped.archive_name).write_bytes(archive.read_bytes())
    return shipped, root


def test_materialize_unpacks_once_and_cleans_up(tmp_path):
    shipped, root = _stage(tmp_path)
    stale = root / f".{shipped.stem}-crashed"
    (stale / "half").mkdir(parents=True)

    model_dir = materialize(shipped, root)

    assert model_dir == root / shipped.stem
    assert (model_dir / "code" / "helper.py").read_text() == "X = 1\n"
    assert not stale.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [shipped.archive_name, shipped.stem, f"{shipped.stem}.lock"]
    )
    inode = model_dir.stat().st_ino
    assert materialize(shipped, root) == model_dir
    assert model_dir.stat().st_ino == inode


def test_materialize_refuses_a_corrupt_archive(tmp_path):
    shipped, root = _stage(tmp_path)
    archive = root / shipped.archive_name
    data = bytearray(archive.read_bytes())
    data[2100] ^= 0xFF  # inside artifacts/weights.bin: still a valid tar
    archive.write_bytes(bytes(data))

    with pytest.raises(ShippingError) as caught:
        materialize(shipped, root)

    message = str(caught.value)
    assert str(archive) in message and shipped.sha256 in message
    assert shipping.sha256_file(archive) in message
    assert not (root / shipped.stem).exists()
    assert not list(root.glob(f".{shipped.stem}-*"))


def test_materialize_names_a_missing_archive(tmp_path):
    shipped, root = _stage(tmp_path)
    (root / shipped.archive_name).unlink()

    with pytest.raises(ShippingError) as caught:
        materialize(shipped, root)

    assert shipped.archive_name in str(caught.value)
    assert str(root) in str(caught.value)


def _wait_for(condition, what: str, deadline_s: float = 120.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _race(shipped: ShippedModel, root: str, log: str, result: str, workers: int) -> None:
    """One Python worker: count real unpacks, and hold the one in progress until every
    worker is waiting for the unpack lock, so that they provably collide."""
    real_extract, real_lock = shipping.safe_extract, shipping.file_lock
    waiting = Path(log).parent / "waiting"

    def announced_lock(*args, **kwargs):
        (waiting / str(os.getpid())).touch()
        return real_lock(*args, **kwargs)

    def counting(archive, dest):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        _wait_for(lambda: len(list(waiting.iterdir())) == workers, "all workers at the lock")
        real_extract(archive, dest)

    shipping.safe_extract = counting
    shipping.file_lock = announced_lock
    Path(result).write_text(str(materialize(shipped, root)))


def test_concurrent_workers_unpack_once(tmp_path):
    shipped, root = _stage(tmp_path)
    log = tmp_path / "unpacks.log"
    (tmp_path / "waiting").mkdir()
    ctx = multiprocessing.get_context("spawn")
    results = [tmp_path / f"result-{i}" for i in range(4)]
    workers = [
        ctx.Process(target=_race, args=(shipped, str(root), str(log), str(out), len(results)))
        for out in results
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert len(list((tmp_path / "waiting").iterdir())) == 4  # all four met at the lock

    assert len(log.read_text().splitlines()) == 1
    assert {out.read_text() for out in results} == {str(root / shipped.stem)}
    assert (root / shipped.stem / "MLmodel").read_text() == "flavors: {}\n"
    assert not list(root.glob(f".{shipped.stem}-*"))


# --------------------------------------------------------------------------- Spark (local[2])


def test_a_pandas_udf_reads_the_shipped_model(spark, tmp_path, monkeypatch):
    from pyspark.sql.functions import pandas_udf

    token = uuid.uuid4().hex
    model = make_model(tmp_path / "m", {**FILES, "token.txt": token})
    sc = spark.sparkContext
    added: list[str] = []
    add_file = sc.addFile
    monkeypatch.setattr(sc, "addFile", lambda path: (added.append(path), add_file(path))[1])

    shipped = ship_model(spark, model)
    assert ship_model(spark, model) == shipped  # registered once per session
    assert len(added) == 1
    assert [uri for uri in sc.listFiles if uri.endswith("/" + shipped.archive_name)]

    @pandas_udf("string")
    def read(ids: pd.Series) -> pd.Series:
        model_dir = materialize(shipped)
        return pd.Series([f"{model_dir}|{(model_dir / 'token.txt').read_text()}"] * len(ids))

    rows = spark.range(0, 8, numPartitions=4).select(read("id").alias("r")).toPandas()["r"]

    # local mode: the driver and the executor share SparkFiles' root
    model_dir = materialize(shipped)
    assert set(rows) == {f"{model_dir}|{token}"}
    # Spark itself untars added *.tar files into its root; the archive's name must avoid that.
    assert not (model_dir.parent / "token.txt").exists()
