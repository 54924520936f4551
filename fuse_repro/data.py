"""Evaluation dataset readers: every format becomes one list of :class:`Item`.

The captioner, the scorer and the shard merger all speak ``Item``, so a dataset's file format
matters only here. Readers check the structure they rely on and fail with a :class:`DatasetError`
that names the file, says what was expected and where the official copy is published: the
most common failure is a missing or wrong annotation file, and a bare ``KeyError`` deep in the
scorer would not say which one.

Formats (``dataset.format`` in the config):

- ``karpathy``: Karpathy's ``dataset_coco.json`` (MS-COCO Karpathy splits), one split.
- ``coco_captions``: COCO caption format (``images[{id, file_name}]``, ``annotations[{image_id,
  caption}]``), e.g. ``captions_karpathy_test5k_cocofmt.json`` or the SentiCap
  ``senticap_test_{pos,neg}_cocofmt.json`` files (set ``sentiment`` for those).
- ``nocaps``: the official NoCaps file ``nocaps_val_4500_captions.json`` (with domains).
- ``nocaps_corpus``: NoCaps as ``[{split, image_id: "<id>.jpg", caption: [...]}]``.
- ``senticap``: the original ``senticap_dataset.json``; references of the wanted sentiment.
- ``embedded_refs``: result files that carry their references,
  ``[{image_name, captions: [...], split?}]`` (MAGIC, RajGothi NoCaps outputs).
- ``image_folder``: images only, no references.
- ``text_targets``: a JSON list of ``{id, target, references?}`` for the text-similarity
  objective.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SENTIMENTS = ("positive", "negative")
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SUBSET_MODES = ("all", "first", "sample", "shard")

# Where the official copies live, quoted in every error so a user knows what to fetch.
SOURCES = {
    "karpathy": (
        "Karpathy's splits: https://cs.stanford.edu/people/karpathy/deepimagesent/"
        "caption_datasets.zip (dataset_coco.json); COCO val2014 images: "
        "http://images.cocodataset.org/zips/val2014.zip"
    ),
    "coco_captions": (
        "COCO caption format; Karpathy test references are in "
        "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip and "
        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
    ),
    "nocaps": (
        "NoCaps: https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json, images via "
        "https://nocaps.org/download"
    ),
    "nocaps_corpus": (
        "NoCaps corpus format: RajGothi/Visual-Entities-Empowered-Zero-Shot-Image-to-Text-"
        "Generation-Transfer-Across-Domains, annotations/nocaps/ (official: "
        "https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json)"
    ),
    "senticap": (
        "SentiCap: http://users.cecs.anu.edu.au/~u4534172/senticap.html "
        "(senticap_dataset.json); images are COCO val2014"
    ),
    "embedded_refs": (
        "a results file with embedded references, e.g. yxuansu/MAGIC "
        "image_captioning/inference_result/mscoco/"
    ),
    "image_folder": "any folder of images",
    "text_targets": 'a JSON list you write: [{"id": ..., "target": ..., "references": [...]}]',
}


class DatasetError(ValueError):
    """A dataset file or dataset config is missing or malformed."""


@dataclass
class Item:
    """One evaluation example.

    ``references`` are the texts a caption is scored against (already restricted to the wanted
    sentiment for SentiCap); ``target`` is the text the text-similarity objective aims at.
    """

    id: str
    image_path: str | None = None
    target: str | None = None
    references: list[str] = field(default_factory=list)
    sentiment: str | None = None
    domain: str | None = None


def id_sort_key(item_id: str) -> tuple[int, int, str]:
    """Sort key that orders numeric ids numerically ("9" < "10") and others as text after them.

    Used wherever outputs are sorted by id, so merged shards and per-caption files diff cleanly.
    """
    text = str(item_id)
    if text.isdigit():
        return (0, int(text), text)
    return (1, 0, text)


# --------------------------------------------------------------------------------------------
# helpers


def _fail(path: Path | str, expected: str, fmt: str, problem: str) -> DatasetError:
    return DatasetError(
        f"{problem} in dataset file {str(path)!r}: expected {expected}. "
        f"Official copy: {SOURCES[fmt]}."
    )


def _load_json(path: str | Path, fmt: str, expected: str) -> Any:
    """Read a JSON file, turning a missing file or bad JSON into a DatasetError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(
            f"dataset file {str(p)!r} not found (format {fmt!r}; expected {expected}). "
            f"Official copy: {SOURCES[fmt]}. Set the path in the dataset config "
            f"(paths are under paths.data_dir, env FUSE_DATA_DIR)."
        )
    try:
        with p.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise _fail(p, expected, fmt, f"invalid JSON ({exc})") from exc


