"""The machine-wide model cache without Spark: fills once, verifies, evicts only idle entries.

Other processes are real processes (``python -c``), since the cache's guarantees are about
processes: flock leases, fill locks and atomic renames.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spark_pyfunc import _cache
from spark_pyfunc._cache import ModelCache, file_manifest, read_events
from spark_pyfunc.errors import ShippingError

WORKTREE = str(Path(__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test is a fresh 'process' as far as the cache's in-process memos go."""
    yield
    for fd in _cache._leases.values():
        os.close(fd)
    _cache._leases.clear()
    _cache._verified.clear()


def _writer(content: bytes, calls: list | None = None):
    def fill(dest: Path) -> None:
        if calls is not None:
            calls.append(dest)
        (dest / "sub").mkdir()
        (dest / "sub" / "weights.bin").write_bytes(content)
        (dest / "MLmodel").write_text("flavors: {}\n")

    return fill


def _key(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _events(root: Path, event: str) -> list[dict]:
    return [e for e in read_events(root) if e["event"] == event]


def _run(code: str, *, wait: bool = True, **kwargs):
    env = {**os.environ, "PYTHONPATH": WORKTREE}
    args = [sys.executable, "-c", textwrap.dedent(code)]
    if wait:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, **kwargs)
    return subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_fills_once_and_serves_the_same_directory(tmp_path):
    calls: list = []
    cache = ModelCache(tmp_path / "c", 1 << 30)
    first = cache.get(_key(b"a"), _writer(b"a" * 100, calls), kind="test")
    _cache._verified.clear()  # a second process: it verifies, and does not fill
    second = cache.get(_key(b"a"), _writer(b"a" * 100, calls))
    assert first == second == tmp_path / "c" / "entries" / _key(b"a") / "model"
    assert (first / "sub" / "weights.bin").read_bytes() == b"a" * 100
    assert len(calls) == 1 and not calls[0].exists(), "filled once, from staging"
    assert [e["detail"] for e in _events(tmp_path / "c", "fill")] == ["test"]
    assert len(_events(tmp_path / "c", "hit")) == 2
    assert list((tmp_path / "c" / "staging").iterdir()) == []
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"


def test_a_failed_fill_leaves_no_entry(tmp_path):
    cache = ModelCache(tmp_path, 1 << 30)

    def broken(dest: Path) -> None:
        (dest / "half.bin").write_bytes(b"x" * 10)
        raise ShippingError("network went away")

    with pytest.raises(ShippingError, match="network went away"):
        cache.get(_key(b"b"), broken)
    assert list((tmp_path / "entries").iterdir()) == []
    assert list((tmp_path / "staging").iterdir()) == []
    assert cache.get(_key(b"b"), _writer(b"b")).is_dir()


def test_the_drivers_manifest_is_enforced(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _writer(b"good")(source)
    expected = file_manifest(source)
    cache = ModelCache(tmp_path / "c", 1 << 30)
    with pytest.raises(ShippingError, match="weights.bin"):
        cache.get(_key(b"m"), _writer(b"evil"), expected=expected)
    assert cache.get(_key(b"m"), _writer(b"good"), expected=expected).is_dir()


def test_a_flipped_byte_is_detected_and_the_entry_refilled(tmp_path):
    calls: list = []
    cache = ModelCache(tmp_path, 1 << 30)
    model = cache.get(_key(b"c"), _writer(b"c" * 1000, calls))
    weights = model / "sub" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[500] ^= 0xFF
    weights.write_bytes(bytes(data))
    _cache._verified.clear()  # the next process to take it
    again = cache.get(_key(b"c"), _writer(b"c" * 1000, calls))
    assert (again / "sub" / "weights.bin").read_bytes() == b"c" * 1000
    assert len(calls) == 2
    corrupt = _events(tmp_path, "corrupt")
    assert len(corrupt) == 1 and "weights.bin" in corrupt[0]["detail"]


def test_racing_processes_fill_once(tmp_path):
    code = f"""
        import time
        from pathlib import Path
        from spark_pyfunc._cache import ModelCache
        def fill(dest):
            time.sleep(0.5)  # long enough for the others to be waiting
            (dest / "w.bin").write_bytes(b"z" * 4096)
        print(ModelCache({str(tmp_path)!r}, 1 << 30).get("{_key(b"z")}", fill))
    """
    procs = [_run(code, wait=False) for _ in range(4)]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert [p.returncode for p in procs] == [0] * 4
    assert outs == {str(tmp_path / "entries" / _key(b"z") / "model")}
    assert len(_events(tmp_path, "fill")) == 1
    assert len(_events(tmp_path, "hit")) == 4


def test_eviction_is_lru_and_spares_entries_in_use(tmp_path):
    root = tmp_path / "c"
    cache = ModelCache(root, 1 << 30)
    for name in (b"old", b"used", b"new"):
        cache.get(_key(name), _writer(name * 100))
        os.utime(root / "entries" / _key(name) / "last_used", (1, 1))  # oldest so far
    os.utime(root / "entries" / _key(b"new") / "last_used", None)
    # This process holds all three; another process takes "used" and keeps it.
    for fd in _cache._leases.values():
        os.close(fd)
    _cache._leases.clear()
    holder = _run(
        f"""
        import sys
        from spark_pyfunc._cache import ModelCache
        ModelCache({str(root)!r}, 1 << 30).get("{_key(b"used")}", None)
        print("holding", flush=True)
        sys.stdin.read()
        """,
        wait=False,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        small = ModelCache(root, 1)
        removed = small.evict(keep=_key(b"new"))
        assert removed == [_key(b"old")]
        left = {key for key, _, _ in small.entries()}
        assert left == {_key(b"used"), _key(b"new")}
    finally:
        holder.communicate("", timeout=30)
    assert ModelCache(root, 1).evict(keep=_key(b"new")) == [_key(b"used")]
    assert [e["key"] for e in _events(root, "evict")] == [_key(b"old"), _key(b"used")]


def test_a_new_entry_evicts_idle_ones_over_the_cap(tmp_path):
    cache = ModelCache(tmp_path, 250)
    cache.get(_key(b"x"), _writer(b"x" * 200))
    cache.get(_key(b"w"), _writer(b"w" * 10))
    os.close(_cache._leases.pop((str(tmp_path), _key(b"x"))))  # x is no longer used
    cache.get(_key(b"y"), _writer(b"y" * 200))
    # x is idle and evicted; w is in use (and small), y just arrived.
    assert {key for key, _, _ in cache.entries()} == {_key(b"w"), _key(b"y")}


def test_an_unwritable_cache_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ShippingError, match="file"):
        ModelCache(blocker / "cache", 1)
