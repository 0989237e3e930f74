"""How much memory a model host needs, estimated on the driver before any executor runs it.

``spark_udf`` compares the estimate with the executor's memory settings and warns, with
figures, when one host copy clearly cannot fit: better said on the driver than as a container
killed by YARN or Kubernetes in the middle of a job. A leaf: no imports of the package.
"""

from __future__ import annotations

__all__ = ["HOST_BASE_MIB", "estimate_host_mib", "host_memory_warning", "parse_mib"]

#: A host's memory before its model (PSS, MiB): the interpreter, numpy, pandas and pyarrow
#: (55-75 MiB measured for a model of a few KiB, tests/test_status.py's).
HOST_BASE_MIB = 60.0
_UNITS = {"": 1 / 1024**2, "b": 1 / 1024**2, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}


def parse_mib(text: str | None) -> float | None:
    """Spark's memory strings (``512m``, ``2g``, ``1024``: MiB without a unit) in MiB;
    None for none or one that does not parse (Spark itself refuses those)."""
    if not text:
        return None
    value = text.strip().lower()
    digits = value.rstrip("kmgtb")
    unit = value[len(digits) :].rstrip("b") if value[len(digits) :] != "b" else "b"
    if not digits.replace(".", "", 1).isdigit() or unit not in _UNITS:
        return None
    return float(digits) * (_UNITS[unit] if unit else 1.0)


def estimate_host_mib(model_bytes: int) -> float:
    """The least a host of this model holds: a loaded model is rarely smaller than its files
    (a pickled forest of 208 MiB held 330 MiB, docs/benchmark.md)."""
    return HOST_BASE_MIB + model_bytes / 2**20


def host_memory_warning(
    model_bytes: int,
    *,
    model: str,
    pyspark_memory: str | None,
    memory_overhead: str | None,
    executor_cores: int | None,
) -> str | None:
    """Why one host copy of the model clearly cannot fit the executor's memory settings, in
    figures; None when it can, or when the session sets neither limit.

    ``spark.executor.pyspark.memory`` is split between an executor's Python workers (Spark
    gives each an address-space limit of it divided by the executor's cores) and a host
    inherits its starter's limit. ``spark.executor.memoryOverhead`` is the container's room
    beside the JVM for every Python process of the executor (YARN, Kubernetes).
    """
    need = estimate_host_mib(model_bytes)
    figure = (
        f"a model host of {model} needs about {need:,.0f} MiB or more ({HOST_BASE_MIB:.0f} MiB "
        f"of Python, pandas and Arrow and the model's {model_bytes / 2**20:,.0f} MiB on disk)"
    )
    python_mib = parse_mib(pyspark_memory)
    if python_mib is not None:
        cores = executor_cores or 1
        share = python_mib / cores
        if need > share:
            return (
                f"{figure}, but spark.executor.pyspark.memory={pyspark_memory} gives each Python "
                f"process of a {cores}-core executor {share:,.0f} MiB of address space (Spark's "
                "limit on each worker, which the host it starts inherits): set it to at least "
                f"{need * cores:,.0f} MiB, or leave it unset and size "
                "spark.executor.memoryOverhead instead"
            )
        return None
    overhead_mib = parse_mib(memory_overhead)
    if overhead_mib is not None and need > overhead_mib:
        return (
            f"{figure}, but spark.executor.memoryOverhead={memory_overhead} is all the memory "
            "the executor's container has beside the JVM for every Python process: set it to "
            f"at least {need:,.0f} MiB plus about 100 MiB per core for the Python workers"
        )
    return None