def _require(cond: bool, path: Path | str, expected: str, fmt: str, problem: str) -> None:
    if not cond:
        raise _fail(path, expected, fmt, problem)


def _image_path(image_dir: str | Path | None, file_name: str | None) -> str | None:
    if image_dir is None or file_name is None:
        return None
    return str(Path(image_dir) / file_name)


def _coco_id_from_filename(name: str) -> str | None:
    """``COCO_val2014_000000391895.jpg`` -> ``"391895"`` (None when the name has no number)."""
    match = re.search(r"(\d+)\.[A-Za-z]+$", name)
    if match is None:
        return None
    return str(int(match.group(1)))


def _check_unique(items: list[Item], path: Path | str, fmt: str) -> list[Item]:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise _fail(path, "unique item ids", fmt, f"duplicate id {item.id!r}")
        seen.add(item.id)
    return items


def _check_sentiment(sentiment: str | None) -> str | None:
    if sentiment is None:
        return None
    value = str(sentiment).lower()
    if value not in SENTIMENTS:
        raise DatasetError(f"sentiment must be one of {SENTIMENTS} or null, got {sentiment!r}")
    return value


# --------------------------------------------------------------------------------------------
# readers, one per format


def read_karpathy(
    path: str | Path, image_dir: str | Path | None = None, split: str = "test"
) -> list[Item]:
    """Karpathy's ``dataset_coco.json``: items of one split, references from ``raw``.

    The id is the COCO image id (``cocoid``), so results line up with COCO-format files.
    ``image_dir`` is the folder holding the split's images (val2014 for test and val).
    """
    fmt = "karpathy"
    expected = (
        '{"images": [{"filename", "cocoid", "split", "sentences": [{"raw"}]}]} '
        "(Karpathy's dataset_coco.json)"
    )
    data = _load_json(path, fmt, expected)
    _require(isinstance(data, dict) and isinstance(data.get("images"), list), path, expected,
             fmt, "no 'images' list")
    items: list[Item] = []
    splits: set[str] = set()
    for n, img in enumerate(data["images"]):
        _require(isinstance(img, dict) and "filename" in img and "sentences" in img, path,
                 expected, fmt, f"image entry {n} lacks 'filename' or 'sentences'")
        splits.add(str(img.get("split")))
        if img.get("split") != split:
            continue
        cocoid = img.get("cocoid")
        item_id = str(cocoid) if cocoid is not None else _coco_id_from_filename(img["filename"])
        _require(item_id is not None, path, expected, fmt, f"image entry {n} has no cocoid")
        refs = []
        for sent in img["sentences"]:
            _require(isinstance(sent, dict) and isinstance(sent.get("raw"), str), path,
                     expected, fmt, f"image entry {n} has a sentence without 'raw' text")
            refs.append(sent["raw"])
        items.append(Item(id=item_id, image_path=_image_path(image_dir, img["filename"]),
                          references=refs))
    if not items:
        raise _fail(path, expected, fmt,
                    f"no images in split {split!r} (splits present: {sorted(splits)})")
    return _check_unique(items, path, fmt)


