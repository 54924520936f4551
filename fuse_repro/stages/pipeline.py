"""stage=pipeline (the default): fit -> caption with every method -> score -> table -> plot.

Offline by default: SmolLM2-135M primary, all-MiniLM-L6-v2 text similarity through FUSE, on the
bundled text-target set. Every method runs on the same items with the same budget (steps, top_k,
beam width); each writes its own ``<method>/captions.jsonl`` (resumable) and ``metrics.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fuse_repro.config import convert, run_config_hash
from fuse_repro.provenance import check_provenance, results_fields
from fuse_repro.records import (
    CAPTIONS_NAME,
    write_json,
    write_run_info,
)
from fuse_repro.runtime import resolve_device
from fuse_repro.stages import caption
from fuse_repro.stages.caption import (
    build_captioner,
    caption_items,
    dataset_items,
    nothing_captioned,
)
from fuse_repro.tracking import open_tracker
from fuse_repro.weights_label import banner, row_name, weights_fields

log = logging.getLogger(__name__)

# (column title, metrics.json key or an objective mean), in table order.
COLUMNS = [
    ("B-1", "Bleu_1"),
    ("B-4", "Bleu_4"),
    ("METEOR", "METEOR"),
    ("ROUGE-L", "ROUGE_L"),
    ("CIDEr", "CIDEr"),
]


# What a sweep over the pipeline optimizes: the fuse method's mean total objective (lower).
OPTIMIZED_METRIC = "objective"


def cosine_terms(objectives: list[Any]) -> list[str]:
    """Names of the terms whose objective declares a "cosine" metric (loss = 1 - cos)."""
    return [o.name for o in objectives if "cosine" in getattr(o, "metrics", ())]


def objective_means(
    records: list[dict[str, Any]], cosine: list[str] | None = None
) -> dict[str, float]:
    """Mean of every loss term over the captions, plus ``mean_cos_<term>`` = 1 - mean loss for
    each term in ``cosine`` (the terms whose objective declares a cosine metric)."""
    keys = sorted({k for r in records for k in r["losses"]})
    out = {f"mean_{k}": sum(r["losses"][k] for r in records) / len(records) for k in keys}
    for name in cosine or ():
        if f"mean_{name}" in out:
            out[f"mean_cos_{name}"] = 1.0 - out[f"mean_{name}"]
    return out


def history_curves(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per step, the mean over items of each history term (items that stopped early keep their
    last value)."""
    steps = max(len(r["history"]) for r in records)
    keys = sorted({k for r in records for h in r["history"] for k in h if k != "step"})
    curves: dict[str, list[float]] = {}
    for key in keys:
        curve = []
        for t in range(steps):
            vals = [r["history"][min(t, len(r["history"]) - 1)].get(key) for r in records]
            vals = [v for v in vals if v is not None]
            curve.append(sum(vals) / len(vals) if vals else math.nan)
        curves[key] = curve
    return curves


def write_comparison_table(rows: list[dict[str, Any]], similarity_key: str | None, out_dir: Path,
                           note: str | None = None) -> Path:
    """Markdown + CSV of every method's caption metrics (x100) and objective means. A row's
    ``label`` (e.g. "fuse (random weights)") names it when present; ``note`` is a line above
    the markdown table (a random-weight run's warning)."""
    headers = ["method"] + [c for c, _ in COLUMNS]
    if similarity_key:
        headers.append("similarity (cos)")
    headers += ["LM NLL", "objective"]
    table = []
    for row in rows:
        metrics = row["metrics"].get("metrics", {})
        cells = [row.get("label", row["method"])]
        for _, key in COLUMNS:
            value = metrics.get(key)
            cells.append(f"{100 * value:.2f}" if isinstance(value, (int, float)) else "–")
        if similarity_key:
            cells.append(f"{row['objective'][similarity_key]:.4f}")
        cells.append(f"{row['objective']['mean_lm']:.3f}")
        cells.append(f"{row['objective']['mean_objective']:.4f}")
        table.append(cells)
    md = [note, ""] if note else []
    md += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in table]
    path = out_dir / "table.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    with (out_dir / "table.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(table)
    return path


def plot_curves(curves: dict[str, dict[str, list[float]]], similarity: str | None, out_path: Path) -> Path:
    """PNG: the full objective and the similarity of the best beam against search step."""
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


