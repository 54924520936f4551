"""The differentiable bridge from a primary model's input embeddings to a secondary model's.

Forward is exact: decode the primary ids, retokenize the text for the secondary model, look up
its embeddings. Backward is the adjoint of the fitted per-word linear model of
``fuse_repro.adapter``: for a word with ``l`` target tokens and ``l_i <= D_l`` source tokens,
``g_i = g_j * M_l^T`` (t-product, ``fuse_repro.tensor``), batched per bucket.

Shape glossary
--------------
B      batch of sequences
S_i    source (primary) sequence length; S_j target (secondary) sequence length, specials included
d_i    source embedding width; d_j target embedding width
L      cap on a word's target token count (``adapter.max_tokens``)
l      a word's target token count (its bucket), 1..L; l_i its source token count
D      depth of the bucket's map (``M_l`` is (d_i, d_j, D), D >= l); D_l for bucket l
n      words of one bucket inside a batch during backward

Which path a word's gradient takes (``Bridge.word_paths``; the same rule as the backward):

* ``fitted``   its target length l has a map and its source length fits the map: l_i <= D_l.
  The test is against the map's depth, NOT the target length: a source word longer than its
  target word (21% of the words on SmolLM2 -> MiniLM) is still inside the fitted model when
  the map is deep enough.
* ``overflow`` no map for l (l > L, or no corpus word of that length) or l_i > D_l: the
  ``overflow`` policy applies ("random": a seeded Gaussian Jacobian per word, as the paper;
  "zero": no gradient).
* ``empty``    one side tokenizes the word to nothing: no gradient (there is nothing to map).

Special tokens (BOS/CLS/SEP...) belong to no word and never send a gradient. For the token
bridge (shared tokenizer) every word is ``fitted``; for the identity bridge ``identity``.

Controls (``Bridge.with_maps``) replace the maps while keeping everything else:

* ``fitted``  the fitted maps.
* ``random``  per bucket a seeded Gaussian tensor of the map's shape, rescaled to the fitted
  map's Frobenius norm.
* ``mean``    the fit report's mean-embedding baseline as maps. That baseline predicts every
  word of bucket l by the mean target word tensor of its fit words, a constant: as an affine
  t-linear model ``X_i * 0 + mean`` its linear part, and so its Jacobian with respect to the
  source embeddings, is zero. Its maps are therefore zero tensors of the fitted shape: fitted
  words send no gradient; overflow words still follow the overflow policy.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from fuse_repro.adapter import AdapterError, FittedAdapter
from fuse_repro.config.schemas import OVERFLOW_POLICIES
from fuse_repro.tensor import tprod, ttranspose

if TYPE_CHECKING:
    from fuse_repro.text_model import EmbeddingModel

__all__ = ["MAP_KINDS", "OVERFLOW_POLICIES", "Bridge", "ExtensionIds", "TargetBatch"]

MAP_KINDS = ("fitted", "random", "mean")
# Bound on the overflow words' Jacobians kept once drawn (Bridge._random_jacobian_t), per bridge.
OVERFLOW_CACHE_BYTES = 1 << 30


@dataclass
class TargetBatch:
    """Secondary-model inputs for a batch of primary sequences."""

    embeds: torch.Tensor  # (B, S_j, d_j), differentiable w.r.t. the primary embeddings
    attention_mask: torch.Tensor  # (B, S_j) 1 for real tokens, 0 for right padding
    ids: list[list[int]]  # full target ids (specials included), unpadded
    texts: list[str]


@dataclass
class ExtensionIds:
    """Target ids of one search step's candidates, each a beam extended by one source token
    (``Bridge.extension_ids``): evaluation needs ids only, never word spans."""

    beams: list[list[int]]  # full target ids of each beam (specials included)
    group: list[int]  # per candidate: the index of its beam
    candidates: list[list[int]]  # full target ids of each candidate (specials included)
    texts: list[str]  # decoded text of each candidate
    incremental: int = 0  # candidates retokenized word by word from their beam's words


class _BridgeFn(torch.autograd.Function):
    """Forward: pass the looked-up target embeddings through. Backward: the bridge's adjoint."""

    @staticmethod
    def forward(ctx: Any, src_embeds: torch.Tensor, tgt_values: torch.Tensor, backward: Any) -> torch.Tensor:
        ctx.backward = backward
        return tgt_values.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        return ctx.backward(grad_out), None, None


