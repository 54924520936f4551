"""The fidelity study: gradient fidelity against the token cap L and the fitting-corpus size N.

``python run.py -m experiment=fidelity_study`` runs ``stage=fidelity`` for every (L, N) of the
grid; when the multirun ends, ``FidelityStudyCallback`` reads every job's ``fidelity_summary.json``
(files only, so it works for any launcher; ``write_study(sweep_dir)`` reruns it by hand) and writes
into the sweep folder:

- ``fidelity_study.csv``: one row per job: L, N, the fit residual (held-out), the share of the
  dataset's caption words past the cap, and per condition the Spearman and recall@k with their
  standard errors (the random-map control with its seed spread);
- ``fidelity_study.md``: the same as a table;
- ``fidelity_vs_N.png`` (one line per L) and ``fidelity_vs_L.png`` (one line per N): FUSE's
  Spearman and recall@k with standard-error bars, the random-map control as a grey band (its
  mean ± SE, lowest to highest over the jobs at each x) and chance as a dotted line;
- ``fidelity_vs_residual.png``: FUSE's Spearman against the fit's held-out residual per job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fuse_repro.records import natural_key, write_text
from fuse_repro.table_render import format_cell

log = logging.getLogger(__name__)

SUMMARY = "fidelity_summary.json"
METRICS = ("spearman", "recall")  # recall stands for recall_at_<k>


def _row_of(path: Path, root: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    ctx = data["context"]
    k = ctx["recall_k"]
    shares = [v["share_past_cap"] for v in ctx["overflow"].values() if v.get("share_past_cap") is not None]
    row: dict[str, Any] = {
        "job": path.parent.relative_to(root).as_posix(),
        "L": ctx["max_tokens"],
        "N": ctx["words_per_bucket"],
        "overflow_policy": ctx["overflow_policy"],
        "states": ctx["states"],
        "recall_k": k,
        "fit_residual_heldout": ctx["fit_residual_heldout"],
        "fit_baseline_heldout": ctx["fit_baseline_heldout"],
        "share_past_cap": sum(shares) / len(shares) if shares else None,
    }
    for cond in data["rows"]:
        name = cond["condition"]
        row[f"{name}.spearman"] = cond["spearman"]
        row[f"{name}.spearman_se"] = cond["spearman_se"]
        row[f"{name}.recall"] = cond[f"recall_at_{k}"]
        row[f"{name}.recall_se"] = cond[f"recall_at_{k}_se"]
        if not math.isnan(cond.get("spearman_spread", float("nan"))):
            row[f"{name}.spearman_spread"] = cond["spearman_spread"]
    return row


def study_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job summary under ``sweep_dir``, sorted by (L, N)."""
    root = Path(sweep_dir)
    paths = sorted(root.rglob(SUMMARY), key=lambda p: natural_key(p.relative_to(root).as_posix()))
    rows = [_row_of(p, root) for p in paths]
    return sorted(rows, key=lambda r: (r["L"], r["N"], r["overflow_policy"], natural_key(r["job"])))


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_cell(v, 4) for k, v in row.items()})
    return buf.getvalue()


