"""stage=score: score a ``captions.jsonl`` against the configured dataset.

Writes ``metrics.json`` and ``per_caption.jsonl`` beside the captions file (so the caption
run's folder, with its ``run_info.json``, holds its own scores for ``stage=table``), or into
``scoring.out_dir`` when set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fuse_repro.data import load_dataset
from fuse_repro.scoring import ScoringOptions, score_captions_file
from fuse_repro.tracking import open_tracker

log = logging.getLogger(__name__)


def dataset_record(cfg_dataset: DictConfig) -> dict[str, Any]:
    """What metrics.json records about the dataset: name, format, split, sentiment, subset."""
    keep = ("name", "format", "split", "sentiment", "subset")
    plain = OmegaConf.to_container(cfg_dataset, resolve=True)
    assert isinstance(plain, dict)
    return {k: plain.get(k) for k in keep if plain.get(k) is not None}


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    items = load_dataset(cfg.dataset)
    options = ScoringOptions.from_config(cfg.scoring)
    captions = cfg.scoring.get("captions")
    captions_path = Path(captions) if captions else Path(out_dir) / "captions.jsonl"
    if not captions_path.is_file():
        raise FileNotFoundError(
            f"captions file {str(captions_path)!r} not found; set scoring.captions=<path to a "
            "captions.jsonl written by stage=caption or stage=merge>")
    target = cfg.scoring.get("out_dir")
    metrics = score_captions_file(captions_path, items, options,
                                  out_dir=Path(target) if target else None,
                                  dataset=dataset_record(cfg.dataset))
    scores = metrics.get("metrics", {})
    for name in sorted(scores):
        log.info("%s = %.4f", name, scores[name])
    for name, reason in sorted(metrics.get("unavailable", {}).items()):
        log.warning("%s unavailable: %s", name, reason)
    if "sentiment" in metrics:
        log.info("sentiment accuracy = %.4f", metrics["sentiment"]["accuracy"])
    with open_tracker(cfg, out_dir, "score", {"captions_file": str(captions_path)}) as tracker:
        tracker.summary({f"metrics/{k}": v for k, v in scores.items() if isinstance(v, (int, float))})
        if "sentiment" in metrics:
            tracker.summary({"metrics/sentiment_accuracy": metrics["sentiment"]["accuracy"]})
    return {"objective": scores.get("CIDEr"), "metrics": metrics}
