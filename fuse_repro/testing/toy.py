"""A toy pair of tokenizers and models whose word embeddings are t-linear in each other.

Every word of the toy vocabulary is split into pieces that belong to that word alone (the target
in chunks of 2 characters, the source in chunks of ``src_chunks`` characters), so the target
table can be *built* from the source table through known maps ``A_l`` (d_i, d_j, D_l): for every
word with l target tokens, ``X_j(word) = (X_i(word) * A_l)[..., :l]``.

Two shapes:

* the default (source chunks of 2-4 characters, ``D_l = l``): a source word never has more
  tokens than its target word, every map has depth l and the identity is exact, so FUSE must
  recover ``A_l`` exactly (``ToyPair.exact``);
* ``real_shapes_pair()`` (source chunks of 1-4 characters, ``D_l = 2 l``): like SmolLM2 ->
  MiniLM, where 21% of the words have more source than target tokens and every map has depth 4,
  source words are often longer than their target words, the planted maps are deeper than the
  word length and the depths differ between buckets, so one batch mixes depths. The truncated
  product is no longer exactly t-linear (the slices past l are dropped), so the fit is checked
  against an independent least-squares reference instead; ``planted_adapter`` gives a
  FittedAdapter holding the planted maps for exact-adjoint tests of the bridge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_repro.adapter import FittedAdapter
from fuse_repro.config import AdapterConfig, CorpusConfig
from fuse_repro.tokenizers import WordTokenizer


def naive_tprod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(m, k, p) * (k, n, q) by the circular-convolution definition, zero-padding to max(p, q)."""
    p = max(a.shape[2], b.shape[2])
    a = torch.nn.functional.pad(a, (0, p - a.shape[2]))
    b = torch.nn.functional.pad(b, (0, p - b.shape[2]))
    out = torch.zeros(a.shape[0], b.shape[1], p, dtype=a.dtype)
    for t in range(p):
        for s in range(p):
            out[:, :, t] = out[:, :, t] + a[:, :, s] @ b[:, :, (t - s) % p]
    return out


class ToyTokenizer(WordTokenizer):
    """Pieces unique per (word, position); the first piece of a word carries its leading space
    (like byte-level BPE's ``Ġ``). ``specials``: ids placed before the pieces (CLS/BOS...)."""

    def __init__(self, name: str, words: list[str], chunk_of, specials: dict[str, int]) -> None:
        self.name = name
        self._specials = dict(specials)
        self._pieces: list[str] = [f"<{k}>" for k in specials]  # ids 0.. are the specials
        self._word_ids: dict[str, list[int]] = {}
        for word in words:
            size = chunk_of(word)
            chunks = [word[i : i + size] for i in range(0, len(word), size)]
            ids = []
            for j, chunk in enumerate(chunks):
                ids.append(len(self._pieces))
                self._pieces.append((" " if j == 0 else "") + chunk)
            self._word_ids[word] = ids

    # -- the minimal surface a WordTokenizer subclass provides ---------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._specials.values())

    @property
    def pad_id(self) -> int:
        return self._specials.get("pad", 0)

    @property
    def max_length(self) -> int | None:
        return None

    def fingerprint(self) -> str:
        return hashlib.sha256(("toy|" + "\x00".join(self._pieces)).encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        out = []
        for word in text.split():
            if word not in self._word_ids:
                raise KeyError(f"toy tokenizer {self.name} does not know {word!r}")
            out.extend(self._word_ids[word])
        return out

    def decode(self, ids) -> str:
        return "".join(self._pieces[int(i)] for i in ids if int(i) not in self.special_ids)

    def with_specials(self, ids: list[int]) -> tuple[list[int], int]:
        head = [self._specials[k] for k in ("cls",) if k in self._specials]
        tail = [self._specials[k] for k in ("sep",) if k in self._specials]
        return head + list(ids) + tail, len(head)

    def word_ids(self, word: str) -> list[int]:
        return self._word_ids[word]


@dataclass
class ToyModel:
    name: str
    tokenizer: ToyTokenizer
    table: torch.Tensor
    kind: str = "encoder"
    _fp: str = field(default="", repr=False)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @property
    def device(self) -> torch.device:
        return self.table.device

    def embedding_table(self) -> torch.Tensor:
        return self.table

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]

    def fingerprint(self) -> str:
        if not self._fp:
            digest = hashlib.sha256(self.table.detach().cpu().numpy().tobytes()).hexdigest()
            self._fp = f"{self.name}:{digest[:16]}"
        return self._fp


