"""The chaos harness's table: per stage hit, how many kills, outcomes, time to recover."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

__all__ = ["REQUIRED", "killed_one", "report"]

#: The stages issue 25 requires to be hit at least MIN_HITS times each.
REQUIRED = (
    "launcher/before-fork",
    "launcher/after-fork",
    "host/importing",
    "host/loading",
    "host/ready",
    "child/starting",
    "child/idle",
    "child/serving",
    "host/replacing",
)
MIN_HITS = 5


def _required_of(hit: str) -> str | None:
    return hit if hit in REQUIRED else None


def killed_one(r: dict) -> bool:
    """Whether the round's SIGKILL reached a process (not: no kill, or the target had gone)."""
    return not r["hit"].startswith("none/") and not r["hit"].endswith("/vanished")


def _gist(error: str) -> str:
    """The line of a job's error that says what failed (a Python worker's traceback ends in
    the package's own error; Spark's first line says only where it was thrown)."""
    found = [ln for ln in error.splitlines() if "spark_pyfunc.errors." in ln or "Exception:" in ln]
    return (found[-1] if found else error.split("\n", 1)[0])[:300]


def report(rounds: list[dict], meta: dict, worker_max_failures: int) -> str:
    """The table, the distribution of the stages hit and the warnings, as text."""
    by_hit: dict[str, list[dict]] = defaultdict(list)
    for r in rounds:
        by_hit[r["hit"]].append(r)
    lines = [
        f"chaos run: {len(rounds)} rounds; warm job {meta['baseline_s']:.2f}s "
        f"(first task to end {meta['span_s']:.2f}s); args {meta['args']}",
        "",
        f"{'stage hit':24} {'count':>5} {'ok':>4} {'failed':>6} {'wrong':>5} {'logs ok':>7} "
        f"{'recover med':>11} {'recover max':>11}",
    ]
    for hit in sorted(by_hit):
        rs = by_hit[hit]
        rec = [r["recover_s"] for r in rs]
        out = Counter(r["outcome"] for r in rs)
        named = sum(1 for r in rs if r.get("logs_name_it"))
        lines.append(
            f"{hit:24} {len(rs):5} {out['ok']:4} {out['failed']:6} {out['wrong']:5} {named:7} "
            f"{statistics.median(rec):10.2f}s {max(rec):10.2f}s"
        )
    killed = [r for r in rounds if killed_one(r)]
    ours = [r for r in killed if not r["hit"].startswith("worker/")]
    workers = [r for r in killed if r["hit"].startswith("worker/")]
    bad = [r for r in ours if r["outcome"] != "ok"]
    lines += [
        "",
        f"kills that are ours to survive: {len(ours)}, failed or wrong: {len(bad)}",
        f"relaying Python workers killed (Spark's to retry, maxFailures={worker_max_failures}):"
        f" {len(workers)}, jobs failed: {sum(r['outcome'] != 'ok' for r in workers)}",
        f"rounds without a kill: {len(rounds) - len(killed)}",
        f"processes left 10 s after spark.stop(): {len(meta['leaked_after_stop'])}",
    ]
    for leak in meta["leaked_after_stop"]:
        lines.append(f"  LEFT: {leak}")
    required = Counter(_required_of(r["hit"]) for r in killed)
    lines += ["", "stage distribution (required stages):"]
    for stage in REQUIRED:
        mark = "" if required[stage] >= MIN_HITS else f"  WARNING: under {MIN_HITS}"
        lines.append(f"  {stage:24} {required[stage]:4}{mark}")
    missing = [s for s in REQUIRED if required[s] < MIN_HITS]
    if missing:
        lines.append(f"aim at the missing ones with --aim {','.join(missing)}")
    for r in bad[:20]:
        lines.append(f"FAILED round {r['round']} {r['hit']}: {_gist(r['error'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``python scripts/_chaos_report.py OUT_DIR``: the table of a run from its rounds.jsonl,
    also while it runs or after it was cut short (the leak check is then not known)."""
    import json
    from pathlib import Path

    out = Path(argv[0])
    if (out / "rounds.json").exists():  # the run ended
        whole = json.loads((out / "rounds.json").read_text())
        rounds, meta = whole["rounds"], whole["meta"]
    else:
        rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
        meta = {"baseline_s": float("nan"), "span_s": float("nan"), "args": str(out)}
        meta["leaked_after_stop"] = ["(not checked: the run has not ended)"]
    print(report(rounds, meta, 1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
