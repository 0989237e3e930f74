"""Chaos runs: SIGKILL one spark_pyfunc process at a random instant of a real scoring job.

A standalone cluster on 127.0.0.1 (scripts/standalone.py: one Worker, one 2-core executor)
runs with ``spark.task.maxFailures=1`` beside a CPU hog (``--hog`` busy processes, so that
every stage of a host's life is slow enough to be hit). Each round scores ``y = 2x + id``
with ``spark_udf(..., scope="executor")`` on a model saved with ``spark_pyfunc.save_model``,
on a freshly started host (the previous round's is stopped), and at a uniformly random
instant between the job's first task and its expected end (the median of the last 5 jobs')
SIGKILLs one process of the executor's: the launcher (``python -m spark_pyfunc._host
--detach``), the host (prefork supervisor), a serving child or a relaying Python worker; the
class is drawn uniformly among those present at that instant (see scripts/_chaos_procs.py).

Each round checks that the result is exact (against pandas), records the stage hit, the
outcome, the time to recover (the job's duration minus the warm baseline) and whether the
logs name what happened (the host logs and the executor's stderr). A killed Python worker is
Spark's to retry: with ``maxFailures=1`` its task fails the job, which is reported apart.
At the end ``spark.stop()`` must leave no process of the run 10 s later.

Usage (scripts only, not CI; PYTHONPATH must hold the checkout)::

    PYTHONPATH=$PWD python scripts/chaos.py --kills 200 --out /tmp/chaos
    PYTHONPATH=$PWD python scripts/chaos.py --kills 50 --batching --out /tmp/chaos-batching
    PYTHONPATH=$PWD python scripts/chaos.py --kills 50 --env-manager uv --out /tmp/chaos-uv
    PYTHONPATH=$PWD python scripts/chaos.py --kills 35 --aim required --out /tmp/chaos-aim

``--aim STAGE[,STAGE...]`` (or ``required``: every required stage in turn) kills at the moment
a process of that class and stage appears (polling /proc every 5 ms; the launcher after its
fork through ptrace's fork event; ``child/starting`` watches a starting host for its first
forked child; ``host/replacing`` kills a serving child, then the host while the dead child is
not yet reaped). ``--minutes`` ends a run on time (with its table); ``--worker-max-failures N``
runs with ``spark.task.maxFailures=N`` and kills relaying workers only. Writes ``table.txt``,
``rounds.json`` (and ``rounds.jsonl`` as it goes: ``python scripts/_chaos_report.py OUT``
prints the table of a run so far) and the cluster's and hosts' logs under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Loopback only: without this the driver binds to the machine's first interface address.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import _chaos_procs as cp  # noqa: E402
from _chaos_report import REQUIRED, killed_one, report  # noqa: E402
from standalone import TAG_VAR, reap_tagged, standalone_cluster  # noqa: E402

AIMS = (*REQUIRED, "host/serving", "host/idle", "worker/relaying")
POLL = 0.005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200, help="kills, one a round")
    ap.add_argument("--out", type=Path, required=True, help="where the table and logs go")
    ap.add_argument("--hog", type=int, default=2, help="busy processes beside the cluster")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=2000, help="Arrow batch: rows a request")
    ap.add_argument("--predict-ms", type=float, default=20.0, help="model time per request")
    ap.add_argument("--model-mib", type=int, default=0, help="ballast the model loads")
    ap.add_argument("--batching", action="store_true", help="host batching on")
    ap.add_argument("--env-manager", choices=["local", "uv"], default="local")
    ap.add_argument("--aim", default="", help=f"random, or a comma list of {AIMS} / required")
    ap.add_argument("--warmups", type=int, default=3, help="unkilled jobs; the first is cold")
    ap.add_argument(
        "--worker-max-failures",
        type=int,
        default=1,
        help="N>1: spark.task.maxFailures=N and only relaying workers are killed",
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--minutes", type=float, default=float("inf"), help="start no round after this long"
    )
    args = ap.parse_args(argv)
    aims = [] if args.aim in ("", "random") else args.aim.split(",")
    aims = list(REQUIRED) if aims == ["required"] else aims
    bad = [a for a in aims if a not in AIMS]
    if bad:
        ap.error(f"--aim: unknown stage(s) {bad}; known: {list(AIMS)} or 'required'")
    args.aims = aims
    return args


# ---------------------------------------------------------------------------- setup


def start_hog(count: int) -> list[subprocess.Popen]:
    code = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def save_chaos_model(root: Path, mib: int, env_manager: str) -> Path:
    """The model (``_chaos_model.DoubleXPlusId``, shipped as a code path), with ballast."""
    import _chaos_model

    from spark_pyfunc import save_model

    artifacts = {}
    if mib:
        ballast = root / "ballast.bin"
        with open(ballast, "wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(2**20))
        artifacts["ballast"] = str(ballast)
    kwargs = {}
    if env_manager == "uv":  # the environment uv builds: this machine's versions (offline)
        import numpy
        import pandas
        import pyarrow

        kwargs["pip_requirements"] = [
            f"pandas=={pandas.__version__}",
            f"pyarrow=={pyarrow.__version__}",
            f"numpy=={numpy.__version__}",
        ]
    path = root / "model"
    save_model(
        path,
        python_model=_chaos_model.DoubleXPlusId(),
        artifacts=artifacts or None,
        code_paths=[_chaos_model.__file__],
        **kwargs,
    )
    return path


def session(args: argparse.Namespace, master: str, tag: str, run: Path):
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName("spark_pyfunc-chaos")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.cores", "2")
        .config("spark.cores.max", "2")
        .config("spark.executor.memory", "1g")
        .config("spark.task.maxFailures", str(args.worker_max_failures))
        .config(f"spark.executorEnv.{TAG_VAR}", tag)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_rows))
        .config("spark.pyfunc.host.logDir", str(run / "host-logs"))
        .config("spark.pyfunc.env.cacheDir", str(run / "env-cache"))
        .config("spark.local.dir", str(run / "driver-local"))
    )
    if args.batching:
        builder = builder.config("spark.pyfunc.host.batching.enabled", "true")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ----------------------------------------------------------------------------- rounds


class Job:
    """One scoring job on a thread of its own; ``done`` is set when it ends."""

    def __init__(self, df, expected) -> None:
        self.df, self.expected = df, expected
        self.done = threading.Event()
        self.error: str | None = None
        self.exact: bool | None = None
        self.started = self.ended = 0.0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import numpy as np

        self.started = time.monotonic()
        try:
            out = self.df.toPandas().sort_values("id")
            self.exact = len(out) == len(self.expected) and bool(
                np.array_equal(out["y"].to_numpy(), self.expected)
            )
        except Exception as exc:  # a failed job is an outcome, not an error of the harness
            self.error = f"{type(exc).__name__}: {exc}"
        self.ended = time.monotonic()
        self.done.set()


def first_task(job: Job, tag: str) -> float:
    """When the job's first task starts the host's life: the first launcher or host of ours
    seen (an active task in Spark's status tracker comes earlier, while the worker starts,
    before any spark_pyfunc process exists to be killed)."""
    while not job.done.is_set():
        procs = cp.snapshot(tag, TAG_VAR, False).procs.values()
        if any(p.cls in ("launcher", "host") for p in procs):
            return time.monotonic()
        time.sleep(POLL)
    return time.monotonic()


def kill_random(
    job: Job, tag: str, start: float, span: float, rng: random.Random, only: str = ""
) -> dict:
    """Wait until a uniformly random instant of the job, then SIGKILL one process."""
    at = start + rng.uniform(0, span)
    job.done.wait(max(0.0, at - time.monotonic()))
    if job.done.is_set():
        return {"hit": "none/job-ended-first"}
    snap = cp.snapshot(tag, TAG_VAR)
    targets = snap.targets()
    if only:
        targets = {cls: ps for cls, ps in targets.items() if cls == only}
    present = {cls: len(ps) for cls, ps in targets.items()}
    if not targets:
        return {"hit": "none/no-target", "present": present}
    cls = rng.choice(sorted(targets))
    proc = rng.choice(targets[cls])
    return _kill(proc, present, time.monotonic() - start)


def _kill(proc: cp.Proc, present: dict, offset: float, extra: dict | None = None) -> dict:
    alive = cp.kill(proc.pid)
    hit = proc.label if alive else f"{proc.cls}/vanished"
    return {
        "hit": hit,
        "pid": proc.pid,
        "recorded_stage": proc.recorded,
        "present": present,
        "offset_s": round(offset, 3),
        **(extra or {}),
    }


def kill_aimed(job: Job, tag: str, aim: str, rng: random.Random) -> dict:
    """Poll every 5 ms for a process at ``aim`` and SIGKILL it there."""
    cls, stage = aim.split("/")
    start = time.monotonic()
    while not job.done.is_set():
        snap = cp.snapshot(tag, TAG_VAR, with_stages=cls != "launcher" or stage != "after-fork")
        if aim == "launcher/after-fork":
            for proc in snap.of("launcher"):
                host = cp.kill_at_fork(proc.pid, timeout=120)
                if host is not None:
                    return {
                        "hit": aim,
                        "pid": proc.pid,
                        "forked_host": host,
                        "offset_s": round(time.monotonic() - start, 3),
                    }
        elif aim == "host/replacing":
            done = _kill_while_replacing(job, tag, snap, start)
            if done:
                return done
        elif aim == "child/starting":
            hosts = [h for h in snap.of("host") if h.stage in ("importing", "loading")]
            if hosts:
                return _kill_first_child(job, hosts[0], start)
        else:
            found = [p for p in snap.of(cls) if p.stage == stage]
            if found:
                return _kill(rng.choice(found), {}, time.monotonic() - start)
        time.sleep(POLL)
    return {"hit": "none/job-ended-first", "aim": aim}


def _kill_first_child(job: Job, host: cp.Proc, start: float) -> dict:
    """Trace a host that is still starting and SIGKILL its first serving process at its
    fork, before it ran a line of its own (so before it said it is ready)."""
    child = cp.kill_at_fork(host.pid, timeout=120, victim="child")
    if child is None:
        return {"hit": "none/no-fork", "host": host.pid}
    return {"hit": "child/starting", "pid": child, "offset_s": round(time.monotonic() - start, 3)}


def _kill_while_replacing(job: Job, tag: str, snap: cp.Snapshot, start: float) -> dict | None:
    """Kill a ready serving child, then its host while the child is dead and not yet reaped
    (a zombie: the host has not replaced it yet). Watches the one child's /proc/PID/stat."""
    ready = [c for c in snap.of("child") if c.stage in ("idle", "serving")]
    host = snap.procs.get(ready[0].ppid) if ready else None
    if host is None:
        return None
    child = ready[0]
    cp.kill(child.pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = cp.state_of(child.pid)
        if state == "Z":
            host.stage = "replacing"
            return _kill(host, {}, time.monotonic() - start, {"child": child.pid})
        if state is None:  # reaped (and replaced) before we saw it dead
            return {"hit": "none/replaced-too-fast", "child": child.pid}
        time.sleep(0.0005)
    return {"hit": "none/child-not-dead", "child": child.pid}


def stop_hosts(tag: str, timeout: float = 20.0) -> list[int]:
    """SIGTERM this run's hosts (so the next round starts one afresh); SIGKILL stragglers.
    Returns the pids that had to be SIGKILLed."""
    for proc in cp.snapshot(tag, TAG_VAR, False).of("host"):
        cp.kill(proc.pid) if proc.state == "T" else os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [
            p
            for p in cp.snapshot(tag, TAG_VAR, False).procs.values()
            if p.cls in ("host", "child", "launcher")
        ]
        if not left:
            return []
        time.sleep(0.1)
    for proc in left:
        cp.kill(proc.pid)
    return [p.pid for p in left]


class Logs:
    """The text the executors' stderr and the host logs got since the last call."""

    def __init__(self, work: Path, host_logs: Path) -> None:
        self.work, self.host_logs = work, host_logs
        self.offsets: dict[str, int] = {}

    def new(self) -> tuple[str, str]:
        stderr = cp.new_text(self.work, self.offsets, "*/*/stderr")
        return stderr, cp.new_text(self.host_logs, self.offsets, "*.log")


def evidence(kill: dict, stderr: str, hosts: str) -> tuple[bool, list[str]]:
    """Whether the logs name what happened to the process killed, and the lines that do."""
    cls = kill["hit"].split("/")[0]
    pid = kill.get("pid")
    worker_lines = [
        line
        for line in stderr.splitlines()
        if any(
            k in line
            for k in (
                "lost the model host",
                "killed before it was ready",
                "starting it again",
                "before it was ready",
            )
        )
    ]
    host_lines = [line for line in hosts.splitlines() if "replacing it" in line]
    if cls == "child":
        named = [line for line in host_lines if f"serving process {pid} exited" in line]
        return bool(named), named[:3]
    if cls == "host":
        named = [line for line in worker_lines if f"pid {pid}" in line] or worker_lines
        return bool(named), named[:3]
    if cls == "launcher":
        return bool(worker_lines), worker_lines[:3]
    return False, worker_lines[:3]


def run_round(spark, udf_df, expected, args, tag, span, rng, aim, logs) -> dict:
    logs.new()
    job = Job(udf_df, expected)
    cp.Watcher(tag, TAG_VAR, job.done)
    if aim:
        kill = kill_aimed(job, tag, aim, rng)
    else:
        start = first_task(job, tag)
        only = "worker" if args.worker_max_failures > 1 else ""
        kill = kill_random(job, tag, start, span, rng, only)
    job.done.wait()
    if not aim:
        kill["span_s"] = round(job.ended - start, 3)  # first task to end, this round
    stderr, hosts = logs.new()
    named, lines = evidence(kill, stderr, hosts) if kill.get("pid") else (False, [])
    outcome = "failed" if job.error else "ok" if job.exact else "wrong"
    return {
        **kill,
        "aim": aim or "random",
        "outcome": outcome,
        "duration_s": round(job.ended - job.started, 3),
        "error": (job.error or "")[:4000],
        "logs_name_it": named,
        "log_lines": lines,
        "teardown_killed": stop_hosts(tag),
        "load1": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    from pyspark.sql import functions as F

    from spark_pyfunc import spark_udf

    rng = random.Random(args.seed)
    run = args.out.resolve()
    if run.exists():
        shutil.rmtree(run)
    (run / "host-logs").mkdir(parents=True)
    tag = f"chaos-{uuid.uuid4().hex[:12]}"
    hogs = start_hog(args.hog)
    rounds: list[dict] = []
    leaked: list[str] = []
    try:
        with standalone_cluster(cores=2, memory="3g", root=run / "cluster") as cluster:
            model = save_chaos_model(run, args.model_mib, args.env_manager)
            spark = session(args, cluster.master_url, tag, run)
            df = spark.range(0, args.rows, numPartitions=args.partitions).withColumn(
                "x", (F.col("id") % 1000) * F.lit(0.5)
            )
            udf = spark_udf(
                spark,
                str(model),
                "double",
                args.env_manager,
                scope="executor",
                model_config={"predict_ms": args.predict_ms},
            )
            scored = df.select("id", udf("x", "id").alias("y"))
            ids = np.arange(args.rows, dtype=np.int64)
            expected = 2.0 * ((ids % 1000) * 0.5) + ids.astype(np.float64)
            logs = Logs(cluster.root / "work", run / "host-logs")
            spans, durations = [], []
            for _ in range(args.warmups):
                job = Job(scored, expected)
                start = first_task(job, tag)
                job.done.wait()
                if job.error or not job.exact:
                    raise SystemExit(f"the warm-up job failed: {job.error or 'wrong result'}")
                spans.append(job.ended - start)
                durations.append(job.ended - job.started)
                stop_hosts(tag)
            # the first job also starts the executor's Python daemon: not a baseline
            warm = slice(1 if args.warmups > 1 else 0, None)
            spans = spans[warm]
            span, baseline = statistics.median(spans), statistics.median(durations[warm])
            print(f"warm-up: job {baseline:.2f}s, first task to end {span:.2f}s", flush=True)
            kills = 0
            stop_at = time.monotonic() + args.minutes * 60
            for i in range(2 * args.kills):  # rounds without a kill do not count
                if kills >= args.kills or time.monotonic() > stop_at:
                    break
                aim = args.aims[kills % len(args.aims)] if args.aims else ""
                r = run_round(spark, scored, expected, args, tag, span, rng, aim, logs)
                r["round"], r["recover_s"] = i, round(r["duration_s"] - baseline, 3)
                if r.get("span_s") and r["outcome"] == "ok":
                    # A busy machine's load drifts: the window follows the recent jobs
                    # (a warm-up's span drawn hours ago left many rounds without a kill).
                    spans = [*spans[-4:], r["span_s"]]
                    span = statistics.median(spans)
                rounds.append(r)
                kills += killed_one(r)
                with open(run / "rounds.jsonl", "a") as fh:  # kept if the run is cut short
                    fh.write(json.dumps(r) + "\n")
                print(
                    f"round {i}: {r['hit']} -> {r['outcome']} in {r['duration_s']}s "
                    f"(logs name it: {r['logs_name_it']}) {r['error'][:160]}",
                    flush=True,
                )
            spark.stop()
            time.sleep(10)
            leaked = [
                f"pid {p.pid} {p.cls}: {' '.join(p.cmdline)[:160]}"
                for p in cp.snapshot(tag, TAG_VAR, False).procs.values()
            ]
            reap_tagged(tag, timeout=5)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    meta = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "baseline_s": baseline,
        "span_s": span,
        "leaked_after_stop": leaked,
        "load": os.getloadavg(),
    }
    (run / "rounds.json").write_text(json.dumps({"meta": meta, "rounds": rounds}, indent=1))
    text = report(rounds, meta, args.worker_max_failures)
    (run / "table.txt").write_text(text)
    print(text)
    ours_failed = [r for r in rounds if r["outcome"] != "ok" and not r["hit"].startswith("worker")]
    return 1 if ours_failed or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
