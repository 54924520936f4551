"""Evaluation datasets: every format becomes one list of :class:`Item`.

The captioner, the scorer and the shard merger all speak ``Item``, so a dataset's file format
matters only here: ``items.py`` (the Item, the error, shared helpers), ``readers.py`` (one reader
per file format), ``synthetic.py`` (generated images). ``load_dataset(cfg.dataset)`` converts the
config group once (``fuse_repro.config.DatasetConfig``: unknown keys and bad values fail there,
before any file is read), reads the format, applies the subset and the options.

Add a dataset: a yaml in conf/dataset/ for a format that exists; a new format is one reader
function, an entry in ``_READERS`` and its name in ``fuse_repro.config.DATASET_FORMATS``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fuse_repro.config import DATASET_FORMATS, SUBSET_MODES, DatasetConfig, SubsetConfig, convert
from fuse_repro.data.items import (
    IMAGE_EXTENSIONS,
    NOCAPS_DOMAINS,
    SENTIMENTS,
    SOURCES,
    DatasetError,
    Item,
)
from fuse_repro.data.readers import (
    read_coco_captions,
    read_embedded_refs,
    read_image_folder,
    read_karpathy,
    read_nocaps,
    read_nocaps_corpus,
    read_senticap,
    read_text_targets,
)
from fuse_repro.data.synthetic import read_synthetic_images
from fuse_repro.records import id_sort_key

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "IMAGE_EXTENSIONS", "NOCAPS_DOMAINS", "SENTIMENTS", "SOURCES", "SUBSET_MODES",
    "DatasetError", "Item", "check_images", "id_sort_key", "load_dataset", "read_coco_captions",
    "read_embedded_refs", "read_image_folder", "read_karpathy", "read_nocaps",
    "read_nocaps_corpus", "read_senticap", "read_synthetic_images", "read_text_targets",
    "select_subset", "targets_from_references",
]


# --------------------------------------------------------------------------------------------
# subsets


def select_subset(
    items: Sequence[Item],
    mode: str = "all",
    n: int | None = None,
    seed: int | None = None,
    index: int | None = None,
    count: int | None = None,
) -> list[Item]:
    """Pick the items a run works on (the values are checked by ``SubsetConfig``).

    - ``all``: everything;
    - ``first``: the first ``n`` (all when ``n`` exceeds the size);
    - ``sample``: ``n`` items drawn without replacement by ``numpy.random.default_rng(seed)``,
      returned in dataset order so the same seed always yields the same list;
    - ``shard``: block ``index`` of ``count`` near-equal contiguous blocks; the shards of one
      ``count`` partition the set, so captioning them separately and merging equals one run.
    """
    return apply_subset(items, SubsetConfig(mode=mode, n=n, seed=seed, index=index, count=count))


def apply_subset(items: Sequence[Item], subset: SubsetConfig) -> list[Item]:
    """``select_subset`` for a validated ``SubsetConfig``."""
    items = list(items)
    if subset.mode == "all":
        if subset.n is not None:
            log.warning("dataset.subset.n=%d has no effect with dataset.subset.mode=all: all %d "
                        "items are used (add dataset.subset.mode=first or sample to use n)",
                        subset.n, len(items))
        return items
    if subset.mode in ("first", "sample") and subset.n is not None and subset.n > len(items):
        log.warning("dataset.subset.n=%d asks for more items than the dataset's %d: all %d are "
                    "used (set dataset.subset.n=%d or less, or dataset.subset.mode=all)",
                    subset.n, len(items), len(items), len(items))
    if subset.mode == "first":
        return items[: subset.n]
    if subset.mode == "sample":
        assert subset.n is not None and subset.seed is not None  # SubsetConfig checked both
        if subset.n >= len(items):
            return items
        rng = np.random.default_rng(subset.seed)
        chosen = np.sort(rng.choice(len(items), size=subset.n, replace=False))
        return [items[int(i)] for i in chosen]
    assert subset.count is not None and subset.index is not None  # shard; SubsetConfig checked
    size, extra = divmod(len(items), subset.count)
    start = subset.index * size + min(subset.index, extra)
    stop = start + size + (1 if subset.index < extra else 0)
    return items[start:stop]


# --------------------------------------------------------------------------------------------
# options


def targets_from_references(items: Sequence[Item]) -> list[Item]:
    """Turn captioned images into text targets: each item's first human caption becomes the
    target text and the others stay as references (our offline stand-in for image captioning:
    the text-similarity objective pulls towards one human caption, the metrics compare with
    the rest). Items with fewer than two captions cannot serve and raise an error."""
    out = []
    for it in items:
        if len(it.references) < 2:
            raise DatasetError(
                f"item {it.id!r} has {len(it.references)} caption(s); target_from_references "
                "needs at least two (one target, the rest references)"
            )
        out.append(dataclasses.replace(it, target=it.references[0],
                                       references=list(it.references[1:])))
    return out


def check_images(items: Sequence[Item], limit: int = 5) -> None:
    """Raise a DatasetError naming the first items without an image (captioning needs them):
    neither an image in memory nor a readable file at image_path."""
    missing = [it for it in items if it.image is None
               and (it.image_path is None or not Path(it.image_path).is_file())]
    if missing:
        shown = ", ".join(f"{it.id}: {it.image_path!r}" for it in missing[:limit])
        raise DatasetError(
            f"{len(missing)} of {len(items)} items have no readable image file ({shown}"
            f"{', ...' if len(missing) > limit else ''}); set dataset.image_dir"
        )


# --------------------------------------------------------------------------------------------
# config entry point

_READERS: dict[str, Callable[[DatasetConfig], list[Item]]] = {
    "karpathy": lambda c: read_karpathy(c.annotations, c.image_dir, c.split),
    "coco_captions": lambda c: read_coco_captions(c.annotations, c.image_dir, c.sentiment),
    "nocaps": lambda c: read_nocaps(c.annotations, c.image_dir),
    "nocaps_corpus": lambda c: read_nocaps_corpus(c.annotations, c.image_dir),
    "senticap": lambda c: read_senticap(c.annotations, c.sentiment, c.image_dir, c.split),
    "embedded_refs": lambda c: read_embedded_refs(c.annotations, c.image_dir),
    "image_folder": lambda c: read_image_folder(c.image_dir),
    "text_targets": lambda c: read_text_targets(c.annotations),
    "synthetic_images": lambda c: read_synthetic_images(c.synthetic),
}
FORMATS = tuple(sorted(_READERS))
assert set(FORMATS) == set(DATASET_FORMATS), "a reader per format named in the schema"


def load_dataset(cfg_dataset: Any) -> list[Item]:
    """Read the dataset a ``dataset`` config names and apply its ``subset`` and options.

    Accepts the composed ``cfg.dataset`` node, a plain mapping, or a ``DatasetConfig``; the
    config is converted (and so validated) once, before any file is read.
    """
    ds = cfg_dataset if isinstance(cfg_dataset, DatasetConfig) else convert(cfg_dataset, DatasetConfig)
    items = apply_subset(_READERS[ds.format](ds), ds.subset)
    if ds.target_from_references:
        items = targets_from_references(items)
    if ds.require_images:
        check_images(items)
    return items