def _coco_style_refs(data: Any, path: Path | str, expected: str, fmt: str) -> dict[str, list[str]]:
    """``{image_id: [captions]}`` of a COCO-style ``{"images": [...], "annotations": [...]}``."""
    _require(isinstance(data, dict) and isinstance(data.get("images"), list)
             and isinstance(data.get("annotations"), list), path, expected, fmt,
             "no 'images'/'annotations' lists")
    refs: dict[str, list[str]] = {}
    for n, ann in enumerate(data["annotations"]):
        _require(isinstance(ann, dict) and "image_id" in ann and isinstance(ann.get("caption"),
                 str), path, expected, fmt, f"annotation {n} lacks 'image_id' or 'caption'")
        refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    return refs


def read_coco_captions(
    path: str | Path, image_dir: str | Path | None = None, sentiment: str | None = None
) -> list[Item]:
    """COCO caption format: one item per entry of ``images`` with its annotations as references.

    Used for references-only scoring (the Karpathy test cocofmt file) and for the SentiCap
    cocofmt test files, where every reference has the one ``sentiment`` given here.
    """
    fmt = "coco_captions"
    expected = '{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}'
    data = _load_json(path, fmt, expected)
    sentiment = _check_sentiment(sentiment)
    refs = _coco_style_refs(data, path, expected, fmt)
    items = []
    for n, img in enumerate(data["images"]):
        _require(isinstance(img, dict) and "id" in img, path, expected, fmt,
                 f"image entry {n} lacks 'id'")
        item_id = str(img["id"])
        items.append(Item(id=item_id, image_path=_image_path(image_dir, img.get("file_name")),
                          references=refs.get(item_id, []), sentiment=sentiment))
    known = {it.id for it in items}
    orphans = sorted(set(refs) - known, key=id_sort_key)
    _require(not orphans, path, expected, fmt,
             f"annotations refer to image ids missing from 'images' (first: {orphans[:3]})")
    return _check_unique(items, path, fmt)


def _normalise_domain(value: Any, path: Path | str, fmt: str, expected: str) -> str:
    text = str(value).lower().replace("_", "-")
    _require(text in NOCAPS_DOMAINS, path, expected, fmt,
             f"unknown NoCaps domain {value!r} (known: {NOCAPS_DOMAINS})")
    return text


def read_nocaps(path: str | Path, image_dir: str | Path | None = None) -> list[Item]:
    """The official ``nocaps_val_4500_captions.json``; domains become in/near/out-domain."""
    fmt = "nocaps"
    expected = (
        '{"images": [{"id", "file_name", "domain"}], "annotations": [{"image_id", "caption"}]} '
        "(nocaps_val_4500_captions.json)"
    )
    data = _load_json(path, fmt, expected)
    refs = _coco_style_refs(data, path, expected, fmt)
    items = []
    for n, img in enumerate(data["images"]):
        _require(isinstance(img, dict) and "id" in img and "domain" in img, path, expected,
                 fmt, f"image entry {n} lacks 'id' or 'domain'")
        item_id = str(img["id"])
        items.append(Item(id=item_id, image_path=_image_path(image_dir, img.get("file_name")),
                          references=refs.get(item_id, []),
                          domain=_normalise_domain(img["domain"], path, fmt, expected)))
    return _check_unique(items, path, fmt)


def read_nocaps_corpus(path: str | Path, image_dir: str | Path | None = None) -> list[Item]:
    """NoCaps as ``[{split: in_domain|..., image_id: "<nocaps id>.jpg", caption: [...]}]``.

    The ids are NoCaps integer ids, not Open Images file names, so ``image_dir`` must hold the
    images saved as ``<id>.jpg`` for captioning; for scoring it can stay null.
    """
    fmt = "nocaps_corpus"
    expected = ('[{"split": "in_domain|near_domain|out_domain", "image_id": "<id>.jpg", '
                '"caption": [...]}]')
    data = _load_json(path, fmt, expected)
    _require(isinstance(data, list), path, expected, fmt, "top level is not a list")
    items = []
    for n, entry in enumerate(data):
        _require(isinstance(entry, dict) and "image_id" in entry and "split" in entry
                 and isinstance(entry.get("caption"), list), path, expected, fmt,
                 f"entry {n} lacks 'image_id', 'split' or a 'caption' list")
        name = str(entry["image_id"])
        items.append(Item(id=Path(name).stem, image_path=_image_path(image_dir, name),
                          references=[str(c) for c in entry["caption"]],
                          domain=_normalise_domain(entry["split"], path, fmt, expected)))
    return _check_unique(items, path, fmt)


