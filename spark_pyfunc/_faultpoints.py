"""Named stages of a model host's life where a test can hold a process until it has killed it.

A fault test that sleeps and hopes proves nothing about where its signal landed. Each stage
of a host's start and serving calls :func:`hold` with its name; with nothing armed (always,
outside tests) that is one environment lookup. A test arms stages through the host's
environment (``extra_env`` of ``spark_udf``)::

    SPARK_PYFUNC_FAULTPOINTS=/evidence/dir:launcher.forked,host.ready

A process reaching an armed stage writes ``at-<stage>-<pid>`` in the directory and waits
until ``go-<stage>`` exists there, so the test knows the process is provably at that stage
when it delivers its signal, and every later process passes once the test opens the gate.

The stages, in the order a host lives them (``STAGES``):

- ``launcher.forking``: the launcher (``python -m spark_pyfunc._host --detach``), imports
  done, about to fork the host;
- ``launcher.forked``: the launcher has forked the host, not yet printed its pid;
- ``host.ready``: the host (or its prefork serving process) has greeted its first
  connection and not yet read a request;
- ``child.started``: a prefork serving process, forked, before it accepts;
- ``supervisor.replacing``: a prefork supervisor that saw a serving process die, before it
  forks the replacement.

One stage is not a host's: ``cache.filling``, a process filling the machine's model cache
(_cache.py) with the model's files staged and not yet renamed into place.

The model's own import and load are held by the model's code (tests/host_models.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["ENV", "STAGES", "hold"]

ENV = "SPARK_PYFUNC_FAULTPOINTS"

STAGES = (
    "launcher.forking",
    "launcher.forked",
    "host.ready",
    "child.started",
    "supervisor.replacing",
    "cache.filling",
)

_POLL = 0.01


def _armed(stage: str) -> Path | None:
    """The evidence directory if ``stage`` is armed in this process's environment."""
    value = os.environ.get(ENV)
    if not value:
        return None
    directory, _, stages = value.rpartition(":")
    if stage not in stages.split(","):
        return None
    return Path(directory)


def hold(stage: str) -> None:
    """Wait at ``stage`` if a test armed it: say so in ``at-<stage>-<pid>``, then wait for
    ``go-<stage>``."""
    directory = _armed(stage)
    if directory is None:
        return
    (directory / f"at-{stage}-{os.getpid()}").touch()
    gate = directory / f"go-{stage}"
    while not gate.exists():
        time.sleep(_POLL)
