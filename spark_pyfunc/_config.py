"""Every ``spark.pyfunc.*`` setting and choice list, with its default and parser, in one place.

``spark_udf`` reads these on the driver, the CLI offers the same choices, and the host's
command line accepts the same modes: one definition each, so a new mode or a changed default
cannot reach one of them and not the others. A leaf module: it imports only the errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spark_pyfunc.errors import InvalidArgumentError

__all__ = [
    "AUTO_THRESHOLD",
    "BATCHING",
    "BATCH_CALLS",
    "BATCH_MAX_ROWS",
    "BATCH_MAX_WAIT_MS",
    "CACHE_DIR",
    "CACHE_MAX_BYTES",
    "DEFAULT_MODE",
    "DEFAULT_SCOPE",
    "ENV_BUILD_TIMEOUT",
    "ENV_CACHE_DIR",
    "ENV_MANAGERS",
    "ENV_UV_OFFLINE_FIRST",
    "HOST_LOG_DIR",
    "HOST_MODE",
    "HOST_PROCESSES",
    "usable_cpus",
    "IDLE_TIMEOUT",
    "MODES",
    "PIPELINE_DEPTH",
    "PROG",
    "SCOPES",
    "SETTINGS",
    "SHIP_PACKAGE",
    "SHIPPING",
    "SHIPPING_CHOICES",
    "SHIPPING_CHUNK_BYTES",
    "START_TIMEOUT",
    "Setting",
]

#: The console script's name: its messages, Spark job groups and the embedded app's name.
PROG = "spark-pyfunc"

#: Where ``spark_udf`` keeps the model: ``auto`` picks by the model's size on disk.
SCOPES = ("auto", "executor", "process")
DEFAULT_SCOPE = "auto"

#: How a model host serves its connections (see _host.py); ``auto`` picks after loading.
MODES = ("auto", "prefork", "thread", "fork")
DEFAULT_MODE = "auto"

#: ``spark_udf``'s ``env_manager`` (MLflow's names): ``local`` scores in the executors' own
#: Python; the others restore the model's environment once per executor machine for its host.
ENV_MANAGERS = ("local", "uv", "virtualenv", "conda")

#: ``spark.pyfunc.shipPackage``: ship spark_pyfunc to the executors as a zip (see _udf.py).
SHIP_CHOICES = ("auto", "true", "false")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(text)
    return lowered == "true"


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError(text)
    return value


def _mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(text)
    return text


def _ship(text: str) -> str:
    if text.lower() not in SHIP_CHOICES:
        raise ValueError(text)
    return text.lower()


@dataclass(frozen=True)
class Setting:
    """One Spark configuration key: its default (None: unset) and how its text is read."""

    key: str
    default: Any
    parse: Callable[[str], Any]
    expected: str

    def read(self, text: str | None) -> Any:
        """The value of ``text`` (the key's raw value, or None if unset or empty).

        Raises:
            InvalidArgumentError: naming the key, what it must be and the value given.
        """
        if text is None or not str(text).strip():
            return self.default
        try:
            return self.parse(str(text).strip())
        except ValueError:
            raise InvalidArgumentError(
                f"{self.key} must be {self.expected}, not {text!r}"
            ) from None


AUTO_THRESHOLD = Setting(
    "spark.pyfunc.scope.autoThresholdBytes", 64 * 1024 * 1024, int, "an integer (bytes)"
)
IDLE_TIMEOUT = Setting("spark.pyfunc.host.idleTimeout", 600.0, float, "a number of seconds")
START_TIMEOUT = Setting("spark.pyfunc.host.startTimeout", 600.0, float, "a number of seconds")
HOST_MODE = Setting("spark.pyfunc.host.mode", None, _mode, f"one of {list(MODES)}")
HOST_LOG_DIR = Setting("spark.pyfunc.host.logDir", None, str, "a directory")
HOST_PROCESSES = Setting("spark.pyfunc.host.processes", None, _positive_int, "a positive integer")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; the machine's count where the system
    has none): the most serving processes a prefork host runs unless HOST_PROCESSES is set."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - no affinity API (macOS)
        return os.cpu_count() or 1


#: Request batching in the host (see _batching.py). Unset (None): on for a host that serves a
#: GPU, off otherwise; the worker decides, since only it knows the task's GPU addresses.
BATCHING = Setting("spark.pyfunc.host.batching.enabled", None, _boolean, "true or false")
BATCH_MAX_WAIT_MS = Setting(
    "spark.pyfunc.host.batching.maxWaitMs", 5.0, _non_negative_float, "a number of milliseconds"
)
BATCH_MAX_ROWS = Setting(
    "spark.pyfunc.host.batching.maxBatchRows", 32768, _positive_int, "a positive integer"
)
#: Batched model calls that may run at once: 2 lets the next batch's conversions run while the
#: device computes the current one, at the cost of two batches' memory on the device.
BATCH_CALLS = Setting(
    "spark.pyfunc.host.batching.concurrentCalls", 1, _positive_int, "a positive integer"
)
#: Requests a Python worker keeps in flight to its host (see _client.predict_stream): the host
#: has the next requests while the worker turns an answer into Spark's output; 1 sends a
#: request only once the previous one is answered. 3: the batching harness's figures.
PIPELINE_DEPTH = Setting("spark.pyfunc.host.pipelineDepth", 3, _positive_int, "a positive integer")
# Where each executor machine keeps restored model environments (default:
# ~/.cache/spark_pyfunc/envs of the executor's user), and how long a worker waits for another
# worker's build of the same environment before it gives up.
ENV_CACHE_DIR = Setting("spark.pyfunc.env.cacheDir", None, str, "a directory")
ENV_BUILD_TIMEOUT = Setting("spark.pyfunc.env.buildTimeout", 1800.0, float, "a number of seconds")
# uv installs from its cache alone when that satisfies every requirement (no index round
# trips: ~10x faster), and goes to the index only when it does not; false: always the index.
ENV_UV_OFFLINE_FIRST = Setting("spark.pyfunc.env.uvOfflineFirst", True, _boolean, "true or false")
SHIP_PACKAGE = Setting("spark.pyfunc.shipPackage", "auto", _ship, f"one of {list(SHIP_CHOICES)}")

#: How the model reaches the executors (see _distribution.py): ``auto`` picks per session.
SHIPPING_CHOICES = ("auto", "files", "broadcast", "direct")


def _shipping(text: str) -> str:
    if text.lower() not in SHIPPING_CHOICES:
        raise ValueError(text)
    return text.lower()


#: How the model reaches the executors: files (the driver serves each executor), broadcast
#: (Spark's TorrentBroadcast, executors serve each other), direct (executors read the store).
SHIPPING = Setting("spark.pyfunc.shipping", "auto", _shipping, f"one of {list(SHIPPING_CHOICES)}")
#: Size of one broadcast piece of the model archive (each is one Spark broadcast; < 2 GiB).
SHIPPING_CHUNK_BYTES = Setting(
    "spark.pyfunc.shipping.chunkBytes", 64 << 20, _positive_int, "a positive integer (bytes)"
)
#: The machine-wide cache of unpacked models (default ~/.cache/spark_pyfunc/models of the
#: executor's user), shared by every executor and application of the user on the machine.
CACHE_DIR = Setting("spark.pyfunc.cache.dir", None, str, "a directory")
#: The cache's cap: least recently used entries no process uses are evicted above it.
CACHE_MAX_BYTES = Setting(
    "spark.pyfunc.cache.maxBytes", 50 << 30, _positive_int, "a positive integer (bytes)"
)

#: Every setting, by key.
SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        AUTO_THRESHOLD,
        IDLE_TIMEOUT,
        START_TIMEOUT,
        HOST_MODE,
        HOST_LOG_DIR,
        HOST_PROCESSES,
        BATCHING,
        BATCH_MAX_WAIT_MS,
        BATCH_MAX_ROWS,
        BATCH_CALLS,
        PIPELINE_DEPTH,
        ENV_CACHE_DIR,
        ENV_BUILD_TIMEOUT,
        ENV_UV_OFFLINE_FIRST,
        SHIP_PACKAGE,
        SHIPPING,
        SHIPPING_CHUNK_BYTES,
        CACHE_DIR,
        CACHE_MAX_BYTES,
    )
}
