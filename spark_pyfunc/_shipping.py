"""Get a model directory from the driver to every executor through Spark's own file distribution.

The driver packs the model directory into a deterministic tar named by its sha256, so the same
content is shipped once per session and different models never collide. Each executor checks
the shipped bytes against that hash and unpacks them once, under a file lock, with an extractor
that refuses anything that could land outside its destination.

pyspark is imported only inside functions: Python workers import this module, and so does the
model host, which runs outside Spark's worker and must stay light.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from spark_pyfunc._locks import file_lock
from spark_pyfunc._paths import sha256_file
from spark_pyfunc.errors import ShippingError, UnsafePathError

__all__ = [
    "ShippedModel",
    "build_archive",
    "fetch_file",
    "materialize",
    "safe_extract",
    "ship_file",
    "ship_model",
    "ship_package",
    "verify_archive",
    "package_zips",
]

_log = logging.getLogger(__name__)

ARCHIVE_PREFIX = "spark_pyfunc-model-"
# Not ".tar": Spark's file fetcher runs `tar -xf` on every added file named *.tar, *.tar.gz or
# *.tgz (with a deprecation warning), spilling the model into SparkFiles' root unchecked.
ARCHIVE_SUFFIX = ".tarball"
_HASH_CHARS = 24


@dataclass(frozen=True)
class ShippedModel:
    """What a Python worker needs to find, verify and unpack a shipped model (small, picklable)."""

    archive_name: str
    sha256: str
    model_size: int

    @property
    def stem(self) -> str:
        """The archive's name without its suffix: also the name of the unpacked directory."""
        return self.archive_name.removesuffix(ARCHIVE_SUFFIX)


# --------------------------------------------------------------------------- driver: building


@dataclass(frozen=True)
class _Entry:
    """One archive member: ``source`` is the real path read (a symlink's target).

    Directories carry no size or mtime: their mtime changes with every scratch file.
    """

    relpath: str
    is_dir: bool
    source: str
    size: int
    mtime_ns: int
    executable: bool


_build_lock = threading.Lock()
# realpath of a model dir -> (fingerprint of its files, shipped model, archive path)
_build_cache: dict[str, tuple[tuple, ShippedModel, Path]] = {}
_archive_dir: Path | None = None


def _archive_root() -> Path:
    """The per-process directory holding built archives, removed when the interpreter exits."""
    global _archive_dir
    if _archive_dir is None or not _archive_dir.is_dir():
        path = Path(tempfile.mkdtemp(prefix="spark_pyfunc-"))
        owner = os.getpid()

        def _cleanup() -> None:
            # A forked child inherits this handler; only the creating process owns the dir.
            if os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(_cleanup)
        _archive_dir = path
    return _archive_dir


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk(
    root: str, rel: PurePosixPath, real_dir: str, parents: frozenset[str]
) -> Iterator[_Entry]:
    """Yield entries below ``real_dir`` in sorted pre-order, following symlinks that stay inside.

    ``parents`` holds the real paths of the directories being walked, to catch symlink loops.
    """
    try:
        with os.scandir(real_dir) as listing:
            names = sorted(entry.name for entry in listing)
    except OSError as exc:
        raise ShippingError(f"cannot list model directory {real_dir!r}: {exc}") from exc
    for name in names:
        relpath = rel / name
        path = os.path.join(real_dir, name)
        source = path
        if os.path.islink(path):
            source = os.path.realpath(path)
            if not _inside(source, root):
                raise UnsafePathError(
                    f"symlink {relpath.as_posix()!r} in model directory {root!r} points to "
                    f"{source!r}, outside the model directory; copy the file into the model "
                    "directory instead"
                )
        try:
            st = os.stat(source)
        except OSError as exc:
            raise ShippingError(
                f"cannot read {relpath.as_posix()!r} in model directory {root!r}: {exc}"
            ) from exc
        if stat.S_ISDIR(st.st_mode):
            if source in parents:
                raise ShippingError(
                    f"symlink {relpath.as_posix()!r} in model directory {root!r} makes a loop "
                    f"(it points to its own ancestor {source!r})"
                )
            yield _Entry(relpath.as_posix(), True, source, 0, 0, True)
            yield from _walk(root, relpath, source, parents | {source})
        elif stat.S_ISREG(st.st_mode):
            yield _Entry(
                relpath.as_posix(),
                False,
                source,
                st.st_size,
                st.st_mtime_ns,
                bool(st.st_mode & 0o111),
            )
        else:
            raise ShippingError(
                f"{relpath.as_posix()!r} in model directory {root!r} is neither a regular file "
                "nor a directory (a fifo, socket or device cannot be shipped)"
            )


