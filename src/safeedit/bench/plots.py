"""Matplotlib charts (PNG) for reports: nothing here needs a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_layer_distances(distances: list[float], layer: int, path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = ["tab:red" if i == layer else "tab:blue" for i in range(len(distances))]
    ax.bar(range(len(distances)), distances, color=colors)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("L2 distance safe vs unsafe")
    ax.set_title(f"toxic layer {layer}" + (f" — {title}" if title else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_layer_histogram(counts: dict[int, int], n_layers: int, path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(n_layers), [counts.get(i, 0) for i in range(n_layers)], color="tab:red")
    ax.set_xlabel("toxic layer")
    ax.set_ylabel("instances")
    ax.set_title(title or "distribution of toxic layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
