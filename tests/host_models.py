"""Model classes for the model host tests.

Pickled by reference: the host imports this module, which it finds because the client hands
its own ``sys.path`` (pytest puts tests/ on it) to the host, or, on a cluster, because the model
carries it as a code path.

Gates let fault tests land a fault at a known moment instead of sleeping and hoping: at gate
``name`` a process touches ``at-<name>-<pid>`` in the gates directory and waits until
``go-<name>`` exists there; the test sees the first file, delivers its fault, then opens the
gate. The ``import`` gate runs when a model host imports this module (its ``--model-config``
names the gates), ``load`` in load_context, ``predict`` in Faulty.predict.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from spark_pyfunc.python_model import PythonModel

#: How long a gate waits to be opened before it gives up (a test that died leaves it shut).
GATE_TIMEOUT = 300.0


def gate(directory: str, name: str, host: int | None = None) -> None:
    """Announce that this process reached gate ``name``, and wait until the test opens it.

    The announcement is named by ``host`` (default: this process) and holds this process's
    pid: in a prefork host the gate is reached by a serving child of the host that loaded
    the model."""
    folder = Path(directory)
    (folder / f"at-{name}-{host or os.getpid()}").write_text(str(os.getpid()))
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (folder / f"go-{name}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name} in {folder} was never opened")
        time.sleep(0.02)


def _gates(config: dict | None) -> tuple[str | None, list]:
    config = config or {}
    return config.get("gates_dir"), list(config.get("gates", ()))


def _import_gate() -> None:
    """In a model host whose model_config asks for it, stop at the ``import`` gate: the host is
    then importing the model's code, before load_context."""
    if "--model-config" not in sys.argv:
        return
    try:
        config = json.loads(sys.argv[sys.argv.index("--model-config") + 1])
    except (ValueError, IndexError):
        return
    directory, gates = _gates(config if isinstance(config, dict) else None)
    if directory and "import" in gates:
        gate(directory, "import")


_import_gate()

FEATURES = ["a", "b"]
#: Params the saved signature declares (with these defaults).
PARAMS = {"scale": 1.0, "fail": "", "sleep": 0.0, "crash": False}


class Counting(PythonModel):
    """score = (2a + b) * scale + offset.

    load_context appends a line to model_config["count_file"] (to count loads), stops at the
    ``load`` gate if asked, takes ``offset`` from model_config, sleeps ``load_delay`` seconds,
    raises if ``fail_load`` and exits with code 7 if ``exit_load``.
    predict raises for ``fail``, dies for ``crash`` and sleeps ``sleep`` seconds (params).
    """

    def load_context(self, context):
        config = dict(context.model_config or {})
        if config.get("count_file"):
            with open(config["count_file"], "a") as f:
                f.write(f"load {os.getpid()}\n")
        directory, gates = _gates(config)
        if directory and "load" in gates:
            gate(directory, "load")
        time.sleep(float(config.get("load_delay", 0.0)))
        if config.get("alloc_bytes"):  # more memory than the machine has: MemoryError
            self.blob = bytearray(int(config["alloc_bytes"]))
        if config.get("fail_load"):
            raise RuntimeError("load_context failed on purpose")
        if config.get("exit_load"):
            sys.exit(7)  # model code that ends the process: an exit of its own, not a kill
        self.offset = float(config.get("offset", 0.0))

    def predict(self, context, model_input, params=None):
        params = params or {}
        if params.get("fail"):
            raise ValueError(f"predict refused: {params['fail']}")
        if params.get("crash"):
            os._exit(3)  # the process serving the request dies, as a segfault would
        if params.get("sleep"):
            time.sleep(float(params["sleep"]))
        score = (2 * model_input["a"] + model_input["b"]) * float(params.get("scale", 1.0))
        return pd.DataFrame({"score": score + self.offset})

    def describe(self, context, model_input, params=None):
        """A custom inference method: one string per row."""
        return [f"a={a:g} b={b:g}" for a, b in zip(model_input["a"], model_input["b"], strict=True)]

    def whoami(self, context, model_input, params=None):
        """The pid of the process running predict, on every row."""
        return pd.DataFrame({"pid": [os.getpid()] * len(model_input)})