class _HashingWriter:
    """A write-only file object that hashes what passes through, so the tar is read only once."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._out.write(data)


def _tarinfo(entry: _Entry, size: int) -> tarfile.TarInfo:
    """A member header with everything that varies between machines normalised away."""
    info = tarfile.TarInfo(entry.relpath)
    info.type = tarfile.DIRTYPE if entry.is_dir else tarfile.REGTYPE
    info.mode = 0o755 if entry.executable else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_archive(entries: list[_Entry], dest_dir: Path) -> tuple[Path, str]:
    """Write the tar into ``dest_dir`` under a temporary name; return its path and sha256."""
    fd, tmp_name = tempfile.mkstemp(prefix=".building-", suffix=ARCHIVE_SUFFIX, dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw)
            # Stream mode ("w|") only ever writes, which the hashing writer relies on.
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for entry in entries:
                    if entry.is_dir:
                        tar.addfile(_tarinfo(entry, 0))
                        continue
                    with open(entry.source, "rb") as member:
                        size = os.fstat(member.fileno()).st_size
                        tar.addfile(_tarinfo(entry, size), member)
        return Path(tmp_name), writer.digest.hexdigest()
    except BaseException:
        os.unlink(tmp_name)
        raise


def build_archive(model_dir: str | os.PathLike[str]) -> tuple[ShippedModel, Path]:
    """Pack ``model_dir`` into a deterministic, content-named tar; return it and its path.

    Cached per process by the directory's real path and a fingerprint of its files (relative
    path, size, mtime_ns), so an unchanged directory costs only a stat walk.
    """
    root = os.path.realpath(model_dir)
    if not os.path.isdir(root):
        raise ShippingError(
            f"model directory {os.fspath(model_dir)!r} does not exist or is not a directory"
        )
    with _build_lock:
        entries = list(_walk(root, PurePosixPath(), root, frozenset({root})))
        fingerprint = tuple(
            (e.relpath, e.is_dir, e.source, e.size, e.mtime_ns, e.executable) for e in entries
        )
        cached = _build_cache.get(root)
        if cached is not None and cached[0] == fingerprint and cached[2].is_file():
            return cached[1], cached[2]

        started = time.perf_counter()
        dest_dir = _archive_root()
        try:
            tmp_path, sha256 = _write_archive(entries, dest_dir)
        except OSError as exc:
            raise ShippingError(
                f"cannot pack model directory {root!r} (did a file change while packing?): {exc}"
            ) from exc
        shipped = ShippedModel(
            archive_name=f"{ARCHIVE_PREFIX}{sha256[:_HASH_CHARS]}{ARCHIVE_SUFFIX}",
            sha256=sha256,
            model_size=sum(e.size for e in entries if not e.is_dir),
        )
        archive = dest_dir / shipped.archive_name
        if archive.is_file():
            # Same content already built (maybe from another directory): keep the path that
            # may already be registered with Spark.
            tmp_path.unlink()
        else:
            os.replace(tmp_path, archive)
        _build_cache[root] = (fingerprint, shipped, archive)
        _log.debug(
            "built model archive %s (%d bytes) from %s in %.3f s",
            archive,
            archive.stat().st_size,
            root,
            time.perf_counter() - started,
        )
        return shipped, archive


# --------------------------------------------------------------------------- driver: shipping

_ship_lock = threading.Lock()
# (session kind, session id, archive name) already registered with Spark
_registered: set[tuple[str, str, str]] = set()


def _is_connect(spark: Any) -> bool:
    """Tell a Spark Connect session apart without importing connect modules (they may be absent)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def ship_model(spark: Any, model_dir: str | os.PathLike[str]) -> ShippedModel:
    """Build the model's archive and register it with the session's file distribution, once.

    Spark warns when one path is added twice and fails when one file name is added from two
    paths, so registration is remembered per session and the archive path is stable per name.
    """
    shipped, archive = build_archive(model_dir)
    _register(spark, archive, shipped.archive_name)
    return shipped


