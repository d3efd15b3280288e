"""Crash-safe build storage: append-only JSONL keyed by a stable id, and an atomic manifest.

Every generated item is appended as one JSON line and flushed at once, so a killed stage loses at
most the line it was writing. On reopening, a partial or unparsable last line is cut off and the
ids already present are skipped; finished work is never redone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from safeedit.errors import DataError


class JsonlStore:
    """Items ``{"id": ..., ...}`` in one JSONL file; first occurrence of an id wins."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.items: dict[str, dict] = {}
        self.repaired = False  # True when a partial last line was discarded
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl == -1:  # last line without newline: the writer was killed mid-line
                break
            line = data[pos:nl]
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    if data.find(b"\n", nl + 1) == -1 and not data[nl + 1:].strip():
                        break  # garbage only on the last line: treat as a torn write
                    raise DataError(f"{self.path}: corrupt line at byte {pos} (not the last line); fix or delete it")
                if isinstance(item, dict) and "id" in item:
                    self.items.setdefault(str(item["id"]), item)
            pos = good_end = nl + 1
        if good_end < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)
            self.repaired = True

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.items

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: str) -> dict | None:
        return self.items.get(item_id)

    def values(self) -> list[dict]:
        return list(self.items.values())

    def append(self, item: dict) -> None:
        item_id = str(item["id"])
        if item_id in self.items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.items[item_id] = item

    def extend(self, items: Iterable[dict]) -> None:
        for item in items:
            self.append(item)


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, items: Iterable[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Manifest:
    """``manifest.json`` of a build folder: one entry per stage, rewritten atomically."""

    NAME = "manifest.json"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
        else:
            self.data = {"format": "safeedit-build/1", "created": now(), "stages": {}}

    def stage(self, name: str) -> dict | None:
        return self.data["stages"].get(name)

    def done(self, name: str) -> bool:
        entry = self.stage(name)
        return bool(entry and entry.get("status") == "done")

    def update(self, name: str, **fields: Any) -> dict:
        entry = self.data["stages"].setdefault(name, {})
        entry.update(fields)
        self.save()
        return entry

    def save(self) -> None:
        self.data["updated"] = now()
        write_json_atomic(self.path, self.data)
