"""The captioner: the primary model, one FUSE bridge and objective per secondary term, and the
loop that captions a dataset's items into a resumable ``captions.jsonl``.

Stages (``caption``, ``pipeline``, ``fidelity``) and benchmarks build it the same way:

    captioner = build_captioner(cfg.source, cfg.objective, cfg.adapter, cache_dir, device)
    records = caption_items(items, captioner, cfg.search, cfg.seed, out_dir, fields=...)

``check_captioning`` is the config-only part (before any model loads): the search registry's
names, the objective terms against the dataset's items, and the models' availability.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fuse_repro.adapter import fit_adapter
from fuse_repro.bridge import Bridge
from fuse_repro.config import (
    AdapterConfig,
    ConfigError,
    ModelConfig,
    ObjectiveConfig,
    SearchConfig,
    check_choice,
    stable_hash,
)
from fuse_repro.errors import FuseError, ObjectiveError, use_one_of
from fuse_repro.models import load_model
from fuse_repro.objectives import OBJECTIVES, SecondaryObjective, build_objective
from fuse_repro.provenance import record_provenance
from fuse_repro.records import (
    CAPTIONS_NAME,
    ERRORS_NAME,
    append_caption,
    append_jsonl,
    clean_captions,
    read_jsonl,
)
from fuse_repro.search import (
    SEARCH_METHODS,
    check_conventions,
    encode_prefix,
    search_items,
    timed_search,
)
from fuse_repro.tracking import Tracker
from fuse_repro.weights import check_available

log = logging.getLogger(__name__)

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
# What an objective's ``needs`` asks of an item: the attribute that must be set.
_ITEM_ATTR = {"target": "target", "image": "has_image"}


@dataclass
class Captioner:
    """Everything a search needs, built once per run: the primary model and its objectives."""

    primary: Any
    objectives: list[SecondaryObjective]
    lm_weight: float
    adapter_keys: dict[str, str]


# --------------------------------------------------------------------------------------------
# config-only checks (before any model loads)


def check_search(search: SearchConfig, methods: Sequence[str] = ()) -> None:
    """``search.method``, every name of ``methods`` (``pipeline.methods``) and the convention
    options are names of the search registries."""
    check_choice("search.method", search.method, tuple(SEARCH_METHODS))
    for name in methods:
        check_choice("pipeline.methods", name, tuple(SEARCH_METHODS), in_list=True)
    check_conventions(search)
    if search.beam_width > search.top_k:
        log.warning("search.beam_width=%d is larger than search.top_k=%d: the first step proposes "
                    "only %d candidates, so it keeps fewer beams than asked; lower "
                    "search.beam_width or raise search.top_k", search.beam_width, search.top_k,
                    search.top_k)


def check_objective_fits_dataset(objective: ObjectiveConfig, items: Sequence[Any],
                                 dataset: str) -> None:
    """Every term's objective can be prepared for the dataset's items: a text-similarity term
    needs target texts, a CLIP term images. Fails before any model loads, naming what works."""
    for name, term in objective.terms.items():
        if term.kind not in OBJECTIVES:
            fix = use_one_of(f"objective.terms.{name}.kind", sorted(OBJECTIVES), term.kind)
            raise ConfigError(f"objective.terms.{name}.kind={term.kind!r} is not an objective; "
                              f"known: {sorted(OBJECTIVES)}; {fix}")
        needs = OBJECTIVES[term.kind].needs
        if needs is None or any(getattr(it, _ITEM_ATTR[needs], None) for it in items):
            continue
        have = [k for k, a in _ITEM_ATTR.items() if any(getattr(it, a, None) for it in items)]
        instead = " or ".join(_FOR_ITEMS[k] for k in sorted(have)) or "an objective it can serve"
        raise ConfigError(
            f"objective term {name!r} (kind {term.kind}) needs items with {needs}s, but dataset "
            f"{dataset!r} has none; use {instead}, or {_NEEDS_HINT[needs]}")


def check_models_available(source: ModelConfig, objective: ObjectiveConfig) -> None:
    """The primary model is a causal LM, and it and every term's model can be loaded here (no
    hub needed, or cached)."""
    if source.kind != "causal_lm":
        raise ConfigError(
            f"model@source={source.name} is a model of kind {source.kind}, but the source model "
            "must be a causal LM (kind causal_lm) whose tokens the search optimizes; e.g. "
            "model@source=smollm2_135m (secondary models go in the objective's terms)")
    check_available(source)
    for term in objective.terms.values():
        check_available(term.model)


# --------------------------------------------------------------------------------------------
# building


def build_captioner(source: ModelConfig, objective: ObjectiveConfig, adapter: AdapterConfig,
                    cache_dir: Path, device: Any) -> Captioner:
    """Load the primary model and every secondary model, and fit (or load) one adapter per
    secondary. Models shared by several terms are loaded once."""
    primary = load_model(source, cache_dir=cache_dir, device=device)
    loaded: dict[str, Any] = {}
    objectives, keys = [], {}
    for name, term in objective.terms.items():
        model_key = stable_hash(term.model)
        if model_key not in loaded:
            loaded[model_key] = load_model(term.model, cache_dir=cache_dir, device=device)
        model = loaded[model_key]
        fitted = fit_adapter(primary, model, adapter, cache_dir)
        bridge = Bridge(primary, model, fitted, overflow=adapter.overflow, seed=adapter.seed)
        options = {"sentiment": term.sentiment} if term.sentiment is not None else {}
        obj = build_objective(term.kind, model, bridge, float(term.weight), **options)
        obj.name = name
        objectives.append(obj)
        keys[name] = fitted.key
    return Captioner(primary, objectives, float(objective.lm_weight), keys)


# --------------------------------------------------------------------------------------------
# captioning


def caption_record(item: Any, method: str, result: Any, seconds: float,
                   stamp: str | None) -> dict[str, Any]:
    """One line of ``captions.jsonl``."""
    record = {
        "id": str(item.id),
        "method": method,
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
    return record


def check_prefix_fits(captioner: Captioner, search: SearchConfig) -> None:
    """Before any item: ``search.prefix`` survives the primary's tokenizer, and the prefix plus
    ``search.steps`` tokens (the shortest final caption) fits the context of the primary and
    of every secondary model (their tokenizers' ``max_length``, specials included); else one
    line naming ``search.prefix`` and the model, rather than a failure inside the first item."""
    prefix_ids = encode_prefix(captioner.primary, search.prefix)
    models = [(captioner.primary, len(prefix_ids))]
    for objective in captioner.objectives:
        model = getattr(objective, "model", None)
        if model is not None and getattr(model, "tokenizer", None) is not None:
            models.append((model, len(model.tokenizer.encode(search.prefix))))
    for model, n_prefix in models:
        tok = model.tokenizer
        limit = getattr(tok, "max_length", None)
        if limit is None:
            continue
        specials = len(tok.with_specials([])[0])
        need = n_prefix + search.steps + specials
        if need > limit:
            raise ObjectiveError(
                f"search.prefix is {n_prefix} tokens for {model.name}, whose context holds "
                f"{limit}: with {specials} special tokens and search.steps={search.steps} a "
                f"caption needs {need}; shorten search.prefix (or lower search.steps)")


def caption_items(
    items: list[Any],
    captioner: Captioner,
    search: SearchConfig,
    seed: int,
    out_dir: Path,
    tracker: Tracker | None = None,
    desc: str = "caption",
    *,
    fields: Mapping[str, Any] | None = None,
    resume: str | None = None,
    roots: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Caption every item not yet in ``out_dir/captions.jsonl``; returns all records, in the
    dataset's order. ``fields`` (``provenance.results_fields``) are recorded and checked against
    what the folder holds, under the run's ``resume`` (``force`` mixes settings, stamping each
    line's config hash; ``roots``, ``provenance.path_roots``, reads a record an earlier version
    wrote); without ``fields`` the folder's provenance is not kept."""
    check_prefix_fits(captioner, search)  # a bad prefix fails the run, not each item
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = None
    if fields is not None:
        assert resume is not None, "fields without the run's resume mode"
        stamp = record_provenance(out_dir, fields, resume, roots)
    path = out_dir / CAPTIONS_NAME
    done = clean_captions(path)
    finished = {r["id"] for r in done}
    if finished:
        log.info("resuming %s: %d of %d items already captioned", path, len(finished), len(items))
    rows = []
    todo = [it for it in items if str(it.id) not in finished]
    searched = search_items(todo, captioner.primary, captioner.objectives, search,
                            captioner.lm_weight, seed, alone=timed_search)
    for item, result, seconds in tqdm(searched, total=len(todo), desc=desc, unit="item"):
        if isinstance(result, (ObjectiveError, OSError)):
            err = result
            log.error("item %s failed: %s (the run goes on)", item.id, err)
            append_jsonl(out_dir / ERRORS_NAME,
                         {"id": str(item.id), "error": str(err), "method": search.method})
            continue
        record = caption_record(item, search.method, result, seconds, stamp)
        append_caption(path, record)
        done.append(record)
        if tracker is not None and tracker.active:
            tracker.log({f"{search.method}/{k}": v for k, v in result.losses.items()})
            if tracker.log_items:
                rows.append([str(item.id), _item_view(item), result.caption,
                             result.losses.get("total")])
    if tracker is not None and rows:
        tracker.table(f"{search.method}/captions", ["id", "input", "caption", "total_loss"], rows)
    order = {str(it.id): i for i, it in enumerate(items)}
    return sorted(done, key=lambda r: order.get(r["id"], len(order)))


def failed_items_line(out_dir: Path, records: Sequence[Mapping[str, Any]], items: Sequence[Any],
                      label: str = "") -> str | None:
    """``"<label>N of M items failed (see <errors.jsonl>)"`` when some items of the dataset have
    no caption and are listed in ``out_dir/errors.jsonl``; None when every item has one."""
    captioned = {str(r["id"]) for r in records}
    failed = {str(e.get("id")) for e in read_jsonl(out_dir / ERRORS_NAME)} - captioned
    failed &= {str(it.id) for it in items}
    if not failed:
        return None
    return f"{label}{len(failed)} of {len(items)} items failed (see {out_dir / ERRORS_NAME})"


def nothing_captioned(out_dir: Path, label: str = "") -> FuseError:
    """The error when every item failed, quoting the first item's error from errors.jsonl."""
    errors = read_jsonl(out_dir / ERRORS_NAME)
    first = f"; first: item {errors[0].get('id')!r}: {errors[0].get('error')}" if errors else ""
    return FuseError(f"{label}no item could be captioned (see {out_dir / ERRORS_NAME}){first}")


# --------------------------------------------------------------------------------------------
# summaries of the caption records


def cosine_terms(objectives: Sequence[SecondaryObjective]) -> list[str]:
    """Names of the terms whose objective declares a "cosine" metric (loss = 1 - cos)."""
    return [o.name for o in objectives if "cosine" in o.metrics]


def objective_means(records: Sequence[Mapping[str, Any]],
                    cosine: Sequence[str] = ()) -> dict[str, float]:
    """Mean of every loss term over the captions, plus ``mean_cos_<term>`` = 1 - mean loss for
    each term in ``cosine`` (the terms whose objective declares a cosine metric)."""
    keys = sorted({k for r in records for k in r["losses"]})
    out = {f"mean_{k}": sum(r["losses"][k] for r in records) / len(records) for k in keys}
    for name in cosine:
        if f"mean_{name}" in out:
            out[f"mean_cos_{name}"] = 1.0 - out[f"mean_{name}"]
    return out


def history_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
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


def _item_view(item: Any) -> Any:
    """The image thumbnail for image items (on disk or in memory), the target text otherwise
    (for the wandb table)."""
    if getattr(item, "has_image", False):
        try:
            return item.open_image()
        except (OSError, FuseError):
            return getattr(item, "image_path", None) or ""
    return getattr(item, "target", None) or ""
