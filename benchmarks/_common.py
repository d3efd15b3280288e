"""Helpers shared by the benchmark scripts: timing medians and plain-text tables."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "safeedit" / "safeedit_sample.json"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def median(xs):
    return statistics.median(xs)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(headers: list[str], rows: list[list], file=sys.stdout) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |", file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |", file=file)


def read_run(folder) -> dict:
    """What a `safeedit bench` run folder recorded about its cost: method, rows, fit.json, memory."""
    import json

    folder = Path(folder)
    meta = json.loads((folder / "run.json").read_text())
    rows = [json.loads(line) for f in sorted(folder.glob("results*.jsonl")) for line in f.read_text().splitlines()
            if line.strip()]
    fit = json.loads((folder / "fit.json").read_text()) if (folder / "fit.json").is_file() else None
    resources = [json.loads(f.read_text()) for f in sorted(folder.glob("resources*.json"))]
    peak = max((r["memory_at_end"]["peak_rss_mib"] for r in resources), default=None)
    return {"folder": str(folder), "method": meta["method"]["name"], "per_instance": meta["method"]["per_instance"],
            "rows": rows, "fit": fit, "peak_rss_mib": peak,
            "rss_after_load_mib": meta["memory_after_load"].get("rss_mib"), "train_instances": meta.get("train_instances")}
