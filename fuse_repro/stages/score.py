"""stage=score: score a results file against the configured dataset.

The results file (``scoring.captions``) is our ``captions.jsonl`` or the standard COCO results
JSON ``[{"image_id", "caption"}]`` every captioning paper publishes; the format is detected from
the content. ``metrics.json`` and ``per_caption.jsonl`` always go into this run's folder (its
path is the last line printed), with a ``run_info.json`` whose labels ``stage=table`` reads:
those of the caption run that made the file when it has one, and ``scoring.label=<system>``
marks the results of an external system (its table row says "external", never "ours").
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from fuse_repro.config import DatasetConfig, FuseConfig, to_plain
from fuse_repro.data import load_dataset
from fuse_repro.records import (
    CAPTIONS_NAME,
    RUN_INFO_NAME,
    RecordsError,
    read_run_info,
    write_run_info,
)
from fuse_repro.scoring import score_captions_file
from fuse_repro.tracking import open_tracker
from fuse_repro.weights_label import weights_fields

log = logging.getLogger(__name__)

# What a sweep over scoring optimizes (any metric name of metrics.json works as
# optimized_metric=<name>, e.g. Bleu_4).
OPTIMIZED_METRIC = "CIDEr"


def dataset_record(dataset: DatasetConfig) -> dict[str, Any]:
    """What metrics.json records about the dataset: name, format, split, sentiment, subset."""
    keep = ("name", "format", "split", "sentiment", "subset")
    return {k: to_plain(getattr(dataset, k)) for k in keep if getattr(dataset, k) is not None}


def captions_path(cfg: FuseConfig, out_dir: Path) -> Path:
    """``scoring.captions``, else this run's captions.jsonl; an error naming the fix when the
    file is not there."""
    path = Path(cfg.scoring.captions) if cfg.scoring.captions else out_dir / CAPTIONS_NAME
    if path.is_dir():
        inside = path / CAPTIONS_NAME
        hint = (f"scoring.captions={inside}" if inside.is_file() else
                "scoring.captions=<a captions.jsonl or COCO results JSON file>")
        raise RecordsError(f"scoring.captions={str(path)!r} is a folder, not a results file; "
                           f"give the file: {hint}")
    if not path.is_file():
        raise RecordsError(
            f"captions file {str(path)!r} not found; set scoring.captions=<a captions.jsonl "
            "written by stage=caption or stage=merge, or a COCO results JSON file>")
    return path


def check(cfg: FuseConfig) -> None:
    """Config-only: the results file exists."""
    captions_path(cfg, Path(cfg.paths.output_dir))


def source_labels(path: Path, label: str | None) -> dict[str, Any]:
    """What produced the captions, for the tables: the caption run's own labels when the file
    is a ``captions.jsonl`` in a run folder (its ``run_info.json``), else an external system
    named by ``scoring.label`` or, without one, by the file's name. Never this scoring run's
    experiment or search method: they say nothing about who wrote the captions."""
    if label is not None:
        return {"source": "external", "label": label, "method": label}
    info_path = path.parent / RUN_INFO_NAME
    if path.name != CAPTIONS_NAME or not info_path.is_file():
        return {"source": "external", "label": path.name, "method": path.name}
    info = read_run_info(info_path)
    labels = {k: info[k] for k in ("experiment", "config_hash", "method", "weights", "weights_note")
              if info.get(k)}
    return {"source": "ours", "captions_run": str(path.parent), **labels}


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    path = captions_path(cfg, out_dir)
    labels = source_labels(path, cfg.scoring.label)
    # The scoring run or the caption run had random weights: metrics.json says so.
    random = weights_fields(cfg) or {k: labels[k] for k in ("weights", "weights_note")
                                     if k in labels}
    # Scoring reads the references only: an experiment that captions images (require_images)
    # scores a published results file without them.
    items = load_dataset(dataclasses.replace(cfg.dataset, require_images=False))
    metrics = score_captions_file(path, items, cfg.scoring, out_dir=out_dir,
                                  dataset=dataset_record(cfg.dataset), labels={**labels, **random})
    write_run_info(out_dir, {"scored_file": str(path), "dataset": cfg.dataset.name,
                             **labels, **random})
    scores = metrics.get("metrics", {})
    for name in sorted(scores):
        log.info("%s = %.4f", name, scores[name])
    for name, reason in sorted(metrics.get("unavailable", {}).items()):
        log.warning("%s unavailable: %s", name, reason)
    if "sentiment" in metrics:
        log.info("sentiment accuracy = %.4f", metrics["sentiment"]["accuracy"])
    with open_tracker(cfg, out_dir, "score", {"captions_file": str(path)}) as tracker:
        tracker.summary({f"metrics/{k}": v for k, v in scores.items() if isinstance(v, (int, float))})
        if "sentiment" in metrics:
            tracker.summary({"metrics/sentiment_accuracy": metrics["sentiment"]["accuracy"]})
    fmt = metrics.get("captions_format", "captions_jsonl")
    if random:
        print(f"WARNING: {random['weights_note']}")
    print(f"scored {metrics['num_captions']} captions of {path} ({fmt})")
    if labels["source"] == "external" and cfg.scoring.label is None:
        print(f"its table row is 'external' and named {path.name!r}; "
              "scoring.label=<system> names it")
    numeric = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
    return {**numeric, "objective": scores.get("CIDEr"), "metrics": metrics}
