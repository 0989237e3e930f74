"""Framing and output normalisation shared by the model host and the in-process path."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spark_pyfunc._relay import _bind, _numeric_record
from spark_pyfunc._wire import (
    PeerClosed,
    arrow_bytes_to_frame,
    arrow_bytes_to_table,
    batch_to_arrow_bytes,
    frame_to_arrow_bytes,
    prediction_to_arrow_bytes,
    prediction_to_frame,
    recv_message,
    send_message,
)
from spark_pyfunc.errors import ResultTypeError, SchemaEnforcementError

# ------------------------------------------------------------------ round trips (hypothesis)

_ints = st.integers(-(2**62), 2**62)
_floats = st.floats(allow_nan=False, allow_infinity=True, width=64)
_text = st.text(max_size=8)
_bytes = st.binary(max_size=8)
_times = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1))
_lists = st.lists(st.integers(-1000, 1000), max_size=4)


def _column(kind: str, n: int, nulls: bool) -> st.SearchStrategy[pd.Series]:
    """A column of ``n`` values of one kind, with nulls where ``nulls``."""

    def maybe(values: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(st.none(), values) if nulls else values

    if kind == "int":
        if nulls:
            return st.lists(maybe(_ints), min_size=n, max_size=n).map(
                lambda v: pd.Series(v, dtype="Int64")
            )
        return st.lists(_ints, min_size=n, max_size=n).map(lambda v: pd.Series(v, dtype="int64"))
    if kind == "float":
        return st.lists(maybe(_floats), min_size=n, max_size=n).map(
            lambda v: pd.Series([np.nan if x is None else x for x in v], dtype="float64")
        )
    if kind == "bool":
        if nulls:
            return st.lists(maybe(st.booleans()), min_size=n, max_size=n).map(
                lambda v: pd.Series(v, dtype="boolean")
            )
        return st.lists(st.booleans(), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype=bool)
        )
    if kind == "timestamp":
        return st.lists(maybe(_times), min_size=n, max_size=n).map(
            lambda v: pd.Series(pd.to_datetime(v), dtype="datetime64[ns]")
        )
    values = {"str": _text, "bytes": _bytes, "list": _lists}[kind]
    return st.lists(maybe(values), min_size=n, max_size=n).map(lambda v: pd.Series(v, dtype=object))


_KINDS = ["int", "float", "bool", "str", "bytes", "timestamp", "list"]


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 20))
    kinds = draw(st.lists(st.sampled_from(_KINDS), min_size=1, max_size=6))
    columns = {
        f"c{i}_{kind}": draw(_column(kind, n, draw(st.booleans()))) for i, kind in enumerate(kinds)
    }
    return pd.DataFrame(columns)


def _as_lists(df: pd.DataFrame) -> pd.DataFrame:
    """Arrow hands list cells back as numpy arrays; compare them as lists."""
    out = df.copy()
    for name in out.columns:
        if out[name].dtype == object:
            out[name] = out[name].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    return out


@given(frames())
def test_frame_round_trip(df: pd.DataFrame) -> None:
    back = arrow_bytes_to_frame(frame_to_arrow_bytes(df))
    pd.testing.assert_frame_equal(_as_lists(back), df)


def test_round_trip_drops_the_index_and_keeps_column_names() -> None:
    df = pd.DataFrame({"b": [1.5, 2.5], "a": [3, 4]}, index=[10, 11])
    back = arrow_bytes_to_frame(frame_to_arrow_bytes(df))
    assert list(back.columns) == ["b", "a"]
    assert isinstance(back.index, pd.RangeIndex) and back.index.start == 0
    pd.testing.assert_frame_equal(back, df.reset_index(drop=True))


def test_round_trip_keeps_nan_and_timezones() -> None:
    df = pd.DataFrame(
        {
            "x": [1.0, np.nan, -np.inf],
            "t": pd.to_datetime(["2024-01-01", None, "2024-03-01"]).tz_localize("Europe/Paris"),
            "cat": pd.Categorical(["a", "b", "a"]),
        }
    )
    pd.testing.assert_frame_equal(arrow_bytes_to_frame(frame_to_arrow_bytes(df)), df)


def test_unrepresentable_column_is_named() -> None:
    df = pd.DataFrame({"ok": [1, 2], "weird": [object(), object()]})
    with pytest.raises(ResultTypeError, match="column 'weird' of the model output"):
        frame_to_arrow_bytes(df)
    with pytest.raises(SchemaEnforcementError, match="column 'weird' of the model input"):
        frame_to_arrow_bytes(df, what="model input", error=SchemaEnforcementError)


def test_duplicate_column_names_are_refused() -> None:
    df = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(ResultTypeError, match="duplicate column names: \\['a'\\]"):
        frame_to_arrow_bytes(df)


# ---------------------------------------------------------------------------- messages


def test_messages_round_trip_over_a_socket() -> None:
    df = pd.DataFrame({"x": np.arange(50_000, dtype=np.float64), "s": ["v"] * 50_000})
    payload = frame_to_arrow_bytes(df)
    a, b = socket.socketpair()
    with a, b:
        # The payload is larger than a socket buffer: send from another thread.
        sender = threading.Thread(
            target=lambda: [
                send_message(a, {"method": "predict", "params": {"k": np.float32(2)}}, payload),
                send_message(a, {"empty": True}),
            ]
        )
        sender.start()
        header, body = recv_message(b)
        header2, body2 = recv_message(b)
        sender.join()
        a.close()
        with pytest.raises(PeerClosed):
            recv_message(b)
    assert header == {"method": "predict", "params": {"k": 2.0}}
    pd.testing.assert_frame_equal(arrow_bytes_to_frame(body), df)
    assert header2 == {"empty": True} and len(body2) == 0


@pytest.mark.parametrize("part", ["prefix", "header", "payload"])
def test_eof_mid_message_is_a_connection_error(part: str) -> None:
    header = {"method": "predict", "x": 1}
    payload = b"0123456789" * 5
    head_len = len(json.dumps(header, separators=(",", ":")))
    cut = {"prefix": 3, "header": 12 + head_len // 2, "payload": 12 + head_len + 20}[part]
    a, b = socket.socketpair()
    with a, b:
        scratch_a, scratch_b = socket.socketpair()
        with scratch_a, scratch_b:
            send_message(scratch_a, header, payload)
            scratch_a.close()
            whole = scratch_b.recv(1 << 16)
        assert len(whole) == 12 + head_len + len(payload)
        a.sendall(whole[:cut])
        a.close()
        with pytest.raises(ConnectionError, match="in the middle of a message") as info:
            recv_message(b)
        assert not isinstance(info.value, PeerClosed)


def test_garbled_prefix_is_a_connection_error() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"\xff" * 12)
        with pytest.raises(ConnectionError, match="malformed"):
            recv_message(b)


# ------------------------------------------------------------------ prediction_to_frame


def _wired(output: object) -> pd.DataFrame:
    """What the host path gives: normalise, then through Arrow."""
    return arrow_bytes_to_frame(frame_to_arrow_bytes(prediction_to_frame(output)))


def test_dataframe_is_kept_with_string_names_and_default_index() -> None:
    out = pd.DataFrame({0: [1, 2], "b": ["x", "y"]}, index=[5, 6])
    df = prediction_to_frame(out)
    assert list(df.columns) == ["0", "b"]
    assert list(df.index) == [0, 1]
    assert list(df["0"]) == [1, 2] and list(out.columns) == [0, "b"]  # input left alone
    plain = pd.DataFrame({"a": [1.0]})
    assert prediction_to_frame(plain) is plain  # nothing to fix: no copy


def test_series_becomes_one_column() -> None:
    assert list(prediction_to_frame(pd.Series([1, 2], name="score")).columns) == ["score"]
    df = prediction_to_frame(pd.Series([1.5, 2.5], index=[7, 8]))
    assert list(df.columns) == ["0"] and df["0"].tolist() == [1.5, 2.5]
    assert list(df.index) == [0, 1]


def test_arrays_and_lists_of_scalars() -> None:
    pd.testing.assert_frame_equal(
        prediction_to_frame(np.array([1, 2, 3])), pd.DataFrame({"0": [1, 2, 3]})
    )
    pd.testing.assert_frame_equal(prediction_to_frame(["a", "b"]), pd.DataFrame({"0": ["a", "b"]}))
    two = prediction_to_frame(np.arange(6.0).reshape(3, 2))
    pd.testing.assert_frame_equal(two, pd.DataFrame({"0": [0.0, 2.0, 4.0], "1": [1.0, 3.0, 5.0]}))
    assert prediction_to_frame([]).shape == (0, 1)


def test_three_dims_become_nested_lists() -> None:
    values = np.arange(12).reshape(3, 2, 2)
    df = _wired(values)
    assert list(df.columns) == ["0"] and len(df) == 3
    assert [np.stack(cell).tolist() for cell in df["0"]] == values.tolist()


def test_dict_of_arrays_and_list_of_dicts() -> None:
    df = _wired({"label": np.array([0, 1]), "proba": np.array([[0.9, 0.1], [0.2, 0.8]])})
    assert df["label"].tolist() == [0, 1]
    assert [cell.tolist() for cell in df["proba"]] == [[0.9, 0.1], [0.2, 0.8]]
    pd.testing.assert_frame_equal(
        prediction_to_frame([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
        pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
    )


@pytest.mark.parametrize("bad", [3.5, np.float64(2.0), np.array(1.0), {"a": 1, "b": 2}, None])
def test_outputs_without_rows_are_refused(bad: object) -> None:
    with pytest.raises(ResultTypeError, match="the model returned"):
        prediction_to_frame(bad)


@pytest.mark.parametrize("rows", [10, 10_000])
def test_a_request_is_the_same_arrow_stream_whatever_its_size(rows: int) -> None:
    """Large batches are written into a buffer of their measured size: the bytes are those
    of a plain stream, nothing more (no slack from a growing buffer), nothing less."""
    rng = np.random.default_rng(0)
    batch = pa.RecordBatch.from_pydict(
        {"id": np.arange(rows), "x": rng.uniform(size=rows), "s": [str(i) for i in range(rows)]}
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
    body = batch_to_arrow_bytes(batch)
    assert body.equals(sink.getvalue())
    assert arrow_bytes_to_table(body).to_batches()[0].equals(batch)


@pytest.mark.parametrize(
    "output",
    [
        np.linspace(0, 1, 7),
        np.arange(7, dtype=np.int32),
        np.array([True, False, True]),
        np.arange(12.0)[::3],  # strided
        np.arange(5, dtype=np.float16),
        np.arange(6.0).reshape(3, 2),
        pd.Series([1.5, 2.0], name="p"),
        ["a", None],
    ],
    ids=["float64", "int32", "bool", "strided", "float16", "2-D", "series", "list"],
)
def test_a_prediction_goes_to_arrow_as_its_rows_would(output):
    # The 1-D numeric fast path skips the DataFrame; its stream must be the same as the frame's.
    rows, body = prediction_to_arrow_bytes(output)
    frame = prediction_to_frame(output)
    assert rows == len(frame)
    assert arrow_bytes_to_table(body).equals(arrow_bytes_to_table(frame_to_arrow_bytes(frame)))


def test_a_byte_swapped_prediction_is_a_result_type_error():
    with pytest.raises(ResultTypeError, match="column '0' of the model output"):
        prediction_to_arrow_bytes(np.arange(3, dtype=">f8"))


# The pandas relay's shortcut for plain numeric arguments (PySpark 3.5/4.0, scope="executor")
# must put on the wire exactly what the DataFrame path puts there.
_NUMERIC_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "float32", "float64", "bool"]


@given(
    dtypes=st.lists(st.sampled_from(_NUMERIC_DTYPES), min_size=1, max_size=5),
    rows=st.integers(0, 40),
    named=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_numeric_arguments_travel_as_the_frame_path_sends_them(dtypes, rows, named, seed) -> None:
    rng = np.random.default_rng(seed)
    parts = tuple(pd.Series((rng.standard_normal(rows) * 50).astype(dtype)) for dtype in dtypes)
    if any(d.startswith("float") for d in dtypes) and rows:
        parts[[d.startswith("float") for d in dtypes].index(True)].iloc[0] = np.nan
    names = tuple(f"f{i}" for i in range(len(parts))) if named else None
    record = _numeric_record(parts if len(parts) > 1 else parts[0], names)
    assert record is not None
    via_frame = arrow_bytes_to_table(frame_to_arrow_bytes(_bind(parts, names)))
    via_record = arrow_bytes_to_table(batch_to_arrow_bytes(record))
    assert via_record.schema == via_frame.schema
    for got, want in zip(via_record.columns, via_frame.columns, strict=True):
        assert got.null_count == want.null_count
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())  # NaN == NaN here


def test_arguments_other_than_plain_numbers_take_the_frame_path() -> None:
    numbers = pd.Series([1.0, 2.0])
    assert _numeric_record((numbers, pd.Series(["a", "b"])), ("x", "y")) is None
    assert _numeric_record((numbers, pd.Series([1, None], dtype="Int64")), None) is None
    assert _numeric_record(pd.DataFrame({"a": [1.0, 2.0]}), None) is None  # a struct
    assert _numeric_record((numbers, numbers), ("x", "x")) is None  # a repeated name
