"""The chaos harness's view of one application's spark_pyfunc processes, read from /proc.

A snapshot finds every process that carries the application's tag (``standalone.TAG_VAR``)
and sorts the spark_pyfunc ones into four classes, each with the stage of its life it is in:

- ``launcher``: ``python -m spark_pyfunc._host ... --detach`` whose parent is a Python
  worker; ``before-fork`` while it has no child, ``after-fork`` once it has forked the host;
- ``host``: the host (the prefork supervisor): ``importing`` from its fork, ``loading`` once
  the model's load_context logged, ``serving`` once its log or the ``.stage`` file beside its
  pid file says so (``ready`` until it is first seen with a connection open, ``idle`` with
  none open after that: between two tasks), and
  ``replacing`` while one of its serving children is dead and not yet replaced (a zombie);
- ``child``: a prefork serving process (comm ``spf-host-child``): ``starting`` until its
  "serving process ... ready" line, then ``serving`` with a connection open, else ``idle``;
- ``worker``: a Python worker (a ``pyspark.daemon`` child) with a connection open to a host
  (``relaying``); a worker without one is not a target.

Connections are read from ``ss -xn`` (the peers of unix sockets) and /proc/PID/fd.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLASSES",
    "SERVED",
    "Proc",
    "Snapshot",
    "Watcher",
    "kill_at_fork",
    "children_of",
    "new_text",
    "snapshot",
    "state_of",
]

CLASSES = ("launcher", "host", "child", "worker")
HOST_MARKER = "spark_pyfunc._host"
CHILD_COMM = "spf-host-child"
_tags: dict[tuple[int, str], str | None] = {}  # (pid, start time) -> tag


@dataclass
class Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: list[str]
    state: str
    cls: str = ""
    stage: str = ""
    recorded: str = ""  # a host's stage as its .stage file says

    def arg(self, name: str) -> str | None:
        """The value after ``name`` on the command line."""
        if name in self.cmdline[:-1]:
            return self.cmdline[self.cmdline.index(name) + 1]
        return None

    @property
    def label(self) -> str:
        return f"{self.cls}/{self.stage}"


@dataclass
class Snapshot:
    at: float
    procs: dict[int, Proc] = field(default_factory=dict)

    def targets(self) -> dict[str, list[Proc]]:
        """The processes of each class present (classes with none are left out)."""
        found: dict[str, list[Proc]] = {}
        for proc in self.procs.values():
            if proc.cls in CLASSES and proc.stage:
                found.setdefault(proc.cls, []).append(proc)
        return found

    def of(self, cls: str) -> list[Proc]:
        return [p for p in self.procs.values() if p.cls == cls]


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, ppid, start time) from /proc/PID/stat."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def state_of(pid: int) -> str | None:
    """The process's state letter (``Z``: dead, not reaped), None once it is gone."""
    stat = _stat(pid)
    return stat[0] if stat else None


def children_of(pid: int) -> list[int] | None:
    """The pids of a process's children (its main thread's), None once it is gone."""
    text = _read(f"/proc/{pid}/task/{pid}/children")
    return None if text is None else [int(c) for c in text.split()]


def _tag(pid: int, start: str, var: str) -> str | None:
    key = (pid, start)
    if key not in _tags:
        env = _read(f"/proc/{pid}/environ") or ""
        prefix = var + "="
        _tags[key] = next((e[len(prefix) :] for e in env.split("\0") if e.startswith(prefix)), None)
    return _tags[key]


def _python_of_interest(cmd: str) -> bool:
    return HOST_MARKER in cmd or "pyspark.daemon" in cmd or "pyspark.worker" in cmd


#: Hosts (pid) seen with a connection open: a host is ``ready`` only before its first one
#: (between two tasks it has none either). A :class:`Watcher` fills it during a job.
SERVED: set[int] = set()


