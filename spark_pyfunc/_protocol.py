"""The model host's protocol: what the greeting, a request and a reply say.

A connection opens with the host's :class:`Greeting`; the client then sends :class:`Request`
messages, each with a batch as payload, and the host answers each, in order, with a
:class:`Reply` and, when it succeeded, the model's output as payload. Every message is a JSON
header and an optional payload (the framing, ``_wire.send_message`` / ``recv_message``); a
payload is one Arrow IPC stream, written by :func:`ipc_stream`. The dataclasses name the
header's fields: ``header()`` gives the wire form and ``from_header`` reads it back. An error
reply is built by :func:`error_reply` alone, for the model's errors (``_serving``) and the
batcher's own (``_batching``, which also rewrites the row count of the requests it joins and
the replies it splits, keeping the rest of their headers as they are).
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = ["Greeting", "Reply", "Request", "error_reply", "ipc_stream"]


@dataclass(frozen=True)
class Greeting:
    """The host's first message on a connection: it is ready, and its pid."""

    pid: int

    def header(self) -> dict[str, Any]:
        return {"ok": True, "pid": self.pid}

    @classmethod
    def from_header(cls, header: dict) -> Greeting:
        return cls(pid=int(header["pid"]))


@dataclass(frozen=True)
class Request:
    """One batch to score: ``method`` of the model with ``params``; ``rows`` (Arrow keeps no
    row count for a batch without columns); ``result_type``, the UDF's result type as
    ``_wire.encode_arrow_type`` writes it, types the model's nested outputs on the host."""

    method: str
    params: dict | None
    rows: int
    result_type: str | None = None

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"method": self.method, "params": self.params, "rows": self.rows}
        if self.result_type is not None:
            header["result_type"] = self.result_type
        return header

    @classmethod
    def from_header(cls, header: dict) -> Request:
        """The request a header says (KeyError for a missing method or row count)."""
        return cls(
            method=header["method"],
            rows=int(header["rows"]),
            params=header.get("params"),
            result_type=header.get("result_type") or None,
        )


@dataclass(frozen=True)
class Reply:
    """The answer to one request: ``ok`` with the ``rows`` of its payload, or the type name,
    message and traceback of what failed (no payload)."""

    ok: bool
    rows: int | None = None
    error: str = "Exception"
    message: str = ""
    traceback: str = ""

    def header(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "rows": self.rows}
        return {
            "ok": False,
            "error": self.error,
            "message": self.message,
            "traceback": self.traceback,
        }

    @classmethod
    def from_header(cls, header: dict) -> Reply:
        if header.get("ok"):
            return cls(ok=True, rows=header.get("rows"))
        return cls(
            ok=False,
            error=str(header.get("error", "Exception")),
            message=str(header.get("message", "")),
            traceback=str(header.get("traceback", "")),
        )


def error_reply(exc: BaseException, tb: str | None = None) -> dict[str, Any]:
    """The reply header for ``exc``: its type's name, its message, and ``tb`` (by default the
    traceback of the exception being handled)."""
    text = tb if tb is not None else _traceback.format_exc()
    return Reply(ok=False, error=type(exc).__name__, message=str(exc), traceback=text).header()


#: From this many bytes of data, a stream is measured first and written into one buffer of
#: its exact size: a growing buffer would copy a 10,000-row request several times over.
_PRESIZE_FROM = 64 * 1024


def ipc_stream(data: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """``data`` as one Arrow IPC stream in memory: every payload of the protocol."""
    if data.nbytes < _PRESIZE_FROM:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write(data)
        return sink.getvalue()
    size = pa.MockOutputStream()  # counts the bytes, copies none
    with pa.ipc.new_stream(size, data.schema) as writer:
        writer.write(data)
    buf = pa.allocate_buffer(size.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buf), data.schema) as writer:
        writer.write(data)
    return buf