def _pm(row: dict[str, Any], key: str) -> str:
    value, se = row.get(key), row.get(f"{key}_se")
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if se is None or math.isnan(se) else f" ± {se:.3f}")


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Fidelity study: FUSE gradient vs the token cap L and the corpus size N",
        "",
        "Spearman and recall@k of the candidate ranking, mean ± standard error over states.",
        "",
        ("| L | N | fit residual (held-out) | words past cap | fuse Spearman | random maps Spearman | "
         "fuse recall | random maps recall | other overflow policy Spearman |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        other = next((k[: -len(".spearman")] for k in r if k.startswith("fuse_overflow_") and k.endswith(".spearman")), None)
        lines.append(
            f"| {r['L']} | {r['N']} | {format_cell(r['fit_residual_heldout'], 4) or '-'} | "
            f"{format_cell(r['share_past_cap'], 4) or '-'} | {_pm(r, 'fuse.spearman')} | {_pm(r, 'random_maps.spearman')} | "
            f"{_pm(r, 'fuse.recall')} | {_pm(r, 'random_maps.recall')} | "
            f"{(other + ': ' + _pm(r, other + '.spearman')) if other else '-'} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], x_key: str, line_key: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = sorted({r[x_key] for r in rows})
    for ax, metric in zip(axes, METRICS):
        # the random-map control over every job at each x: mean - SE .. mean + SE, min and max
        lo = [min(r["random_maps." + metric] - (r.get(f"random_maps.{metric}_se") or 0.0)
                  for r in rows if r[x_key] == x) for x in xs]
        hi = [max(r["random_maps." + metric] + (r.get(f"random_maps.{metric}_se") or 0.0)
                  for r in rows if r[x_key] == x) for x in xs]
        ax.fill_between(xs, lo, hi, color="0.8", label="random maps (± SE)")
        chance = [sum(r["chance." + metric] for r in rows if r[x_key] == x) / sum(r[x_key] == x for r in rows) for x in xs]
        ax.plot(xs, chance, color="0.4", linestyle=":", label="chance")
        for value in sorted({r[line_key] for r in rows}):
            line = sorted((r for r in rows if r[line_key] == value), key=lambda r: r[x_key])
            ax.errorbar([r[x_key] for r in line], [r["fuse." + metric] for r in line],
                        yerr=[r.get(f"fuse.{metric}_se") or 0.0 for r in line], marker="o", capsize=3,
                        label=f"fuse, {line_key}={value}")
        if x_key == "N":
            ax.set_xscale("log", base=2)
        ax.set_xlabel({"N": "N (fitting words per bucket)", "L": "L (token cap per word)"}[x_key])
        ax.set_ylabel({"spearman": "Spearman (predicted vs true)", "recall": f"recall@{rows[0]['recall_k']}"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_residual(rows: list[dict[str, Any]], path: Path) -> Path:
    """FUSE's Spearman against the fit's held-out residual, one point per job (labelled L/N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    kept = [r for r in rows if r["fit_residual_heldout"] is not None]
    for L in sorted({r["L"] for r in kept}):
        pts = [r for r in kept if r["L"] == L]
        ax.errorbar([r["fit_residual_heldout"] for r in pts], [r["fuse.spearman"] for r in pts],
                    yerr=[r.get("fuse.spearman_se") or 0.0 for r in pts], fmt="o", capsize=3, label=f"L={L}")
        for r in pts:
            ax.annotate(f"N={r['N']}", (r["fit_residual_heldout"], r["fuse.spearman"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("fit residual, held-out words (lower = better fit)")
    ax.set_ylabel("fuse Spearman (predicted vs true)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_study(sweep_dir: str | Path) -> list[Path]:
    """Write the study's CSV, markdown and plots into ``sweep_dir``; returns their paths."""
    root = Path(sweep_dir)
    rows = study_rows(root)
    if not rows:
        raise FileNotFoundError(f"no {SUMMARY} under {root}: did the fidelity jobs run (stage=fidelity)?")
    out = [write_text(root / "fidelity_study.csv", _csv(rows)), write_text(root / "fidelity_study.md", _markdown(rows))]
    out.append(_plot(rows, "N", "L", root / "fidelity_vs_N.png"))
    out.append(_plot(rows, "L", "N", root / "fidelity_vs_L.png"))
    out.append(_plot_residual(rows, root / "fidelity_vs_residual.png"))
    return out


class FidelityStudyCallback(Callback):
    """Hydra callback: ``write_study`` on the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            paths = write_study(sweep_dir)
        except Exception as err:  # noqa: BLE001 - a failed summary must not hide the jobs' own results
            log.error("fidelity study summary failed for %s: %s", sweep_dir, err)
            return
        log.info("fidelity study written: %s", ", ".join(str(p) for p in paths))


if __name__ == "__main__":  # python -m fuse_repro.fidelity_study <sweep folder>
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m fuse_repro.fidelity_study <sweep folder>")
    for written in write_study(sys.argv[1]):
        print(written)
