"""One reader per dataset file format; each returns a list of :class:`Item`.

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
- ``synthetic_images`` (fuse_repro.data.synthetic): seeded generated images, no files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fuse_repro.data.items import (
    IMAGE_EXTENSIONS,
    NOCAPS_DOMAINS,
    DatasetError,
    Item,
    _check_sentiment,
    _check_unique,
    _coco_id_from_filename,
    _fail,
    _image_path,
    _load_json,
    _require,
)
from fuse_repro.records import id_sort_key

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