def _register(spark: Any, path: Path, name: str, pyfile: bool = False) -> None:
    """Add ``path`` to the session's files (or Python files), once per session and name."""
    if _is_connect(spark):
        key = ("connect", str(spark.session_id), name)
    else:
        key = ("classic", str(spark.sparkContext.applicationId), name)
    with _ship_lock:
        if key in _registered:
            return
        if key[0] == "connect":
            spark.addArtifacts(str(path), **({"pyfile": True} if pyfile else {"file": True}))
        else:
            sc = spark.sparkContext
            listed = {uri.rstrip("/").rsplit("/", 1)[-1] for uri in sc.listFiles}
            if name in listed:
                pass  # someone else (the user, or this module before a reload) added it
            elif pyfile:
                sc.addPyFile(str(path))
            else:
                sc.addFile(str(path))
        _registered.add(key)
    _log.debug("shipped %s to %s session %s", name, key[0], key[1])


def ship_file(spark: Any, path: str | os.PathLike[str], prefix: str) -> ShippedModel:
    """Ship one file (a prebuilt environment archive) as the model is shipped: under a name
    made of ``prefix`` and its sha256 (never ``.tar.gz``, which Spark's fetcher unpacks
    unchecked), for :func:`fetch_file` to verify on the executors."""
    source = Path(path)
    try:
        sha256 = sha256_file(source)
    except OSError as exc:
        raise ShippingError(f"cannot read {os.fspath(path)!r}: {exc}") from exc
    shipped = ShippedModel(
        f"{prefix}{sha256[:_HASH_CHARS]}{ARCHIVE_SUFFIX}", sha256, source.stat().st_size
    )
    staged = _archive_root() / shipped.archive_name
    if not staged.is_file():
        tmp = staged.with_name(f".{staged.name}.tmp")
        try:
            os.link(source, tmp)
        except OSError:  # another file system
            shutil.copyfile(source, tmp)
        os.replace(tmp, staged)
    _register(spark, staged, shipped.archive_name)
    return shipped


_PACKAGES_SHIPPED = ("yaml",)


def _zip_package(package_dir: Path, zf: Any) -> None:
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            rel = path.relative_to(package_dir.parent).as_posix()
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())


_package_zips: list[Path] = []


def package_zips() -> list[Path]:
    """spark_pyfunc as a zip, and the pure-Python packages its worker side needs that
    executors may lack (PyYAML, which loads without its C extension) in another,
    so that a restored environment's host can be given the first alone. Built once per
    process, content-named."""
    with _build_lock:
        if _package_zips and all(p.is_file() for p in _package_zips):
            return list(_package_zips)
        import importlib

        own = Path(__file__).resolve().parent
        groups = [("spark_pyfunc", [own])]
        deps = []
        for name in _PACKAGES_SHIPPED:
            with contextlib.suppress(ImportError):
                module = importlib.import_module(name)
                if module.__file__:
                    deps.append(Path(module.__file__).resolve().parent)
        groups.append(("spark_pyfunc_deps", deps))
        zips = []
        for stem, dirs in groups:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as zf:
                for d in dirs:
                    _zip_package(d, zf)
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()[:16]
            path = _archive_root() / f"{stem}-{digest}.zip"
            if not path.is_file():
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            zips.append(path)
        _package_zips[:] = zips
        return zips


def ship_package(spark: Any) -> list[str]:
    """Ship spark_pyfunc (and PyYAML) to the executors' Python path, once per
    session: for executors where it is not installed. Returns the zips' names."""
    names = []
    for path in package_zips():
        _register(spark, path, path.name, pyfile=True)
        names.append(path.name)
    return names


# --------------------------------------------------------------------------- executor side

_memo_lock = threading.Lock()
# (SparkFiles root, sha256) -> unpacked model directory, so later calls skip the file lock
_materialized: dict[tuple[str, str], Path] = {}


def _spark_files_root(archive_name: str) -> Path:
    from pyspark import SparkFiles

    # On executors SparkFiles' root is "." (the executor's working directory).
    return Path(SparkFiles.get(archive_name)).absolute().parent


