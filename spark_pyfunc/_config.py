"""Every ``spark.pyfunc.*`` setting and choice list, declared once.

Each :class:`Setting` (the idea of gunicorn's) carries its Spark key, default, parser,
documentation and, for the host's settings, its command-line flag. From that one declaration
come the validation ``spark_udf`` runs on the driver (:meth:`Setting.read`), the model host's
command line (:func:`host_argv` builds it in the worker, :func:`add_host_arguments` parses it
in the host) and the README's configuration table (:func:`settings_table`,
tests/test_docs.py checks it): a new setting, or a changed default, reaches all of them. The
decisions made from several settings at once live here too (:func:`serving_mode`).

A leaf module: it imports only the errors.
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
    """One Spark configuration key: its default (None: unset), how its text is read, what it
    does (``doc``, the README's table) and, for a setting the model host takes on its command
    line, its flag there (``flag``)."""

    key: str
    default: Any
    parse: Callable[[str], Any]
    expected: str
    doc: str = ""
    flag: str | None = None
    #: The default as the README's table gives it, where the value alone would not tell.
    default_text: str | None = None

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
    "spark.pyfunc.scope.autoThresholdBytes", 64 * 1024 * 1024, int, "an integer (bytes)",
    doc='model size on disk from which `scope="auto"` uses the executor host',
)
IDLE_TIMEOUT = Setting(
    "spark.pyfunc.host.idleTimeout", 600.0, float, "a number of seconds",
    doc="seconds a host with no connection waits before exiting (raise it above a stream's "
    "longest gap between micro-batches)",
    flag="--idle-timeout",
)
START_TIMEOUT = Setting(
    "spark.pyfunc.host.startTimeout", 600.0, float, "a number of seconds",
    doc="seconds a worker waits for a host to load its model",
)
HOST_MODE = Setting(
    "spark.pyfunc.host.mode", DEFAULT_MODE, _mode, f"one of {list(MODES)}",
    doc="`auto` (prefork unless the loaded model started threads or uses a GPU, then thread; "
    "logged), `prefork` (P long-lived forked serving processes sharing one loaded copy), "
    "`thread` (one thread per connection in one process) or `fork` (a forked child per "
    "connection)",
    flag="--mode",
)
HOST_LOG_DIR = Setting(
    "spark.pyfunc.host.logDir", None, str, "a directory",
    doc="directory (on the executors' machines, created if missing) for the hosts' logs, "
    "`spark_pyfunc-host-<key>.log`; with a local master the executor's directory is "
    "temporary, so set this to keep the logs after the job",
    default_text="the executor's directory",
)
HOST_PROCESSES = Setting(
    "spark.pyfunc.host.processes", None, _positive_int, "a positive integer",
    doc="serving processes of a prefork host; default `spark.executor.cores` / "
    "`spark.task.cpus`, at most the CPUs the executor's processes may run on",
    flag="--processes",
    default_text="task slots",
)
#: Request batching in the host (see _batching.py). Unset (None): on for a host that serves a
#: GPU, off otherwise; the worker decides, since only it knows the task's GPU addresses.
BATCHING = Setting(
    "spark.pyfunc.host.batching.enabled", None, _boolean, "true or false",
    doc="`true` or `false`: answer the requests of all workers in batches, one predict per "
    "batch (a thread host)",
    flag="--batching",
    default_text="on for GPU hosts, off otherwise",
)
BATCH_MAX_WAIT_MS = Setting(
    "spark.pyfunc.host.batching.maxWaitMs", 5.0, _non_negative_float, "a number of milliseconds",
    doc="milliseconds the oldest queued request waits for others to join its batch (not "
    "waited once every worker has a request queued)",
    flag="--batch-max-wait-ms",
)
BATCH_MAX_ROWS = Setting(
    "spark.pyfunc.host.batching.maxBatchRows", 32768, _positive_int, "a positive integer",
    doc="rows a batch may grow to by adding requests (one larger request still goes alone, "
    "whole)",
    flag="--batch-max-rows",
)
BATCH_CALLS = Setting(
    "spark.pyfunc.host.batching.concurrentCalls", 1, _positive_int, "a positive integer",
    doc="batched model calls that may run at once; `2` converts the next batch while the "
    "device computes the current one (two batches' memory on the device)",
    flag="--batch-calls",
)
#: 3: the batching harness's figures (docs/investigations/2026-11-30-request-batching.md).
PIPELINE_DEPTH = Setting(
    "spark.pyfunc.host.pipelineDepth", 3, _positive_int, "a positive integer",
    doc="requests each Python worker keeps in flight to its host (`1`: one at a time)",
)
ENV_CACHE_DIR = Setting(
    "spark.pyfunc.env.cacheDir", None, str, "a directory",
    doc="where each executor machine keeps restored model environments (`env_manager`), "
    "shared by its executors and applications",
    default_text="`~/.cache/spark_pyfunc/envs`",
)
ENV_BUILD_TIMEOUT = Setting(
    "spark.pyfunc.env.buildTimeout", 1800.0, float, "a number of seconds",
    doc="seconds a worker waits for another worker's build of the same environment",
)
ENV_UV_OFFLINE_FIRST = Setting(
    "spark.pyfunc.env.uvOfflineFirst", True, _boolean, "true or false",
    doc='`env_manager="uv"` installs from uv\'s cache alone when that satisfies every '
    "requirement, and from the package index only when it does not; `false`: always resolve "
    "against the index",
)
SHIP_PACKAGE = Setting(
    "spark.pyfunc.shipPackage", "auto", _ship, f"one of {list(SHIP_CHOICES)}",
    doc="ship spark_pyfunc to the executors as a zip: `auto` (unless they run the driver's "
    "Python on a local master), `true`, `false`",
)

#: How the model reaches the executors (see _distribution.py): ``auto`` picks per session.
SHIPPING_CHOICES = ("auto", "files", "broadcast", "direct")


def _shipping(text: str) -> str:
    if text.lower() not in SHIPPING_CHOICES:
        raise ValueError(text)
    return text.lower()


SHIPPING = Setting(
    "spark.pyfunc.shipping", "auto", _shipping, f"one of {list(SHIPPING_CHOICES)}",
    doc="how the model reaches the executors: `files` (the driver serves each executor), "
    "`broadcast` (Spark's TorrentBroadcast: executors fetch from each other), `direct` (each "
    "machine reads the model's store or shared mount itself; for a local path, declares it "
    "shared), or `auto` (direct for a model in a store, else broadcast on a classic cluster, "
    "files on local mode, Connect or with I/O encryption; logged)",
)
SHIPPING_CHUNK_BYTES = Setting(
    "spark.pyfunc.shipping.chunkBytes", 64 << 20, _positive_int, "a positive integer (bytes)",
    doc="size of one broadcast piece of the model archive (each is one Spark broadcast, under "
    "2 GiB)",
)
CACHE_DIR = Setting(
    "spark.pyfunc.cache.dir", None, str, "a directory",
    doc="each executor machine's cache of unpacked models, shared by its executors and "
    "applications; `$VARIABLES` are the executor's",
    default_text="`~/.cache/spark_pyfunc/models`",
)
CACHE_MAX_BYTES = Setting(
    "spark.pyfunc.cache.maxBytes", 50 << 30, _positive_int, "a positive integer (bytes)",
    doc="the cache's cap: least recently used entries that no live process uses are evicted "
    "above it",
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


def host_argv(values: dict[Setting, Any]) -> list[str]:
    """The host's command-line flags for ``values`` (settings with a ``flag``; None and False
    are left out, True is the bare flag)."""
    argv: list[str] = []
    for setting, value in values.items():
        if setting.flag is None:
            raise ValueError(f"{setting.key} is not a setting of the model host's command line")
        if value is None or value is False:
            continue
        argv += [setting.flag] if value is True else [setting.flag, _argv_text(value)]
    return argv


def _argv_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def add_host_arguments(parser: Any) -> None:
    """Declare every host setting's flag on ``parser`` (an argparse parser), parsed by the
    setting's own parser; ``args.<flag name>`` then holds its value or default."""
    for setting in SETTINGS.values():
        if setting.flag is None:
            continue
        if setting.parse is _boolean:
            parser.add_argument(setting.flag, action="store_true", help=setting.doc)
        else:
            parser.add_argument(
                setting.flag, type=setting.parse, default=setting.default, help=setting.doc
            )


def serving_mode(mode: str | None, batching: bool | None, gpus: bool) -> tuple[str | None, bool]:
    """How a host serves, from the settings and the task's GPUs: ``(mode, batching)``.

    A GPU host serves on threads (a CUDA context does not survive a fork) and batches unless
    batching was turned off; batching needs every worker's requests in one process, so it
    serves on threads too, whatever the mode asked for. None: the host picks (``auto``).
    """
    if gpus and batching is None:
        batching = True
    if gpus or batching:
        return "thread", bool(batching)
    return mode, False


def settings_table() -> str:
    """The README's configuration table, in markdown, from the declarations."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS.values():
        default = setting.default_text or f"`{_table_value(setting.default)}`"
        rows.append(f"| `{setting.key}` | {default} | {setting.doc} |")
    return "\n".join(rows) + "\n"


def _table_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; the machine's count where the system
    has none): the most serving processes a prefork host runs unless HOST_PROCESSES is set."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - no affinity API (macOS)
        return os.cpu_count() or 1
