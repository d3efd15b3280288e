"""Append-only JSONL stores that survive ``kill -9``: results of a run, and cached generations.

Each line is written whole, flushed and fsync'ed before the next instance starts. On reopen a
last line cut by a kill (no newline, or not valid JSON) is dropped from the file, so a resumed
run neither loses a finished instance nor counts a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable


def _read_complete_lines(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; truncates the file after the last complete one."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, good_end, offset = [], 0, 0
    for line in raw.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        offset += len(line) + 1
        if not line.strip():
            good_end = offset
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a corrupt line: keep what came before it
        good_end = offset
    if good_end != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return rows


class JsonlStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = _read_complete_lines(self.path)

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)


class ResultsStore(JsonlStore):
    """``results.jsonl`` of a run: one line per instance, keyed by the instance key."""

    def done_keys(self) -> set[str]:
        return {row["key"] for row in self.rows}


def prompt_digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]


class GenerationCache(JsonlStore):
    """Pre-edit generations, one file per (model fingerprint, prompt mode, generation settings).

    Lines map the digest of the exact prompt text to the response, so every method, run and data
    file that asks the unedited model the same question reuses one answer.
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._map = {row["prompt"]: row["response"] for row in self.rows}

    def lookup(self, prompts: Iterable[str]) -> list[str | None]:
        return [self._map.get(prompt_digest(p)) for p in prompts]

    def add(self, prompt: str, response: str) -> None:
        digest = prompt_digest(prompt)
        if digest not in self._map:
            self.append({"prompt": digest, "response": response})
            self._map[digest] = response
