"""What ``spark-pyfunc info`` shows of a model: its metadata as a dict, and as text.

Types are shown with the schema types' own ``simple_string()``, so the CLI has no second
reader of MLflow's JSON type forms.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from spark_pyfunc._format import read_metadata
from spark_pyfunc._paths import is_remote
from spark_pyfunc._uris import resolve_model_uri

if TYPE_CHECKING:
    from spark_pyfunc.schema import Schema

__all__ = [
    "describe",
    "info_lines",
]


def describe(model: str | os.PathLike) -> dict[str, Any]:
    """A model's metadata as a plain dict: what ``info --json`` prints (keys are stable).

    A column's type is its ``simple_string()`` (``double``, ``array<long>``,
    ``struct<a: long, b?: string>``, ``tensor<float64>(-1, 3)``); an unnamed column is
    named by its position.
    """
    text = os.fspath(model)
    metadata = read_metadata(resolve_model_uri(model))
    # A URI's local copy is a download deleted at exit: show what the user gave instead.
    remote = is_remote(text) and not text.startswith("file:")

    def columns(schema: Schema | None) -> list[dict[str, Any]] | None:
        if schema is None:
            return None
        return [
            {
                "name": spec.name if spec.name is not None else index,
                "type": spec.simple_string(),
                "required": getattr(spec, "required", True),
            }
            for index, spec in enumerate(schema.inputs)
        ]

    params = metadata.get_params_schema()
    methods = metadata.declared_methods
    artifacts = metadata.pyfunc_conf.get("artifacts") or {}
    return {
        "model": text,
        "path": None if remote else str(metadata.path),
        "model_config": metadata.model_config or None,
        "flavors": sorted(metadata.flavors),
        "loader_module": metadata.loader_module,
        "model_uuid": metadata.model_uuid,
        "utc_time_created": metadata.utc_time_created,
        "model_size_bytes": metadata.model_size_bytes,
        "python_version": metadata.python_version,
        "cloudpickle_version": metadata.cloudpickle_version,
        "mlflow_version": metadata.mlflow_version,
        "methods": list(methods) if methods is not None else None,
        "inputs": columns(metadata.get_input_schema()),
        "outputs": columns(metadata.get_output_schema()),
        "params": (
            [
                {
                    "name": p.name,
                    "type": p.dtype.simple_string() + ("" if p.shape is None else "[]"),
                    "default": p.to_dict().get("default"),
                }
                for p in params.params
            ]
            if params is not None
            else None
        ),
        "artifacts": {
            name: spec.get("path") if isinstance(spec, dict) else spec
            for name, spec in artifacts.items()
        },
        "requirements": list(metadata.requirements()),
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _size_text(size: int | None) -> str:
    if size is None:
        return "-"
    value, unit = float(size), "bytes"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({size:,} bytes)"


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def info_lines(info: dict[str, Any]) -> list[str]:
    """The human form of :func:`describe`."""
    lines = [
        f"model         {info['model']}"
        + (f" ({info['path']})" if info["path"] not in (None, info["model"]) else ""),
        f"flavors       {', '.join(info['flavors'])} (loader module {info['loader_module']})",
        f"uuid          {_shown(info['model_uuid'])}",
        f"created       {_shown(info['utc_time_created'])} UTC",
        f"size          {_size_text(info['model_size_bytes'])}",
        f"python        {_shown(info['python_version'])}",
        f"cloudpickle   {_shown(info['cloudpickle_version'])}",
    ]
    if info["mlflow_version"]:
        lines.append(f"mlflow        {info['mlflow_version']}")
    # Recorded by save_model: what spark_udf checks method= against before any task runs.
    methods = info["methods"]
    lines.append(
        f"methods       {', '.join(methods)}"
        if methods is not None
        else "methods       not recorded (a wrong method fails where the model loads)"
    )
    for title in ("inputs", "outputs"):
        columns = info[title]
        if columns is None:
            lines.append(f"{title:<14}- (no signature)")
            continue
        lines.append(f"{title}:")
        lines += _table(
            [["name", "type", "required"]]
            + [[str(c["name"]), c["type"], "yes" if c["required"] else "no"] for c in columns]
        )
    if info["params"]:
        lines.append("params:")
        lines += _table(
            [["name", "type", "default"]]
            + [[p["name"], p["type"], json.dumps(p["default"])] for p in info["params"]]
        )
    else:
        lines.append("params        -")
    if info["model_config"]:
        lines.append("model_config:")
        lines += _table([[k, json.dumps(v, default=str)] for k, v in info["model_config"].items()])
    else:
        lines.append("model_config  -")
    if info["artifacts"]:
        lines.append("artifacts:")
        lines += _table([[name, _shown(path)] for name, path in info["artifacts"].items()])
    lines.append("requirements:" if info["requirements"] else "requirements  -")
    lines += [f"  {r}" for r in info["requirements"]]
    return lines
