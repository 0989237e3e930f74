"""How many bytes the driver sends to get one model to N executors, per shipping route.

Starts a standalone Master (127.0.0.1) and N Workers from the pip PySpark, each Worker a
simulated machine: its own loopback address (127.0.0.2, .3, ...), SPARK_LOCAL_DIRS, work dir
and model cache, one 1-core executor.
For each route it starts an application with fixed driver ports, scores a model of the given
size once, and reports:

* the bytes the driver sent, counted on its sockets: ``ss -tin`` sampled every 50 ms, the
  highest ``bytes_acked`` of each socket whose local port is ``spark.driver.port`` or
  ``spark.driver.blockManager.port``, summed;
* the bytes each executor received, and from whom (driver or which executor): the same
  sampling over every socket of the executors' JVMs, sockets matched by their two ends;
* the time from ``spark_udf`` (which seeds the broadcast route) to the first result
  (``take(1)`` of the scored frame), and to all results (every executor has the model).

Route ``direct`` puts the model in moto's S3 server on 127.0.0.1 first (the executors read
it from there, the driver ships a manifest); its driver figure is what the driver sent, not
what the store did.

Usage::

    python scripts/ship_bench.py --workers 1 2 4 --size-mib 256 [--routes files broadcast direct]

The machine is shared by other work: figures are medians only where repeated, and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standalone import _wait_for, spark_class, stop_pid  # noqa: E402

DRIVER_PORT = 47100
DRIVER_BM_PORT = 47101
MACHINE_VAR = "SPB_MACHINE"

# "state established" leaves the state column out: Recv-Q Send-Q local peer process
_SOCKET = re.compile(r"^\d+\s+\d+\s+(\S+):(\d+)\s+(\S+):(\d+)\s*(.*)$")


class SocketSampler:
    """Sample every loopback TCP socket's byte counters with ``ss -tinpH`` every ``interval``.

    Counters only grow, so each socket's highest value is what it moved; a socket that closes
    between two samples loses at most 50 ms of counting.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        # (local port, peer port) -> {"pid", "acked", "received"}
        self.sockets: dict[tuple[int, int], dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SocketSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        out = subprocess.run(
            ["ss", "-tinpH", "state", "established", "dst", "127.0.0.0/8"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        current = None
        for line in out:
            match = _SOCKET.match(line)
            if match:
                pid = re.search(r"pid=(\d+)", match.group(5))
                current = (int(match.group(2)), int(match.group(4)))
                entry = self.sockets.setdefault(current, {"pid": None, "acked": 0, "received": 0})
                if pid:
                    entry["pid"] = int(pid.group(1))
                continue
            if current is None:
                continue
            entry = self.sockets[current]
            for field, key in (("bytes_acked", "acked"), ("bytes_received", "received")):
                found = re.search(rf"\b{field}:(\d+)", line)
                if found:
                    entry[key] = max(entry[key], int(found.group(1)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sent_from_ports(self, ports: set[int]) -> int:
        """Bytes sent (acked) by sockets whose local port is one of ``ports``."""
        return sum(s["acked"] for (local, _), s in self.sockets.items() if local in ports)

    def received_by(self, pid: int, owners: dict[int, str]) -> dict[str, int]:
        """Bytes process ``pid`` received, by sender (the owner of the peer's port)."""
        found: dict[str, int] = {}
        for (_, peer), s in self.sockets.items():
            if s["pid"] == pid and s["received"]:
                who = owners.get(peer, "other")
                found[who] = found.get(who, 0) + s["received"]
        return found


@contextmanager
def cluster(workers: int, root: Path, memory: str = "2g") -> Iterator[str]:
    """A Master on 127.0.0.1 and ``workers`` 1-core Workers, Worker ``i`` on 127.0.0.``i+2``;
    yields the master URL.

    Each simulated machine has an address of its own because Spark treats executors on one
    host as neighbours: a block another executor of the same host holds on disk is read
    straight from that executor's local directories, not over the network (all of a 2.5 GiB
    model's broadcast pieces, which overflow memory), so on one address the sockets would
    not see what machines would send each other."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("SPARK_HOME", None)
    launcher = str(spark_class())
    try:
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        master_log = logs / "master.log"
        with master_log.open("wb") as out:
            master = subprocess.Popen(
                [launcher, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
                + ["--port", "0", "--webui-port", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**env, "SPARK_LOG_DIR": str(logs)},
                start_new_session=True,
            )
        procs.append(master)
        url = _wait_for(master_log, r"Starting Spark master at (spark://[\d.]+:\d+)", master, 90)
        master_url = url.group(1)
        _wait_for(master_log, r"I have been elected leader", master, 90)
        for index in range(workers):
            machine = root / f"machine{index}"
            for sub in ("local", "work", "cache"):
                (machine / sub).mkdir(parents=True, exist_ok=True)
            log = logs / f"worker{index}.log"
            address = f"127.0.0.{index + 2}"
            with log.open("wb") as out:
                worker = subprocess.Popen(
                    [launcher, "org.apache.spark.deploy.worker.Worker", master_url]
                    + ["--host", address, "--webui-port", "0", "--cores", "1"]
                    + ["--memory", memory, "--work-dir", str(machine / "work")],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={
                        **env,
                        "SPARK_LOCAL_IP": address,
                        "SPARK_LOCAL_DIRS": str(machine / "local"),
                        MACHINE_VAR: str(machine),
                    },
                    start_new_session=True,
                )
            procs.append(worker)
            _wait_for(log, r"Successfully registered with master", worker, 90)
        yield master_url
    finally:
        for proc in reversed(procs):
            stop_pid(proc)


def make_model(path: Path, size: int) -> Path:
    """A pyfunc model (python_function flavour, spark_pyfunc's loader) with ``size`` bytes of
    incompressible weights that predict reads (their length), so scoring needs the file."""
    from spark_pyfunc import save_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ship_models import BlobModel, blob_digest

    blob = path.parent / f"{path.name}-blob.bin"
    with open(blob, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 16 << 20))
            handle.write(piece)
            left -= len(piece)
    digest = blob_digest(str(blob))
    code = Path(__file__).resolve().parents[1] / "tests" / "ship_models.py"
    save_model(
        path, python_model=BlobModel(), artifacts={"blob": str(blob)}, code_paths=[str(code)]
    )
    blob.unlink()
    return path, digest


def session(master: str, app: str, route: str, cache_dir: str, extra: dict | None = None):
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.port", str(DRIVER_PORT))
        .config("spark.driver.blockManager.port", str(DRIVER_BM_PORT))
        .config("spark.ui.enabled", "false")
        .config("spark.executor.cores", "1")
        .config("spark.executor.memory", "1g")
        .config("spark.task.maxFailures", "1")
        .config("spark.pyfunc.shipping", route)
        .config("spark.pyfunc.cache.dir", cache_dir)
    )
    for key, value in (extra or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def executor_pids(app_id: str) -> dict[int, str]:
    """Executor JVM pid -> executor id, for one application."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in cmd and app_id in cmd:
            found[proc.pid] = cmd[cmd.index("--executor-id") + 1]
    return found


def run_once(
    master: str,
    route: str,
    model: Path | str,
    workers: int,
    cache_dir: str,
    digest: int,
    cluster_root: Path,
    extra: dict | None = None,
) -> dict:
    """One application scoring ``model`` (a path or a store URI) once on every executor."""
    from spark_pyfunc import spark_udf

    spark = session(master, f"ship-{route}-{workers}", route, cache_dir, extra)
    try:
        sc = spark.sparkContext
        deadline = time.monotonic() + 120
        while sc._jsc.sc().getExecutorMemoryStatus().size() < workers + 1:
            if time.monotonic() > deadline:
                raise RuntimeError("executors did not register")
            time.sleep(0.2)
        owners = {DRIVER_PORT: "driver", DRIVER_BM_PORT: "driver"}
        pids = executor_pids(sc.applicationId)
        with SocketSampler() as sampler:
            # From spark_udf on: the broadcast route seeds one executor inside it.
            wall = time.time()
            started = time.perf_counter()
            predict = spark_udf(spark, str(model), result_type="long", scope="executor")
            frame = spark.range(0, workers, numPartitions=workers).select(predict("id").alias("n"))
            first = frame.take(1)
            first_s = time.perf_counter() - started
            rows = frame.collect()  # every executor: all of them get the model
            all_s = time.perf_counter() - started
        # Block manager ports of executors, by the JVM listening on them.
        for conn in psutil.net_connections("tcp"):
            if conn.status == "LISTEN" and conn.pid in pids:
                owners.setdefault(conn.laddr.port, f"exec{pids[conn.pid]}")
        received = {f"exec{pids[pid]}": sampler.received_by(pid, owners) for pid in pids}
        from spark_pyfunc._cache import read_events

        events = [
            e
            for machine in Path(cluster_root).glob("machine*")
            for e in read_events(machine / "cache")
            if e["time"] >= wall
        ]
        return {
            "route": route,
            "workers": workers,
            "driver_sent": sampler.sent_from_ports({DRIVER_PORT, DRIVER_BM_PORT}),
            "first_result_s": round(first_s, 2),
            "all_results_s": round(all_s, 2),
            "received": received,
            "fills": sum(e["event"] == "fill" for e in events),
            "hits": sum(e["event"] == "hit" for e in events),
            "exact": len(rows) == workers and {r.n for r in rows} == {digest} == {first[0].n},
        }
    finally:
        spark.stop()


@contextmanager
def s3_store(model: Path, root: Path) -> Iterator[tuple[str, dict]]:
    """moto's S3 server on 127.0.0.1 holding ``model``: its URI and the executors' settings
    (``spark.executorEnv.*``) that point them at it. The driver's environment points there
    too while it runs."""
    import boto3

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.moto_s3 import moto_server, s3_env, upload_dir

    with moto_server(root / "moto.log") as endpoint:
        env = s3_env(endpoint)
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            upload_dir(boto3.client("s3"), "bench", "model", model)
            yield "s3://bench/model", {f"spark.executorEnv.{k}": v for k, v in env.items()}
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument(
        "--routes",
        nargs="+",
        default=["files", "broadcast"],
        choices=["files", "broadcast", "direct"],
    )
    parser.add_argument("--second-app", action="store_true", help="run each route twice")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ship-bench-"))
    results = []
    try:
        model, digest = make_model(root / "model", args.size_mib << 20)
        size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        store = s3_store(model, root) if "direct" in args.routes else None
        with store or contextlib.nullcontext((None, None)) as (uri, executor_env):
            for workers in args.workers:
                for route in args.routes:
                    where = root / f"c{workers}-{route}"
                    source, extra = (uri, executor_env) if route == "direct" else (model, None)
                    with cluster(workers, where) as master:
                        cache = f"${MACHINE_VAR}/cache"
                        for attempt in range(2 if args.second_app else 1):
                            result = run_once(
                                master, route, source, workers, cache, digest, where, extra
                            )
                            result.update(model_bytes=size, app=attempt + 1)
                            result["driver_copies"] = round(result["driver_sent"] / size, 2)
                            print(json.dumps(result), flush=True)
                            results.append(result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