def read_senticap(
    path: str | Path, sentiment: str, image_dir: str | Path | None = None, split: str = "test"
) -> list[Item]:
    """The original ``senticap_dataset.json``: images with references of one sentiment.

    SentiCap lists some COCO images twice (once per sentiment group); entries are merged by
    COCO id, in order of first appearance, and images without a reference of the wanted
    sentiment are left out (as in the published per-sentiment test sets: 673 positive and
    503 negative test images).
    """
    fmt = "senticap"
    expected = (
        '{"images": [{"filename", "split", "sentences": [{"raw", "sentiment": 1|0}]}]} '
        "(senticap_dataset.json; sentiment 1 positive, 0 negative)"
    )
    wanted = _check_sentiment(sentiment)
    if wanted is None:
        raise DatasetError("SentiCap needs dataset.sentiment: positive or negative")
    code = 1 if wanted == "positive" else 0
    data = _load_json(path, fmt, expected)
    _require(isinstance(data, dict) and isinstance(data.get("images"), list), path, expected,
             fmt, "no 'images' list")
    by_id: dict[str, Item] = {}
    splits: set[str] = set()
    for n, img in enumerate(data["images"]):
        _require(isinstance(img, dict) and isinstance(img.get("filename"), str)
                 and isinstance(img.get("sentences"), list), path, expected, fmt,
                 f"image entry {n} lacks 'filename' or 'sentences'")
        splits.add(str(img.get("split")))
        if img.get("split") != split:
            continue
        item_id = _coco_id_from_filename(img["filename"])
        _require(item_id is not None, path, expected, fmt,
                 f"image entry {n} file name {img['filename']!r} carries no COCO id")
        refs = []
        for sent in img["sentences"]:
            _require(isinstance(sent, dict) and isinstance(sent.get("raw"), str)
                     and sent.get("sentiment") in (0, 1), path, expected, fmt,
                     f"image entry {n} has a sentence without 'raw' or 'sentiment' 0/1")
            if sent["sentiment"] == code:
                refs.append(sent["raw"])
        if not refs:
            continue
        if item_id in by_id:
            by_id[item_id].references.extend(refs)
        else:
            by_id[item_id] = Item(id=item_id,
                                  image_path=_image_path(image_dir, img["filename"]),
                                  references=refs, sentiment=wanted)
    if not by_id:
        raise _fail(path, expected, fmt,
                    f"no {wanted} references in split {split!r} (splits: {sorted(splits)})")
    return list(by_id.values())


def read_embedded_refs(path: str | Path, image_dir: str | Path | None = None) -> list[Item]:
    """Result files that carry references: ``[{image_name, captions: [...], split?}]``.

    The id is the COCO id when ``image_name`` is a COCO file name, else the name's stem;
    a NoCaps domain in ``split`` (in_domain, ...) becomes ``Item.domain``.
    """
    fmt = "embedded_refs"
    expected = '[{"image_name": ..., "captions": [...], "split"?: ...}]'
    data = _load_json(path, fmt, expected)
    _require(isinstance(data, list), path, expected, fmt, "top level is not a list")
    items = []
    for n, entry in enumerate(data):
        _require(isinstance(entry, dict) and "image_name" in entry
                 and isinstance(entry.get("captions"), list), path, expected, fmt,
                 f"entry {n} lacks 'image_name' or a 'captions' list")
        name = str(entry["image_name"])
        item_id = _coco_id_from_filename(name) if name.startswith("COCO_") else Path(name).stem
        split = str(entry.get("split", "")).lower().replace("_", "-")
        items.append(Item(id=str(item_id), image_path=_image_path(image_dir, name),
                          references=[str(c) for c in entry["captions"]],
                          domain=split if split in NOCAPS_DOMAINS else None))
    return _check_unique(items, path, fmt)