def random_words(n: int, seed: int, max_len: int = 8) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out: dict[str, None] = {}
    while len(out) < n:
        length = int(rng.integers(1, max_len + 1))
        out["".join(rng.choice(letters, size=length))] = None
    return list(out)


@dataclass
class ToyPair:
    source: ToyModel
    target: ToyModel
    maps: dict[int, torch.Tensor]  # the planted A_l, (d_i, d_j, D_l) float64
    words: list[str]
    # True when X_j(word) = X_i(word) * A_l holds exactly (no truncated slices): the fit must then
    # recover A_l; False for real shapes (see the module docstring).
    exact: bool = True


def make_toy_pair(
    n_words: int = 1200, d_i: int = 6, d_j: int = 5, seed: int = 0, max_len: int = 8,
    src_chunks: tuple[int, int] = (2, 4), map_depth: Callable[[int], int] | None = None,
) -> ToyPair:
    """Target chunks of 2 chars, source chunks of ``src_chunks`` (min, max) chars per word;
    planted maps ``A_l`` of depth ``map_depth(l)`` (default l); the target table is built so
    ``X_j = (X_i * A_l)[..., :l]`` for every word."""
    words = random_words(n_words, seed, max_len)
    rng = np.random.default_rng(seed + 1)
    lo, hi = src_chunks
    sizes = {w: int(rng.integers(lo, hi + 1)) for w in words}
    src_tok = ToyTokenizer("toy-src", words, lambda w: sizes[w], {"bos": 0})
    tgt_tok = ToyTokenizer("toy-tgt", words, lambda w: 2, {"cls": 0, "sep": 1, "pad": 2})
    gen = torch.Generator().manual_seed(seed)
    v_i = torch.randn(src_tok.vocab_size, d_i, generator=gen, dtype=torch.float64)
    max_l = (max_len + 1) // 2
    depth_of = map_depth or (lambda l: l)
    maps = {l: torch.randn(d_i, d_j, depth_of(l), generator=gen, dtype=torch.float64)
            for l in range(1, max_l + 1)}
    v_j = torch.zeros(tgt_tok.vocab_size, d_j, dtype=torch.float64)
    exact = True
    for word in words:
        s_ids, t_ids = src_tok.word_ids(word), tgt_tok.word_ids(word)
        l = len(t_ids)
        x_i = torch.zeros(1, d_i, len(s_ids), dtype=torch.float64)  # (1, d_i, l_i)
        for s, tok in enumerate(s_ids):
            x_i[0, :, s] = v_i[tok]
        y = naive_tprod(x_i, maps[l])  # (1, d_j, max(l_i, D_l))
        exact = exact and bool(torch.all(y[0, :, l:] == 0))
        for t, tok in enumerate(t_ids):
            v_j[tok] = y[0, :, t]
    source = ToyModel("toy-source", src_tok, v_i)
    target = ToyModel("toy-target", tgt_tok, v_j)
    return ToyPair(source, target, maps, words, exact)


def real_shapes_pair(n_words: int = 1200, d_i: int = 6, d_j: int = 5, seed: int = 0,
                     max_len: int = 8) -> ToyPair:
    """Source words often longer than their target words, maps of depth 2 l (module doc)."""
    return make_toy_pair(n_words, d_i, d_j, seed, max_len, src_chunks=(1, 4),
                         map_depth=lambda l: 2 * l)


def planted_adapter(pair: ToyPair) -> FittedAdapter:
    """A fuse FittedAdapter holding the pair's planted maps (float32, as fitted maps are)."""
    maps = {l: m.to(torch.float32) for l, m in pair.maps.items()}
    depths = {str(l): int(m.shape[-1]) for l, m in maps.items()}
    return FittedAdapter(kind="fuse", key=f"planted-{pair.source.name}-{pair.target.name}",
                         maps=maps, meta={"kind": "fuse", "depths": depths})


def toy_adapter_config(folder: Path, words: list[str], **overrides: Any) -> AdapterConfig:
    """An AdapterConfig fitting on ``words`` (written to ``folder/corpus.txt``): every word of
    every length (N large), no held-out words, float64; ``overrides`` replace any field."""
    path = Path(folder) / "corpus.txt"
    path.write_text(" ".join(words) + "\n", encoding="utf-8")
    base: dict[str, Any] = dict(max_tokens=4, words_per_bucket=100000, heldout_words=0,
                                fit_dtype="float64", corpus=CorpusConfig(kind="text_file", path=str(path)))
    base.update(overrides)
    return AdapterConfig(**base)
