"""The driver's own copy of a broadcast model's pieces: kept, but offered only when no executor
offers them.

TorrentBroadcast fetches each 4 MiB piece from a random holder, the driver included, so the
driver would serve a share of every executor's copy (about 2.1 copies at N=4). Once the seed
executor holds every piece, the driver tells the block manager master it no longer holds its
pieces (it keeps them, and would serve anyone who asked): later executors fetch from each
other, and the driver has served one copy.

Executors come and go (a lost machine, dynamic allocation releasing idle executors). If every
executor holding a piece is gone, nobody could fetch it again and every task of the UDF would
fail with "Failed to get broadcast_N_pieceM". So a daemon thread on the driver watches the
pieces' holders: when a piece has none, the driver offers its pieces again; once executors hold
every piece again, it withdraws them. Spark's BlockManager and BlockManagerMaster are reached
through py4j; where their internals differ the driver simply keeps offering its pieces (it
serves more, nothing breaks).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from py4j.protocol import Py4JError

__all__ = ["withdraw_and_watch"]

_log = logging.getLogger(__name__)

#: Seconds between two looks at the pieces' holders. Executors lost are noticed within
#: Spark's own executor-loss detection plus this.
WATCH_INTERVAL = 1.0
#: Pieces looked at per look besides every chunk's first (a lost executor takes all its
#: pieces at once, so the first pieces tell; the window finds the rarer partial losses).
_WINDOW = 32


@dataclass
class _Pieces:
    """One delivery's pieces on this driver, and whether the master lists the driver."""

    name: str
    ids: list[Any]  # BroadcastBlockId of every piece, chunk by chunk
    firsts: list[int]  # index in ids of each chunk's first piece
    offered: bool = True
    cursor: int = 0
    covered: set[int] = field(default_factory=set)


def _driver_block_manager(sc: Any) -> Any:
    """The driver's BlockManager, read through java.lang.reflect: py4j's own lookup of
    SparkEnv's methods loads classes the pip PySpark lacks (protobuf) and kills the gateway
    thread, so neither ``sc.env()`` nor ``SparkEnv.get()`` can be called through it."""
    forname = sc._jvm.java.lang.Class.forName
    module_class = forname("org.apache.spark.SparkEnv$")
    module = module_class.getDeclaredField("MODULE$").get(None)
    env_field = module_class.getDeclaredField("env")
    env_field.setAccessible(True)
    manager_field = forname("org.apache.spark.SparkEnv").getDeclaredField("blockManager")
    manager_field.setAccessible(True)
    return manager_field.get(env_field.get(module))


class _Watch:
    """The driver's pieces of every seeded delivery of one SparkContext, and their watcher."""

    def __init__(self, sc: Any) -> None:
        self.sc = sc
        self.manager = _driver_block_manager(sc)
        self.master = self.manager.master()
        self.me = self.manager.blockManagerId()
        self.none = sc._jvm.org.apache.spark.storage.StorageLevel.NONE()
        self.deliveries: list[_Pieces] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._run, name="spark_pyfunc-broadcast-pieces", daemon=True
        )
        self._extra: tuple[Any, ...] | None = None

    def _tell(self, block_id: Any, offered: bool) -> None:
        """Tell the master whether the driver holds ``block_id`` (its data stays either way)."""
        if offered:
            status = self.manager.getStatus(block_id).get()
            level, mem, disk = status.storageLevel(), status.memSize(), status.diskSize()
        else:
            level, mem, disk = self.none, 0, 0
        extra = self._extra
        if extra is None:  # Spark 4 added a sixth argument (a checksum), with a default
            try:
                self.master.updateBlockInfo(self.me, block_id, level, mem, disk)
                self._extra = ()
                return
            except Py4JError:
                self._extra = (getattr(self.master, "updateBlockInfo$default$6")(),)
                extra = self._extra
        self.master.updateBlockInfo(self.me, block_id, level, mem, disk, *extra)

    def offer(self, pieces: _Pieces, offered: bool) -> None:
        for block_id in pieces.ids:
            self._tell(block_id, offered)
        pieces.offered = offered
        pieces.covered.clear()

    def look(self, pieces: _Pieces) -> None:
        """One look at ``pieces``' holders; offer or withdraw the driver's copy as needed."""
        window = [(pieces.cursor + i) % len(pieces.ids) for i in range(_WINDOW)]
        pieces.cursor = (pieces.cursor + _WINDOW) % len(pieces.ids)
        wanted = sorted(set(pieces.firsts) | set(window))
        array = self.sc._gateway.new_array(
            self.sc._jvm.org.apache.spark.storage.BlockId, len(wanted)
        )
        for i, index in enumerate(wanted):
            array[i] = pieces.ids[index]
        holders = self.master.getLocations(array)
        counts = {index: holders.apply(i).size() for i, index in enumerate(wanted)}
        if not pieces.offered:
            lost = [index for index, n in counts.items() if n == 0]
            if lost:
                self.offer(pieces, True)
                _log.warning(
                    "no executor holds piece %d of %s any more (executors lost): the driver "
                    "offers its copy again until executors hold every piece",
                    lost[0],
                    pieces.name,
                )
            return
        # Offered: the driver is one holder; a piece is covered when an executor is another.
        pieces.covered.update(index for index, n in counts.items() if n > 1)
        if len(pieces.covered) == len(pieces.ids):
            self.offer(pieces, False)
            _log.info(
                "executors hold every piece of %s again: the driver withdrew its copy", pieces.name
            )

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            if self.sc._jsc is None:
                return
            with self.lock:
                try:
                    for pieces in self.deliveries:
                        self.look(pieces)
                except Exception as exc:  # noqa: BLE001 - the context stopped, or py4j gone
                    if self.sc._jsc is not None:
                        _log.info("watching the broadcast pieces stopped: %s", exc)
                    return


_watches: dict[str, _Watch] = {}
_watches_lock = threading.Lock()


def withdraw_and_watch(sc: Any, name: str, chunks: tuple[Any, ...]) -> int:
    """Withdraw the driver's offer of ``chunks``' pieces (an executor holds them all: the
    seed), and watch that some executor keeps holding each; returns the pieces withdrawn,
    0 (and a log line) where Spark's internals differ and the driver keeps offering them."""
    try:
        with _watches_lock:
            watch = _watches.get(str(sc.applicationId))
            if watch is None or not watch.thread.is_alive():  # none yet, or it stopped
                watch = _Watch(sc)
                _watches[str(sc.applicationId)] = watch
                watch.thread.start()
        block_id = sc._jvm.org.apache.spark.storage.BroadcastBlockId
        ids, firsts = [], []
        for chunk in chunks:
            bid = chunk._jbroadcast.id()
            firsts.append(len(ids))
            piece = 0
            while watch.manager.getStatus(block_id(bid, f"piece{piece}")).isDefined():
                ids.append(block_id(bid, f"piece{piece}"))
                piece += 1
        if not ids:
            return 0
        pieces = _Pieces(name, ids, firsts)
        with watch.lock:
            watch.offer(pieces, False)
            watch.deliveries.append(pieces)
        return len(ids)
    except Exception as exc:  # noqa: BLE001 - py4j's errors; the driver then serves on
        _log.info(
            "the driver keeps offering its broadcast pieces (Spark's internals differ): %s", exc
        )
        return 0
