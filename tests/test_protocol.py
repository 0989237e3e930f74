"""The host's messages (_protocol): their wire form is fixed, field by field, since a host and
its clients of one version must read each other, and hosts outlive the tasks that start them."""

from __future__ import annotations

import pyarrow as pa

from spark_pyfunc._protocol import Greeting, Reply, Request, error_reply, ipc_stream
from spark_pyfunc._wire import arrow_bytes_to_table


def test_each_message_has_its_wire_form_and_reads_back() -> None:
    assert Greeting(42).header() == {"ok": True, "pid": 42}
    plain = Request("predict", None, 3)
    assert plain.header() == {"method": "predict", "params": None, "rows": 3}
    typed = Request("predict", {"k": 1}, 3, result_type="t")
    assert typed.header() == {
        "method": "predict",
        "params": {"k": 1},
        "rows": 3,
        "result_type": "t",
    }
    assert Reply(ok=True, rows=3).header() == {"ok": True, "rows": 3}
    for message in (Greeting(42), plain, typed, Reply(ok=True, rows=3)):
        assert type(message).from_header(message.header()) == message


def test_an_error_reply_names_the_type_the_message_and_the_traceback() -> None:
    try:
        raise ValueError("bad batch")
    except ValueError as exc:
        reply = error_reply(exc)
    assert reply["ok"] is False and reply["error"] == "ValueError"
    assert reply["message"] == "bad batch" and 'raise ValueError("bad batch")' in reply["traceback"]
    assert Reply.from_header(reply) == Reply(
        False, None, "ValueError", "bad batch", reply["traceback"]
    )
    assert error_reply(ConnectionError("closed"), "")["traceback"] == ""


def test_ipc_stream_writes_small_and_presized_streams_alike() -> None:
    for rows in (3, 100_000):  # below and above the size that is measured first
        table = pa.table({"x": pa.array(range(rows), pa.int64())})
        assert arrow_bytes_to_table(ipc_stream(table)).equals(table)