def peer_pids() -> list[int]:
    """The pids at the other end of this process's Unix socket connections (SO_PEERCRED):
    in a model host, the Python workers connected to it."""
    pids = set()
    for conn in psutil.Process().net_connections(kind="unix"):
        if conn.fd < 0:
            continue
        sock = socket.socket(fileno=os.dup(conn.fd))
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            continue
        finally:
            sock.close()
        pid = struct.unpack("3i", creds)[0]
        if pid > 0 and pid != os.getpid():
            pids.add(pid)
    return sorted(pids)


class Faulty(PythonModel):
    """y = 2x + id, for the cluster fault tests (inputs ``id``, ``x``).

    Records its evidence in model_config["gates_dir"]: ``loads`` (one ``<pid>`` line per
    load_context) and ``calls`` (``<host pid> <first id> <rows>`` per batch, so a resent batch
    shows twice; the host is the process that loaded the model, also when a prefork child
    runs predict). Stops at the gates named in model_config["gates"]; ``predict`` only for the
    batch starting at model_config["gate_id"], after writing ``peers-<pid>``: the workers
    connected to this host at that moment, one of which is waiting for that batch.
    """

    def load_context(self, context):
        # The host: the process that loads the model (a prefork host's serving children
        # inherit it), so that evidence names hosts whatever the serving mode.
        self.host = os.getpid()
        directory, gates = _gates(context.model_config)
        if directory:  # none when save_model infers the signature
            with open(Path(directory) / "loads", "a") as f:
                f.write(f"{os.getpid()}\n")
        if directory and "load" in gates:
            gate(directory, "load")

    def predict(self, context, model_input, params=None):
        config = context.model_config or {}
        directory, gates = _gates(config)
        first = int(model_input["id"].iloc[0])
        if directory:
            with open(Path(directory) / "calls", "a") as f:
                f.write(f"{self.host} {first} {len(model_input)}\n")
        if directory and "predict" in gates and first == config.get("gate_id"):
            peers = " ".join(str(p) for p in peer_pids())
            (Path(directory) / f"peers-{self.host}").write_text(peers)
            gate(directory, "predict", self.host)
        return pd.DataFrame({"y": 2.0 * model_input["x"] + model_input["id"]})


class Threaded(Counting):
    """Counting, with a background thread started by load_context (as onnxruntime's session
    pools or a model refreshing a cache would): forking the loaded process is unsafe."""

    def load_context(self, context):
        super().load_context(context)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stop.wait, daemon=True)
        self._thread.start()


class Batched(PythonModel):
    """y = (2a + b) * scale, recording each call for the batching tests.

    Appends ``<rows> <scale>`` per call to model_config["calls"], sleeps model_config["cost"]
    seconds per call (a fixed cost, as a GPU kernel launch), and raises for the ``fail``
    param, so that a test sees what calls the model made and what each returned."""

    def load_context(self, context):
        self.config = dict(context.model_config or {})

    def predict(self, context, model_input, params=None):
        params = params or {}
        scale = float(params.get("scale", 1.0))
        if self.config.get("calls"):
            with open(self.config["calls"], "a") as f:
                f.write(f"{len(model_input)} {scale:g}\n")
        time.sleep(float(self.config.get("cost", 0.0)))
        if params.get("fail"):
            raise ValueError(f"predict refused: {params['fail']}")
        return pd.DataFrame({"y": (2 * model_input["a"] + model_input["b"]) * scale})


class Environ(PythonModel):
    """Reports the environment it runs in: the pid that loaded it and CUDA_VISIBLE_DEVICES,
    with y = 2x, for the GPU placement tests (inputs ``x``)."""

    def load_context(self, context):
        self.pid = os.getpid()
        self.devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def predict(self, context, model_input, params=None):
        n = len(model_input)
        return pd.DataFrame(
            {
                "y": 2.0 * model_input["x"],
                "pid": [self.pid] * n,
                "devices": [os.environ.get("CUDA_VISIBLE_DEVICES", "")] * n,
            }
        )
