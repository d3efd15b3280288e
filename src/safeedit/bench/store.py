"""Append-only JSONL stores that survive ``kill -9``: results of a run, and cached generations.

Each line is written whole, flushed and fsync'ed before the next instance starts. On reopen a
last line cut by a kill (no newline, or not valid JSON) is dropped from the file, so a resumed
run neither loses a finished instance nor counts a half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable


@contextmanager
def _locked(path: Path):
    """An advisory lock beside ``path``: processes sharing a file (shards appending to one generation
    cache) never read a line another one is writing, nor truncate it."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_complete_lines(path: Path, repair: bool = True) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; truncates the file after the last complete one (``repair``)."""
    if not path.exists():
        return []
    with _locked(path):
        return _read_unlocked(path, repair)


def _read_unlocked(path: Path, repair: bool) -> list[dict[str, Any]]:
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
    if repair and good_end != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return rows


class JsonlStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = _read_complete_lines(self.path)

    def append(self, row: dict[str, Any]) -> None:
        self.extend([row])

    def extend(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` in one write and one fsync (a group of instances is written as a unit)."""
        if not rows:
            return
        data = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows).encode("utf-8")
        with _locked(self.path), open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(rows)


class ResultsStore(JsonlStore):
    """``results.jsonl`` of a run: one line per instance, keyed by the instance key."""

    def done_keys(self) -> set[str]:
        return {row["key"] for row in self.rows}


_SHARD = re.compile(r"^(?P<stem>[a-z]+)(?:\.rank(?P<rank>\d+)-of(?P<world>\d+))?\.jsonl$")


def shard_name(stem: str, rank: int, world: int) -> str:
    """``results.jsonl`` for a single process; ``results.rank{r}-of{w}.jsonl`` for shard r of w."""
    return f"{stem}.jsonl" if world <= 1 else f"{stem}.rank{rank}-of{world}.jsonl"


def shard_files(run_dir: str | Path, stem: str) -> list[Path]:
    """Every file of ``stem`` in a run folder: the single-process file and all shards, sorted."""
    run_dir = Path(run_dir)
    found = []
    for path in run_dir.glob(f"{stem}*.jsonl"):
        m = _SHARD.match(path.name)
        if m and m["stem"] == stem:
            found.append((int(m["world"] or 1), int(m["rank"] or 0), path))
    return [p for _, _, p in sorted(found)]


def read_shards(run_dir: str | Path, stem: str) -> list[dict[str, Any]]:
    """All complete rows of every ``stem`` file of a run folder, without repairing files that other
    processes may still be writing."""
    rows: list[dict[str, Any]] = []
    for path in shard_files(run_dir, stem):
        rows.extend(_read_complete_lines(path, repair=False))
    return rows


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
