"""One unpacked copy of each model per machine: a content-addressed cache shared by every
executor and every application of the user on that machine.

Layout under the cache directory (``spark.pyfunc.cache.dir``)::

    entries/<key>/model/          the unpacked model, handed to the loader
    entries/<key>/MANIFEST.json   every file's size and sha256, checked before first use
    entries/<key>/last_used       its mtime orders entries for eviction (LRU)
    locks/<key>.use               shared flock held by every process using the entry
    locks/<key>.fill              exclusive flock held by the one process filling it
    staging/                      entries being filled; renamed into entries/ when complete
    cache.lock                    exclusive flock held by an eviction pass
    events.log                    one line per fill, hit, corrupt entry and eviction

``<key>`` is a sha256 the driver computed (the archive's, or the manifest's for a direct
read), so identical content is stored once whatever its path. An entry appears only by an
atomic rename of a staged, verified directory, so ``entries/<key>`` existing means complete.
A process that uses an entry keeps a shared lock on ``locks/<key>.use`` until it exits; an
eviction takes that lock exclusively and without waiting, so it never removes an entry that
a live worker (or the host it started) uses. flock locks die with their holder, so a killed
process leaves neither a stale lock nor (staging being swept) a usable half entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spark_pyfunc._faultpoints import hold
from spark_pyfunc._locks import file_lock
from spark_pyfunc._paths import sha256_file
from spark_pyfunc.errors import ShippingError

__all__ = ["ModelCache", "default_cache_dir", "file_manifest", "read_events"]

_log = logging.getLogger(__name__)
_MANIFEST = "MANIFEST.json"

_lock = threading.Lock()
# (cache root, key) -> descriptor holding the shared use lock, for this process's lifetime
_leases: dict[tuple[str, str], int] = {}
# (cache root, key) -> verified model directory (this process checked it already)
_verified: dict[tuple[str, str], Path] = {}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spark_pyfunc/models``, else ``~/.cache/spark_pyfunc/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spark_pyfunc" / "models"


def file_manifest(root: Path) -> dict[str, list]:
    """Every regular file below ``root``: relative posix path -> [size, sha256]."""
    found: dict[str, list] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(root).as_posix()] = [path.stat().st_size, sha256_file(path)]
    return found


def read_events(root: str | os.PathLike[str]) -> list[dict]:
    """The cache's event log: one dict per line (event, key, pid, bytes, time, detail)."""
    path = Path(root) / "events.log"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ModelCache:
    """The machine's cache at ``root`` (created 0700), holding at most ``max_bytes`` of
    entries not in use. Safe to use from many processes and threads at once.

    Example:
        >>> cache = ModelCache("/tmp/models", 10 << 30)  # doctest: +SKIP
        >>> model_dir = cache.get(sha256, lambda staging: unpack_into(staging))  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str] | None, max_bytes: int) -> None:
        # $VARIABLES are the executor's: a per-machine path on a shared filesystem.
        self.root = Path(os.path.expandvars(root)).expanduser() if root else default_cache_dir()
        self.max_bytes = max_bytes
        try:
            for sub in ("entries", "locks", "staging"):
                (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            self.root.chmod(0o700)
        except OSError as exc:
            raise ShippingError(f"cannot create the model cache {str(self.root)!r}: {exc}") from exc

    # ------------------------------------------------------------------ public

    def get(
        self,
        key: str,
        fill: Callable[[Path], None],
        expected: dict[str, list] | None = None,
        kind: str = "",
    ) -> Path:
        """The model directory of entry ``key``, filled by ``fill(staging_model_dir)`` if the
        machine has no complete, intact copy; this process then holds it in use until exit.

        Args:
            key: The sha256 the driver computed for this content.
            fill: Writes the model's files into the directory it is given (it may raise; the
                staging directory is removed then).
            expected: The driver's manifest (path -> [size, sha256]) when it has one: the
                filled files must match it exactly. Otherwise the manifest is computed from
                what ``fill`` wrote (which must have verified its source).
            kind: How the entry is filled (``files``, ``broadcast``, ``direct``), for the log.

        Returns:
            ``<root>/entries/<key>/model``.

        Raises:
            ShippingError: the entry cannot be filled, or what was filled does not match.
        """
        memo = (str(self.root), key)
        with _lock:
            known = _verified.get(memo)
        if known is not None and known.is_dir():
            return known
        self._lease(key)
        entry = self.root / "entries" / key
        for _attempt in range(2):
            filled = False
            if not entry.is_dir():
                with file_lock(self.root / "locks" / f"{key}.fill"):
                    if not entry.is_dir():
                        self._fill(key, fill, expected, kind)
                        filled = True  # checked while filling
            bad = None if filled else self._check(entry, expected)
            if bad is None:
                break
            self._event("corrupt", key, detail=bad)
            _log.warning("model cache entry %s is corrupt (%s): fetching it again", entry, bad)
            with file_lock(self.root / "locks" / f"{key}.fill"):
                if entry.is_dir() and self._check(entry, expected) is not None:
                    self._discard(entry)
        else:
            raise ShippingError(f"model cache entry {str(entry)!r} is still corrupt after refill")
        with contextlib.suppress(OSError):
            (entry / "last_used").touch()
        self._event("hit", key)
        model = entry / "model"
        with _lock:
            _verified[memo] = model
        return model

    def entries(self) -> list[tuple[str, int, float]]:
        """(key, bytes, last used) of every complete entry, least recently used first."""
        found = []
        for entry in (self.root / "entries").iterdir():
            try:
                manifest = json.loads((entry / _MANIFEST).read_text())
                used = (entry / "last_used").stat().st_mtime
            except (OSError, ValueError):
                continue
            found.append((entry.name, sum(size for size, _ in manifest.values()), used))
        return sorted(found, key=lambda item: item[2])

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries no process uses until the cache holds at most
        ``max_bytes``; never ``keep``. Returns the keys removed."""
        removed: list[str] = []
        with file_lock(self.root / "cache.lock"):
            listing = self.entries()
            total = sum(size for _, size, _ in listing)
            for key, size, _ in listing:
                if total <= self.max_bytes:
                    break
                if key == keep:
                    continue
                fd = os.open(self.root / "locks" / f"{key}.use", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live process uses it
                    self._discard(self.root / "entries" / key)
                finally:
                    os.close(fd)
                total -= size
                removed.append(key)
                self._event("evict", key, size)
            if total > self.max_bytes:
                _log.warning(
                    "model cache %s holds %d bytes, over its cap of %d: the rest is in use",
                    self.root,
                    total,
                    self.max_bytes,
                )
        return removed

    # ------------------------------------------------------------------ internals

    def _lease(self, key: str) -> None:
        """Hold entry ``key`` in use (shared lock) for the rest of this process's life.

        Waits while an eviction holds it exclusively (that is brief: a rename and rmtree).
        """
        memo = (str(self.root), key)
        with _lock:
            if memo in _leases:
                return
            fd = os.open(
                self.root / "locks" / f"{key}.use", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(fd, fcntl.LOCK_SH)
            _leases[memo] = fd

    def _fill(
        self, key: str, fill: Callable[[Path], None], expected: dict | None, kind: str
    ) -> None:
        """Fill a staging directory, check it, and rename it into place (fill lock held)."""
        for stale in (self.root / "staging").glob(f"{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a process killed mid-fill
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.root / "staging"))
        started = time.perf_counter()
        try:
            model = staging / "model"
            model.mkdir()
            fill(model)
            hold("cache.filling")  # a test's kill lands here: files staged, entry not renamed in
            manifest = file_manifest(model)
            if expected is not None and manifest != expected:
                raise ShippingError(
                    f"model files fetched for {key[:16]} do not match the driver's manifest: "
                    f"{_difference(expected, manifest)}"
                )
            (staging / _MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            (staging / "last_used").touch()
            staging.chmod(0o700)
            os.rename(staging, self.root / "entries" / key)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        size = sum(size for size, _ in manifest.values())
        self._event("fill", key, size, detail=kind)
        _log.info(
            "model cache: filled %s (%d bytes, %s) in %.3f s",
            key[:16],
            size,
            kind or "?",
            time.perf_counter() - started,
        )
        self.evict(keep=key)

    def _check(self, entry: Path, expected: dict | None) -> str | None:
        """Why ``entry`` cannot be used (None: it is intact): every file's size and sha256
        against its manifest, and the manifest against the driver's when there is one."""
        try:
            manifest = json.loads((entry / _MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable manifest: {exc}"
        if expected is not None and manifest != expected:
            return f"manifest differs from the driver's: {_difference(expected, manifest)}"
        actual = file_manifest(entry / "model")
        if actual != manifest:
            return _difference(manifest, actual)
        return None

    def _discard(self, entry: Path) -> None:
        """Take ``entry`` out of use atomically (rename), then delete it."""
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.root / "staging"))
        try:
            os.rename(entry, trash / "entry")
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)

    def _event(self, event: str, key: str, size: int = 0, detail: str = "") -> None:
        line = json.dumps(
            {
                "event": event,
                "key": key,
                "pid": os.getpid(),
                "bytes": size,
                "time": time.time(),
                "detail": detail,
            }
        )
        # One short O_APPEND write per line: lines from concurrent processes do not interleave.
        with contextlib.suppress(OSError):
            fd = os.open(self.root / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)


def _difference(expected: dict, actual: dict) -> str:
    """The first differing file between two manifests, in words."""
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            return f"{name!r} is missing"
        if name not in expected:
            return f"{name!r} is not in the manifest"
        if expected[name] != actual[name]:
            return f"{name!r} has size/sha256 {actual[name]}, expected {expected[name]}"
    return "no difference"
