"""stage=caption: optimize a caption for every item of a dataset and write ``captions.jsonl``.

Each finished item is appended (and fsynced) at once, so a crash loses at most the item in
flight; a rerun into the same folder (``hydra.run.dir=<that folder>``) skips finished ids. The
folder records the config fields that determine its captions (``captions_config.json``): a rerun
with other settings is refused, naming the differing keys, unless ``resume=force`` (then every
caption line carries its config hash). An item that fails (unreadable image, no target text) is
logged to ``errors.jsonl`` and the run goes on. The work is ``fuse_repro.captioner``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fuse_repro.captioner import (
    build_captioner,
    caption_items,
    check_models_available,
    check_objective_fits_dataset,
    check_search,
    cosine_terms,
    failed_items_line,
    nothing_captioned,
    objective_means,
)
from fuse_repro.config import ConfigError, FuseConfig
from fuse_repro.corpus import check_corpus
from fuse_repro.data import Item, load_dataset
from fuse_repro.provenance import check_provenance, path_roots, results_fields
from fuse_repro.records import CAPTIONS_NAME, OBJECTIVE_NAME, write_json
from fuse_repro.runtime import resolve_device
from fuse_repro.search import check_eval_dtype
from fuse_repro.tracking import open_tracker
from fuse_repro.weights_label import banner, is_random

# What a sweep over caption runs optimizes: the mean total objective of the captions (lower).
OPTIMIZED_METRIC = "objective"


# The items ``check`` read, kept for the ``run`` that follows: ``{"dataset": the typed dataset
# config they were read for, "items": ...}``. ``app`` hands check and run the same typed config
# object, so a run reads its dataset once (and warns about its subset once).
_CHECKED: dict[str, Any] = {}


def dataset_items(cfg: FuseConfig, *, keep: bool = False) -> list[Item]:
    """The dataset's items; a clear error when the subset leaves none. With ``keep`` (``check``)
    they are kept for the next call with the same typed config object (``run``), which takes
    them instead of reading the files again."""
    if _CHECKED.get("dataset") is cfg.dataset:
        items = _CHECKED["items"]
        if not keep:
            _CHECKED.clear()
        return list(items)
    items = load_dataset(cfg.dataset)
    if not items:
        raise ConfigError(f"dataset {cfg.dataset.name!r} has no items (check dataset.subset and "
                          "the annotation file)")
    _CHECKED.clear()
    if keep:
        _CHECKED.update(dataset=cfg.dataset, items=items)
    return list(items)


def check(cfg: FuseConfig, methods: tuple[str, ...] = ()) -> None:
    """Config-only validation of a caption run (pipeline and fidelity use it too): the corpus,
    the search registry's names (and ``methods``), the objective against the dataset's items,
    and the models' availability."""
    check_corpus(cfg.adapter.corpus, random_weights=is_random(cfg))
    check_search(cfg.search, methods)
    check_eval_dtype(cfg.search.eval_dtype, resolve_device(cfg.device))
    check_objective_fits_dataset(cfg.objective, dataset_items(cfg, keep=True), cfg.dataset.name)
    check_models_available(cfg.source, cfg.objective)


def check_folder(cfg: FuseConfig, out_dir: Path) -> None:
    """Refuse a resume into a folder holding captions made with other settings, before the run
    writes anything into it (``app.check_run``)."""
    check_provenance(out_dir, results_fields(cfg), cfg.resume, path_roots(cfg))


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    items = dataset_items(cfg)
    fields = results_fields(cfg)
    captioner = build_captioner(cfg.source, cfg.objective, cfg.adapter, Path(cfg.paths.cache_dir),
                                resolve_device(cfg.device))
    with open_tracker(cfg, out_dir, "caption", {"adapter_keys": captioner.adapter_keys}) as tracker:
        records = caption_items(items, captioner, cfg.search, cfg.seed, out_dir, tracker,
                                fields=fields, resume=cfg.resume, roots=path_roots(cfg))
        if not records:
            raise nothing_captioned(out_dir)
        mean_total = sum(r["losses"]["total"] for r in records) / len(records)
        # the objective means (as each pipeline method's): a caption sweep's summary reads them
        write_json(out_dir / OBJECTIVE_NAME, objective_means(records,
                                                             cosine_terms(captioner.objectives)))
        tracker.summary({"captions": len(records), "mean_total_loss": mean_total})
    if banner(cfg):
        print(banner(cfg))
    print(f"{len(records)} captions in {out_dir / CAPTIONS_NAME}")
    failed = failed_items_line(out_dir, records, items)
    if failed:
        print(f"WARNING: {failed}")
    return {"captions": len(records), "objective": mean_total, "adapter_keys": captioner.adapter_keys}
