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
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

import torch
import torch.nn.functional as F

from fuse_repro.bridge import Bridge, ExtensionIds, TargetBatch, right_pad
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

    # The attributes ``prepare`` sets: the per-item context, saved and restored when several
    # items are searched together (``prepared_context`` / ``use_prepared_context``).
    prepared_attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, model: SecondaryModel, bridge: Bridge, weight: float) -> None:
        self.name, self.model, self.bridge, self.weight = name, model, bridge, float(weight)

    def prepared_context(self) -> dict[str, Any]:
        """The per-item context ``prepare`` set (restored by ``use_prepared_context``)."""
        return {a: getattr(self, a) for a in self.prepared_attributes}

    def use_prepared_context(self, context: dict[str, Any]) -> None:
        for a in self.prepared_attributes:
            setattr(self, a, context[a])

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

    # -- candidate evaluation of a search step ---------------------------------------------------
    def can_prefix_cache(self) -> bool:
        """Whether ``evaluate_extensions`` can reuse each beam's keys/values: the objective
        scores pooled features (``loss_from_features``) of a causal model."""
        return type(self).loss_from_features is not SecondaryObjective.loss_from_features and bool(
            getattr(self.model, "supports_prefix_cache", False))

    def loss_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) loss from the model's pooled output (B, e); objectives of causal models that
        pool at the last token implement it (``can_prefix_cache``)."""
        raise NotImplementedError(f"{type(self).__name__} scores full model outputs")

    @torch.no_grad()
    def evaluate_extensions(
        self, beams: list[list[int]], pairs: list[tuple[int, int]], chunk: int, prefix_cache: bool = True
    ) -> torch.Tensor:
        """(K,) exact losses of the candidates ``beams[b] + [token]`` for ``(b, token)`` in
        ``pairs``: the same values as ``evaluate`` of those sequences.

        With ``prefix_cache`` and a model that supports it (``can_prefix_cache``): ids-only
        retokenization, incremental per beam (``Bridge.extension_ids``); each beam's target
        tokens run once and each candidate runs only its tokens after its longest common
        prefix with the beam (``prefix_cached_features``). Otherwise ``evaluate`` itself: the
        candidates run whole, in their order, in chunks of ``chunk`` (bidirectional models:
        every token sees every other, so nothing can be reused)."""
        if not pairs:
            return torch.zeros(0)
        if prefix_cache and self.can_prefix_cache():
            ext = self.bridge.extension_ids(beams, pairs)
            features = prefix_cached_features(self.model, ext, chunk)  # (K, e)
            return self.loss_from_features(features).float().cpu()
        return self.evaluate([list(beams[b]) + [int(t)] for b, t in pairs], chunk)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    return len(os.path.commonprefix([a, b]))  # element-wise on any sequences, not only paths


def merge_extensions(parts: list[ExtensionIds]) -> ExtensionIds:
    """Several steps' candidates as one set (beam indices offset): one batch for many items."""
    beams, group, cands, texts, incremental = [], [], [], [], 0
    for ext in parts:
        group.extend(g + len(beams) for g in ext.group)
        beams.extend(ext.beams)
        cands.extend(ext.candidates)
        texts.extend(ext.texts)
        incremental += ext.incremental
    return ExtensionIds(beams, group, cands, texts, incremental)


def candidate_chunks(group: list[int], lengths: list[int], chunk: int) -> list[list[int]]:
    """Candidate indices in evaluation chunks of at most ``chunk``: one chunk per (beam,
    new-token count), so nothing is padded and a chunk of one beam shares its prefix without
    copying it; ties keep pair order. When ``chunk`` is more than twice the largest such set
    (a GPU setting: few large batches), chunks are filled across beams and lengths instead,
    sorted by new-token count (padded only where the count changes inside a chunk)."""
    sets: dict[tuple[int, int], list[int]] = {}
    for i, (g, n) in enumerate(zip(group, lengths)):
        sets.setdefault((g, n), []).append(i)
    chunks = [rows[s : s + chunk] for _, rows in sorted(sets.items()) for s in range(0, len(rows), chunk)]
    if chunks and chunk > 2 * max(len(c) for c in chunks):
        by_length = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        chunks = [by_length[s : s + chunk] for s in range(0, len(by_length), chunk)]
    return chunks


