"""The evaluation example (:class:`Item`), the dataset error, and the helpers every reader uses.

Readers check the structure they rely on and fail with a :class:`DatasetError` that names the
file, says what was expected and where the official copy is published: the most common failure
is a missing or wrong annotation file, and a bare ``KeyError`` deep in the scorer would not say
which one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_repro.errors import FuseError, one_line
from fuse_repro.sentiment import SENTIMENTS
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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
    "synthetic_images": "generated here from the seed (no files)",
}


class DatasetError(FuseError, ValueError):
    """A dataset file or dataset config is missing or malformed."""


class ImageReadError(FuseError, OSError):
    """One item's image cannot be read (corrupt, truncated, not an image, a folder): an
    ``OSError``, so the caption stage fails that item alone and lists it in errors.jsonl."""

@dataclass
class Item:
    """One evaluation example.

    ``references`` are the texts a caption is scored against (already restricted to the wanted
    sentiment for SentiCap); ``target`` is the text the text-similarity objective aims at.
    ``image`` holds a picture in memory (a ``PIL.Image``; the synthetic_images dataset) for
    items without an image file; :meth:`open_image` reads either.
    """

    id: str
    image_path: str | None = None
    target: str | None = None
    references: list[str] = field(default_factory=list)
    sentiment: str | None = None
    domain: str | None = None
    image: Any = field(default=None, repr=False, compare=False)

    @property
    def has_image(self) -> bool:
        """An image in memory, or a path to one (whether the file exists is check_images' job)."""
        return self.image is not None or bool(self.image_path)

    def open_image(self) -> Any:
        """The item's image as an RGB ``PIL.Image`` (from memory, else read from image_path)."""
        from PIL import Image

        if self.image is not None:
            return self.image.convert("RGB")
        if not self.image_path:
            raise DatasetError(f"item {self.id!r} has no image (no image_path, none in memory)")
        try:
            with Image.open(Path(self.image_path)) as img:
                return img.convert("RGB")
        except OSError as err:  # PIL's UnidentifiedImageError, a truncated file, a folder
            raise ImageReadError(
                f"image {self.image_path} of item {self.id!r} cannot be read ({one_line(err)}); "
                "replace or remove the file") from None


# --------------------------------------------------------------------------------------------
# helpers


def _fail(path: Path | str, expected: str, fmt: str, problem: str) -> DatasetError:
    return DatasetError(
        f"{problem} in dataset file {str(path)!r}: expected {expected}. "
        f"Official copy: {SOURCES[fmt]}."
    )


def _load_json(path: str | Path, fmt: str, expected: str) -> Any:
    """Read a JSON file, turning a missing file or bad JSON into a DatasetError naming it."""
    from fuse_repro.records import parse_json, read_user_text

    p = Path(path)
    if not p.exists():
        raise DatasetError(
            f"dataset file {str(p)!r} not found (format {fmt!r}; expected {expected}). "
            f"Official copy: {SOURCES[fmt]}. Set the path in the dataset config "
            f"(paths are under paths.data_dir, env FUSE_DATA_DIR)."
        )
    # A folder, a binary or non-UTF-8 file, a truncated JSON: one line naming the file.
    fix = (f"point dataset.annotations at the {fmt} JSON file (expected {expected}). "
           f"Official copy: {SOURCES[fmt]}")
    return parse_json(read_user_text(p, "dataset file", fix, DatasetError), p, "dataset file",
                      fix, DatasetError)


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


