"""stage=caption: optimize a caption for every item of a dataset and write ``captions.jsonl``.

Each finished item is appended (and fsynced) at once, so a crash loses at most the item in
flight; a rerun into the same folder (``hydra.run.dir=<that folder>``) skips finished ids. The
folder records the config fields that determine its captions (``captions_config.json``): a rerun
with other settings is refused, naming the differing keys, unless ``resume=force`` (then every
caption line carries its config hash). An item that fails (unreadable image, no target text) is
logged to ``errors.jsonl`` and the run goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fuse_repro.adapter import fit_adapter
from fuse_repro.bridge import Bridge
from fuse_repro.config import AdapterConfig, ModelConfig, ObjectiveConfig, SearchConfig, convert
from fuse_repro.corpus import check_corpus
from fuse_repro.errors import ConfigError, FuseError
from fuse_repro.models import load_model
from fuse_repro.weights import check_available
from fuse_repro.objectives import OBJECTIVES, ObjectiveError, SecondaryObjective, build_objective
from fuse_repro.provenance import check_provenance, results_fields
from fuse_repro.records import (
    CAPTIONS_NAME,
    append_caption,
    append_jsonl,
    clean_captions,
    read_jsonl,
)
from fuse_repro.runtime import resolve_device
from fuse_repro.search import check_eval_dtype, encode_prefix, search_items, timed_search
from fuse_repro.tracking import Tracker, open_tracker
from fuse_repro.weights_label import banner, is_random

log = logging.getLogger(__name__)

# What a sweep over caption runs optimizes: the mean total objective of the captions (lower).
OPTIMIZED_METRIC = "objective"

# Objectives an item without the thing an objective needs can use instead, for the error line.
_NEEDS_HINT = {
    "target": "a dataset with target texts (dataset=demo_text_targets, coco_text_targets or "
              "text_targets)",
    "image": "a dataset with images (dataset=image_folder, coco_karpathy, ...)",
}
_FOR_ITEMS = {
    "image": "objective=clip (CLIP image similarity) or objective=clip_sentiment",
    "target": "objective=text_similarity",
}


@dataclass
class Captioner:
    """Everything a search needs, built once per run: the primary model and its objectives."""

    primary: Any
    objectives: list[SecondaryObjective]
    lm_weight: float
    adapter_keys: dict[str, str]


def build_captioner(
    source_cfg: Any, objective_cfg: Any, adapter_cfg: AdapterConfig, cache_dir: Path, device: Any
) -> Captioner:
    """Load the primary model and every secondary model, and fit (or load) one adapter per
    secondary. Models shared by several terms are loaded once."""
    objective = convert(objective_cfg, ObjectiveConfig)  # weights checked before models load
    primary = load_model(source_cfg, cache_dir=cache_dir, device=device)
    terms = objective_cfg.get("terms") or {}
    loaded: dict[str, Any] = {}
    objectives, keys = [], {}
    for name, term in terms.items():
        model_cfg = term.model
        model_key = json.dumps(OmegaConf.to_container(model_cfg, resolve=True), sort_keys=True)
        if model_key not in loaded:
            loaded[model_key] = load_model(model_cfg, cache_dir=cache_dir, device=device)
        model = loaded[model_key]
        adapter = fit_adapter(primary, model, adapter_cfg, cache_dir)
        bridge = Bridge(primary, model, adapter, overflow=adapter_cfg.overflow, seed=adapter_cfg.seed)
        extra = {k: v for k, v in term.items() if k not in ("kind", "weight", "model")
                 and v is not None}
        obj = build_objective(str(term.kind), model, bridge, float(term.weight), **extra)
        obj.name = str(name)
        objectives.append(obj)
        keys[str(name)] = adapter.key
    return Captioner(primary, objectives, float(objective.lm_weight), keys)


# --------------------------------------------------------------------------------------------
# config-only checks (before any model loads)

_ITEMS: dict[str, list[Any]] = {}


def dataset_items(cfg: DictConfig) -> list[Any]:
    """The dataset's items, read once per run (the check reads them; run() reuses them)."""
    from fuse_repro.data import load_dataset

    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    key = json.dumps(node, sort_keys=True, default=str)
    if key not in _ITEMS:
        items = load_dataset(cfg.dataset)
        if not items:
            raise ConfigError(f"dataset {cfg.dataset.get('name')!r} has no items (check "
                              "dataset.subset and the annotation file)")
        _ITEMS.clear()
        _ITEMS[key] = items
    return _ITEMS[key]


def check_objective_fits_dataset(objective_cfg: Any, items: list[Any], dataset: str) -> None:
    """Every term's objective can be prepared for the dataset's items: a text-similarity term
    needs target texts, a CLIP term images. Fails before any model loads, naming what works."""
    terms = objective_cfg.get("terms") or {}
    for name, term in terms.items():
        kind = str(term.get("kind"))
        if kind not in OBJECTIVES:
            raise ConfigError(f"objective.terms.{name}.kind={kind!r} is not an objective; known: "
                              f"{sorted(OBJECTIVES)}")
        needs = getattr(OBJECTIVES[kind], "needs", None)
        attr = {"target": "target", "image": "has_image"}.get(needs or "")
        if attr and not any(getattr(it, attr, None) for it in items):
            have = [k for k, a in (("image", "has_image"), ("target", "target"))
                    if any(getattr(it, a, None) for it in items)]
            instead = " or ".join(_FOR_ITEMS[k] for k in have) or "an objective it can serve"
            raise ConfigError(
                f"objective term {name!r} (kind {kind}) needs items with {needs}s, but dataset "
                f"{dataset!r} has none; use {instead}, or {_NEEDS_HINT[needs]}")