def prefix_cached_features(model: SecondaryModel, ext: ExtensionIds, chunk: int) -> torch.Tensor:
    """Pooled features (K, e) of every candidate of ``ext`` through a causal model's prefix
    cache (``TextModel.prefix_cache`` / ``extend_features``): each beam's target ids without
    their last token (the end-of-text) run once; each candidate runs the tokens after its
    longest common prefix with that (at least its own end-of-text). Candidates run in chunks
    of one beam and one new-token count, at most ``chunk`` rows each: no padding, memory
    bounded by ``chunk``. When ``chunk`` is more than twice the largest such set (a GPU
    setting: few large batches), chunks are filled across beams and lengths instead (sorted by
    new-token count, so padded only where the count changes)."""
    device = model.device
    prefixes = [b[:-1] for b in ext.beams]  # (G,) beam ids without the end-of-text
    pad = model.tokenizer.pad_id
    ids, _ = right_pad(prefixes, pad)  # (G, P)
    cache = model.prefix_cache(model.embed(ids.to(device)))
    shared = [min(common_prefix(c, prefixes[g]), len(c) - 1) for g, c in zip(ext.group, ext.candidates)]
    new = [c[s:] for c, s in zip(ext.candidates, shared)]
    chunks = candidate_chunks(ext.group, [len(n) for n in new], chunk)
    out: torch.Tensor | None = None
    for rows in chunks:
        batch, _ = right_pad([new[i] for i in rows], pad)  # (B, T)
        feats = model.extend_features(
            cache,
            torch.tensor([ext.group[i] for i in rows], device=device),
            torch.tensor([shared[i] for i in rows], device=device),
            model.embed(batch.to(device)),
            torch.tensor([len(new[i]) for i in rows], device=device),
        )  # (B, e)
        if out is None:
            out = torch.empty(len(new), feats.shape[1], dtype=feats.dtype, device=feats.device)
        out[torch.tensor(rows, device=feats.device)] = feats
    assert out is not None
    return out


class TextSimilarity(SecondaryObjective):
    """``1 - cos(encoder(candidate), encoder(target text))`` with mean pooling (sentence-
    transformers' recipe for all-MiniLM-L6-v2). Our offline stand-in for CLIP image similarity."""

    metrics = ("cosine",)
    needs = "target"
    prepared_attributes = ("target_embedding",)

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
    prepared_attributes = ("image_features",)

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
        return self.loss_from_features(self.model.forward_embeds(tb.embeds, tb.attention_mask))

    def loss_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, e) unnormalized text features -> (B,) ``1 - cos`` with the image's."""
        assert self.image_features is not None, "prepare(item) first"
        return 1.0 - F.cosine_similarity(features.float(), self.image_features[None].to(features.device), dim=-1)


class Sentiment(SecondaryObjective):
    """Cross entropy of a sequence classifier towards the wanted sentiment; the label index is
    read from the model config's ``id2label`` (never assumed)."""

    metrics = ("cross_entropy",)
    options = ("sentiment",)
    prepared_attributes = ("label",)

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
    """Weights must be finite and non-negative, at least one positive, and no term may take a
    name the losses use (``ObjectiveConfig.RESERVED_TERM_NAMES``)."""
    import math

    from fuse_repro.config.schemas import ObjectiveConfig

    reserved = sorted(set(weights) & set(ObjectiveConfig.RESERVED_TERM_NAMES))
    if reserved:  # "lm" would replace the LM's own weight below (the schema refuses it first)
        raise ObjectiveError(f"objective term {reserved[0]!r} takes a name the losses already use "
                             f"({', '.join(ObjectiveConfig.RESERVED_TERM_NAMES)}); rename the term")
    everything = {"lm": lm_weight, **weights}
    for name, w in everything.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ObjectiveError(f"objective weight {name}={w!r} must be a finite number >= 0")
    if sum(everything.values()) <= 0:
        raise ObjectiveError(f"all objective weights are zero ({everything}): nothing to optimize")
