"""stage=score: score a results file against the configured dataset.

The results file (``scoring.captions``) is our ``captions.jsonl`` or the standard COCO results
JSON ``[{"image_id", "caption"}]`` every captioning paper publishes; the format is detected from
the content. ``metrics.json`` and ``per_caption.jsonl`` always go into this run's folder (its
path is the last line printed), with a ``run_info.json`` whose labels ``stage=table`` reads:
those of the caption run that made the file when it has one, and ``scoring.label=<system>``
marks the results of an external system (its table row says "external", never "ours").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fuse_repro.records import (
    CAPTIONS_NAME,
    RUN_INFO_NAME,
    RecordsError,
    read_run_info,
    write_json,
    write_run_info,
)
from fuse_repro.scoring import ScoringOptions, score_captions_file
from fuse_repro.tracking import open_tracker
from fuse_repro.weights_label import weights_fields

log = logging.getLogger(__name__)

# What a sweep over scoring optimizes (any metric name of metrics.json works as
# optimized_metric=<name>, e.g. Bleu_4).
OPTIMIZED_METRIC = "CIDEr"


def dataset_record(cfg_dataset: DictConfig) -> dict[str, Any]:
    """What metrics.json records about the dataset: name, format, split, sentiment, subset."""
    keep = ("name", "format", "split", "sentiment", "subset")
    plain = OmegaConf.to_container(cfg_dataset, resolve=True)
    assert isinstance(plain, dict)
    return {k: plain.get(k) for k in keep if plain.get(k) is not None}


def captions_path(cfg: DictConfig, out_dir: Path | None) -> Path:
    given = cfg.scoring.get("captions")
    if given:
        path = Path(str(given))
    elif out_dir is not None:
        path = Path(out_dir) / CAPTIONS_NAME
    else:
        return Path(CAPTIONS_NAME)
    if not path.is_file():
        raise RecordsError(
            f"captions file {str(path)!r} not found; set scoring.captions=<a captions.jsonl "
            "written by stage=caption or stage=merge, or a COCO results JSON file>")
    return path


def check(cfg: DictConfig) -> None:
    """Config-only: the scoring options and that the results file exists."""
    from hydra.core.hydra_config import HydraConfig

    ScoringOptions.from_config(cfg.scoring)
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    if cfg.scoring.get("captions") or run_dir is not None:
        captions_path(cfg, run_dir)


def _source_labels(path: Path, options: ScoringOptions) -> dict[str, Any]:
    """Labels for the tables: the caption run's own (when the file sits in one), or external."""
    if options.label is not None:
        return {"source": "external", "label": str(options.label), "method": str(options.label)}
    info_path = path.parent / RUN_INFO_NAME
    if path.name != CAPTIONS_NAME or not info_path.is_file():
        return {"source": "ours"}
    info = read_run_info(info_path)
    labels = {k: info[k] for k in ("experiment", "config_hash", "method", "weights", "weights_note")
              if info.get(k)}
    return {"source": "ours", "captions_run": str(path.parent), **labels}


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    from fuse_repro.data import load_dataset

    options = ScoringOptions.from_config(cfg.scoring)
    path = captions_path(cfg, out_dir)
    items = load_dataset(cfg.dataset)
    metrics = score_captions_file(path, items, options, out_dir=out_dir,
                                  dataset=dataset_record(cfg.dataset))
    labels = _source_labels(path, options)
    random = weights_fields(cfg) or {k: labels[k] for k in ("weights", "weights_note")
                                     if k in labels}
    if random:  # the scoring run or the caption run had random weights: metrics.json says so
        metrics.update(random)
        write_json(Path(out_dir) / "metrics.json", metrics, allow_nan=False)
    write_run_info(out_dir, {"scored_file": str(path), "dataset": cfg.dataset.get("name"),
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
    numeric = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
    return {**numeric, "objective": scores.get("CIDEr"), "metrics": metrics}
