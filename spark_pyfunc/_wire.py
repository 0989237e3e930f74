"""Arrow over a stream socket: the framing shared by the model host and its clients.

A message is a fixed prefix (header length, payload length), a small JSON header and an
optional payload, here always an Arrow IPC stream. Arrow keeps column types exact between the
Spark worker and the host, and its buffers go to and from the socket without a per-value
encoding step, so a batch costs little more than the bytes it holds.

``prediction_to_frame`` is the one place where a model's raw output becomes rows: the host and
the in-process path both use it, so both give the same frame for the same output.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from spark_pyfunc._protocol import ipc_stream as _ipc_stream
from spark_pyfunc.errors import ResultTypeError, SparkPyfuncError

# header length (bytes of JSON), payload length (bytes of Arrow IPC stream)
_PREFIX = struct.Struct("!IQ")
# A header is a few hundred bytes; a bigger length means the stream is not ours or is garbled.
_MAX_HEADER = 16 * 1024 * 1024
# A batch of 10,000 rows of 8 doubles is 640 KiB. Linux gives a Unix socket about 200 KiB of
# buffer, so such a batch crosses in several wake-ups of the reader; a larger buffer (the kernel
# caps it at net.core.wmem_max/rmem_max) lets most batches cross in one.
_SOCKET_BUFFER = 4 * 1024 * 1024

Buffer = Any  # bytes, bytearray, memoryview or pyarrow.Buffer: anything with the buffer protocol


class PeerClosed(ConnectionError):
    """The peer closed the connection cleanly between two messages."""


def _bad_column(df: pd.DataFrame) -> str | None:
    """The first column Arrow refuses, to name it in the error."""
    for i, name in enumerate(df.columns):
        try:
            pa.array(df.iloc[:, i], from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            return str(name)
    return None


def _to_table(df: pd.DataFrame, result_type: pa.DataType | None = None) -> pa.Table:
    """Plain numeric columns go straight from numpy (the common, hot case); the rest through
    pandas' converter, which keeps extension dtypes, timezones and column-name types.

    ``result_type`` (the Arrow form of the UDF's Spark result type) decides the type of the
    nested columns it covers: inferred from Python values, a column of dicts meant as a map
    would become a struct of every key seen, and lists of mixed dicts would not convert.

    Single-threaded: a batch is small, and the workers and the host already run in parallel.
    """
    if all(isinstance(name, str) for name in df.columns) and all(
        isinstance(dtype, np.dtype) and dtype.kind in "biuf" for dtype in df.dtypes
    ):
        return pa.Table.from_arrays(
            [pa.array(df[name].to_numpy()) for name in df.columns], names=list(df.columns)
        )
    typed = _typed_nested_columns(df, result_type)
    if not typed:
        return pa.Table.from_pandas(df, preserve_index=False, nthreads=1)
    others = [i for i in range(len(df.columns)) if i not in typed]
    inferred = pa.Table.from_pandas(df.iloc[:, others], preserve_index=False, nthreads=1)
    arrays = {**dict(zip(others, inferred.columns, strict=True)), **typed}
    return pa.Table.from_arrays(
        [arrays[i] for i in range(len(df.columns))], names=[str(c) for c in df.columns]
    )


def _nested(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_map(kind)
        or pa.types.is_struct(kind)
    )


def _typed_nested_columns(df: pd.DataFrame, result_type: pa.DataType | None) -> dict[int, pa.Array]:
    """The columns of ``df`` that convert to the nested type ``result_type`` gives them (by
    field name or position for a struct, else the only column), by position. A column that
    does not convert is left out: inference then gives the error that names it."""
    if result_type is None:
        return {}
    names = [str(c) for c in df.columns]
    wanted: dict[int, pa.DataType] = {}
    if pa.types.is_struct(result_type):
        fields = [result_type.field(i) for i in range(result_type.num_fields)]
        if all(f.name in names for f in fields):
            wanted = {names.index(f.name): f.type for f in fields}
        elif len(names) == len(fields):
            wanted = {i: f.type for i, f in enumerate(fields)}
    elif len(names) == 1:
        wanted = {0: result_type}
    typed = {}
    for i, kind in wanted.items():
        if not _nested(kind):
            continue
        try:
            typed[i] = pa.array(df.iloc[:, i], type=kind, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            continue
    return typed


def frame_to_arrow_bytes(
    df: pd.DataFrame,
    *,
    what: str = "model output",
    error: type[SparkPyfuncError] = ResultTypeError,
    result_type: pa.DataType | None = None,
) -> pa.Buffer:
    """Serialise ``df`` (index dropped) as an Arrow IPC stream.

    A column Arrow cannot represent raises ``error`` (ResultTypeError for a model's output)
    naming the column and ``what`` the frame is. ``result_type``: see :func:`_to_table`.
    """
    if df.columns.has_duplicates:
        dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise error(f"the {what} has duplicate column names: {dupes}")
    try:
        table = _to_table(df, result_type)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        column = _bad_column(df)
        where = f"column {column!r} of the {what}" if column is not None else f"the {what}"
        raise error(f"{where} cannot be represented in Arrow: {exc}") from exc
    return _ipc_stream(table)


def batch_to_arrow_bytes(
    batch: pa.RecordBatch, *, error: type[SparkPyfuncError] = ResultTypeError
) -> pa.Buffer:
    """Serialise an Arrow record batch as an IPC stream: no conversion, one copy."""
    names = batch.schema.names
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise error(f"the model input has duplicate column names: {dupes}")
    return _ipc_stream(batch)


def arrow_bytes_to_table(buf: Buffer) -> pa.Table:
    """Read an Arrow IPC stream (no copy of its buffers)."""
    source = buf if isinstance(buf, pa.Buffer) else pa.py_buffer(buf)
    with pa.ipc.open_stream(source) as reader:
        return reader.read_all()


def table_to_frame(table: pa.Table, *, split_blocks: bool = True) -> pd.DataFrame:
    """An Arrow table as a DataFrame (default index, column names kept).

    ``split_blocks``: one block per column, so numeric columns without nulls are views of the
    Arrow buffers (read-only) instead of being copied into one 2-D block per dtype. Maps
    become dicts, as PySpark gives them to a pandas UDF and as models return them.
    """
    return table.to_pandas(use_threads=False, split_blocks=split_blocks, maps_as_pydicts="strict")


def arrow_bytes_to_frame(buf: Buffer) -> pd.DataFrame:
    """Read an Arrow IPC stream back into a DataFrame (default index, column names kept)."""
    return table_to_frame(arrow_bytes_to_table(buf))


def struct_rows(fields: pd.DataFrame) -> pd.Series:
    """A struct column passed beside other columns, as the model sees it: one dict per row,
    built from the struct's fields as mlflow.pyfunc.spark_udf builds it (``row.to_dict()``
    of each row, so the values are those of the row's common dtype)."""
    if len(fields) == 0:
        return pd.Series([], index=fields.index, dtype=object)
    return fields.apply(lambda row: row.to_dict(), axis=1)


def _holds_timestamp(kind: pa.DataType) -> bool:
    """Whether ``kind`` is a timestamp or holds one at any depth (lists, maps, structs)."""
    return pa.types.is_timestamp(kind) or any(
        _holds_timestamp(kind.field(i).type) for i in range(kind.num_fields)
    )


def _as_pyspark_gives(value: Any, kind: pa.DataType) -> Any:
    """A nested value as a pandas UDF gets it from PySpark (its ``_create_converter_to_pandas``):
    a timestamp as a naive ``pd.Timestamp`` in wall-clock time of the session time zone (the
    zone Spark puts in the Arrow type), arrays as numpy arrays, maps and structs as dicts."""
    if value is None:
        return None
    if pa.types.is_timestamp(kind):
        stamp = pd.Timestamp(value)
        if kind.tz is None:  # TIMESTAMP_NTZ, or already wall-clock time
            return stamp
        if stamp.tzinfo is None:  # Arrow hands nested instants over as UTC
            stamp = stamp.tz_localize("UTC")
        return stamp.tz_convert(kind.tz).tz_localize(None)
    if pa.types.is_map(kind):
        return {
            _as_pyspark_gives(k, kind.key_type): _as_pyspark_gives(v, kind.item_type)
            for k, v in value.items()
        }
    if pa.types.is_struct(kind):
        return {f.name: _as_pyspark_gives(value.get(f.name), f.type) for f in kind}
    if kind.num_fields == 1:  # list, large list, fixed-size list
        items = [_as_pyspark_gives(v, kind.value_type) for v in value]
        return np.array(items) if isinstance(value, np.ndarray) else items
    return value


def _column_as_pyspark_gives(values: pd.Series, kind: pa.DataType) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):
        out[row] = _as_pyspark_gives(value, kind)
    return out


def _struct_fields_frame(column: pa.ChunkedArray) -> pd.DataFrame:
    """A struct column's fields as the columns of a frame, as PySpark gives a pandas UDF a
    struct: timestamp fields in wall-clock time, nested ones as :func:`_as_pyspark_gives`."""
    kind = column.type
    table = pa.Table.from_arrays(column.combine_chunks().flatten(), names=[f.name for f in kind])
    fields = table_to_frame(table)
    for i, f in enumerate(kind):
        if pa.types.is_timestamp(f.type):
            if f.type.tz is not None:
                fields.isetitem(i, fields.iloc[:, i].dt.tz_convert(f.type.tz).dt.tz_localize(None))
        elif f.type.num_fields and _holds_timestamp(f.type):
            fields.isetitem(i, _column_as_pyspark_gives(fields.iloc[:, i], f.type))
    return fields


def request_to_frame(buf: Buffer) -> pd.DataFrame:
    """A request's batch as the model's input, as ``scope="process"`` gives it: a struct
    column (a struct passed beside other columns) becomes :func:`struct_rows` of its fields,
    and timestamps inside arrays, maps and structs are wall-clock ``pd.Timestamp`` values.

    Arrow would give nested timestamps as UTC instants; top-level timestamp columns come in
    wall-clock time already (the Spark worker converts them). Columns of one dtype share one
    2-D block, as in the frame ``scope="process"`` builds from Spark's columns: most models
    turn their input into a matrix (``to_numpy()``, sklearn's ``check_array``), which from
    one block is a single copy instead of a gather of columns.
    """
    table = arrow_bytes_to_table(buf)
    frame = table_to_frame(table, split_blocks=False)
    for i, column in enumerate(table.columns):
        if pa.types.is_struct(column.type):
            frame.isetitem(i, struct_rows(_struct_fields_frame(column)))
        elif column.type.num_fields and _holds_timestamp(column.type):
            frame.isetitem(i, _column_as_pyspark_gives(frame.iloc[:, i], column.type))
    return frame


def encode_arrow_type(kind: pa.DataType) -> str:
    """An Arrow type as text for a JSON header (the host never imports pyspark: the worker
    sends it the Arrow form of the UDF's result type)."""
    return base64.b64encode(pa.schema([pa.field("t", kind)]).serialize().to_pybytes()).decode()


def decode_arrow_type(text: str) -> pa.DataType:
    """The inverse of :func:`encode_arrow_type`."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))).field(0).type


def _json_default(value: Any) -> Any:
    """Let numpy scalars/arrays and timestamps in params travel in the JSON header."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_header(header: dict) -> bytes:
    """The JSON bytes of a header; TypeError names a value JSON cannot carry."""
    return json.dumps(header, separators=(",", ":"), default=_json_default).encode()


def tune_socket(sock: socket.socket) -> None:
    """Ask for socket buffers large enough to hold a typical batch (best effort)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:
            pass


def send_message(sock: socket.socket, header: dict, payload: Buffer = b"") -> None:
    """Send one message: prefix, JSON header, payload (sent from its buffer, not copied)."""
    head = encode_header(header)
    view = memoryview(payload).cast("B")
    sock.sendall(_PREFIX.pack(len(head), view.nbytes) + head)
    if view.nbytes:
        sock.sendall(view)


def _recv_exact(sock: socket.socket, size: int, *, first: bool = False) -> bytearray | None:
    """Read exactly ``size`` bytes into one buffer; None on a clean EOF before a message."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if first and got == 0:
                return None
            raise ConnectionError(
                f"connection closed in the middle of a message ({got}/{size} bytes)"
            )
        got += n
    return buf


def recv_message(sock: socket.socket) -> tuple[dict, bytearray]:
    """Receive one message as (header, payload).

    A clean close between messages raises :class:`PeerClosed`; a close in the middle of a
    message or a garbled prefix raises ConnectionError.
    """
    prefix = _recv_exact(sock, _PREFIX.size, first=True)
    if prefix is None:
        raise PeerClosed("the peer closed the connection")
    head_len, payload_len = _PREFIX.unpack(prefix)
    if head_len > _MAX_HEADER:
        raise ConnectionError(f"malformed message: header of {head_len} bytes")
    head = _recv_exact(sock, head_len)
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise ConnectionError(f"malformed message header: {exc}") from exc
    if not isinstance(header, dict):
        raise ConnectionError("malformed message header: not a JSON object")
    payload = _recv_exact(sock, payload_len) if payload_len else bytearray()
    return header, payload


# --------------------------------------------------------------------- model output -> rows


def _cells(values: np.ndarray) -> Any:
    """Per-row values of an array: itself (1-D), row arrays (2-D) or nested lists (3+ dims)."""
    if values.ndim <= 1:
        return values
    if values.ndim == 2:
        return list(values)  # Arrow takes 1-D arrays as list cells
    return values.tolist()  # Arrow takes no multi-dimensional cells: nest them as lists


def _row_cell(item: Any) -> Any:
    """One row of a list output as a cell both scopes fit alike: a pandas Index or Series is
    its values (MLflow makes them a row, not their repr); a 2-D or deeper array is nested
    rows, which Arrow takes where it refuses a multi-dimensional cell."""
    if isinstance(item, (pd.Index, pd.Series)):
        item = item.to_numpy()
    if isinstance(item, np.ndarray) and item.ndim > 1:
        return _cells(item)
    return item


def _array_to_frame(values: np.ndarray) -> pd.DataFrame:
    if values.dtype.names:  # a structured array: its fields are columns
        return pd.DataFrame(values)
    if values.ndim == 0:
        raise ResultTypeError(
            f"the model returned a scalar ({values.dtype} array of shape ()), not one value per row"
        )
    if values.ndim == 1:
        return pd.DataFrame({"0": values}, copy=False)
    if values.ndim == 2:
        return pd.DataFrame(values, columns=[str(i) for i in range(values.shape[1])], copy=False)
    return pd.DataFrame({"0": pd.Series(values.tolist(), dtype=object)})


def _dict_to_frame(output: dict) -> pd.DataFrame:
    columns = {
        str(k): _cells(np.asarray(v)) if isinstance(v, (np.ndarray, list)) else v
        for k, v in output.items()
    }
    try:
        return pd.DataFrame(columns, copy=False)
    except ValueError as exc:
        raise ResultTypeError(
            f"the model returned a dict that is not one value per row in each of "
            f"{sorted(columns)}: {exc}"
        ) from exc


def prediction_to_arrow_bytes(
    output: Any, *, what: str = "model output", result_type: pa.DataType | None = None
) -> tuple[int, pa.Buffer]:
    """A model's raw output as rows in an Arrow IPC stream, and how many rows there are.

    The same rows as :func:`prediction_to_frame` then :func:`frame_to_arrow_bytes` (which
    see); a 1-D numeric array, what most models' ``predict`` returns, goes to Arrow without a
    DataFrame on the way.
    """
    if (
        isinstance(output, np.ndarray)
        and output.ndim == 1
        and output.dtype.kind in "biuf"
        and output.dtype.isnative
    ):
        return len(output), _ipc_stream(pa.Table.from_arrays([pa.array(output)], names=["0"]))
    frame = prediction_to_frame(output)
    return len(frame), frame_to_arrow_bytes(frame, what=what, result_type=result_type)


def prediction_to_frame(output: Any) -> pd.DataFrame:
    """Turn a model's raw output into rows: string column names and a default index.

    DataFrame as is; Series -> one column (its name or "0"); 1-D array or list of scalars ->
    column "0"; 2-D array -> columns "0".."k-1"; 3+ dims -> column "0" of nested lists;
    dict of arrays and list of dicts -> a frame with their keys as columns.
    """
    if isinstance(output, pd.DataFrame):
        df = output
    elif isinstance(output, pd.Series):
        df = output.to_frame("0" if output.name is None else str(output.name))
    elif isinstance(output, np.ndarray):
        df = _array_to_frame(output)
    elif isinstance(output, dict):
        df = _dict_to_frame(output)
    elif isinstance(output, (list, tuple)):
        if output and all(isinstance(item, dict) for item in output):
            df = pd.DataFrame(list(output))
        else:
            rows = [_row_cell(item) for item in output]
            df = pd.DataFrame({"0": pd.Series(rows, dtype=None if rows else object)})
    else:
        raise ResultTypeError(
            f"the model returned a {type(output).__name__}; expected a DataFrame, Series, "
            "numpy array, list or dict of columns"
        )
    names = [str(c) for c in df.columns]
    plain_index = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    if names == list(df.columns) and plain_index:
        return df
    df = df.copy(deep=False)
    df.columns = names
    if not plain_index:
        df.index = pd.RangeIndex(len(df))
    return df
