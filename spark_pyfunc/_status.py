"""What a model host is doing, in a small status file: its model, mode, load time, traffic,
latencies, memory and restarts.

Answers the questions asked whenever a scoring job is slow or dies (did the model load once
per executor, how long did it take, did the host restart and why, how many rows at what
latency, how much memory) from one file per host, rewritten atomically (tmp + rename) every
few seconds by the host's main process and once more at exit, beside the host's pid file
(``_rendezvous.status_path``). ``spark-pyfunc hosts`` reads them on a machine and
``spark_pyfunc.host_report`` from every executor.

The figures come from the processes that serve: prefork children (and fork mode's
per-connection children) each count in their own slot of an anonymous shared mapping made
before they fork, with plain stores into their slot and no lock shared between processes;
the main process adds the slots up when it writes the file and folds a finished child's slot
into its own totals. Latencies go into log-scale histograms (four buckets per doubling, 1 µs
to about 4 min): cheap to add to, and p50/p99 within about 10%.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import mmap
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spark_pyfunc._rendezvous import (
    STATUS_SUFFIX,
    ProcessError,
    ProcProcess,
    process,
    read_exit_status,
    restarts_path,
    status_link_path,
    status_links,
    status_path,
)

__all__ = [
    "HostStatus",
    "Meter",
    "describe_exit",
    "host_state",
    "note_start",
    "read_status",
    "read_statuses",
    "statuses_on_machine",
]

logger = logging.getLogger("spark_pyfunc._host")

#: Seconds between two writes of a serving host's status file.
WRITE_EVERY = 2.0
#: Restart reasons kept in a status file (the count covers them all).
_REASONS_KEPT = 10
#: How long ``spark-pyfunc hosts`` lists an exited host whose link is left.
EXITED_KEPT = 24 * 3600.0

# Histogram: bucket i holds durations in [2**(i/4), 2**((i+1)/4)) µs.
_PER_DOUBLING = 4
_BUCKETS = 112
# Slot layout, in int64 fields.
_REQUESTS, _CALLS, _ROWS, _ERRORS, _PREDICT_NS, _FIRST_NS, _LAST_NS, _WAIT_NS = range(8)
_HIST_PREDICT = 8
_HIST_WAIT = _HIST_PREDICT + _BUCKETS
_FIELDS = _HIST_WAIT + _BUCKETS
#: Slots: 0 for the main process (thread mode, batching), the rest for forked children.
_SLOTS = 128


def _bucket(ns: int) -> int:
    if ns < 1000:
        return 0
    return min(int(math.log2(ns / 1000.0) * _PER_DOUBLING), _BUCKETS - 1)


def _quantile_ms(hist: list[int], q: float) -> float | None:
    """The q-quantile of a histogram, in ms (the bucket's geometric middle)."""
    total = sum(hist)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return round(2 ** ((i + 0.5) / _PER_DOUBLING) / 1000.0, 3)
    return None  # pragma: no cover - seen reaches total


class Meter:
    """Counters of the requests a host answered, in memory its forked children share.

    Each process writes only its own slot (:meth:`use` picks it in a child); a process-local
    lock keeps a prefork child's overflow threads from losing an update, and nothing is
    shared between processes but the stores themselves. The main process, which alone forks
    and reads, hands out slots (:meth:`claim`) and folds a finished child's (:meth:`retire`).
    """

    def __init__(self, batching: bool = False) -> None:
        self.batching = batching
        self._map = mmap.mmap(-1, 8 * _FIELDS * _SLOTS)
        self._slots = (ctypes.c_int64 * _FIELDS * _SLOTS).from_buffer(self._map)
        self._slot = self._slots[0]
        self._lock = threading.Lock()
        self._retired = [0] * _FIELDS  # main process only: finished children's figures
        self._owners: dict[int, int] = {}  # main process only: pid -> slot

    # -------------------------------------------------------------- the request path

    def use(self, slot: int | None) -> None:
        """Count this process's requests in ``slot`` (a forked child; None: nowhere shared)."""
        self._lock = threading.Lock()  # a fork may have copied it held
        self._slot = self._slots[slot] if slot is not None else (ctypes.c_int64 * _FIELDS)()

    def answered(self, rows: int, ok: bool, predict_ns: int | None) -> None:
        """One call of the server's handle: ``rows`` in, whether it succeeded, and the
        model's own time (None: it did not get to the model)."""
        now = time.time_ns()
        with self._lock:
            slot = self._slot
            if not self.batching:
                slot[_REQUESTS] += 1
            slot[_CALLS] += 1
            slot[_ROWS] += rows
            if not ok:
                slot[_ERRORS] += 1
            if predict_ns is not None:
                slot[_PREDICT_NS] += predict_ns
                slot[_HIST_PREDICT + _bucket(predict_ns)] += 1
            if slot[_FIRST_NS] == 0:
                slot[_FIRST_NS] = now
            slot[_LAST_NS] = now

    def waited(self, waits_ns: list[int]) -> None:
        """Batching: how long each request of a batch queued before the model's call."""
        with self._lock:
            slot = self._slot
            slot[_REQUESTS] += len(waits_ns)
            for ns in waits_ns:
                slot[_WAIT_NS] += ns
                slot[_HIST_WAIT + _bucket(ns)] += 1

    # ------------------------------------------------------------ the main process

    def claim(self, pid_of: Callable[[], int]) -> int:
        """Fork with ``pid_of`` (os.fork) giving the child a free slot of its own."""
        used = set(self._owners.values())
        slot = next((s for s in range(1, _SLOTS) if s not in used), None)
        if slot is not None:
            ctypes.memset(ctypes.addressof(self._slots[slot]), 0, 8 * _FIELDS)
        pid = pid_of()
        if pid == 0:
            self.use(slot)
        elif slot is not None:
            self._owners[pid] = slot
        return pid

    def retire(self, live: set[int]) -> None:
        """Fold the slots of children no longer in ``live`` (reaped) into the totals."""
        for pid, slot in list(self._owners.items()):
            if pid not in live:
                values = list(self._slots[slot])
                self._fold(self._retired, values)
                del self._owners[pid]

    @staticmethod
    def _fold(into: list[int], values: list[int]) -> None:
        for i, value in enumerate(values):
            if i == _FIRST_NS:
                if value and (not into[i] or value < into[i]):
                    into[i] = value
            elif i == _LAST_NS:
                into[i] = max(into[i], value)
            else:
                into[i] += value

    def totals(self) -> dict[str, Any]:
        """Every process's figures added up: counts, seconds, p50/p99 in ms."""
        total = list(self._retired)
        for slot in [0, *self._owners.values()]:
            self._fold(total, list(self._slots[slot]))
        predict = total[_HIST_PREDICT:_HIST_WAIT]
        wait = total[_HIST_WAIT:_FIELDS]
        busy = (total[_LAST_NS] - total[_FIRST_NS]) / 1e9 if total[_FIRST_NS] else 0.0
        return {
            "requests": total[_REQUESTS],
            "model_calls": total[_CALLS],
            "rows": total[_ROWS],
            "errors": total[_ERRORS],
            "predict_seconds": round(total[_PREDICT_NS] / 1e9, 6),
            "predict_ms_p50": _quantile_ms(predict, 0.5),
            "predict_ms_p99": _quantile_ms(predict, 0.99),
            "queue_wait_ms_p50": _quantile_ms(wait, 0.5) if self.batching else None,
            "queue_wait_ms_p99": _quantile_ms(wait, 0.99) if self.batching else None,
            "first_request_at": total[_FIRST_NS] / 1e9 if total[_FIRST_NS] else None,
            "last_request_at": total[_LAST_NS] / 1e9 if total[_LAST_NS] else None,
            "rows_per_second": round(total[_ROWS] / busy, 1) if busy > 0 else None,
        }


class _TimedModel:
    """The loaded model, its invoke timed into the meter's current request."""

    def __init__(self, model: Any, last: threading.local) -> None:
        self._model = model
        self._last = last

    def invoke(self, method: str, data: Any, params: dict | None = None) -> Any:
        started = time.perf_counter_ns()
        try:
            return self._model.invoke(method, data, params)
        finally:
            self._last.ns = time.perf_counter_ns() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _instrument(server: Any, meter: Meter) -> None:
    """Count every answer of ``server`` (a _serving.ModelServer) in ``meter``: its handle and
    its model's invoke are wrapped on the instance, so the server's code is unchanged."""
    last = threading.local()
    handle = server.handle
    server.model = _TimedModel(server.model, last)

    def counted(header: dict, payload: Any) -> tuple[dict, Any]:
        last.ns = None
        reply = handle(header, payload)
        try:
            rows = int(header.get("rows", 0))
        except (TypeError, ValueError):
            rows = 0
        meter.answered(rows, bool(reply[0].get("ok")), last.ns)
        return reply

    server.handle = counted


# ---------------------------------------------------------------------------- memory


def _pss_kib(pid: int) -> int | None:
    try:
        proc = process(pid)
        if isinstance(proc, ProcProcess):
            return proc.memory_kib().get("pss")
        return int(proc.memory_full_info().pss) // 1024  # pragma: no cover - macOS
    except (*ProcessError, AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------- the file


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def read_status(path: str | os.PathLike[str]) -> dict | None:
    """A status file's figures (None if it is gone or unreadable)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_restarts(pid_file: str) -> list[dict]:
    try:
        with open(restarts_path(pid_file)) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return [r for r in found if isinstance(r, dict)]


def describe_exit(record: dict | None) -> str:
    """An exit record (``_rendezvous.write_exit_status``'s, or a status file's ``exit``) in
    words; None means the process recorded nothing: a signal it could not catch."""
    if record is None:
        return "killed by SIGKILL or a signal it cannot catch (no exit record; out of memory?)"
    if record.get("reason"):
        return str(record["reason"])
    if record.get("signal"):
        return f"stopped by {record['signal']} while {record.get('stage', 'serving')}"
    error = f": {record['error']}" if record.get("error") else ""
    return f"exited with code {record.get('code')} while {record.get('stage', 'serving')}{error}"


def note_start(pid_file: str) -> None:
    """Record, before a host for ``pid_file`` starts, why the previous one is gone (if there
    was one): the client that starts it calls this, and the new host reports the record."""
    previous = read_status(status_path(pid_file))
    if previous is None or not isinstance(previous.get("pid"), int):
        return
    pid = previous["pid"]
    if host_state(previous) in ("loading", "serving"):
        return  # still running (another starter's race): not a restart
    exit_record = previous.get("exit") or read_exit_status(pid_file, pid)
    record = {
        "at": time.time(),
        "previous_pid": pid,
        "previous_state": previous.get("state"),
        "reason": f"pid {pid} ({previous.get('state')}): {describe_exit(exit_record)}",
    }
    with contextlib.suppress(OSError), open(restarts_path(pid_file), "a") as f:
        f.write(json.dumps(record) + "\n")


def _is_host(pid: int) -> bool:
    try:
        return "spark_pyfunc._host" in process(pid).cmdline()
    except ProcessError:
        return False


def host_state(status: dict) -> str:
    """``loading``, ``serving``, ``exited`` or ``dead`` (it said it was running, but its
    process is gone: killed without a chance to say so)."""
    state = str(status.get("state", "unknown"))
    if state in ("loading", "serving") and not (
        isinstance(status.get("pid"), int) and _is_host(status["pid"])
    ):
        return "dead"
    return state


def read_statuses(directory: str | os.PathLike[str]) -> list[dict]:
    """Every host status file in ``directory`` (an executor's state directory), with its
    ``state`` brought up to date (see :func:`host_state`)."""
    found = []
    with contextlib.suppress(OSError):
        for path in sorted(Path(directory).glob(f"*{STATUS_SUFFIX}")):
            status = read_status(path)
            if status is not None:
                found.append(dict(status, state=host_state(status), status_file=str(path)))
    return found


def statuses_on_machine(
    directories: list[str] | None = None, socket_base: str | None = None
) -> list[dict]:
    """The hosts of this user on this machine: those the socket directory links to (and
    every other status file beside theirs), or those in ``directories``. Links whose file
    is gone (its application ended) or that name a host exited over a day ago are removed."""
    dirs: list[str] = list(directories or [])
    if directories is None:
        for link in status_links(socket_base):
            status = read_status(link)
            stale = status is None or (
                host_state(status) in ("exited", "dead")
                and time.time() - float(status.get("updated_at", 0)) > EXITED_KEPT
            )
            if stale:
                with contextlib.suppress(OSError):
                    link.unlink()
                continue
            dirs.append(os.path.dirname(os.path.realpath(link)))
    seen: dict[str, dict] = {}
    for directory in dict.fromkeys(dirs):
        for status in read_statuses(directory):
            seen[status["status_file"]] = status
    return list(seen.values())


# ---------------------------------------------------------------------------- the host


class HostStatus:
    """The host's side: keeps the figures that only the main process knows and writes them.

    Created before the model loads (the file then says ``loading``), told when the host
    serves (:meth:`serving`), ticked by the host's supervising loop (:meth:`tick`, which
    writes every :data:`WRITE_EVERY` seconds) and told how it ended (:meth:`stopped`).
    """

    def __init__(
        self,
        *,
        pid_file: str | None,
        socket_file: str,
        log_file: str,
        model_dir: str,
        model_uri: str | None,
        model_sha256: str | None,
        mode_asked: str,
        batching: bool,
    ) -> None:
        self.path = status_path(pid_file) if pid_file is not None else None
        self.link = status_link_path(socket_file)
        self.meter = Meter(batching)
        self.host: Any = None
        self._written = 0.0
        self._peak_kib = 0
        restarts = _read_restarts(pid_file) if pid_file is not None else []
        self.info: dict[str, Any] = {
            "version": 1,
            "key": os.path.basename(os.path.splitext(socket_file)[0]),
            "pid": os.getpid(),
            "machine": socket.gethostname(),
            "state": "loading",
            "model_uri": model_uri or model_dir,
            "model_dir": model_dir,
            "model_sha256": model_sha256,
            "mode_asked": mode_asked,
            "mode": None,
            "batching": batching,
            "serving_processes": None,
            "started_at": time.time(),
            "load_seconds": None,
            "log": log_file,
            "restarts": len(restarts),
            "restart_reasons": [r.get("reason") for r in restarts[-_REASONS_KEPT:]],
            "exit": None,
        }
        self.write()
        self._link()

    def _link(self) -> None:
        """Point the socket directory's link at this host's status file. Again once the
        host listens: an exiting host may have removed the directory meanwhile (it does
        when it leaves the directory empty), and listening recreated it."""
        if self.path is None:
            return
        tmp = f"{self.link}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link)

    def instrument(self, server: Any) -> None:
        """Count the answers of ``server`` (before any serving process forks)."""
        _instrument(server, self.meter)

    def serving(self, host: Any, mode: str, load_seconds: float) -> None:
        """The host listens: say so, in the file and in one log line."""
        self.host = host
        self.info.update(
            state="serving",
            mode=mode,
            serving_processes=host.processes if mode == "prefork" else 1,
            load_seconds=round(load_seconds, 3),
        )
        figures = self.write()
        self._link()
        logger.info(
            "model host ready: %s loaded in %.2fs, %s mode%s, memory %s (host and serving "
            "processes, PSS); status %s",
            self.info["model_uri"],
            load_seconds,
            mode,
            f" with {host.processes} serving processes" if mode == "prefork" else "",
            _mib_text(figures.get("pss_mib")),
            self.path,
        )

    def tick(self) -> None:
        if time.monotonic() - self._written >= WRITE_EVERY:
            self.write()

    def fork(self) -> int:
        """os.fork, the child counting in a slot of its own."""
        return self.meter.claim(os.fork)

    def _memory_kib(self) -> int | None:
        pids = {os.getpid()}
        if self.host is not None:
            pids |= set(self.host.workers.values()) | set(self.host.children)
        sizes = [s for s in map(_pss_kib, pids) if s is not None]
        return sum(sizes) if sizes else None

    def write(self) -> dict[str, Any]:
        """Write the status file now (atomically); returns what it says."""
        self._written = time.monotonic()
        if self.host is not None:
            live = set(self.host.workers.values()) | set(self.host.children)
            self.meter.retire(live)
            self.info["serving_pids"] = sorted(self.host.workers.values())
        kib = self._memory_kib() if self.info["state"] != "exited" else None
        if kib is not None:
            self._peak_kib = max(self._peak_kib, kib)
        now = time.time()
        figures = dict(
            self.info,
            **self.meter.totals(),
            updated_at=now,
            uptime_seconds=round(now - self.info["started_at"], 3),
            pss_mib=round(kib / 1024, 1) if kib is not None else None,
            peak_pss_mib=round(self._peak_kib / 1024, 1) if self._peak_kib else None,
        )
        if self.path is not None:
            with contextlib.suppress(OSError):
                _write_json(self.path, figures)
        return figures

    def stopped(self, record: dict | None, watched_gone: bool) -> None:
        """The last write, and the log line with the host's totals. The link in the socket
        directory stays, so ``spark-pyfunc hosts`` lists the exited host, unless the host
        ended with its executor (or by SIGTERM, as Spark's teardown does): the executor's
        directory then goes with it."""
        if record is None:
            idle = getattr(self.host, "idle_timeout", None)
            reason = (
                "its executor's process ended"
                if watched_gone
                else f"no connection for {idle:g}s: it exited idle"
            )
            record = {"code": 0, "reason": reason}
        self.write()  # the memory while it still holds it
        if watched_gone or record.get("signal") == "SIGTERM":
            with contextlib.suppress(OSError):
                if os.path.realpath(self.link) == os.path.realpath(str(self.path)):
                    os.unlink(self.link)
        self.info.update(state="exited", exit=dict(record, reason=describe_exit(record)))
        figures = self.write()
        logger.info(
            "model host stopping (%s): %d requests, %d rows, %d errors; predict %.2fs "
            "(p50 %s ms, p99 %s ms); up %.1fs; peak memory %s",
            self.info["exit"]["reason"],
            figures["requests"],
            figures["rows"],
            figures["errors"],
            figures["predict_seconds"],
            figures["predict_ms_p50"],
            figures["predict_ms_p99"],
            figures["uptime_seconds"],
            _mib_text(figures.get("peak_pss_mib")),
        )


def _mib_text(mib: float | None) -> str:
    return f"{mib:.1f} MiB" if mib is not None else "n/a"
