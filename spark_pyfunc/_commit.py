"""The atomic commit of ``spark-pyfunc score``'s OUTPUT: written aside, renamed into place.

Spark writes OUTPUT to a hidden sibling (same filesystem, so renames are atomic); only when
the whole job succeeded is it renamed over OUTPUT (``error``), swapped with the previous
OUTPUT (``overwrite``) or its part files moved in (``append``). Any failure before the
commit leaves OUTPUT as it was. The commit itself is shielded from Ctrl-C (SIGINT is held
until it is done): once it starts, it completes, and the caller reports success.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from spark_pyfunc.errors import SparkPyfuncError

__all__ = ["GATES_ENV", "CommitState", "gate", "staged_output"]

_SUCCESS_FILES = ("_SUCCESS", "._SUCCESS.crc")
logger = logging.getLogger(__name__)


def _sibling(output: Path, role: str) -> Path:
    """A hidden, unique name next to OUTPUT: same filesystem, so renames are atomic."""
    return output.parent / f".{output.name}.spark-pyfunc-{role}-{uuid.uuid4().hex[:12]}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    missing.reverse()
    for path in missing:
        path.mkdir()
    return missing


def _append_parts(stage: Path, output: Path) -> None:
    """Move the staged files into OUTPUT; on any failure move back those already moved.

    Spark's part file names carry the job's UUID, so they never replace existing files; only
    the ``_SUCCESS`` marker is replaced.
    """
    entries = sorted(p for p in stage.iterdir() if p.name not in _SUCCESS_FILES)
    moved: list[Path] = []
    try:
        for entry in entries:
            target = output / entry.name
            if target.exists() or target.is_symlink():
                raise SparkPyfuncError(
                    f"OUTPUT {str(output)!r} already has {entry.name}; nothing was appended"
                )
            os.rename(entry, target)
            moved.append(target)
    except BaseException:
        for target in reversed(moved):
            os.rename(target, stage / target.name)
        raise
    for name in _SUCCESS_FILES:
        if (stage / name).exists():
            os.replace(stage / name, output / name)


def _commit(stage: Path, output: Path, mode: str) -> Path | None:
    """Put the staged output in place: as a whole, or its files for an append. Returns the
    previous OUTPUT moved aside by an overwrite, for the caller to delete."""
    exists = output.exists() or output.is_symlink()
    if exists and mode == "append":
        _append_parts(stage, output)
        gate("commit")
        return None
    if exists and mode == "overwrite":
        old = _sibling(output, "old")
        os.rename(output, old)
        try:
            gate("commit")
            os.rename(stage, output)
        except BaseException:
            os.rename(old, output)
            raise
        return old
    if exists:
        raise SparkPyfuncError(
            f"OUTPUT {str(output)!r} appeared while scoring; nothing was written to it"
        )
    gate("commit")
    os.rename(stage, output)
    return None


class CommitState:
    """How far a staged output got: ``committed`` once OUTPUT holds it (nothing after that
    undoes it); ``interrupted`` if a Ctrl-C came while the commit ran (it was held)."""

    def __init__(self) -> None:
        self.committed = False
        self.interrupted = False


@contextlib.contextmanager
def _ctrl_c_held(state: CommitState) -> Iterator[None]:
    """SIGINT only noted (not raised) in the block: a commit is done whole or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: object) -> None:
        state.interrupted = True

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def gate(name: str) -> None:
    """A test hook at stage ``name`` of a score run: with ``SPARK_PYFUNC_TEST_GATES=DIR`` in
    the environment, write DIR/NAME.reached and wait for DIR/NAME.go (tests send a signal at
    an exact stage this way, not after a guessed sleep). Does nothing otherwise."""
    directory = os.environ.get(GATES_ENV)
    if not directory:
        return
    Path(directory, f"{name}.reached").write_text(str(os.getpid()))
    go = Path(directory, f"{name}.go")
    while not go.exists():
        time.sleep(0.02)


#: The environment variable naming the directory of the test gates (see :func:`gate`).
GATES_ENV = "SPARK_PYFUNC_TEST_GATES"


@contextlib.contextmanager
def staged_output(
    output: str | os.PathLike, mode: str, state: CommitState | None = None
) -> Iterator[Path]:
    """A fresh path to write OUTPUT to, committed into place only if the block succeeds.

    A Ctrl-C while the commit runs is held until it is done (then noted in ``state``, not
    raised): it either happened before the commit (OUTPUT is as it was) or cannot undo it.

    Args:
        output: the local OUTPUT path.
        mode: ``error`` (OUTPUT must not exist), ``overwrite`` (the previous OUTPUT is renamed
            aside, replaced, then deleted; put back if the replacement fails) or ``append``
            (the new part files are moved into OUTPUT, or all moved back).
        state: a :class:`CommitState` to record the commit in (the CLI reads it).

    Returns:
        A context manager yielding a hidden, not yet existing sibling of OUTPUT.

    Raises:
        SparkPyfuncError: if the commit cannot be done; whatever the block raises. Either way
            the sibling and any parent directory made for it are removed.

    Example:
        >>> with staged_output("out.parquet", "overwrite") as stage:  # doctest: +SKIP
        ...     frame.write.parquet(str(stage))
    """
    state = state if state is not None else CommitState()
    output = Path(output)
    created = _make_parents(output.parent)
    stage = _sibling(output, "new")
    try:
        yield stage
        with _ctrl_c_held(state):
            old = _commit(stage, output, mode)
            state.committed = True
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(stage)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    if state.interrupted:
        logger.warning(
            "Ctrl-C while OUTPUT was committed: it was held; OUTPUT %s is written", output
        )
    with contextlib.suppress(OSError):
        _remove(stage)  # what an append left: the _SUCCESS files' folder
    if old is not None:
        try:
            _remove(old)
        except OSError as exc:
            logger.warning("could not remove the previous OUTPUT, moved to %s: %s", old, exc)
    gate("after-commit")
