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


_BAR_METRICS = ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_Avg", "DS_nondegenerate", "Degenerate%", "KQA", "CSum"]


def _grouped_bars(series: list[tuple[str, dict]], metrics: list[str], path: str | Path) -> Path:
    """One group of bars per metric, one bar per (label, scores) series."""
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / max(1, len(series))
    for i, (label, scores) in enumerate(series):
        ax.bar([x + i * width for x in range(len(metrics))], [scores[m] for m in metrics], width=width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(metrics))], metrics, rotation=30, ha="right")
    ax.set_ylabel("score (0-100)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_pre_post(summary: dict, path: str | Path) -> Path:
    metrics = [m for m in _BAR_METRICS if m in summary["pre"] and m in summary["post"]]
    return _grouped_bars([("pre (unedited)", summary["pre"]), (f"post ({summary['method']})", summary["post"])], metrics, path)


def plot_compare(labels: list[str], summaries: list[dict], path: str | Path) -> Path:
    metrics = [m for m in _BAR_METRICS if all(m in s["post"] for s in summaries)]
    return _grouped_bars([(label, s["post"]) for label, s in zip(labels, summaries)], metrics, path)