class Watcher:
    """Polls during a job so that the hosts that have served are known at the kill."""

    def __init__(self, tag: str, var: str, done: Any, every: float = 0.02) -> None:
        self.args = (tag, var)
        self.done, self.every = done, every
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.done.is_set():
            snap = snapshot(*self.args, with_stages=False)
            if any(p.cls == "host" and p.pid not in SERVED for p in snap.procs.values()):
                _stages(snap)
            self.done.wait(self.every)


def snapshot(tag: str, var: str, with_stages: bool = True) -> Snapshot:
    """Every tagged spark_pyfunc process, Python worker and daemon, classified."""
    snap = Snapshot(at=time.monotonic())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        raw = _read(f"/proc/{pid}/cmdline")
        if not raw or not _python_of_interest(raw):
            continue
        stat = _stat(pid)
        if stat is None or _tag(pid, stat[2], var) != tag:
            continue
        comm = (_read(f"/proc/{pid}/comm") or "").strip()
        snap.procs[pid] = Proc(pid, stat[1], comm, raw.rstrip("\0").split("\0"), stat[0])
    _classify(snap)
    if with_stages:
        _stages(snap)
    return snap


def _classify(snap: Snapshot) -> None:
    procs = snap.procs
    for proc in procs.values():
        if proc.state == "Z":
            proc.cls = "zombie"
            continue
        joined = " ".join(proc.cmdline)
        parent = procs.get(proc.ppid)
        parent_cmd = " ".join(parent.cmdline) if parent else ""
        if HOST_MARKER in joined:
            grandparent = procs.get(parent.ppid) if parent else None
            parent_is_launcher = grandparent is not None and HOST_MARKER not in " ".join(
                grandparent.cmdline
            )
            if proc.comm == CHILD_COMM:
                proc.cls = "child"
            elif "pyspark" in parent_cmd:
                proc.cls = "launcher"
            elif HOST_MARKER in parent_cmd and not parent_is_launcher:
                proc.cls = "child"  # forked by a host, not yet renamed (or a fork-mode child)
            else:
                proc.cls = "host"
        elif "pyspark" in joined:
            # the daemon's parent is the executor JVM (not listed); a worker's is the daemon
            proc.cls = "worker" if parent is not None and "pyspark" in parent_cmd else "daemon"


