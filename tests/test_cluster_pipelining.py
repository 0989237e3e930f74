"""The host killed while pipelined tasks run, on a real multi-process cluster, no retries.

``fault_spark``: one executor JVM with 2 cores (two Python workers sharing one host) and
``spark.task.maxFailures=1``, so only the workers' own restart-and-resend can save the job.
Each worker keeps 3 requests in flight (``spark.pyfunc.host.pipelineDepth``); the model
(pipe_models.Contained) holds the call containing one row at a gate while the test kills the
host, so requests behind it are in flight on both connections. Repeated: a race in the
resend shows in a fraction of runs only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pipe_models
import pytest
from pipe_models import Contained
from support.faults import (  # noqa: F401 (evidence_root is a fixture)
    GATE_ID,
    ROWS,
    Faults,
    Job,
    evidence_root,
)

from spark_pyfunc import save_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPEATS = int(os.environ.get("SPARK_PYFUNC_PIPELINE_FAULT_REPEATS", "5"))
DEPTH_CONF = "spark.pyfunc.host.pipelineDepth"
BATCHING_CONF = "spark.pyfunc.host.batching.enabled"


@pytest.fixture(scope="module")
def contained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipelining-model") / "model"
    example = pd.DataFrame({"id": np.arange(3, dtype=np.int64), "x": [0.5, 1.0, 2.0]})
    save_model(
        str(path),
        python_model=Contained(),
        code_paths=[pipe_models.__file__],
        input_example=example,
    )
    return path


@pytest.fixture
def pipelined(fault_spark, contained_model: Path, evidence_root: Path, request):  # noqa: F811
    conf = fault_spark.sparkContext.getConf()
    assert conf.get("spark.task.maxFailures") == "1"
    made = Faults(fault_spark, contained_model, evidence_root, request.node.name)
    fault_spark.conf.set(DEPTH_CONF, "3")
    try:
        yield made
    finally:
        for key in (DEPTH_CONF, BATCHING_CONF):
            fault_spark.conf.unset(key)


def calls(faults: Faults) -> list[tuple[int, set[int]]]:
    path = faults.dir / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(host), {int(i) for i in ids.split(",")}) for host, ids in map(str.split, lines)]


@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.parametrize("batching", [False, True], ids=["prefork", "batching"])
def test_host_killed_while_pipelined_tasks_run(pipelined: Faults, batching: bool, repeat: int):
    """SIGKILL while the host holds the gated call and both workers have requests in flight:
    the job ends exact; the gated row went to the killed host, then to the new one; every
    row was scored; the worker said it sent its unanswered requests again."""
    faults = pipelined
    faults.spark.conf.set(BATCHING_CONF, str(batching).lower())
    killed: list[int] = []

    def fault(job: Job) -> None:
        pid = faults.wait_for_arrival("predict")
        faults.kill_host(pid, job)
        killed.append(pid)

    faults.run(faults.config("predict"), fault)  # checks the job's exact result
    [old] = killed
    made = calls(faults)
    gated = [host for host, ids in made if GATE_ID in ids]
    assert len(gated) == 2 and gated[0] == old and gated[1] != old, gated
    assert set().union(*(ids for _, ids in made)) == set(range(ROWS))
    assert faults.loads() == [old, gated[1]]
    assert faults.worker_logged(f"lost the model host (pid {old}) during a request")
    assert faults.worker_logged("unanswered request(s) again")
    if batching:
        assert faults.host_logged("batching requests up to")
