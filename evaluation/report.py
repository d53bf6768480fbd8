"""Printing results as a table and saving them as JSON (atomically)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from utils.images import write_atomic


def format_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.6g}"


def format_table(results: dict[str, object]) -> str:
    """Two aligned columns, `metric | value`."""
    width = max([len("metric")] + [len(name) for name in results])
    lines = [f"{'metric'.ljust(width)} | value", f"{'-' * width}-+-{'-' * 12}"]
    lines += [f"{name.ljust(width)} | {format_value(value)}" for name, value in results.items()]
    return "\n".join(lines)


def json_ready(results: dict[str, object]) -> dict[str, object]:
    """Plain Python numbers; NaN (no value) becomes null so that the file is valid JSON."""
    ready = {}
    for name, value in results.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        ready[name] = value
    return ready


def save_json(results: dict[str, object], path: str | os.PathLike) -> Path:
    text = json.dumps(json_ready(results), indent=2, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            file.write(text)

    return write_atomic(path, write)
