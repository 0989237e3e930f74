"""Serving one connection of the model host: greet the client, answer its requests.

The host process (_host.py) decides where a connection is served (a thread, a forked child,
a prefork serving process: _prefork.py); this module decides how, the same everywhere:

- :class:`ModelServer` answers a connection's requests one at a time with the loaded model. It
  knows nothing of processes or the socket's lifecycle, so tests drive it over a
  ``socketpair()`` with any object that has ``invoke``.
- :class:`BatchedServing` sends the requests of every connection through one
  :class:`~spark_pyfunc._batching.Batcher` (``--batching``), reading and answering each
  connection on threads of its own.
- :func:`admit` refuses a peer of another uid before anything is read from it.
- :func:`_keep_request_buffers` and :func:`_release_free_memory` tune the allocator for the
  request path: keep a connection's buffers while it lasts, hand them back when it ends;
  :func:`_warm_up_wire` runs the request path once before a host forks.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import socket
import struct
import threading
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from spark_pyfunc._batching import Batcher
from spark_pyfunc._faultpoints import hold
from spark_pyfunc._protocol import Greeting, Reply, Request, error_reply
from spark_pyfunc._wire import (
    PeerClosed,
    decode_arrow_type,
    frame_to_arrow_bytes,
    prediction_to_arrow_bytes,
    recv_message,
    request_to_frame,
    send_message,
    tune_socket,
)

__all__ = [
    "BatchedServing",
    "Invokable",
    "ModelServer",
    "admit",
    "peer_uid",
]

logger = logging.getLogger("spark_pyfunc._serving")


class Invokable(Protocol):
    """What the server needs of a model: loading.PyFuncModel, or a fake in tests."""

    def invoke(self, method: str, data: Any, params: dict | None = None) -> Any: ...


class ModelServer:
    """Answers the requests of a connection with one loaded model.

    Knows nothing of processes or the socket's lifecycle, so it can be tested with any object
    that has ``invoke``.
    """

    def __init__(self, model: Invokable, *, host_pid: int | None = None) -> None:
        self.model = model
        self.host_pid = os.getpid() if host_pid is None else host_pid

    def handle(self, header: dict, payload: bytes | bytearray) -> tuple[dict, Any]:
        """One request -> (response header, response payload); a failure becomes an error
        response carrying its type, message and traceback, so the host keeps serving."""
        try:
            request = Request.from_header(header)
            rows = request.rows
            frame = request_to_frame(payload)
            if len(frame.columns) == 0:  # Arrow keeps no row count without columns
                frame = frame.reindex(range(rows))
            if len(frame) != rows:
                raise ValueError(f"request says {rows} rows but its batch has {len(frame)}")
            output = self.model.invoke(request.method, frame, request.params)
            # The UDF's result type, when the request carries it, types the nested outputs
            # (a column of dicts is a map, not a struct of every key seen).
            hint = request.result_type
            count, body = prediction_to_arrow_bytes(
                output,
                what=f"output of the model's {request.method}",
                result_type=decode_arrow_type(hint) if hint else None,
            )
        except Exception as exc:  # the model's own errors are answered, not fatal
            logger.warning("%s failed: %s: %s", header.get("method"), type(exc).__name__, exc)
            return error_reply(exc), b""
        return Reply(ok=True, rows=count).header(), body

    def greet(self, conn: socket.socket) -> None:
        """Tell a new client that the host is ready, and its pid."""
        send_message(conn, Greeting(self.host_pid).header())
        hold("host.ready")

    def serve_connection(self, conn: socket.socket) -> None:
        """Greet the client, then answer its requests, one per batch, until it closes the
        connection. A pipelining client's next requests wait in the socket meanwhile: each
        is read once the previous answer is out."""
        with conn:
            try:
                self.greet(conn)
                while True:
                    header, payload = recv_message(conn)
                    send_message(conn, *self.handle(header, payload))
            except PeerClosed:
                pass
            except OSError as exc:
                logger.info("connection lost: %s", exc)


class BatchedServing:
    """Serves connections whose requests go through one batcher, with every other one's."""

    def __init__(self, server: ModelServer, batcher: Batcher) -> None:
        self.server = server
        self.batcher = batcher

    def serve_connection(self, conn: socket.socket) -> None:
        """A connection whose requests go through the batcher, with every other one's.

        A client may send several requests before it reads an answer (pipelining), so this
        thread reads them as they come and queues each in the batcher at once, where it can
        join the model's next call while an earlier one is being answered; a writer thread
        waits for the answers in request order and sends them back. Reading and writing on
        two threads also means that a large answer never waits for a large request to be
        read, or the other way round.
        """
        batcher = self.batcher
        connection = batcher.connected()
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        writer = threading.Thread(target=self._answer_in_order, args=(conn, answers), daemon=True)
        with conn:
            try:
                self.server.greet(conn)
                writer.start()
                while True:
                    header, payload = recv_message(conn)
                    answers.put(batcher.enqueue(header, payload, connection))
            except PeerClosed:
                pass
            except OSError as exc:
                logger.info("connection lost: %s", exc)
            except RuntimeError as exc:  # the batcher stopped: the host is exiting
                logger.info("connection closed: %s", exc)
            finally:
                batcher.disconnected(connection)  # what it left queued never runs
                answers.put(None)
                if writer.is_alive():
                    writer.join()

    def _answer_in_order(self, conn: socket.socket, answers: queue.SimpleQueue[Any]) -> None:
        """Send a batched connection's answers in the order of its requests; a failed send
        shuts the connection down, which ends its reader too."""
        while (request := answers.get()) is not None:
            reply = self.batcher.wait(request)
            try:
                send_message(conn, *reply)
            except OSError as exc:
                logger.info("connection lost: %s", exc)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                return


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (None where SO_PEERCRED is unavailable)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def admit(conn: socket.socket) -> bool:
    """Refuse a peer of another uid (closing the connection); ready an admitted one."""
    uid = peer_uid(conn)
    if uid is not None and uid != os.getuid():
        logger.warning(
            "refused a connection from uid %d (this host serves uid %d)", uid, os.getuid()
        )
        conn.close()
        return False
    conn.settimeout(None)
    tune_socket(conn)
    return True


