"""Objectives of the captioner: one loss per candidate, batched, never averaged over the batch.

Shape glossary
--------------
B      candidates (sequences) in a batch
S_j    a secondary model's sequence length (specials included, right-padded)
d_j    a secondary model's embedding width; h its hidden width; C classifier labels
e      joint embedding width of CLIP / the sentence encoder

Every secondary objective is reached from the primary model through a ``Bridge`` (identity,
token-level matrix, or FUSE): its ``loss(tb)`` takes the bridge's ``TargetBatch`` whose embeddings
carry the FUSE backward, so ``loss(bridge(ids, E_i)).sum().backward()`` puts the gradient of every
candidate's own loss on its own rows of ``E_i``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

import torch
import torch.nn.functional as F

from fuse_repro.bridge import Bridge, TargetBatch
from fuse_repro.errors import FuseError, ObjectiveError  # noqa: F401 - ObjectiveError: re-exported

if TYPE_CHECKING:
    from fuse_repro.text_model import SecondaryModel


log = logging.getLogger(__name__)


class SecondaryObjective(ABC):
    """A loss computed by a secondary model on the bridged candidate text."""

    name: str
    # Declared metrics, read by the pipeline instead of the term's name: "cosine" means the
    # loss is 1 - cos and is shown as a similarity column (mean cos = 1 - mean loss);
    # "cross_entropy" means the loss is a classifier's cross entropy.
    metrics: ClassVar[tuple[str, ...]] = ()
    # What prepare() needs of an item: "target" (a target text), "image", or None (nothing).
    needs: ClassVar[str | None] = None
    # Keyword options of the constructor a term config may set (besides kind, weight, model).
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, model: SecondaryModel, bridge: Bridge, weight: float) -> None:
        self.name, self.model, self.bridge, self.weight = name, model, bridge, float(weight)

    @abstractmethod
    def prepare(self, item: Any) -> None:
        """Set the per-item context (image features, target text embedding, wanted label)."""

    @abstractmethod
    def loss(self, tb: TargetBatch) -> torch.Tensor:
        """(B,) loss of each candidate from its bridged embeddings (differentiable)."""

    @torch.no_grad()
    def evaluate(self, src_ids: list[list[int]], chunk: int) -> torch.Tensor:
        """(B,) exact losses of the candidates, in chunks of ``chunk`` sequences.

        Each chunk is padded only to its own longest candidate (real lengths, never to 77), and
        each loss depends only on its own sequence, so chunking cannot change any value.
        """
        out = []
        for start in range(0, len(src_ids), chunk):
            tb = self.bridge.lookup(src_ids[start : start + chunk])
            out.append(self.loss(tb).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


class TextSimilarity(SecondaryObjective):
    """``1 - cos(encoder(candidate), encoder(target text))`` with mean pooling (sentence-
    transformers' recipe for all-MiniLM-L6-v2). Our offline stand-in for CLIP image similarity."""

    metrics = ("cosine",)
    needs = "target"

    def __init__(self, model: SecondaryModel, bridge: Bridge, weight: float) -> None:
        super().__init__("text_similarity", model, bridge, weight)
        self.target_embedding: torch.Tensor | None = None  # (e,)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens: (B, S_j, h), (B, S_j) -> (B, h)."""
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, S_j, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def embed_text(self, text: str) -> torch.Tensor:
        tok = self.model.tokenizer
        full, _ = tok.with_specials(tok.encode(text))
        ids = torch.tensor([full], dtype=torch.long, device=self.model.device)
        mask = torch.ones_like(ids)
        hidden = self.model.forward_embeds(self.model.embed(ids), mask)
        return self.pool(hidden, mask)[0]

    def prepare(self, item: Any) -> None:
        target = getattr(item, "target", None)
        if not target:
            raise ObjectiveError(f"item {getattr(item, 'id', '?')!r} has no target text for text_similarity")
        self.target_embedding = self.embed_text(target)

    def loss(self, tb: TargetBatch) -> torch.Tensor:
        assert self.target_embedding is not None, "prepare(item) first"
        hidden = self.model.forward_embeds(tb.embeds, tb.attention_mask)  # (B, S_j, h)
        pooled = self.pool(hidden, tb.attention_mask)  # (B, h)
        return 1.0 - F.cosine_similarity(pooled, self.target_embedding[None].to(pooled), dim=-1)


class ClipImageSimilarity(SecondaryObjective):
    """``1 - cos(CLIP text features, CLIP image features)``; the text tower pools at each
    sequence's own end-of-text token (``forward_embeds`` of the clip model)."""

    metrics = ("cosine",)
    needs = "image"

    def __init__(self, model: SecondaryModel, bridge: Bridge, weight: float) -> None:
        super().__init__("clip", model, bridge, weight)
        self.image_features: torch.Tensor | None = None  # (e,)

    @torch.no_grad()
    def image_embedding(self, image: Any) -> torch.Tensor:
        pixels = self.model.image_preprocess(image).unsqueeze(0).to(self.model.device)
        return F.normalize(self.model.module.encode_image(pixels).float(), dim=-1)[0]

    def prepare(self, item: Any) -> None:
        from PIL import Image, UnidentifiedImageError

        if getattr(item, "image", None) is not None:  # in memory (dataset=synthetic_images)
            self.image_features = self.image_embedding(item.image.convert("RGB"))
            return
        path = getattr(item, "image_path", None)
        if not path:
            raise ObjectiveError(f"item {getattr(item, 'id', '?')!r} has no image for the clip objective")
        try:
            with Image.open(Path(path)) as img:
                image = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ObjectiveError(f"cannot read image {path}: {err}") from err
        self.image_features = self.image_embedding(image)

    def loss(self, tb: TargetBatch) -> torch.Tensor:
        assert self.image_features is not None, "prepare(item) first"
        feats = self.model.forward_embeds(tb.embeds, tb.attention_mask)  # (B, e)
        return 1.0 - F.cosine_similarity(feats.float(), self.image_features[None].to(feats.device), dim=-1)


class Sentiment(SecondaryObjective):
    """Cross entropy of a sequence classifier towards the wanted sentiment; the label index is
    read from the model config's ``id2label`` (never assumed)."""

    metrics = ("cross_entropy",)
    options = ("sentiment",)

    def __init__(self, model: SecondaryModel, bridge: Bridge, weight: float, sentiment: str | None = None) -> None:
        super().__init__("sentiment", model, bridge, weight)
        self.default_sentiment = sentiment
        self.label: int | None = None

    def label_index(self, sentiment: str) -> int:
        id2label = getattr(self.model, "id2label", None) or {}
        for index, name in id2label.items():
            if str(name).lower() == sentiment.lower():
                return int(index)
        raise ObjectiveError(
            f"sentiment {sentiment!r} is not a label of {self.model.name} (labels: {dict(id2label)})"
        )

    def prepare(self, item: Any) -> None:
        wanted = getattr(item, "sentiment", None) or self.default_sentiment
        if wanted is None:
            raise ObjectiveError("the sentiment objective needs a wanted sentiment (item or objective config)")
        self.label = self.label_index(wanted)

    def loss(self, tb: TargetBatch) -> torch.Tensor:
        assert self.label is not None, "prepare(item) first"
        logits = self.model.forward_embeds(tb.embeds, tb.attention_mask)  # (B, C)
        target = torch.full((logits.shape[0],), self.label, dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits.float(), target, reduction="none")


OBJECTIVES: dict[str, type[SecondaryObjective]] = {
    "text_similarity": TextSimilarity,
    "clip": ClipImageSimilarity,
    "sentiment": Sentiment,
}

def objective_options(kind: str) -> tuple[str, ...]:
    """The keys an objective term of ``kind`` may set besides kind, weight and model."""
    if kind not in OBJECTIVES:
        raise ObjectiveError(f"unknown objective kind {kind!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[kind].options


def build_objective(kind: str, model: SecondaryModel, bridge: Bridge, weight: float, **kwargs: Any) -> SecondaryObjective:
    """An objective of ``kind``; a key its constructor does not take is one clear error."""
    options = objective_options(kind)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ObjectiveError(
            f"objective {kind!r} has no option {unknown[0]!r} (its options: {list(options) or 'none'}); "
            "remove the key from the objective's term config"
        )
    return OBJECTIVES[kind](model, bridge, weight, **kwargs)


def check_weights(lm_weight: float, weights: dict[str, float]) -> None:
    """Weights must be finite and non-negative, and at least one must be positive."""
    import math

    everything = {"lm": lm_weight, **weights}
    for name, w in everything.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ObjectiveError(f"objective weight {name}={w!r} must be a finite number >= 0")
    if sum(everything.values()) <= 0:
        raise ObjectiveError(f"all objective weights are zero ({everything}): nothing to optimize")