def read_image_folder(image_dir: str | Path) -> list[Item]:
    """Every image file directly inside ``image_dir``, sorted by name; id = file stem."""
    root = Path(image_dir) if image_dir is not None else None
    if root is None or not root.is_dir():
        raise DatasetError(
            f"image folder {str(root)!r} not found: expected a directory of image files "
            f"({', '.join(IMAGE_EXTENSIONS)}); set dataset.image_dir"
        )
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DatasetError(
            f"image folder {str(root)!r} holds no image files (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    items = [Item(id=p.stem, image_path=str(p)) for p in files]
    return _check_unique(items, root, "image_folder")


def read_text_targets(path: str | Path) -> list[Item]:
    """A JSON list of ``{id, target, references?}`` for the text-similarity objective."""
    fmt = "text_targets"
    expected = '[{"id": str|int, "target": str, "references": [str, ...] (optional)}]'
    data = _load_json(path, fmt, expected)
    _require(isinstance(data, list) and data, path, expected, fmt,
             "top level is not a non-empty list")
    items = []
    for n, entry in enumerate(data):
        _require(isinstance(entry, dict) and "id" in entry
                 and isinstance(entry.get("target"), str), path, expected, fmt,
                 f"entry {n} lacks 'id' or a string 'target'")
        refs = entry.get("references", [])
        _require(isinstance(refs, list) and all(isinstance(r, str) for r in refs), path,
                 expected, fmt, f"entry {n} has 'references' that are not a list of strings")
        items.append(Item(id=str(entry["id"]), target=entry["target"], references=list(refs),
                          sentiment=_check_sentiment(entry.get("sentiment"))))
    return _check_unique(items, path, fmt)


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
    """Pick the items a run works on.

    - ``all``: everything;
    - ``first``: the first ``n`` (all when ``n`` exceeds the size);
    - ``sample``: ``n`` items drawn without replacement by ``numpy.random.default_rng(seed)``,
      returned in dataset order so the same seed always yields the same list;
    - ``shard``: block ``index`` of ``count`` near-equal contiguous blocks; the shards of one
      ``count`` partition the set, so captioning them separately and merging equals one run.
    """
    items = list(items)
    if mode not in SUBSET_MODES:
        raise DatasetError(f"subset.mode must be one of {SUBSET_MODES}, got {mode!r}")
    if mode == "all":
        return items
    if mode in ("first", "sample"):
        if n is None or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DatasetError(f"subset.mode={mode} needs subset.n >= 1, got n={n!r}")
        if mode == "first":
            return items[:n]
        if seed is None:
            raise DatasetError("subset.mode=sample needs subset.seed (an int), got null")
        if n >= len(items):
            return items
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(items), size=n, replace=False))
        return [items[int(i)] for i in chosen]
    # shard
    if count is None or isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DatasetError(f"subset.mode=shard needs subset.count >= 1, got count={count!r}")
    if index is None or isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < count:
        raise DatasetError(
            f"subset.mode=shard needs 0 <= subset.index < count={count}, got index={index!r}"
        )
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    stop = start + size + (1 if index < extra else 0)
    return items[start:stop]


# --------------------------------------------------------------------------------------------
# config entry point

_KNOWN_KEYS = {"name", "format", "annotations", "image_dir", "split", "sentiment",
               "require_images", "subset", "target_from_references"}


def targets_from_references(items: Sequence[Item]) -> list[Item]:
    """Turn captioned images into text targets: each item's first human caption becomes the
    target text and the others stay as references (our offline stand-in for image captioning:
    the text-similarity objective pulls towards one human caption, the metrics compare with
    the rest). Items with fewer than two captions cannot serve and raise an error."""
    out = []
    for it in items:
        if len(it.references) < 2:
            raise DatasetError(
                f"item {it.id!r} has {len(it.references)} caption(s); target_from_references needs "
                "at least two (one target, the rest references)"
            )
        out.append(dataclasses.replace(it, target=it.references[0], references=list(it.references[1:])))
    return out
