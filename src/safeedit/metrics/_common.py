"""Small helpers shared by the general-capability metrics (JSONL reading, deterministic subsets)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; a bad line fails with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append((line_no, record))
    return records


def sample_indices(total: int, n: int | None, seed: int, what: str) -> list[int]:
    """All indices when ``n`` is None, else ``n`` indices drawn with ``random.Random(seed)``, in file order."""
    if n is None:
        return list(range(total))
    if n < 0 or n > total:
        raise ValueError(f"cannot take n={n} {what} items from a file of {total}")
    return sorted(random.Random(seed).sample(range(total), n))