def materialize(shipped: ShippedModel, root: str | os.PathLike[str] | None = None) -> Path:
    """Return the unpacked model directory for ``shipped``, unpacking it once per executor.

    ``root`` is the directory holding the shipped archive; by default SparkFiles' root.
    Concurrent Python workers serialise on a file lock next to the archive; the directory
    appears only by an atomic rename, so its existence means it is complete.
    """
    base = Path(root).absolute() if root is not None else _spark_files_root(shipped.archive_name)
    memo_key = (str(base), shipped.sha256)
    with _memo_lock:
        known = _materialized.get(memo_key)
    if known is not None and known.is_dir():
        return known

    target = base / shipped.stem
    if not target.is_dir():
        with file_lock(base / f"{shipped.stem}.lock"):
            if not target.is_dir():
                _unpack(shipped, base, target)
    with _memo_lock:
        _materialized[memo_key] = target
    return target


_fetched: dict[tuple[str, str], Path] = {}


def verify_archive(archive: Path, shipped: ShippedModel, where: str) -> None:
    """Refuse ``archive`` unless it is there and has the sha256 the driver computed for
    ``shipped``: no shipped byte is unpacked or used unchecked, whatever route brought it.

    Raises:
        ShippingError: the archive is missing from ``where``, or its sha256 differs.
    """
    if not archive.is_file():
        raise ShippingError(f"{shipped.archive_name!r} is missing from {where}")
    actual = sha256_file(archive)
    if actual != shipped.sha256:
        raise ShippingError(
            f"{str(archive)!r} is corrupt: sha256 {actual} does not match the shipped "
            f"sha256 {shipped.sha256}"
        )


def fetch_file(shipped: ShippedModel) -> Path:
    """The shipped file (see :func:`ship_file`) in SparkFiles' root, its sha256 verified
    once per process."""
    archive = _spark_files_root(shipped.archive_name) / shipped.archive_name
    memo_key = (str(archive), shipped.sha256)
    with _memo_lock:
        known = _fetched.get(memo_key)
    if known is not None:
        return known
    verify_archive(archive, shipped, "SparkFiles' root")
    with _memo_lock:
        _fetched[memo_key] = archive
    return archive


def _unpack(shipped: ShippedModel, base: Path, target: Path) -> None:
    """Verify the archive and unpack it into ``target``; the caller holds the file lock."""
    started = time.perf_counter()
    archive = base / shipped.archive_name
    verify_archive(
        archive,
        shipped,
        f"SparkFiles' root {str(base)!r} (was the model shipped with ship_model in this Spark "
        "session?)",
    )
    # Leftovers of a worker killed mid-unpack; nobody else unpacks this model while we hold
    # the lock.
    for stale in base.glob(f".{shipped.stem}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{shipped.stem}-", dir=base))
    except OSError as exc:
        raise ShippingError(f"cannot unpack model archive {str(archive)!r}: {exc}") from exc
    try:
        safe_extract(archive, staging)
        staging.chmod(0o755)  # mkdtemp's 0o700 would differ from every other directory
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ShippingError(
            f"cannot move unpacked model archive {str(archive)!r} into {str(target)!r}: {exc}"
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _log.debug("unpacked %s into %s in %.3f s", archive, target, time.perf_counter() - started)


def _refusal(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why ``member`` must not be extracted into ``dest``, or None when it is safe."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute():
        return "it is an absolute path"
    if ".." in path.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "it contains a '..' component"
    if member.issym():
        return f"it is a symlink (to {member.linkname!r})"
    if member.islnk():
        return f"it is a hard link (to {member.linkname!r})"
    if member.isdev():
        return "it is a device or fifo"
    if not (member.isreg() or member.isdir()):
        return f"it is of unsupported tar type {member.type!r}"
    if not _inside(os.path.realpath(dest / name), str(dest)):
        return f"it would land outside {str(dest)!r}"
    return None


def safe_extract(archive_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract a tar into ``dest`` after checking every member; nothing is written if any fails.

    Only regular files and directories with relative, ``..``-free names are accepted. Python's
    ``data`` filter runs as well where available, as a second line of defence.
    """
    archive = os.fspath(archive_path)
    dest_path = Path(os.path.realpath(dest))
    dest_path.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _refusal(member, dest_path)
                if reason is not None:
                    raise UnsafePathError(
                        f"refusing to extract member {member.name!r} of archive {archive!r}: "
                        f"{reason}"
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest_path, members=members, filter="data")
            else:
                tar.extractall(dest_path, members=members)
    except (tarfile.TarError, OSError) as exc:
        raise ShippingError(f"cannot extract model archive {archive!r}: {exc}") from exc
