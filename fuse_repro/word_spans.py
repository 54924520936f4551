"""Words and the tokens that spell them: the abstraction every tokenizer of FUSE provides.

FUSE (Williams & Kolter, arXiv 2408.04816, section 3.3) maps embeddings word by word between
models with different tokenizers. A *word* is a whitespace-separated piece of text, exactly
``text.split()`` (punctuation stays with its word). Every tokenizer used here respects
whitespace, so a word's tokens form one contiguous span; ``WordTokenizer`` finds those spans.
Concrete tokenizers live in ``fuse_repro.tokenizers`` (which re-exports the names here).

Shape glossary:
    W   number of whitespace words of a text
    T   number of token ids of a text (content only, no specials)
    A ``Span`` is a token range ``[start, end)`` into the T ids; one per word, W in all.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from typing import Any

from fuse_repro.config.hashing import sha256_json  # noqa: F401 - tokenizers, text_model, weights
from fuse_repro.errors import FuseError

Span = tuple[int, int]


class WordSpanError(FuseError, ValueError):
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


def word_of_char(text: str, ranges: list[Span]) -> list[int]:
    """Per character: the index of its word, or -1 for whitespace."""
    owner = [-1] * len(text)
    for w, (a, b) in enumerate(ranges):
        for c in range(a, b):
            owner[c] = w
    return owner


def token_word(
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


def spans_from_token_words(token_words: list[int | None], n_words: int, where: str) -> list[Span]:
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


# ----------------------------------------------------------------------------------------------
# The tokenizer interface
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

    def separable(self, text: str) -> bool:
        """True when ``encode(text)`` is guaranteed to equal the concatenation of ``encode(w)``
        over the words ``w`` of ``text.split()``, so a text can be retokenized word by word
        (``Bridge.extension_ids``). Default False: no such guarantee is known."""
        return False

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
        owner = word_of_char(text, ranges)
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
            token_words.append(token_word(chars, owner, f"{self.name}: token {t} ({ids[t]})"))
        return spans_from_token_words(token_words, len(ranges), f"{self.name}: {text!r}")
