"""Request batching in the model host: the requests of every worker, one predict call.

A model with a fixed cost per call (a GPU kernel launch, a framework's dispatch) wastes most
of its time on small batches: Spark's workers each send their own batch and wait. The host
sees all of them, so it can do what Triton's dynamic batcher or Ray Serve's ``@serve.batch``
do: requests that arrive while the model is busy, or within ``max_wait`` of the oldest one,
are concatenated (up to ``max_rows``) and answered from one call, each getting its own rows
back, in order. Only requests whose headers are equal apart from their row count (the same
method and params) and whose Arrow schemas are equal share a call.

The batcher works on the wire's Arrow payloads and hands one request to ``handle`` (the
server's, which converts, predicts and encodes), so it knows nothing of models; ``handle``
runs on a waiting connection thread that found the batch ready, one batch at a time by
default. ``max_calls=2`` lets a second batch start while the first is in ``handle``: its
conversions (which hold the GIL) then run while the device computes the first, which a model
whose batches fill the device needs to keep it busy
(docs/investigations/2026-11-30-gpus-k-tasks-one-gpu.md).

A connection may have several requests in flight (a pipelining client sends the next before
it has read the previous answer): the host's reader of the connection ``enqueue``s them as
they come and its writer ``wait``s for their answers in request order, so a request queues
for the model's next call while an earlier one of its connection is being answered.

Not waiting for nothing: once every open connection has a request queued, the batch goes at
once rather than after ``max_wait``: a connection with one request in flight cannot send
another before its answer, and one with several has its next already queued. The wait is
counted from the moment a call is free: a request queued during a call (a pipelining
connection's next) waited for the model, not for company, and the other connections' next
requests come only once that call's answers are out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from spark_pyfunc._protocol import Reply, error_reply, ipc_stream
from spark_pyfunc._wire import arrow_bytes_to_table

logger = logging.getLogger("spark_pyfunc._batching")

#: One request -> (response header, response payload): ModelServer.handle.
Handler = Callable[[dict, Any], tuple[dict, Any]]


@dataclass
class _Request:
    """A request waiting for its answer; ``answered`` once ``reply`` is filled in."""

    header: dict
    payload: Any
    key: tuple[str, str] | None  # None: never shares a call (see _key)
    rows: int
    table: pa.Table | None
    arrived: float
    connection: int | None = None  # None: a connection of its own
    answered: bool = False
    reply: tuple[dict, Any] = ({}, b"")


class Batcher:
    """Queues requests from many connection threads and answers them in batches.

    Args:
        handle: answers one request (header with ``rows``, Arrow IPC payload).
        max_wait: seconds the oldest queued request may wait for company.
        max_rows: rows a batch may reach by adding requests (a larger single request
            still goes alone, whole).
        on_call: told, before each call of ``handle``, how many ns each of the batch's
            requests queued (the host's status file reports it).
        max_calls: batches that may be in ``handle`` at once. 1: one at a time. 2: the next
            batch is converted (Arrow to pandas, the model's input to the device) while the
            model computes the current one; a model on a device then holds two batches.

    Connection threads call :meth:`connected` / :meth:`disconnected` around their loop,
    :meth:`enqueue` per request as it arrives and :meth:`wait` for the answers in order (a
    connection may have several requests in flight); the model runs on
    whichever waiting thread finds a batch ready, up to ``max_calls`` batches at a time.
    :meth:`stop` refuses further requests.
    """

    def __init__(
        self,
        handle: Handler,
        *,
        max_wait: float,
        max_rows: int,
        max_calls: int = 1,
        on_call: Callable[[list[int]], None] | None = None,
    ) -> None:
        if max_wait < 0 or max_rows < 1 or max_calls < 1:
            raise ValueError(
                f"max_wait={max_wait!r}, max_rows={max_rows!r} and max_calls={max_calls!r} "
                "are out of range"
            )
        self.handle = handle
        self.max_wait = max_wait
        self.max_rows = max_rows
        self.max_calls = max_calls
        self.on_call = on_call
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._connections = 0
        self._last_connection = 0
        self._stopping = False
        self._calls = 0  # batches in handle now, at most max_calls
        self._free_since = time.monotonic()  # when a call last ended
        #: How many model calls saw how many rows (logged at exit; read by tests).
        self.sizes: Counter[int] = Counter()

    # ------------------------------------------------------------- connection threads

    def connected(self) -> int:
        """Count a new connection; its number, for :meth:`enqueue` and :meth:`disconnected`."""
        with self._cond:
            self._connections += 1
            self._last_connection += 1
            return self._last_connection

    def disconnected(self, connection: int | None = None) -> None:
        """Count a connection gone; its requests still queued (not in a call) are dropped,
        answered with an error that nobody reads, so they never reach the model."""
        with self._cond:
            self._connections -= 1
            if connection is not None:
                dropped = [r for r in self._queue if r.connection == connection]
                for request in dropped:
                    self._queue.remove(request)
                    request.reply = (error_reply(ConnectionError("the connection closed"), ""), b"")
                    request.answered = True
            self._cond.notify_all()  # the others may now be all there is to wait for

    def enqueue(self, header: dict, payload: Any, connection: int | None = None) -> _Request:
        """Queue one request of ``connection`` (None: a connection with one request at a
        time) without waiting for its answer; :meth:`wait` gets it."""
        try:
            request = self._request(header, payload)
        except Exception as exc:  # a malformed request: answered alone by the server
            logger.debug("request not batchable (%s): answered alone", exc)
            request = _Request(header, payload, None, 0, None, time.monotonic())
        request.connection = connection
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            self._queue.append(request)
            self._cond.notify_all()  # a waiting thread may find its batch ready now
        return request

    def wait(self, request: _Request) -> tuple[dict, Any]:
        """The answer to ``request`` (response header, payload).

        The calling thread waits for it, and meanwhile runs any batch that is ready while the
        model is free (its own or another's): the thread that completes a batch calls the
        model at once, with no hand-over to another thread, which on a busy machine costs a
        wait for the scheduler each time.
        """
        with self._cond:
            while not request.answered:
                batch, left = self._ready()
                if batch is None:
                    self._cond.wait(left)
                    continue
                self._calls += 1
                self._cond.release()
                try:
                    self._answer(batch)
                finally:
                    self._cond.acquire()
                    self._calls -= 1
                    self._free_since = time.monotonic()
                    self._cond.notify_all()
        return request.reply

    @staticmethod
    def _request(header: dict, payload: Any) -> _Request:
        rows = int(header["rows"])
        table = arrow_bytes_to_table(payload)
        key = _key(header, table) if table.num_rows == rows else None
        return _Request(header, payload, key, rows, table, time.monotonic())

    def stop(self) -> None:
        """Refuse further requests (those queued are still answered) and log the sizes."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.sizes:
            logger.info("batch sizes seen by the model (rows: calls): %s", dict(self.sizes))

    # ------------------------------------------------------------------------ batching

    def _ready(self) -> tuple[list[_Request] | None, float | None]:
        """The batch to run now, taken off the queue; or None and how long to wait (None:
        until notified). A batch is ready once a call is free and the batch is full,
        every connection has a request queued, or its oldest request waited ``max_wait``
        since it came or the model was last free, whichever is later."""
        if self._calls >= self.max_calls or not self._queue:
            return None, None
        batch, full = self._gather()
        head = self._queue[0]
        left = max(head.arrived, self._free_since) + self.max_wait - time.monotonic()
        queued = {id(r) if r.connection is None else r.connection for r in self._queue}
        everyone = len(queued) >= self._connections
        if not (full or everyone or left <= 0 or self._stopping):
            return None, left
        for request in batch:
            self._queue.remove(request)
        return batch, None

    def _gather(self) -> tuple[list[_Request], bool]:
        """The oldest request and the queued ones that may share its call, in order; and
        whether no further request could join."""
        head = self._queue[0]
        if head.key is None:
            return [head], True
        batch, rows = [head], head.rows
        for request in self._queue[1:]:
            if request.key != head.key:
                continue
            if rows + request.rows > self.max_rows:
                return batch, True
            batch.append(request)
            rows += request.rows
        return batch, rows >= self.max_rows

    def _answer(self, batch: list[_Request]) -> None:
        """One call of ``handle`` for the batch; its rows split back, or its error to all."""
        try:
            replies = self._call(batch)
        except Exception as exc:
            logger.exception("a batch of %d requests failed", len(batch))
            replies = [(error_reply(exc), b"")] * len(batch)
        for request, reply in zip(batch, replies, strict=True):
            request.reply = reply
            request.answered = True

    def _call(self, batch: list[_Request]) -> list[tuple[dict, Any]]:
        rows = sum(r.rows for r in batch)
        self.sizes[rows] += 1
        if self.on_call is not None:  # how long each request queued: the host's status
            now = time.monotonic()
            self.on_call([int((now - r.arrived) * 1e9) for r in batch])
        if len(batch) == 1:
            return [self.handle(batch[0].header, batch[0].payload)]
        # Requests that share a call have tables (see _key), with equal schemas but for
        # their metadata (pandas' notes on the dtypes): the first one's is kept.
        tables = [r.table for r in batch if r.table is not None]
        metadata = tables[0].schema.metadata
        joined = pa.concat_tables([t.replace_schema_metadata(metadata) for t in tables])
        header, body = self.handle(dict(batch[0].header, rows=rows), ipc_stream(joined))
        if not Reply.from_header(header).ok:
            return [(header, b"")] * len(batch)
        result = arrow_bytes_to_table(body)
        if result.num_rows != rows:
            raise ValueError(
                f"the model returned {result.num_rows} rows for a batch of {rows} rows from "
                f"{len(batch)} requests (request batching needs one output row per input row; "
                "spark.pyfunc.host.batching.enabled=false turns it off)"
            )
        replies, start = [], 0
        for request in batch:
            part = result.slice(start, request.rows)
            replies.append((dict(header, rows=request.rows), ipc_stream(part)))
            start += request.rows
        return replies


def _key(header: dict, table: pa.Table) -> tuple[str, str] | None:
    """What must be equal for two requests to share a call: the header apart from its row
    count (method, params, anything the server reads) and the Arrow schema (its metadata
    aside: pandas' notes on the dtypes it converted from). None for a request without
    columns, whose row count Arrow does not carry."""
    if table.num_columns == 0:
        return None
    rest = {k: v for k, v in header.items() if k != "rows"}
    schema = table.schema.remove_metadata().to_string()
    return json.dumps(rest, sort_keys=True, default=str), schema