def check(cfg: DictConfig) -> None:
    """Config-only validation: the caption checks, and every method name of pipeline.methods."""
    caption.check(cfg)
    search_cfg = convert(cfg.search)
    for method in convert(cfg.pipeline).methods:
        dataclasses.replace(search_cfg, method=method)  # SearchConfig checks the method name


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    from fuse_repro.scoring import ScoringOptions, score_captions_file

    check(cfg)
    adapter_cfg = convert(cfg.adapter)
    search_cfg = convert(cfg.search)
    methods = convert(cfg.pipeline).methods
    device = resolve_device(cfg.device)
    items = dataset_items(cfg)
    options = ScoringOptions.from_config(cfg.scoring)
    resume = str(cfg.get("resume") or "check")
    fields = {m: results_fields(cfg, method=m) for m in methods}
    for method in methods:  # refuse a mismatched resume before loading models
        check_provenance(out_dir / method, fields[method], resume)
    captioner = build_captioner(cfg.source, cfg.objective, adapter_cfg, Path(cfg.paths.cache_dir), device)
    cosine = cosine_terms(captioner.objectives)
    similarity = cosine[0] if cosine else None
    rows, curves = [], {}
    with open_tracker(cfg, out_dir, "pipeline", {"adapter_keys": captioner.adapter_keys}) as tracker:
        for method in methods:
            method_dir = out_dir / method
            method_cfg = dataclasses.replace(search_cfg, method=method)
            records = caption_items(items, captioner, method_cfg, int(cfg.seed), method_dir, tracker,
                                    desc=method, fields=fields[method], resume=resume)
            if not records:
                raise nothing_captioned(method_dir, label=f"{method}: ")
            captioned = {r["id"] for r in records}
            scored_items = [it for it in items if it.id in captioned]
            metrics = score_captions_file(
                method_dir / CAPTIONS_NAME,
                scored_items,
                dataclasses.replace(options, method=method),
                dataset={"name": cfg.dataset.get("name"), "format": cfg.dataset.get("format")},
            )
            if weights_fields(cfg):  # a random-weight run: metrics.json says so
                metrics.update(weights_fields(cfg))
                write_json(method_dir / "metrics.json", metrics, allow_nan=False)
            means = objective_means(records, cosine)
            write_json(method_dir / "objective.json", means)
            # Labels for stage=table: one row per (experiment, method) with the run's hash.
            write_run_info(method_dir, {
                "experiment": cfg.get("experiment_name", "default"),
                "config_hash": run_config_hash(cfg),
                "method": method,
                "dataset": cfg.dataset.get("name"),
                "adapter_keys": captioner.adapter_keys,
                **weights_fields(cfg),
            })
            rows.append({"method": method, "label": row_name(method, cfg), "metrics": metrics,
                         "objective": means})
            curves[method] = history_curves(records)
            tracker.summary({f"{method}/{k}": v for k, v in means.items()})
            tracker.summary({f"{method}/{k}": v for k, v in metrics.get("metrics", {}).items()
                             if isinstance(v, (int, float))})
        sim_key = f"mean_cos_{similarity}" if similarity else None
        table_path = write_comparison_table(rows, sim_key, out_dir, note=banner(cfg))
        plot_path = plot_curves(curves, similarity, out_dir / "search_curves.png") if cfg.pipeline.plot else None
    write_json(out_dir / "curves.json", curves)
    summary = {
        "methods": methods,
        "items": len(items),
        "adapter_keys": captioner.adapter_keys,
        "table": str(table_path),
        "plot": str(plot_path) if plot_path else None,
        "results": {r["method"]: {"objective": r["objective"], "metrics": r["metrics"].get("metrics", {})} for r in rows},
        **weights_fields(cfg),
    }
    write_json(out_dir / "summary.json", summary)
    print()
    print(table_path.read_text(encoding="utf-8"))
    if banner(cfg):
        print(banner(cfg))
    print(f"Run folder:     {out_dir}")
    print(f"  table:        {table_path} (and table.csv)")
    if plot_path:
        print(f"  plot:         {plot_path}")
    for method in methods:
        print(f"  {method + ':':<14}{out_dir / method}/captions.jsonl, metrics.json, per_caption.jsonl")
    print(f"  adapters:     {Path(cfg.paths.cache_dir) / 'adapters'} ({', '.join(captioner.adapter_keys.values())})")
    fuse_row = next((r for r in rows if r["method"] == "fuse"), rows[0])
    return {"objective": fuse_row["objective"]["mean_objective"], **summary}