def _unix_peers() -> dict[int, int]:
    """Unix socket inode -> its peer's inode, for every connected unix stream socket."""
    try:
        out = subprocess.run(["ss", "-xn"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    peers: dict[int, int] = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[1] == "ESTAB":
            try:
                peers[int(parts[5])] = int(parts[7])
            except ValueError:
                continue
    return peers


def _socket_inodes(pid: int) -> set[int]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    except OSError:
        pass
    return found


def _host_log_stage(proc: Proc) -> str:
    """A host's stage from its log (the lines its pid wrote)."""
    from _chaos_model import LOAD_START

    log = proc.arg("--log")
    text = _read(log) if log else None
    stage = "importing"
    for line in (text or "").splitlines():
        if f" {proc.pid} " not in line:
            continue
        if LOAD_START in line:
            stage = "loading"
        elif re.search(r" INFO spark_pyfunc._host: serving \S+ in ", line):
            stage = "serving"
    return stage


def _recorded_stage(proc: Proc) -> str | None:
    """The stage the host recorded in the ``.stage`` file beside its pid file, if any."""
    pid_file = proc.arg("--pid-file")
    if not pid_file:
        return None
    for path in (os.path.splitext(pid_file)[0] + ".stage", pid_file + ".stage"):
        owner, _, stage = (_read(path) or "").strip().partition(" ")
        if owner == str(proc.pid) and stage:
            return stage
    return None


def _stages(snap: Snapshot) -> None:
    procs = snap.procs
    peers = (
        _unix_peers() if any(p.cls in ("host", "child", "worker") for p in procs.values()) else {}
    )
    inodes = {p.pid: _socket_inodes(p.pid) for p in procs.values() if p.cls != "launcher"}
    host_side = set()
    for p in procs.values():
        if p.cls in ("host", "child"):
            host_side |= inodes.get(p.pid, set())
    ready_lines = ""
    for proc in procs.values():
        kids = [c for c in procs.values() if c.ppid == proc.pid]
        connected = {i for i in inodes.get(proc.pid, set()) if i in peers}
        if proc.cls == "launcher":
            proc.stage = "after-fork" if kids else "before-fork"
        elif proc.cls == "host":
            # The host's own record (``loading`` from its start, then ``serving``) is the
            # authority; its log splits importing from the model's own load.
            proc.recorded = _recorded_stage(proc) or ""
            stage = _host_log_stage(proc)
            if proc.recorded == "serving":
                stage = "serving"
            family = [proc.pid, *(k.pid for k in kids)]
            if any(i in peers for pid in family for i in inodes.get(pid, set())):
                SERVED.add(proc.pid)
            elif stage == "serving":  # no connection open: before the first, or between
                stage = "idle" if proc.pid in SERVED else "ready"
            if any(k.state == "Z" for k in kids):
                stage = "replacing"
            proc.stage = stage
        elif proc.cls == "child":
            log = procs[proc.ppid].arg("--log") if proc.ppid in procs else None
            ready_lines = ready_lines or (_read(log) if log else "") or ""
            if f"serving process {proc.pid} ready" not in ready_lines:
                proc.stage = "starting"
            else:
                proc.stage = "serving" if connected else "idle"
        elif proc.cls == "worker":
            relaying = any(peers.get(i) in host_side for i in connected)
            proc.stage = "relaying" if relaying else ""


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


# ----------------------------------------------------------- the launcher after its fork

_PTRACE_SEIZE, _PTRACE_GETEVENTMSG, _PTRACE_DETACH, _PTRACE_CONT = 0x4206, 0x4201, 17, 7
_O_TRACEFORK, _EVENT_FORK, _WALL = 0x2, 1, 0x40000000


def kill_at_fork(pid: int, timeout: float, victim: str = "parent") -> int | None:
    """Stop ``pid`` the moment it forks (ptrace's fork event) and SIGKILL there either the
    parent (a launcher after its fork, before it printed the host's pid) or the new child
    (a host's serving process before it ran a line of its own); the other one goes on.
    Returns the child's pid, None if ``pid`` ended, did not fork in ``timeout`` or could not
    be traced. Needs ptrace over it (same user, root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(_PTRACE_SEIZE, pid, None, ctypes.c_void_p(_O_TRACEFORK)) != 0:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, status = os.waitpid(pid, _WALL | os.WNOHANG)
        except ChildProcessError:
            return None
        if got == 0:
            time.sleep(0.001)
            continue
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return None
        if (status >> 16) == _EVENT_FORK:
            msg = ctypes.c_ulong()
            libc.ptrace(_PTRACE_GETEVENTMSG, pid, None, ctypes.byref(msg))
            child = int(msg.value)
            with contextlib.suppress(OSError):
                os.waitpid(child, _WALL)  # the child starts traced and stopped
            if victim == "parent":
                os.kill(pid, signal.SIGKILL)  # stopped inside fork(): after it, before the print
                libc.ptrace(_PTRACE_DETACH, child, None, None)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, _WALL)
            else:
                os.kill(child, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(child, _WALL)
                libc.ptrace(_PTRACE_DETACH, pid, None, None)
            return child
        libc.ptrace(_PTRACE_CONT, pid, None, ctypes.c_void_p(os.WSTOPSIG(status)))
    libc.ptrace(_PTRACE_DETACH, pid, None, None)
    return None


def new_text(root: Path, offsets: dict[str, int], pattern: str) -> str:
    """What the files ``pattern`` under ``root`` got since ``offsets`` (updated in place)."""
    parts = []
    for log in sorted(root.glob(pattern)):
        with open(log, "rb") as fh:
            fh.seek(offsets.get(str(log), 0))
            parts.append(fh.read().decode(errors="replace"))
            offsets[str(log)] = fh.tell()
    return "".join(parts)
