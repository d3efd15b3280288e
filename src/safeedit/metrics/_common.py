"""Small helpers shared by the general-capability metrics (JSONL reading, deterministic subsets)."""

from __future__ import annotations

import random

from safeedit.errors import ConfigError

from safeedit.data.jsonio import read_jsonl  # noqa: F401  (re-exported for the metric loaders)


def sample_indices(total: int, n: int | None, seed: int, what: str) -> list[int]:
    """All indices when ``n`` is None, else ``n`` indices drawn with ``random.Random(seed)``, in file order."""
    if n is None:
        return list(range(total))
    if n < 0 or n > total:
        raise ConfigError(f"cannot take n={n} {what} items from a file of {total}")
    return sorted(random.Random(seed).sample(range(total), n))
