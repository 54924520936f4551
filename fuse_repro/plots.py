"""The figures a run draws (matplotlib, Agg backend): every PNG a stage writes comes from here."""

from __future__ import annotations

from pathlib import Path


def plot_search_curves(curves: dict[str, dict[str, list[float]]], similarity: str | None,
                       out_path: Path) -> Path:
    """``search_curves.png``: the full objective and the similarity of the best beam against
    search step, one line per method. ``curves[method][term]`` is the per-step mean; the
    ``similarity`` term's loss is 1 - cos and is drawn as cos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("objective", "objective (lower is better)")]
    if similarity:
        panels.append((similarity, "similarity to target (cos, higher is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for method, curve in curves.items():
            values = curve.get(key, [])
            if key == similarity:
                values = [1.0 - v for v in values]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=method)
        ax.set_xlabel("search step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
