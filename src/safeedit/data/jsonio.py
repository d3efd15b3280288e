"""Reading JSON and JSONL files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safeedit.errors import DataError, InputNotFoundError


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; a bad line fails with its number."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append((line_no, record))
    return records


def read_json_list(path: str | Path, list_key: str | None = None) -> list[Any]:
    """Items of a ``.jsonl`` file, a JSON list, or a JSON object holding the list under ``list_key``."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [record for _, record in read_jsonl(path)]
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if isinstance(data, dict) and list_key and isinstance(data.get(list_key), list):
        data = data[list_key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list{f' (or an object with {list_key!r})' if list_key else ''}, "
                         f"got {type(data).__name__}")
    return data
