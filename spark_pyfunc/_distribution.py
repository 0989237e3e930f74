"""How the model gets from the driver to every executor machine, and into its cache.

Routes (``spark.pyfunc.shipping``; docs/distribution.md has the design and the figures):

* ``files``: the archive is added with ``addFile`` (``addArtifacts`` on Spark Connect) and
  every executor fetches it from the driver: N copies of driver egress for N executors.
* ``broadcast``: the archive is cut into chunks, each one Spark broadcast of a ``bytes``.
  Spark's TorrentBroadcast moves them in 4 MiB blocks that executors fetch from each other,
  so the driver serves about one copy whatever the executor count. The executor's JVM writes
  each chunk to a local file (PySpark's broadcast file, a pickle of the bytes); a Python
  worker copies the raw bytes out of that file into the archive without unpickling them,
  verifies the archive's sha256 and unpacks it, once per machine.

* ``direct``: nothing crosses from the driver but a manifest (_direct.py): each executor
  machine reads the model's files from where they already are (an object store, a
  distributed file system, a mount every node sees) and checks each against it.

Every way the unpacked model lands in the machine-wide cache (_cache.py), keyed by the
archive's sha256, so a second executor or application on the machine fetches nothing.

``auto`` picks ``files`` on Spark Connect (no broadcasts there) and in local mode (the driver
is the executor), ``broadcast`` on a classic cluster unless I/O encryption is on (encrypted
broadcasts reach Python workers only through a socket that unpickles each chunk), and
``direct`` wherever executors can read the model themselves, outside local mode. A one-task
probe checks that an executor can; if not, ``auto`` falls back to ``files`` with one warning,
while an explicit ``direct`` fails (the user asked the driver not to serve the model).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_pyfunc import _config
from spark_pyfunc._cache import ModelCache
from spark_pyfunc._direct import (
    DirectSource,
    StoreUnreachable,
    build_source,
    direct_location,
    probe,
    read_into,
)
from spark_pyfunc._shipping import (
    ShippedModel,
    _is_connect,
    _register,
    _spark_files_root,
    build_archive,
    safe_extract,
    verify_archive,
)
from spark_pyfunc.errors import ShippingError

__all__ = ["Delivery", "choose_route", "deliver", "materialize"]

_log = logging.getLogger(__name__)
_COPY = 1 << 20


@dataclass(frozen=True)
class Delivery(ShippedModel):
    """A shipped model and how to get it on an executor (small and picklable: a broadcast
    chunk pickles as its id)."""

    route: str = "files"
    chunks: tuple[Any, ...] = ()
    chunk_sizes: tuple[int, ...] = ()
    cache_dir: str | None = None
    cache_max_bytes: int = _config.CACHE_MAX_BYTES.default
    direct: DirectSource | None = None


# --------------------------------------------------------------------------- driver


def _conf(spark: Any, key: str) -> str | None:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - Connect raises its own types for unknown keys
        return None
    return None if value is None else str(value)


def choose_route(
    spark: Any, wanted: str, location: str | None = None, where: str = ""
) -> tuple[str, str]:
    """The route for this session and why, given the setting's value ``wanted``, and
    ``location``, where executors could read the model themselves (``where`` says why).

    Raises:
        ShippingError: ``broadcast`` was asked for where it cannot work (Spark Connect), or
            ``direct`` for a model executors cannot read themselves.
    """
    connect = _is_connect(spark)
    if wanted == "broadcast" and connect:
        raise ShippingError(
            "spark.pyfunc.shipping=broadcast needs a classic session: Spark Connect has no "
            "broadcast variables (use files or auto)"
        )
    if wanted == "direct" and location is None:
        raise ShippingError(
            f"spark.pyfunc.shipping=direct: executors cannot read this model themselves "
            f"({where}); direct takes s3://, s3a://, gs://, abfss://, hdfs://, dbfs:/, "
            "runs:/ and models:/ stored there, or a local path on a shared mount"
        )
    if wanted == "direct":
        return wanted, f"asked for by spark.pyfunc.shipping: {where}"
    if wanted != "auto":
        return wanted, "asked for by spark.pyfunc.shipping"
    master = "" if connect else spark.sparkContext.master or ""
    if master.startswith("local") and not master.startswith("local-cluster"):
        return "files", "local mode: the driver is the only executor"
    if location is not None:
        return "direct", where
    if connect:
        return "files", "Spark Connect ships with addArtifacts"
    if (_conf(spark, "spark.io.encryption.enabled") or "").lower() == "true":
        return "files", "I/O encryption makes Python workers unpickle broadcasts"
    return "broadcast", "classic cluster: executors fetch from each other"


_lock = threading.Lock()
# (application id, sha256, chunk bytes) -> (chunk broadcasts, their sizes)
_broadcasts: dict[tuple[str, str, int], tuple[tuple[Any, ...], tuple[int, ...]]] = {}


def _broadcast_chunks(
    spark: Any, archive: Path, sha256: str, chunk_bytes: int
) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """Broadcast the archive as chunks of ``chunk_bytes``, once per session and content.

    The driver holds one chunk in memory at a time (PySpark pickles it to a file at once).
    """
    sc = spark.sparkContext
    key = (str(sc.applicationId), sha256, chunk_bytes)
    with _lock:
        known = _broadcasts.get(key)
        if known is not None:
            return known
        chunks, sizes = [], []
        with open(archive, "rb") as handle:
            while piece := handle.read(chunk_bytes):
                chunks.append(sc.broadcast(piece))
                sizes.append(len(piece))
                del piece
        _broadcasts[key] = (tuple(chunks), tuple(sizes))
        return _broadcasts[key]


def deliver(
    spark: Any,
    model_dir: str | os.PathLike[str],
    setting: Any = None,
    model_uri: str | os.PathLike[str] | None = None,
) -> Delivery:
    """Ship ``model_dir`` to the executors by the route the session's settings pick.

    Args:
        spark: The session (classic or Spark Connect).
        model_dir: The model directory on the driver.
        setting: A callable reading a :class:`_config.Setting` from the session (``_udf``'s
            ``_setting``); None reads the defaults.
        model_uri: The URI the user passed (``model_dir`` is its resolved copy): where
            executors may read the model themselves (the ``direct`` route).

    Returns:
        The :class:`Delivery` the workers' :func:`materialize` takes.

    Raises:
        ShippingError: the model cannot be packed, or the route asked for cannot work here.

    Example:
        >>> delivery = deliver(spark, "/models/forest")  # doctest: +SKIP
    """

    def read(item: _config.Setting) -> Any:
        return item.default if setting is None else setting(spark, item)

    def common() -> dict[str, Any]:
        return {
            "cache_dir": read(_config.CACHE_DIR),
            "cache_max_bytes": read(_config.CACHE_MAX_BYTES),
        }

    wanted = read(_config.SHIPPING)
    location, where = None, ""
    if wanted in ("auto", "direct"):  # a pinned route needs no registry look-up
        location, where = direct_location(model_uri, declared=wanted == "direct")
    route, why = choose_route(spark, wanted, location, where)
    if route == "direct":
        assert location is not None
        direct = _deliver_direct(
            spark, build_source(location, model_dir), why, wanted == "direct", **common()
        )
        if isinstance(direct, Delivery):
            return direct
        route, why = "files", f"fallback from direct: {direct}"  # logged below, at WARNING
    shipped, archive = build_archive(model_dir)
    chunks: tuple[Any, ...] = ()
    sizes: tuple[int, ...] = ()
    if route == "files":
        _register(spark, archive, shipped.archive_name)
    else:
        chunk_bytes = min(read(_config.SHIPPING_CHUNK_BYTES), (1 << 31) - (1 << 20))
        chunks, sizes = _broadcast_chunks(spark, archive, shipped.sha256, chunk_bytes)
    _log.log(
        logging.WARNING if why.startswith("fallback") else logging.INFO,
        "spark_pyfunc shipping: %s route for %s (%d bytes, %d chunks): %s",
        route,
        shipped.archive_name,
        archive.stat().st_size,
        len(chunks),
        why,
    )
    delivery = Delivery(
        archive_name=shipped.archive_name,
        sha256=shipped.sha256,
        model_size=shipped.model_size,
        route=route,
        chunks=chunks,
        chunk_sizes=sizes,
        **common(),
    )
    if chunks:
        _seed(spark, delivery)
    return delivery


# (session, manifest key) -> None (an executor read the model) or why it could not
_probed: dict[tuple[str, str], str | None] = {}


def _deliver_direct(
    spark: Any, source: DirectSource, why: str, explicit: bool, **cache: Any
) -> Delivery | str:
    """The ``direct`` delivery of ``source`` once a one-task probe has read it on an executor
    (which fills that machine's cache); else, under ``auto``, why not, for :func:`deliver`
    to fall back to ``files``.

    Raises:
        ShippingError: the probe found the model in the store but not matching the driver's
            copy, or it cannot be read and ``direct`` was asked for explicitly.
    """
    key = source.key
    delivery = Delivery(
        archive_name=f"direct-{key[:24]}",
        sha256=key,
        model_size=source.size,
        route="direct",
        direct=source,
        **cache,
    )
    memo = (_session_id(spark), key)
    with _lock:
        if memo not in _probed:
            _probed[memo] = _probe(spark, delivery)
        unreachable = _probed[memo]
    if unreachable is None:
        _log.info(
            "spark_pyfunc shipping: direct route for %s (%d files, %d bytes; the driver ships "
            "a manifest of %d bytes): %s",
            source.location,
            len(source.files),
            source.size,
            len(json.dumps(source.files)),
            why,
        )
        return delivery
    if explicit:
        raise ShippingError(
            f"spark.pyfunc.shipping=direct: an executor cannot read model {source.location!r}: "
            f"{unreachable} (auto falls back to files; files or broadcast ship it from the "
            "driver)"
        )
    return f"an executor cannot read {source.location} ({unreachable})"


def _session_id(spark: Any) -> str:
    try:
        return str(spark.sparkContext.applicationId)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return str(getattr(spark, "session_id", id(spark)))


def _probe(spark: Any, delivery: Delivery) -> str | None:
    """Fill one executor machine's cache by a direct read: None if it worked, why not if that
    executor cannot reach the location. Works on classic sessions and Spark Connect alike.

    Raises:
        ShippingError: anything else, such as a file that does not match the manifest.
    """

    def run(batches: Any) -> Any:
        import pandas as pd

        for _ in batches:
            pass
        try:
            assert delivery.direct is not None
            unreachable = probe(delivery.direct)  # even where this machine has it cached
            if unreachable is not None:
                raise StoreUnreachable(unreachable)
            materialize(delivery)
            status, detail = "ok", ""
        except StoreUnreachable as exc:
            status, detail = "unreachable", str(exc)
        except Exception as exc:  # noqa: BLE001 - sent back as it is, raised on the driver
            status, detail = "error", f"{type(exc).__name__}: {exc}"
        yield pd.DataFrame({"status": [status], "detail": [detail]})

    frame = spark.range(0, 1, 1, 1).mapInPandas(run, "status string, detail string")
    [row] = frame.collect()
    if row.status == "error":
        raise ShippingError(f"reading the model directly on an executor failed: {row.detail}")
    return row.detail if row.status == "unreachable" else None


_seeded: set[tuple[str, str]] = set()


def _seed(spark: Any, delivery: Delivery) -> None:
    """Get the chunks to one executor, then withdraw the driver's offer of its own pieces
    (_pieces.py: it keeps them, and offers them again if every executor holding one is lost).

    TorrentBroadcast fetches each 4 MiB piece from a random holder, the driver included, so
    executors arriving one after another would take 1/2, 1/3, ... of a copy from the driver
    (about 2.1 copies at N=4). Once one executor holds every piece the driver stops offering
    its own: every later fetch goes to executors, and the driver has served one copy. The
    seed task also fills that machine's cache, so its first scoring task starts warm.
    If the seed fails, the driver keeps its pieces (it serves more, nothing breaks).
    """
    sc = spark.sparkContext
    key = (str(sc.applicationId), delivery.sha256)
    with _lock:
        if key in _seeded:
            return
        sc.setJobDescription(f"spark_pyfunc: seed {delivery.archive_name}")
        try:
            sc.parallelize([0], 1).map(lambda _: str(materialize(delivery))).collect()
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to serving on
            _log.warning(
                "seeding %s on an executor failed, the driver serves it: %s",
                delivery.archive_name,
                exc,
            )
            return
        finally:
            sc.setJobDescription(None)
        from spark_pyfunc._pieces import withdraw_and_watch

        withdrawn = withdraw_and_watch(sc, delivery.archive_name, delivery.chunks)
        _seeded.add(key)
    _log.info(
        "seeded %s on one executor; the driver withdrew its offer of %d pieces",
        delivery.archive_name,
        withdrawn,
    )


# --------------------------------------------------------------------------- executor


def materialize(shipped: ShippedModel) -> Path:
    """The unpacked model directory for ``shipped`` on this machine, from the machine's cache,
    fetched and unpacked into it first if no intact copy is there.

    Raises:
        ShippingError: the model cannot be fetched, or what arrived fails its sha256.
    """
    if not isinstance(shipped, Delivery):
        from spark_pyfunc._shipping import materialize as unpack_in_spark_files

        return unpack_in_spark_files(shipped)
    cache = ModelCache(shipped.cache_dir, shipped.cache_max_bytes)
    direct = shipped.direct
    if shipped.route == "direct" and direct is not None:
        return cache.get(
            shipped.sha256,
            lambda dest: read_into(direct, dest),
            expected=direct.expected,
            kind="direct",
        )

    def fill(dest: Path) -> None:
        if shipped.route == "files":
            archive = _spark_files_root(shipped.archive_name) / shipped.archive_name
            verify_archive(archive, shipped, "SparkFiles' root")
            safe_extract(archive, dest)
            return
        archive = dest.parent / "archive"
        try:
            _assemble(shipped, archive)
            verify_archive(archive, shipped, "the assembled broadcast chunks")
            safe_extract(archive, dest)
        finally:
            archive.unlink(missing_ok=True)

    return cache.get(shipped.sha256, fill, kind=shipped.route)


def _assemble(shipped: Delivery, out: Path) -> None:
    """Write the broadcast chunks, in order, into the archive ``out``."""
    with open(out, "wb") as sink:
        for index, (chunk, size) in enumerate(
            zip(shipped.chunks, shipped.chunk_sizes, strict=True)
        ):
            path = getattr(chunk, "_path", None)
            if path is not None and _copy_pickled_bytes(Path(path), size, sink):
                continue
            # No file to read (I/O encryption) or an unexpected layout: unpickle this chunk.
            _log.info("broadcast chunk %d of %s unpickled in the worker", index, out.name)
            data = chunk.value
            if len(data) != size:
                raise ShippingError(f"broadcast chunk {index} has {len(data)} bytes, not {size}")
            sink.write(data)
            del data


# Pickle opcodes of a protocol 4/5 pickle of one bytes object (see pickletools).
_PROTO, _FRAME = 0x80, 0x95
_BYTES_HEADERS = {0x43: "<B", 0x42: "<I", 0x8E: "<Q"}  # SHORT_BINBYTES, BINBYTES, BINBYTES8


def _copy_pickled_bytes(path: Path, size: int, sink: Any) -> bool:
    """Copy the payload of ``path``, a pickle of one ``bytes`` of ``size`` bytes, to ``sink``
    in 1 MiB pieces; False (nothing written) if the file is not laid out that way."""
    with open(path, "rb") as source:
        head = source.read(32)
        pos = 0
        while pos < len(head):
            op = head[pos]
            if op == _PROTO:
                pos += 2
            elif op == _FRAME:
                pos += 9
            elif op in _BYTES_HEADERS:
                fmt = _BYTES_HEADERS[op]
                width = struct.calcsize(fmt)
                if pos + 1 + width > len(head):
                    return False
                (length,) = struct.unpack_from(fmt, head, pos + 1)
                if length != size:
                    return False
                source.seek(pos + 1 + width)
                left = size
                while left:
                    piece = source.read(min(_COPY, left))
                    if not piece:
                        raise ShippingError(f"broadcast file {path} ends early")
                    sink.write(piece)
                    left -= len(piece)
                return True
            else:
                return False
    return False
