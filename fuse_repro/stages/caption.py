"""stage=caption: optimize a caption for every item of a dataset and write ``captions.jsonl``.

Each finished item is appended (and fsynced) at once, so a crash loses at most the item in
flight; a rerun into the same folder (``hydra.run.dir=<that folder>``) skips finished ids. An item
that fails (unreadable image, no target text) is logged to ``errors.jsonl`` and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fuse_repro.adapter import Bridge, fit_adapter
from fuse_repro.app import resolve_device
from fuse_repro.config import AdapterConfig, SearchConfig, typed, validate_adapter, validate_search
from fuse_repro.models import load_model
from fuse_repro.objectives import ObjectiveError, SecondaryObjective, build_objective, check_weights
from fuse_repro.search import encode_prefix, timed_search
from fuse_repro.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)


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
    primary = load_model(source_cfg, cache_dir=cache_dir, device=device)
    terms = objective_cfg.get("terms") or {}
    weights = {name: float(term.weight) for name, term in terms.items()}
    check_weights(float(objective_cfg.lm_weight), weights)
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
        extra = {k: v for k, v in term.items() if k not in ("kind", "weight", "model")}
        obj = build_objective(str(term.kind), model, bridge, float(term.weight), **extra)
        obj.name = str(name)
        objectives.append(obj)
        keys[str(name)] = adapter.key
    return Captioner(primary, objectives, float(objective_cfg.lm_weight), keys)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (a crash mid-write) is dropped with a warning."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: dropping a torn last line (interrupted write)", path)
                continue
            raise ValueError(f"{path}:{number} is not valid JSON") from None
    return records


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record and fsync, so a crash cannot lose a finished item."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_clean(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite a JSONL file without a torn tail before appending to it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def caption_items(
    items: list[Any],
    captioner: Captioner,
    search_cfg: SearchConfig,
    seed: int,
    out_dir: Path,
    tracker: Tracker | None = None,
    desc: str = "caption",
) -> list[dict[str, Any]]:
    """Caption every item not yet in ``out_dir/captions.jsonl``; returns all records, in the
    dataset's order."""
    validate_search(search_cfg)
    encode_prefix(captioner.primary, search_cfg.prefix)  # a bad prefix fails the run, not each item
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "captions.jsonl"
    done = read_jsonl(path)
    rewrite_clean(path, done)
    finished = {r["id"] for r in done}
    if finished:
        log.info("resuming %s: %d of %d items already captioned", path, len(finished), len(items))
    errors_path = out_dir / "errors.jsonl"
    rows = []
    todo = [it for it in items if str(it.id) not in finished]
    for item in tqdm(todo, desc=desc, unit="item"):
        try:
            result, seconds = timed_search(
                item, captioner.primary, captioner.objectives, search_cfg, captioner.lm_weight, seed
            )
        except (ObjectiveError, OSError) as err:
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
        append_jsonl(path, record)
        done.append(record)
        if tracker is not None and tracker.active:
            tracker.log({f"{search_cfg.method}/{k}": v for k, v in result.losses.items()})
            if tracker.log_items:
                rows.append([str(item.id), _item_view(item), result.caption, result.losses.get("total")])
    if tracker is not None and rows:
        tracker.table(f"{search_cfg.method}/captions", ["id", "input", "caption", "total_loss"], rows)
    order = {str(it.id): i for i, it in enumerate(items)}
    return sorted(done, key=lambda r: order.get(r["id"], len(order)))


def _item_view(item: Any) -> Any:
    """The image thumbnail for image items, the target text otherwise (for the wandb table)."""
    if getattr(item, "image_path", None):
        try:
            from PIL import Image

            with Image.open(item.image_path) as img:
                return img.convert("RGB")
        except OSError:
            return item.image_path
    return getattr(item, "target", None) or ""


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    from fuse_repro.data import load_dataset

    adapter_cfg = validate_adapter(typed(cfg.adapter, AdapterConfig))
    search_cfg = validate_search(typed(cfg.search, SearchConfig))
    device = resolve_device(cfg.device)
    items = load_dataset(cfg.dataset)
    if not items:
        raise ValueError(f"dataset {cfg.dataset.get('name')} has no items to caption")
    captioner = build_captioner(cfg.source, cfg.objective, adapter_cfg, Path(cfg.paths.cache_dir), device)
    with open_tracker(cfg, out_dir, "caption", {"adapter_keys": captioner.adapter_keys}) as tracker:
        records = caption_items(items, captioner, search_cfg, int(cfg.seed), out_dir, tracker)
        if not records:
            raise RuntimeError(f"no item could be captioned (see {out_dir / 'errors.jsonl'})")
        mean_total = sum(r["losses"]["total"] for r in records) / max(len(records), 1)
        tracker.summary({"captions": len(records), "mean_total_loss": mean_total})
    print(f"{len(records)} captions in {out_dir / 'captions.jsonl'}")
    return {"captions": len(records), "objective": mean_total, "adapter_keys": captioner.adapter_keys}
