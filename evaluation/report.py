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


def format_table(results: dict[str, object], notes: dict[str, str] | None = None) -> str:
    """Aligned columns `metric | value`, plus `| note` where `notes` has something to say about a key."""
    notes = {name: text for name, text in (notes or {}).items() if name in results}
    width = max([len("metric")] + [len(name) for name in results])
    values = {name: format_value(value) for name, value in results.items()}
    value_width = max([len("value")] + [len(text) for text in values.values()])
    header = f"{'metric'.ljust(width)} | {'value'.ljust(value_width)}" + (" | note" if notes else "")
    lines = [header.rstrip(), f"{'-' * width}-+-{'-' * value_width}" + ("-+-" + "-" * 12 if notes else "")]
    for name, text in values.items():
        line = f"{name.ljust(width)} | {text.ljust(value_width)}"
        lines.append((line + f" | {notes[name]}" if name in notes else line).rstrip())
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