@dataclass
class _Plan:
    """Per-batch bookkeeping of which target rows feed which source rows (index tensors on the
    device of the source embeddings)."""

    batch: int
    src_len: int
    tgt_len: int
    # bucket l -> (tgt_index (n, l), src_index (n, D_l)); slices past a word's source length
    # point at the sink row B*S_i, which the backward drops (no data-dependent masking)
    buckets: dict[int, tuple[torch.Tensor, torch.Tensor]]
    # words past the cap: (tgt rows, src rows, seed) each
    overflow: list[tuple[list[int], list[int], int]]
    # token bridge: flat target rows and their source rows
    token_pairs: tuple[torch.Tensor, torch.Tensor] | None = None


# (target span, source span, word) of one word of one sequence
_Word = tuple[tuple[int, int], tuple[int, int], str]


def _control_maps(maps: dict[int, torch.Tensor], kind: str, seed: int) -> dict[int, torch.Tensor]:
    """The maps of a control bridge (module docstring), on the fitted maps' devices/dtypes."""
    if kind == "fitted":
        return dict(maps)
    if kind == "mean":
        return {l: torch.zeros_like(m) for l, m in maps.items()}
    out = {}
    for l, m in maps.items():
        # Drawn on the CPU from (seed, l): the same control on every device and whatever the
        # other buckets hold.
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1009 + int(l))
        r = torch.randn(m.shape, generator=gen, dtype=torch.float64)
        scale = float(torch.linalg.vector_norm(m.double().cpu()))
        out[l] = (r * (scale / float(torch.linalg.vector_norm(r)))).to(m.device, m.dtype)
    return out


