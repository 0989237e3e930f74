"""Progress of ``spark-pyfunc score`` on stderr, read from Spark's status tracker.

It only watches: the input is not repartitioned for it, so OUTPUT's files are the same with
progress on (a terminal) or off (cron). Spark's status tracker reports a task when it
finishes, not the rows of a running one, so the count is of finished tasks and says so; the
rows and their rate (rows over the whole run, as in the summary) come at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from spark_pyfunc._config import PROG

__all__ = ["Progress"]


class Progress:
    """Finished / total tasks of the jobs a job group starts after it, every ``interval`` s.

    tqdm draws a bar when it is installed (the ``progress`` extra); without it a plain line
    is printed every ``interval`` seconds, and whenever the count changes.
    """

    def __init__(self, spark: Any, group: str, interval: float = 10.0) -> None:
        self._tracker = spark.sparkContext.statusTracker()
        self._group, self._interval = group, interval
        self._known = set(self._tracker.getJobIdsForGroup(group))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-pyfunc-progress", daemon=True)
        self._started = time.monotonic()
        self._shown: tuple[int, int, int] = (-1, -1, -1)
        self._last_line = self._started
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar: Any = None
        else:
            self._bar = tqdm(
                total=None, unit="task", file=sys.stderr, desc="scoring (finished tasks)"
            )

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc_info[0] is None:  # the final count, however short the job was
            self._show(*self.tasks(), final=True)
        if self._bar is not None:
            self._bar.close()

    def tasks(self) -> tuple[int, int, int]:
        """(finished, running, total) tasks of the group's jobs started since this object
        was made: the running count is what moves while long tasks score."""
        done = running = total = 0
        for job_id in self._tracker.getJobIdsForGroup(self._group):
            if job_id in self._known:
                continue
            info = self._tracker.getJobInfo(job_id)
            for stage_id in info.stageIds if info is not None else ():
                stage = self._tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    running += stage.numActiveTasks
                    total += stage.numTasks
        return done, running, total

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._show(*self.tasks())
            except Exception:  # the context is going away: the job's outcome says the rest
                return

    def _show(self, done: int, running: int, total: int, final: bool = False) -> None:
        if not total:
            return
        if self._bar is not None:
            self._bar.total = total
            self._bar.set_postfix_str(f"{running} running", refresh=False)
            self._bar.update(done - self._bar.n)
            return
        now = time.monotonic()
        shown = (done, running, total)
        if final or shown != self._shown or now - self._last_line >= self._interval:
            self._last_line, self._shown = now, shown
            print(
                f"{PROG}: scoring: {done} / {total} tasks finished, {running} running, after "
                f"{now - self._started:,.0f} s (Spark counts a task when it ends)",
                file=sys.stderr,
                flush=True,
            )