def _release_free_memory() -> None:
    """Hand the memory a finished connection freed back to the kernel: glibc's malloc and
    Arrow's pool keep freed pages for reuse, and in a prefork child every such page is
    private to it, so an idle child would hold its last task's working buffers."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    pa.default_memory_pool().release_unused()


#: glibc's mallopt() parameters (malloc.h) and the values the host sets: where glibc's own
#: adaptive thresholds end up once a process has freed blocks of up to 32 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20
#: Environment variables by which a user sets those thresholds: theirs win.
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _keep_request_buffers() -> None:
    """Let glibc's malloc reuse one request's freed buffers for the next request.

    A request's batch, its pandas columns and the model's arrays are blocks of hundreds of KiB.
    With glibc's default thresholds such blocks are mmap()ed, or trimmed off the heap's top,
    when freed, so every request faults its pages in again: a fifth of a serving process's CPU
    per request of the benchmark's table model (scripts/host_scaling.py; docs/benchmark.md).
    Fixed thresholds keep them in the heap while a connection lasts;
    :func:`_release_free_memory` still hands them back when it ends.

    Set once the model is loaded, not before: a model's load frees many blocks of up to tens
    of MiB (an unpickled forest's temporary copies) between the ones it keeps, and in the heap
    those would stay resident. With the thresholds set before the load, a host holding a
    208 MiB scikit-learn forest held 602 MiB of PSS instead of 394.
    """
    if any(name in os.environ for name in _MALLOC_SETTINGS):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _warm_up_wire() -> None:
    """Run the request path's own conversions once, without the model, before forking:
    what pandas and pyarrow set up lazily on first use (imports, caches, allocator pools)
    is then made once in the parent and shared, instead of in every child's private pages.
    The model is not called: the parent never runs predict."""
    frame = pd.DataFrame(
        {"i": np.arange(4, dtype=np.int64), "x": np.linspace(0, 1, 4), "s": list("abcd")}
    )
    back = request_to_frame(frame_to_arrow_bytes(frame))
    prediction_to_arrow_bytes(back["x"].to_numpy(), what="warm-up")
    prediction_to_arrow_bytes(back, what="warm-up")