def check(cfg: DictConfig) -> None:
    """Config-only validation of a caption run (pipeline uses it too)."""
    convert(cfg.source, ModelConfig)
    check_corpus(convert(cfg.adapter).corpus, random_weights=is_random(cfg))
    check_eval_dtype(convert(cfg.search).eval_dtype, resolve_device(cfg.get("device")))
    convert(cfg.objective, ObjectiveConfig)
    items = dataset_items(cfg)
    check_objective_fits_dataset(cfg.objective, items, str(cfg.dataset.get("name")))
    check_available(cfg.source)
    for term in (cfg.objective.get("terms") or {}).values():
        if term.get("model") is not None:
            check_available(term.model)


# --------------------------------------------------------------------------------------------
# captioning


def caption_items(
    items: list[Any],
    captioner: Captioner,
    search_cfg: SearchConfig,
    seed: int,
    out_dir: Path,
    tracker: Tracker | None = None,
    desc: str = "caption",
    *,
    fields: Mapping[str, Any] | None = None,
    resume: str = "check",
) -> list[dict[str, Any]]:
    """Caption every item not yet in ``out_dir/captions.jsonl``; returns all records, in the
    dataset's order. ``fields`` (``records.results_fields``) are recorded and checked against
    what the folder holds; ``resume=force`` mixes settings, stamping each line's config hash."""
    encode_prefix(captioner.primary, search_cfg.prefix)  # a bad prefix fails the run, not each item
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = check_provenance(out_dir, fields, resume) if fields is not None else None
    path = out_dir / CAPTIONS_NAME
    done = clean_captions(path)
    finished = {r["id"] for r in done}
    if finished:
        log.info("resuming %s: %d of %d items already captioned", path, len(finished), len(items))
    errors_path = out_dir / "errors.jsonl"
    rows = []
    todo = [it for it in items if str(it.id) not in finished]
    searched = search_items(todo, captioner.primary, captioner.objectives, search_cfg,
                            captioner.lm_weight, seed, alone=timed_search)
    for item, result, seconds in tqdm(searched, total=len(todo), desc=desc, unit="item"):
        if isinstance(result, (ObjectiveError, OSError)):
            err = result
            log.error("item %s failed: %s (the run goes on)", item.id, err)
            append_jsonl(errors_path, {"id": str(item.id), "error": str(err), "method": search_cfg.method})
            continue
        record = {
            "id": str(item.id),
            "method": search_cfg.method,
            "caption": result.caption,
            "generated": result.generated,
            "losses": result.losses,
            "steps": result.steps,
            "evaluations": result.evaluations,
            "history": result.history,
            "seconds": round(seconds, 3),
        }
        if stamp is not None:
            record["config_hash"] = stamp
        append_caption(path, record)
        done.append(record)
        if tracker is not None and tracker.active:
            tracker.log({f"{search_cfg.method}/{k}": v for k, v in result.losses.items()})
            if tracker.log_items:
                rows.append([str(item.id), _item_view(item), result.caption, result.losses.get("total")])
    if tracker is not None and rows:
        tracker.table(f"{search_cfg.method}/captions", ["id", "input", "caption", "total_loss"], rows)
    order = {str(it.id): i for i, it in enumerate(items)}
    return sorted(done, key=lambda r: order.get(r["id"], len(order)))


def nothing_captioned(out_dir: Path, label: str = "") -> FuseError:
    """The error when every item failed, quoting the first item's error from errors.jsonl."""
    errors = read_jsonl(out_dir / "errors.jsonl")
    first = f"; first: item {errors[0].get('id')!r}: {errors[0].get('error')}" if errors else ""
    return FuseError(f"{label}no item could be captioned (see {out_dir / 'errors.jsonl'}){first}")


def _item_view(item: Any) -> Any:
    """The image thumbnail for image items (on disk or in memory), the target text otherwise
    (for the wandb table)."""
    if getattr(item, "has_image", False):
        try:
            return item.open_image()
        except (OSError, FuseError):
            return getattr(item, "image_path", None) or ""
    return getattr(item, "target", None) or ""


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    check(cfg)
    adapter_cfg = convert(cfg.adapter)
    search_cfg = convert(cfg.search)
    device = resolve_device(cfg.device)
    items = dataset_items(cfg)
    fields = results_fields(cfg)
    resume = str(cfg.get("resume") or "check")
    check_provenance(out_dir, fields, resume)  # refuse a mismatched resume before loading models
    captioner = build_captioner(cfg.source, cfg.objective, adapter_cfg, Path(cfg.paths.cache_dir), device)
    with open_tracker(cfg, out_dir, "caption", {"adapter_keys": captioner.adapter_keys}) as tracker:
        records = caption_items(items, captioner, search_cfg, int(cfg.seed), out_dir, tracker,
                                fields=fields, resume=resume)
        if not records:
            raise nothing_captioned(out_dir)
        mean_total = sum(r["losses"]["total"] for r in records) / max(len(records), 1)
        tracker.summary({"captions": len(records), "mean_total_loss": mean_total})
    if banner(cfg):
        print(banner(cfg))
    print(f"{len(records)} captions in {out_dir / CAPTIONS_NAME}")
    return {"captions": len(records), "objective": mean_total, "adapter_keys": captioner.adapter_keys}
