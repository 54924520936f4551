"""stage=pipeline (the default): fit -> caption with every method -> score -> table -> plot.

Offline by default: SmolLM2-135M primary, all-MiniLM-L6-v2 text similarity through FUSE, on the
bundled text-target set. Every method runs on the same items with the same budget (steps, top_k,
beam width); each writes its own ``<method>/captions.jsonl`` (resumable), ``metrics.json``,
``per_caption.jsonl``, ``objective.json`` and ``run_info.json``. The run folder gets
``table.md``/``table.csv`` (``tables.write_method_table``), ``search_curves.png``
(``plots.plot_search_curves``), ``curves.json`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from fuse_repro.captioner import (
    Captioner,
    build_captioner,
    caption_items,
    cosine_terms,
    failed_items_line,
    history_curves,
    nothing_captioned,
    objective_means,
)
from fuse_repro.config import FuseConfig, run_config_hash
from fuse_repro.plots import plot_search_curves
from fuse_repro.provenance import check_provenance, path_roots, results_fields
from fuse_repro.records import CAPTIONS_NAME, OBJECTIVE_NAME, write_json, write_run_info
from fuse_repro.runtime import resolve_device
from fuse_repro.scoring import score_captions_file
from fuse_repro.stages import caption
from fuse_repro.stages.caption import dataset_items
from fuse_repro.tables import write_method_table
from fuse_repro.tracking import Tracker, open_tracker
from fuse_repro.weights_label import banner, row_name, weights_fields

# What a sweep over the pipeline optimizes: the fuse method's mean total objective (lower).
OPTIMIZED_METRIC = "objective"


def check(cfg: FuseConfig) -> None:
    """Config-only validation: the caption checks, with every method of pipeline.methods."""
    caption.check(cfg, methods=tuple(cfg.pipeline.methods))


def check_folder(cfg: FuseConfig, out_dir: Path) -> None:
    """Refuse a resume whose method folders hold captions made with other settings, before the
    run writes anything (``app.check_run``)."""
    for method in cfg.pipeline.methods:
        check_provenance(out_dir / method, results_fields(cfg, method=method), cfg.resume,
                         path_roots(cfg))


def run_method(cfg: FuseConfig, method: str, items: list[Any], captioner: Captioner,
               out_dir: Path, tracker: Tracker) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Caption and score the items with one search method into ``out_dir/<method>``; returns
    the method's table row and its search curves."""
    method_dir = out_dir / method
    records = caption_items(items, captioner, dataclasses.replace(cfg.search, method=method),
                            cfg.seed, method_dir, tracker, desc=method,
                            fields=results_fields(cfg, method=method), resume=cfg.resume,
                            roots=path_roots(cfg))
    if not records:
        raise nothing_captioned(method_dir, label=f"{method}: ")
    captioned = {r["id"] for r in records}
    metrics = score_captions_file(
        method_dir / CAPTIONS_NAME, [it for it in items if it.id in captioned],
        dataclasses.replace(cfg.scoring, method=method),
        dataset={"name": cfg.dataset.name, "format": cfg.dataset.format},
        labels=weights_fields(cfg),  # a random-weight run: metrics.json says so
    )
    means = objective_means(records, cosine_terms(captioner.objectives))
    write_json(method_dir / OBJECTIVE_NAME, means)
    # Labels for stage=table: one row per (experiment, method) with the run's hash.
    write_run_info(method_dir, {
        "experiment": cfg.experiment_name,
        "config_hash": run_config_hash(cfg),
        "method": method,
        "dataset": cfg.dataset.name,
        "adapter_keys": captioner.adapter_keys,
        **weights_fields(cfg),
    })
    tracker.summary({f"{method}/{k}": v for k, v in means.items()})
    tracker.summary({f"{method}/{k}": v for k, v in metrics.get("metrics", {}).items()
                     if isinstance(v, (int, float))})
    row = {"method": method, "label": row_name(method, cfg), "metrics": metrics,
           "objective": means, "failed": failed_items_line(method_dir, records, items,
                                                           label=f"{method}: ")}
    return row, history_curves(records)


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    methods = cfg.pipeline.methods
    items = dataset_items(cfg)
    captioner = build_captioner(cfg.source, cfg.objective, cfg.adapter, Path(cfg.paths.cache_dir),
                                resolve_device(cfg.device))
    similarity = next(iter(cosine_terms(captioner.objectives)), None)
    rows, curves = [], {}
    with open_tracker(cfg, out_dir, "pipeline", {"adapter_keys": captioner.adapter_keys}) as tracker:
        for method in methods:
            row, curves[method] = run_method(cfg, method, items, captioner, out_dir, tracker)
            rows.append(row)
        sim_key = f"mean_cos_{similarity}" if similarity else None
        table_path = write_method_table(rows, sim_key, out_dir, note=banner(cfg))
        plot_path = (plot_search_curves(curves, similarity, out_dir / "search_curves.png")
                     if cfg.pipeline.plot else None)
    write_json(out_dir / "curves.json", curves)
    summary = {
        "methods": methods,
        "items": len(items),
        "adapter_keys": captioner.adapter_keys,
        "table": str(table_path),
        "plot": str(plot_path) if plot_path else None,
        "results": {r["method"]: {"objective": r["objective"],
                                  "metrics": r["metrics"].get("metrics", {})} for r in rows},
        **weights_fields(cfg),
    }
    write_json(out_dir / "summary.json", summary)
    print_summary(cfg, out_dir, table_path, plot_path, captioner.adapter_keys,
                  [r["failed"] for r in rows if r["failed"]])
    fuse_row = next((r for r in rows if r["method"] == "fuse"), rows[0])
    return {"objective": fuse_row["objective"]["mean_objective"], **summary}


def print_summary(cfg: FuseConfig, out_dir: Path, table_path: Path, plot_path: Path | None,
                  adapter_keys: dict[str, str], failed: Sequence[str] = ()) -> None:
    """The table, where every output went, and how many items each method failed."""
    print()
    print(table_path.read_text(encoding="utf-8"))
    if banner(cfg):
        print(banner(cfg))
    print(f"Run folder:     {out_dir}")
    print(f"  table:        {table_path} (and table.csv)")
    if plot_path:
        print(f"  plot:         {plot_path}")
    for method in cfg.pipeline.methods:
        print(f"  {method + ':':<14}{out_dir / method}/captions.jsonl, metrics.json, "
              "per_caption.jsonl")
    print(f"  adapters:     {Path(cfg.paths.cache_dir) / 'adapters'} "
          f"({', '.join(adapter_keys.values())})")
    for line in failed:
        print(f"WARNING: {line}")
