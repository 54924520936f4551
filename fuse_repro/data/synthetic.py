"""``dataset=synthetic_images``: seeded generated pictures, so the image experiments run anywhere.

Each picture is a plain background with a few filled shapes (circles, squares, triangles,
ellipses, bars) in named colours. Everything is drawn from ``numpy.random.default_rng([seed,
index])``, so an image depends only on (seed, index, size, shapes): every subset, shard and
rerun sees the same pictures, and no file is read or written. The items carry their image in
memory (``Item.image``) and have no references and no target text: captions of them can be
optimized (CLIP image similarity) but not scored with caption metrics, which say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fuse_repro.config import SyntheticImagesConfig
from fuse_repro.data.items import Item

# Named colours, so a picture can be described in words (and tested pixel by pixel).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (30, 70, 210),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 20),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "cyan": (40, 200, 210),
    "brown": (120, 75, 35),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "ellipse", "bar")


@dataclass(frozen=True)
class Shape:
    """One filled shape: its kind, colour name and bounding box (x0, y0, x1, y1) in pixels."""

    kind: str
    colour: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]

    def describe(self) -> str:
        """e.g. "a red circle and a blue square on a yellow background"."""
        parts = [f"a {s.colour} {s.kind}" for s in self.shapes]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed} on a {self.background} background"


def scene(seed: int, index: int, size: int, shapes: int) -> Scene:
    """The seeded layout of picture ``index``: background colour and ``shapes`` shapes, each of
    a colour other than the background's, drawn in order (later shapes may cover earlier ones)."""
    rng = np.random.default_rng([seed, index])
    names = list(PALETTE)
    background = names[int(rng.integers(len(names)))]
    others = [c for c in names if c != background]
    out = []
    for _ in range(shapes):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = others[int(rng.integers(len(others)))]
        cx, cy = rng.uniform(0.25 * size, 0.75 * size, size=2)
        r = rng.uniform(0.12 * size, 0.25 * size)
        w, h = {"ellipse": (r, 0.6 * r), "bar": (r, 0.3 * r)}.get(kind, (r, r))
        box = (int(cx - w), int(cy - h), int(cx + w), int(cy + h))
        out.append(Shape(kind, colour, box))
    return Scene(background, tuple(out))


def render(sc: Scene, size: int) -> Any:
    """The scene as a ``size`` x ``size`` RGB ``PIL.Image``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), PALETTE[sc.background])
    draw = ImageDraw.Draw(img)
    for s in sc.shapes:
        fill = PALETTE[s.colour]
        x0, y0, x1, y1 = s.box
        if s.kind in ("circle", "ellipse"):
            draw.ellipse(s.box, fill=fill)
        elif s.kind == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # square, bar
            draw.rectangle(s.box, fill=fill)
    return img


def read_synthetic_images(cfg: SyntheticImagesConfig) -> list[Item]:
    """``cfg.num_images`` items ``synthetic_00000``, ... with their pictures in memory
    (about 150 KB each at 224 px); no references, no target text."""
    items = []
    for index in range(cfg.num_images):
        picture = render(scene(cfg.seed, index, cfg.size, cfg.shapes), cfg.size)
        items.append(Item(id=f"synthetic_{index:05d}", image=picture))
    return items