_SUBSET_KEYS = {"mode", "n", "seed", "index", "count"}


def _as_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, Mapping):
        return dict(node)
    try:  # a DictConfig: resolve interpolations (paths.data_dir, seed) into plain values
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    raise DatasetError(f"dataset config must be a mapping, got {type(node).__name__}")


def _need(cfg: Mapping[str, Any], key: str, fmt: str) -> Any:
    value = cfg.get(key)
    if value in (None, ""):
        raise DatasetError(f"dataset format {fmt!r} needs dataset.{key} (got {value!r})")
    return value


_READERS: dict[str, Callable[[Mapping[str, Any]], list[Item]]] = {
    "karpathy": lambda c: read_karpathy(_need(c, "annotations", "karpathy"), c.get("image_dir"),
                                        c.get("split") or "test"),
    "coco_captions": lambda c: read_coco_captions(_need(c, "annotations", "coco_captions"),
                                                  c.get("image_dir"), c.get("sentiment")),
    "nocaps": lambda c: read_nocaps(_need(c, "annotations", "nocaps"), c.get("image_dir")),
    "nocaps_corpus": lambda c: read_nocaps_corpus(_need(c, "annotations", "nocaps_corpus"),
                                                  c.get("image_dir")),
    "senticap": lambda c: read_senticap(_need(c, "annotations", "senticap"),
                                        _need(c, "sentiment", "senticap"), c.get("image_dir"),
                                        c.get("split") or "test"),
    "embedded_refs": lambda c: read_embedded_refs(_need(c, "annotations", "embedded_refs"),
                                                  c.get("image_dir")),
    "image_folder": lambda c: read_image_folder(_need(c, "image_dir", "image_folder")),
    "text_targets": lambda c: read_text_targets(_need(c, "annotations", "text_targets")),
}
FORMATS = tuple(sorted(_READERS))


def check_images(items: Sequence[Item], limit: int = 5) -> None:
    """Raise a DatasetError naming the first missing image files (captioning needs them)."""
    missing = [it for it in items if it.image_path is None or not Path(it.image_path).is_file()]
    if missing:
        shown = ", ".join(f"{it.id}: {it.image_path!r}" for it in missing[:limit])
        raise DatasetError(
            f"{len(missing)} of {len(items)} items have no readable image file ({shown}"
            f"{', ...' if len(missing) > limit else ''}); set dataset.image_dir"
        )


def load_dataset(cfg_dataset: Any) -> list[Item]:
    """Read the dataset named by a ``dataset`` config node and apply its ``subset``.

    Accepts a DictConfig or a plain mapping with ``name``, ``format``, ``annotations``,
    ``image_dir``, ``split``, ``sentiment``, ``require_images`` and a
    ``subset: {mode, n, seed, index, count}`` block.
    """
    cfg = _as_dict(cfg_dataset)
    fmt = cfg.get("format")
    if fmt not in _READERS:
        raise DatasetError(f"dataset.format must be one of {FORMATS}, got {fmt!r}")
    unknown = sorted(set(cfg) - _KNOWN_KEYS)
    if unknown:
        log.warning("dataset %r: ignoring unknown keys %s", cfg.get("name"), unknown)
    subset = cfg.get("subset") or {}
    if not isinstance(subset, Mapping):
        raise DatasetError(f"dataset.subset must be a mapping, got {subset!r}")
    bad = sorted(set(subset) - _SUBSET_KEYS)
    if bad:
        raise DatasetError(f"dataset.subset has unknown keys {bad}; known: {sorted(_SUBSET_KEYS)}")
    items = _READERS[fmt](cfg)
    items = select_subset(items, mode=subset.get("mode") or "all", n=subset.get("n"),
                          seed=subset.get("seed"), index=subset.get("index"),
                          count=subset.get("count"))
    if cfg.get("target_from_references"):
        items = targets_from_references(items)
    if cfg.get("require_images"):
        check_images(items)
    return items