def right_pad(full_ids: list[list[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Target id rows right-padded to the longest: ids (B, S_j) and attention mask (B, S_j)."""
    max_len = max(len(f) for f in full_ids)
    ids_pad = torch.full((len(full_ids), max_len), pad_id if pad_id is not None else 0,
                         dtype=torch.long)  # (B, S_j)
    mask = torch.zeros((len(full_ids), max_len), dtype=torch.long)  # (B, S_j)
    for b, full in enumerate(full_ids):
        ids_pad[b, : len(full)] = torch.tensor(full, dtype=torch.long)
        mask[b, : len(full)] = 1
    return ids_pad, mask


class Bridge:
    """Maps primary-model embeddings to a secondary model's input embeddings.

    ``kind``: identity (the secondary is the primary), token (shared tokenizer, section 3.2) or
    fuse (different tokenizers, section 3.3). Forward is exact (decode, retokenize, look up);
    backward is the adjoint of the fitted per-word linear model.

    ``overflow``: policy for words outside the fitted maps ("random" | "zero", module doc).
    ``seed``: seeds the overflow Jacobians; ``overflow_cache_bytes`` bounds those kept once
    drawn (``_random_jacobian_t``). ``device``: where the maps live and the backward
    runs (default: the source model's device); maps are moved there once, here.
    """

    def __init__(
        self,
        source: EmbeddingModel,
        target: EmbeddingModel,
        adapter: FittedAdapter,
        overflow: str = "random",
        seed: int = 0,
        *,
        device: str | torch.device | None = None,
        maps_kind: str = "fitted",
        overflow_cache_bytes: int = OVERFLOW_CACHE_BYTES,
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise AdapterError(f"overflow={overflow!r} is not one of {list(OVERFLOW_POLICIES)}")
        if maps_kind not in MAP_KINDS:
            raise AdapterError(f"maps kind {maps_kind!r} is not one of {list(MAP_KINDS)}")
        self.source, self.target, self.adapter = source, target, adapter
        self.kind = adapter.kind
        self.overflow, self.seed, self.maps_kind = overflow, seed, maps_kind
        self.device = torch.device(device) if device is not None else torch.device(source.device)
        # M^T per bucket, computed once and kept on the device: the backward is g_i = g_j * M^T.
        self._maps_t: dict[int, torch.Tensor] = {}
        self._depths: dict[int, int] = {}
        for l, m in adapter.maps.items():
            if adapter.kind == "fuse":
                assert m.ndim == 3 and m.shape[:2] == (source.dim, target.dim), f"map {l}: {tuple(m.shape)}"
                self._maps_t[l] = ttranspose(m.to(self.device)).contiguous()  # (d_j, d_i, D)
                self._depths[l] = int(m.shape[-1])
            else:
                assert m.shape == (source.dim, target.dim), f"token map: {tuple(m.shape)}"
                self._maps_t[l] = m.to(self.device).t().contiguous()  # (d_j, d_i)
                self._depths[l] = 1
        # copies of _maps_t in another dtype/device, made once on first use (gradients in float64
        # in the tests, or on another device than the maps)
        self._cast: dict[tuple[torch.device, torch.dtype], dict[int, torch.Tensor]] = {}
        # overflow words' drawn Jacobian blocks, least recently used first (_random_jacobian_t)
        self.overflow_cache_bytes = int(overflow_cache_bytes)
        if self.overflow_cache_bytes < 0:
            raise AdapterError(f"overflow_cache_bytes={overflow_cache_bytes} must be >= 0")
        self._overflow_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._overflow_bytes = 0

    # -- controls -----------------------------------------------------------------------------
    def with_maps(self, kind: str, seed: int = 0) -> Bridge:
        """A new Bridge over the same models, overflow policy and overflow seed, with its maps
        replaced by the control ``kind`` ("fitted" | "random" | "mean", module docstring);
        ``seed`` seeds the random maps. The fitted adapter itself is not modified."""
        if kind not in MAP_KINDS:
            raise AdapterError(f"maps kind {kind!r} is not one of {list(MAP_KINDS)}")
        if self.kind == "identity":
            raise AdapterError("the identity bridge has no maps to replace (source == target)")
        adapter = replace(self.adapter, maps=_control_maps(self.adapter.maps, kind, seed))
        return Bridge(self.source, self.target, adapter, self.overflow, self.seed,
                      device=self.device, maps_kind=kind,
                      overflow_cache_bytes=self.overflow_cache_bytes)

    def maps_on(self, device: torch.device, dtype: torch.dtype) -> dict[int, torch.Tensor]:
        """The transposed maps on ``device`` in ``dtype``: the stored ones when they match, else a
        copy made once and kept (the backward never copies maps per call)."""
        device = torch.device(device)
        if device == self.device and all(m.dtype == dtype for m in self._maps_t.values()):
            return self._maps_t
        key = (device, dtype)
        if key not in self._cast:
            self._cast[key] = {l: m.to(device, dtype) for l, m in self._maps_t.items()}
        return self._cast[key]

    # -- which path each word takes -----------------------------------------------------------
    def _word_path(self, l_i: int, l_j: int) -> str:
        """fitted | overflow | empty for a word of l_i source and l_j target tokens (fuse)."""
        if l_i == 0 or l_j == 0:
            return "empty"
        if l_j in self._depths and l_i <= self._depths[l_j]:  # the map's depth, not l_j
            return "fitted"
        return "overflow"

    def word_paths(self, src_ids: list[list[int]]) -> list[list[str]]:
        """Per sequence, per whitespace word of its decoded text, the path its gradient takes in
        the backward: "fitted", "overflow" or "empty" (fuse); "fitted" for every word of the token
        bridge, "identity" for the identity bridge (module docstring)."""
        if self.kind != "fuse":
            label = "fitted" if self.kind == "token" else "identity"
            return [[label] * len(self.source.tokenizer.decode([int(t) for t in ids]).split())
                    for ids in src_ids]
        if not src_ids:
            return []
        words = self._encode(src_ids)[4]
        return [[self._word_path(se - ss, te - ts) for (ts, te), (ss, se), _ in seq] for seq in words]

    # -- forward ------------------------------------------------------------------------------
    def _encode(
        self, src_ids: list[list[int]]
    ) -> tuple[list[str], list[list[int]], torch.Tensor, torch.Tensor, list[list[_Word]], list]:
        """Decode each source sequence, retokenize it for the target, pair up the words.

        Returns texts, full target ids, padded ids (B, S_j), mask (B, S_j), per-sequence word
        pairs ((target span), (source span), word) and, for the token bridge, row pairs.
        """
        tok_t = self.target.tokenizer
        texts, full_ids, words, token_rows = [], [], [], []
        for ids in src_ids:
            ids = [int(t) for t in ids]
            text = self.source.tokenizer.decode(ids)
            texts.append(text)
            if self.kind in ("token", "identity"):
                # Same tokenizer: the target sees the very same content ids (no retokenization).
                full, offset = tok_t.with_specials(ids) if self.kind == "token" else (ids, 0)
                full_ids.append(full)
                token_rows.append([(offset + s, s) for s in range(len(ids))])
                continue
            tgt_content, tgt_spans = tok_t.encode_words(text)
            src_spans = self.source.tokenizer.spans_of_ids(ids)
            if len(tgt_spans) != len(src_spans):
                raise AdapterError(
                    f"word split mismatch for {text!r}: source has {len(src_spans)} words, "
                    f"target {len(tgt_spans)}"
                )
            full, offset = tok_t.with_specials(tgt_content)
            full_ids.append(full)
            words.append(
                [((ts + offset, te + offset), (ss, se), word)
                 for (ts, te), (ss, se), word in zip(tgt_spans, src_spans, text.split())]
            )
        ids_pad, mask = right_pad(full_ids, tok_t.pad_id)  # (B, S_j) each
        return texts, full_ids, ids_pad, mask, words, token_rows

    # -- evaluation: ids only ------------------------------------------------------------------
    def _target_of_text(self, ids: list[int], text: str) -> list[int]:
        """Full target ids (specials included) of one source sequence and its decoded text."""
        if self.kind == "identity":
            return list(ids)
        if self.kind == "token":
            return self.target.tokenizer.with_specials(ids)[0]
        return self.target.tokenizer.with_specials(self.target.tokenizer.encode(text))[0]

    def target_ids(self, src_ids: list[list[int]]) -> tuple[list[str], list[list[int]]]:
        """Texts and full target ids of ``src_ids``: the ids ``_encode`` gives, without the
        word-span machinery evaluation throws away (the plain path of ``extension_ids``)."""
        src = [[int(t) for t in ids] for ids in src_ids]
        texts = [self.source.tokenizer.decode(ids) for ids in src]
        if self.kind == "fuse":  # one batched call (Rust for transformers' tokenizers)
            contents = self.target.tokenizer.encode_batch(texts)
            return texts, [self.target.tokenizer.with_specials(c)[0] for c in contents]
        return texts, [self._target_of_text(ids, text) for ids, text in zip(src, texts)]

    def extension_ids(self, beams: list[list[int]], pairs: list[tuple[int, int]]) -> ExtensionIds:
        """Target ids of every candidate ``beams[b] + [token]`` for ``(b, token)`` in ``pairs``,
        equal to ``target_ids`` of those sequences.

        Incremental per beam where the target tokenizer is word-separable
        (``WordTokenizer.separable``: CLIP's BPE on plain ASCII): the beam's words are encoded
        once, a candidate keeps the ids of the words it shares with its beam and encodes only
        the rest (the changed last word, a new word). Anything else takes the full encode."""
        tok_s, tok_t = self.source.tokenizer, self.target.tokenizer
        beam_texts = [tok_s.decode([int(t) for t in b]) for b in beams]
        texts = [tok_s.decode([*(int(t) for t in beams[b]), int(c)]) for b, c in pairs]
        group = [b for b, _ in pairs]
        if self.kind != "fuse":
            beam_ids = [self._target_of_text([int(t) for t in b], x) for b, x in zip(beams, beam_texts)]
            cand = [self._target_of_text([*(int(t) for t in beams[b]), int(c)], x)
                    for (b, c), x in zip(pairs, texts)]
            return ExtensionIds(beam_ids, group, cand, texts)
        # per beam: its words, and the ids of its first w words for every w (None: not separable)
        words_of: list[list[str]] = []
        heads: list[list[list[int]] | None] = []
        beam_contents = []
        for text in beam_texts:
            content = tok_t.encode(text)
            beam_contents.append(content)
            words = text.split()
            words_of.append(words)
            head: list[list[int]] | None = None
            if tok_t.separable(text):
                head = [[]]
                for w in words:
                    head.append(head[-1] + tok_t.encode(w))
                if head[-1] != content:  # never seen; the word-by-word premise failed
                    head = None
            heads.append(head)
        contents: list[list[int] | None] = []
        incremental = 0
        for b, text in zip(group, texts):
            head = heads[b]
            if head is None or not tok_t.separable(text):
                contents.append(None)
                continue
            words = text.split()
            shared = len(os.path.commonprefix([words, words_of[b]]))  # words kept from the beam
            ids = list(head[shared])
            for w in words[shared:]:
                ids.extend(tok_t.encode(w))
            contents.append(ids)
            incremental += 1
        rest = [i for i, c in enumerate(contents) if c is None]
        if rest:  # full encode of whatever could not be done word by word
            for i, c in zip(rest, tok_t.encode_batch([texts[i] for i in rest])):
                contents[i] = c
        cand = [tok_t.with_specials(c)[0] for c in contents if c is not None]
        assert len(cand) == len(texts)
        beam_ids = [tok_t.with_specials(c)[0] for c in beam_contents]
        return ExtensionIds(beam_ids, group, cand, texts, incremental)

    def embed_ids(self, full_ids: list[list[int]], texts: list[str]) -> TargetBatch:
        """The target inputs of full target ids, right-padded to the longest (no gradient path)."""
        ids_pad, mask = right_pad(full_ids, self.target.tokenizer.pad_id)  # (B, S_j) each
        model = self.source if self.kind == "identity" else self.target
        with torch.no_grad():
            embeds = model.embed(ids_pad.to(model.device))  # (B, S_j, d_j)
        return TargetBatch(embeds, mask.to(model.device), [list(f) for f in full_ids], list(texts))

    @torch.no_grad()
    def lookup(self, src_ids: list[list[int]]) -> TargetBatch:
        """The exact target inputs of ``src_ids`` with no gradient path (candidate evaluation):
        ids only (``target_ids``), the same ids and padding as the differentiable forward."""
        if not src_ids:
            raise AdapterError("lookup needs at least one source sequence")
        texts, full_ids = self.target_ids(src_ids)
        return self.embed_ids(full_ids, texts)

    def __call__(self, src_ids: list[list[int]], src_embeds: torch.Tensor) -> TargetBatch:
        """src_ids: B unpadded id lists; src_embeds (B, S_i, d_i) with S_i >= max length.

        The returned embeddings equal ``lookup(src_ids)``; their gradient flows back into
        ``src_embeds`` through the adjoint of the fitted map.
        """
        if src_embeds.ndim != 3 or src_embeds.shape[0] != len(src_ids):
            raise AdapterError(
                f"src_embeds must be (B, S_i, d_i) with B={len(src_ids)}, got {tuple(src_embeds.shape)}"
            )
        if any(len(ids) > src_embeds.shape[1] for ids in src_ids):
            raise AdapterError("a source sequence is longer than src_embeds' sequence dimension")
        texts, full_ids, ids_pad, mask, words, token_rows = self._encode(src_ids)
        device = src_embeds.device
        if self.kind == "identity":
            return TargetBatch(src_embeds[:, : ids_pad.shape[1]], mask.to(device), full_ids, texts)
        table = self.target.embedding_table()
        values = table[ids_pad.to(table.device)].detach().to(device=device, dtype=src_embeds.dtype)
        plan = self._plan(len(src_ids), src_embeds.shape[1], ids_pad.shape[1], words, token_rows, device)
        embeds = _BridgeFn.apply(src_embeds, values, lambda g: self._backward(g, plan))
        return TargetBatch(embeds, mask.to(device), full_ids, texts)

    def _plan(
        self, batch: int, src_len: int, tgt_len: int, words: list[list[_Word]], token_rows: list,
        device: torch.device,
    ) -> _Plan:
        def index(rows: list) -> torch.Tensor:
            return torch.tensor(rows, dtype=torch.long, device=device)

        if self.kind == "token":
            tgt = [b * tgt_len + t for b, rows in enumerate(token_rows) for t, _ in rows]
            src = [b * src_len + s for b, rows in enumerate(token_rows) for _, s in rows]
            return _Plan(batch, src_len, tgt_len, {}, [], (index(tgt), index(src)))
        per_bucket: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
        overflow = []
        sink = batch * src_len
        for b, seq_words in enumerate(words):
            for (ts, te), (ss, se), word in seq_words:
                l_j, l_i = te - ts, se - ss
                path = self._word_path(l_i, l_j)
                if path == "empty":
                    continue  # a word one side does not tokenize at all carries no gradient
                tgt_rows = [b * tgt_len + t for t in range(ts, te)]
                src_rows = [b * src_len + s for s in range(ss, se)]
                if path == "fitted":
                    tgt_list, src_list = per_bucket.setdefault(l_j, ([], []))
                    tgt_list.append(tgt_rows)
                    src_list.append(src_rows + [sink] * (self._depths[l_j] - l_i))
                elif self.overflow == "random":
                    digest = hashlib.sha256(f"{self.seed}|{word}|{l_i}|{l_j}".encode()).digest()
                    overflow.append((tgt_rows, src_rows, int.from_bytes(digest[:8], "little") & (2**63 - 1)))
        buckets = {l: (index(t), index(s)) for l, (t, s) in per_bucket.items()}
        return _Plan(batch, src_len, tgt_len, buckets, overflow)

    # -- backward -----------------------------------------------------------------------------
    def _backward(self, grad_tgt: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """grad_tgt (B, S_j, d_j) -> grad_src (B, S_i, d_i). Special/padding rows send nothing."""
        device, dtype = grad_tgt.device, grad_tgt.dtype
        d_i, d_j = self.source.dim, self.target.dim
        assert grad_tgt.shape == (plan.batch, plan.tgt_len, d_j), tuple(grad_tgt.shape)
        maps_t = self.maps_on(device, dtype)
        g_flat = grad_tgt.reshape(plan.batch * plan.tgt_len, d_j)  # (B*S_j, d_j)
        # (B*S_i + 1, d_i): the last row is the sink of map slices past a word's source length
        out = torch.zeros(plan.batch * plan.src_len + 1, d_i, device=device, dtype=dtype)
        if plan.token_pairs is not None:
            tgt, src = plan.token_pairs
            out.index_add_(0, src, g_flat[tgt] @ maps_t[1])
        for l, (tgt_idx, src_idx) in plan.buckets.items():
            n, depth = src_idx.shape
            g_j = g_flat[tgt_idx]  # (n, l, d_j)
            g_j = g_j.permute(0, 2, 1)  # (n, l, d_j) -> (n, d_j, l); tprod zero-pads to D
            g_i = tprod(g_j, maps_t[l])  # (n, d_i, D)
            g_i = g_i.permute(0, 2, 1).reshape(n * depth, d_i)  # (n, D, d_i) -> (n*D, d_i)
            out.index_add_(0, src_idx.reshape(-1), g_i)  # (n*D,) rows, sink included
        for tgt_rows, src_rows, word_seed in plan.overflow:
            out[src_rows] += self._random_jacobian_t(g_flat[tgt_rows], len(src_rows), word_seed)
        return out[:-1].reshape(plan.batch, plan.src_len, d_i)  # sink dropped

    def _random_jacobian_t(self, g_j: torch.Tensor, l_i: int, word_seed: int) -> torch.Tensor:
        """(l_j, d_j) -> (l_i, d_i) through a Gaussian Jacobian seeded by (seed, word, lengths):
        the same word always gets the same matrix, whatever the batch or the device (the paper's
        policy for words past the cap, made reproducible; drawn on the CPU for that reason).

        Drawing is the cost (l_i * l_j * d_j * d_i normals: ~1 s on one CPU thread for a word
        of 9 GPT-2 and 10 CLIP tokens), so a word's blocks are kept, once drawn, in a cache
        bounded by ``overflow_cache_bytes`` (least recently used out first): the same word in
        several beams, and in the next steps, is drawn once. A word larger than a quarter of
        the bound is drawn block by block and not kept (memory stays at one block)."""
        l_j, d_j = g_j.shape
        d_i = self.source.dim
        scale = (l_j * d_j) ** -0.5

        def draws() -> Iterator[torch.Tensor]:  # the word's l_i blocks in order, (l_j*d_j, d_i)
            gen = torch.Generator(device="cpu").manual_seed(word_seed)
            for _ in range(l_i):
                yield (torch.randn(l_j * d_j, d_i, generator=gen) * scale).to(g_j.device, g_j.dtype)

        key = (word_seed, l_i, l_j, g_j.device, g_j.dtype)
        blocks: torch.Tensor | Iterator[torch.Tensor] | None = self._overflow_cache.get(key)
        if blocks is not None:
            self._overflow_cache.move_to_end(key)
        elif 4 * l_i * l_j * d_j * d_i * g_j.element_size() > self.overflow_cache_bytes:
            blocks = draws()  # too large to keep: one block at a time, memory stays at one block
        else:
            blocks = torch.stack(list(draws()))  # (l_i, l_j*d_j, d_i)
            self._overflow_cache[key] = blocks
            self._overflow_bytes += blocks.numel() * blocks.element_size()
            while self._overflow_bytes > self.overflow_cache_bytes:
                _, old = self._overflow_cache.popitem(last=False)
                self._overflow_bytes -= old.numel() * old.element_size()
        if isinstance(blocks, torch.Tensor):
            assert blocks.shape == (l_i, l_j * d_j, d_i), tuple(blocks.shape)
        out = torch.zeros(l_i, d_i, dtype=g_j.dtype, device=g_j.device)
        for t, block in enumerate(blocks):  # kept or drawn, the same product per row
            out[t] = g_j.reshape(-1) @ block
        return out
