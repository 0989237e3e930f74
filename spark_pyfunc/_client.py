"""The Python worker's side of the model host: send requests, and one retry-and-resend policy.

A worker scores its batches through a :class:`ModelHostClient`. Where its connection comes from
is a seam (``connect``): in Spark, the executor's host found, adopted or started by
:class:`~spark_pyfunc._launcher.HostLauncher`; in a test, a ModelServer on a socketpair. A
connection that breaks before the host answered (the host was killed) is reopened, restarting
the host, and every unanswered request is sent again in order, so results stay exact; a host
killed before it was ready is started again from the same budget of attempts (``ATTEMPTS`` in
a row without an answer). An error answer (the model raised) is raised in the worker with the
host's traceback. This module does not import pyspark.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from spark_pyfunc import errors
from spark_pyfunc._config import PIPELINE_DEPTH
from spark_pyfunc._launcher import HostKilled, HostLauncher, HostSpec, without_own_frames
from spark_pyfunc._protocol import Reply, Request
from spark_pyfunc._wire import (
    arrow_bytes_to_frame,
    arrow_bytes_to_table,
    batch_to_arrow_bytes,
    encode_arrow_type,
    encode_header,
    frame_to_arrow_bytes,
    recv_message,
    send_message,
)
from spark_pyfunc.errors import HostError, PredictionError, SchemaEnforcementError

__all__ = ["ATTEMPTS", "Connect", "ModelHostClient"]

logger = logging.getLogger(__name__)

#: Attempts per batch when the host is lost, mid-request or before it was ready (the first try
#: included). One budget for both: it bounds the model loads one batch can cause, so a host the
#: OOM killer takes at every load fails the task after 3 loads, not 3 per kind of loss.
ATTEMPTS = 3


def _remote_error(reply: dict, method: str, host_pid: int | None) -> Exception:
    """The exception for an error response: the package's own error types (a schema
    mismatch, an unrepresentable result) keep their type, anything else the model raised
    becomes a PredictionError. Both carry the remote traceback.

    A PredictionError's message ends as a traceback of the model's own does: the model's
    frames (the host's relay frames left out), then its ``Type: message``, so that the last
    line a user sees, in any scope, is the model's error.
    """
    answer = Reply.from_header(reply)
    name, message, remote_tb = answer.error, answer.message, answer.traceback
    cls = getattr(errors, name, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, errors.SparkPyfuncError)
        and not _defines_init(cls)
    ):
        exc: errors.SparkPyfuncError = cls(message)
        exc.remote_traceback = remote_tb
        return exc
    return PredictionError(
        f"the model's {method} raised {name} in the model host (pid {host_pid}):\n"
        f"{_model_frames(remote_tb, name, message)}",
        remote_traceback=remote_tb,
    )


def _model_frames(remote_tb: str, name: str, message: str) -> str:
    """The host's traceback without spark_pyfunc's own frames, ending with the closing
    ``Type: message`` (added when the text ends otherwise)."""
    text = without_own_frames(remote_tb.rstrip("\n").splitlines())
    closing = f"{name}: {message}" if message else name
    return text if text.endswith(closing) else f"{text}\n{closing}".lstrip("\n")


def _defines_init(cls: type) -> bool:
    """Whether one of the package's error classes gives ``cls`` a constructor of its own
    (fields beyond the message, which the host's reply does not carry)."""
    return any("__init__" in vars(k) for k in cls.__mro__ if issubclass(k, errors.SparkPyfuncError))


@dataclass(frozen=True)
class _Request:
    """One request, encoded once: sent again as it is if the host is lost before answering."""

    header: dict
    payload: Any


_END = object()  # the end of a stream's input


def _request(
    frame: pd.DataFrame | pa.RecordBatch,
    method: str,
    params: dict | None,
    result_type: pa.DataType | None,
) -> _Request:
    """The wire form of one batch; SchemaEnforcementError for what cannot travel."""
    rows = frame.num_rows if isinstance(frame, pa.RecordBatch) else len(frame)
    encoded = encode_arrow_type(result_type) if result_type is not None else None
    header = Request(method, params, rows, encoded).header()
    try:
        encode_header(header)
    except (TypeError, ValueError) as exc:
        raise SchemaEnforcementError(
            f"params {sorted(params or {})} cannot be sent to the model host: {exc}"
        ) from exc
    if isinstance(frame, pa.RecordBatch):
        payload = batch_to_arrow_bytes(frame, error=SchemaEnforcementError)
    else:
        payload = frame_to_arrow_bytes(frame, what="model input", error=SchemaEnforcementError)
    return _Request(header, payload)


class _Sender:
    """Sends a connection's requests. With several requests in flight it sends from a thread
    of its own while the caller reads the answers: a host answers a request before it reads
    the next one, so a caller that sent a large request while the host sent it a large answer
    would wait forever on a full socket buffer. With one in flight (``threaded=False``) it
    sends in the caller's thread. A failed send shuts the socket down, so the caller's read
    fails too, and the request counts as lost either way."""

    def __init__(self, sock: socket.socket, *, threaded: bool = True) -> None:
        self.sock = sock
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(
                target=self._run, name="spark_pyfunc-sender", daemon=True
            )
            self._thread.start()

    def send(self, request: _Request) -> None:
        if self._thread is None:
            self._send(request)
        else:
            self._queue.put(request)

    def _run(self) -> None:
        while (request := self._queue.get()) is not None:
            if not self._send(request):
                return

    def _send(self, request: _Request) -> bool:
        try:
            send_message(self.sock, request.header, request.payload)
        except OSError as exc:
            logger.info("sending a request to the model host failed: %s", exc)
            self._shutdown()
            return False
        return True

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self, *, abort: bool) -> None:
        """End the thread once it has sent what it holds; ``abort``: at once, shutting the
        connection down (a send blocked on it fails), which the caller then closes."""
        if abort:
            self._shutdown()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()


#: What a client calls for a connection: a greeted socket and the host's pid (HostLauncher's
#: connect, or in tests a ModelServer on a socketpair).
Connect = Callable[[], tuple[socket.socket, int]]


class ModelHostClient:
    """Scores batches with the executor's model host, with one retry-and-resend policy.

    One connection per client, opened on the first :meth:`predict`. Not thread-safe: use a
    client per thread (Spark gives each task its own). Where connections come from is a
    seam: ``spec`` starts or adopts the executor's host through a
    :class:`~spark_pyfunc._launcher.HostLauncher`; ``connect`` is any callable giving a
    greeted connection (a ModelServer on a ``socketpair()`` in one process, for tests).

    Example:
        >>> client = ModelHostClient(spec)  # doctest: +SKIP
        >>> client.predict(frame)           # doctest: +SKIP
    """

    def __init__(
        self,
        spec: HostSpec | None = None,
        *,
        connect: Connect | None = None,
        name: str | None = None,
    ) -> None:
        if (spec is None) == (connect is None):
            raise HostError("ModelHostClient takes a HostSpec or a connect callable")
        self.spec = spec
        self.launcher = HostLauncher(spec) if spec is not None else None
        self._connect: Connect = connect or self.launcher.connect  # type: ignore[union-attr]
        self.model_name = name or (self.launcher.model_name if self.launcher else "the model")
        self._sock: socket.socket | None = None
        self._host_pid: int | None = None

    @property
    def host_pid(self) -> int | None:
        """The pid of the host serving this client (None before the first predict)."""
        return self._host_pid

    # ------------------------------------------------------------------------- scoring

    def predict(
        self,
        frame: pd.DataFrame | pa.RecordBatch,
        method: str = "predict",
        params: dict | None = None,
        *,
        arrow: bool = False,
        result_type: pa.DataType | None = None,
    ) -> pd.DataFrame | pa.Table:
        """The model's output for ``frame``, as rows (see wire.prediction_to_frame).

        An Arrow record batch goes to the host as it is, so a Spark worker that already holds
        Arrow data skips a round of pandas conversions; the host gives the model pandas.
        ``arrow=True`` returns the host's Arrow table as it came, for a relay that fits it
        to the result type without pandas. ``result_type`` (the Arrow form of the UDF's result
        type) tells the host the types of nested outputs. A host lost before it answers is
        started again and the request sent again, as :meth:`predict_stream` says.
        """
        request = _request(frame, method, params, result_type)
        [result] = self._exchange(iter([request]), 1, method, arrow)
        return result

    def predict_stream(
        self,
        frames: Iterable[pd.DataFrame | pa.RecordBatch],
        method: str = "predict",
        params: dict | None = None,
        *,
        arrow: bool = False,
        result_type: pa.DataType | None = None,
        depth: int = PIPELINE_DEPTH.default,
    ) -> Iterator[pd.DataFrame | pa.Table]:
        """The model's output for each of ``frames``, in order, with up to ``depth`` requests
        in flight on the one connection.

        With one request in flight, the host and the model wait while this worker turns an
        answer into its next request (and Spark hands it the next batch); with two, the
        next request is already at the host, queued (a batching host can put it in the
        model's next call) or read as soon as the previous answer is out. ``frames`` is
        read ahead of the results (at most ``depth`` frames), in the caller's thread; the
        requests are sent from a thread of this client's, so that a large request never
        waits for a large answer that nobody reads: no host mode can deadlock it.

        A host lost mid-stream (killed, crashed) is restarted as :meth:`predict` does, and
        the requests it had not answered are sent again to the new host, in order, once
        per loss; ``ATTEMPTS`` losses in a row without an answer in between fail the
        stream. An error answer (the model raised) is raised when that request's result is
        due, after the results of the requests before it; the stream ends there.

        Args:
            frames: the batches to score (pandas frames or Arrow record batches, as
                :meth:`predict` takes them), pulled lazily.
            method, params, arrow, result_type: as for :meth:`predict`, for every batch.
            depth: requests in flight at most; 1 is :meth:`predict` per batch.

        Returns:
            An iterator of the results, one per frame, in the order of ``frames``.

        Raises:
            HostError: the host was lost ``ATTEMPTS`` times in a row, or could not start.
            PredictionError: the model raised for a batch (the package's own errors, such
                as SchemaEnforcementError, keep their type).

        Example:
            >>> with ModelHostClient(spec) as client:  # doctest: +SKIP
            ...     for result in client.predict_stream(batches, depth=2):
            ...         write(result)
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise HostError(f"pipeline depth must be a positive integer, not {depth!r}")
        requests = (_request(frame, method, params, result_type) for frame in frames)
        yield from self._exchange(requests, depth, method, arrow)

    def _exchange(
        self, requests: Iterator[_Request], depth: int, method: str, arrow: bool
    ) -> Iterator[pd.DataFrame | pa.Table]:
        """The retry-and-resend policy, for one request or a stream of them.

        Keeps up to ``depth`` requests in flight; a host lost before it was ready, or with
        requests unanswered, costs one of ``ATTEMPTS`` tries (reset by every answer): the
        host is started again and every unanswered request sent again, in order.
        """
        pending: deque[_Request] = deque()  # sent (or to be sent), not answered, in order
        sender: _Sender | None = None
        exhausted = False
        losses = 0
        try:
            while True:
                while not exhausted and len(pending) < depth:
                    request = next(requests, _END)
                    if request is _END:
                        exhausted = True
                        break
                    pending.append(request)
                    if sender is not None:
                        sender.send(request)
                if not pending:
                    return
                if sender is None:
                    try:
                        sender = _Sender(self._connection(), threaded=depth > 1)
                    except HostKilled as exc:  # killed while starting or loading
                        losses += 1
                        self._log_loss(exc, losses, len(pending))
                        if losses >= ATTEMPTS:
                            raise self._lost(exc) from None
                        continue
                    for request in pending:  # a new connection: everything unanswered
                        sender.send(request)
                try:
                    reply, body = recv_message(sender.sock)
                except OSError as exc:  # the host died or was killed: restart it, resend
                    losses += 1
                    self._log_loss(exc, losses, len(pending))
                    sender.stop(abort=True)
                    sender = None
                    self.close()
                    if losses >= ATTEMPTS:
                        raise self._lost(exc) from None
                    continue
                losses = 0
                pending.popleft()
                yield self._result(reply, body, method, arrow)
        finally:
            if sender is not None:
                sender.stop(abort=bool(pending))
            if pending:  # answers still due on the connection: nobody will read them
                self.close()

    def _log_loss(self, exc: Exception, losses: int, unanswered: int) -> None:
        if isinstance(exc, HostKilled):
            logger.warning(
                "%s (attempt %d of %d); starting it again",
                str(exc).split("\n", 1)[0],
                losses,
                ATTEMPTS,
            )
            return
        logger.warning(
            "lost the model host (pid %s) during a request (attempt %d of %d): %s; "
            "sending the %d unanswered request(s) again",
            self._host_pid,
            losses,
            ATTEMPTS,
            str(exc).split("\n", 1)[0],
            unanswered,
        )

    def _result(
        self, reply: dict, body: bytearray, method: str, arrow: bool
    ) -> pd.DataFrame | pa.Table:
        if not Reply.from_header(reply).ok:
            raise _remote_error(reply, method, self._host_pid)
        return arrow_bytes_to_table(body) if arrow else arrow_bytes_to_frame(body)

    def _lost(self, failure: Exception | None) -> HostError:
        last = str(failure).split("\n", 1)[0]
        log = self.launcher
        return HostError(
            f"the model host for {self.model_name} was lost {ATTEMPTS} times in a row, "
            f"the last time: {last}",
            log_path=str(log.log_path) if log else None,
            log_tail=log.log_tail() if log else "",
        )

    def close(self) -> None:
        """Close the connection (the host stays up for the other workers)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ModelHostClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connection(self) -> socket.socket:
        if self._sock is None:
            self._sock, self._host_pid = self._connect()
        return self._sock
