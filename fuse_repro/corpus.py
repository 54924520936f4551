"""Fitting corpora: an ordered list of distinct whitespace-free words, and their tokenization.

Order matters for reproducibility: every source returns words in a fixed order (frequency order for
wordfreq, first occurrence for text), and the adapter's seeded sampler permutes from there.

What a corpus contributes to the adapter's cache key (``corpus_identity``): the sha256 of the
words actually used and the version of the package that supplied them (wordfreq, datasets), so
a changed word list or a package upgrade refits instead of reusing a stale adapter.

The mid-sentence tokenization of a corpus (``tokenize_words``) is cached per tokenizer, keyed by
the tokenizer's fingerprint (its vocabulary and rules) and the words' hash: a second fit that
shares a tokenizer and a corpus (another target model, another N or L) skips it.

``make_buckets`` splits the tokenized words by target token count (the adapter's buckets) and
draws each bucket's seeded fit and held-out samples.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fuse_repro.config import CorpusConfig, stable_hash
from fuse_repro.errors import FuseError, one_line
from fuse_repro.records import atomic_dir

log = logging.getLogger(__name__)


class CorpusError(FuseError, ValueError):
    """A corpus that cannot be read or holds no usable word."""


def distinct_words(texts: list[str] | tuple[str, ...], max_words: int | None = None) -> list[str]:
    """Distinct whitespace words of ``texts`` in first-occurrence order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in text.split():
            if word not in seen:
                seen[word] = None
                if max_words is not None and len(seen) >= max_words:
                    return list(seen)
    return list(seen)


def load_corpus_words(cfg: CorpusConfig) -> list[str]:
    """The corpus's distinct words in a deterministic order; ``CorpusError`` if it has none."""
    if cfg.kind == "wordfreq":
        import wordfreq

        try:
            words = wordfreq.top_n_list(cfg.lang, 10**7, wordlist="large")
        except (LookupError, ValueError) as err:
            raise CorpusError(f"wordfreq has no word list for lang={cfg.lang!r}: {err}") from err
        # wordfreq entries never contain whitespace, but keep the invariant explicit.
        words = distinct_words(words, cfg.max_words)
    elif cfg.kind == "text_file":
        if not cfg.path:
            raise CorpusError("adapter.corpus.kind=text_file needs adapter.corpus.path")
        from fuse_repro.records import read_user_text

        text = read_user_text(cfg.path, "corpus file", _TEXT_FILE_FIX, CorpusError)
        words = distinct_words(text.splitlines(), cfg.max_words)
    elif cfg.kind == "wikitext":
        datasets = _datasets_module()
        try:
            data = datasets.load_dataset("Salesforce/wikitext", cfg.name, split="train")
        except Exception as err:  # noqa: BLE001 - any hub/network failure gets the same advice
            raise CorpusError(
                f"could not load WikiText ({cfg.name}) through `datasets`: {one_line(err)}; "
                f"{WIKITEXT_REMEDY}"
            ) from err
        # Lower-cased, as the authors' code reads it (README "Conventions"); CLIP lower-cases
        # anyway, GPT-2 does not, so this picks which GPT-2 tokens the fit sees.
        words = distinct_words([text.lower() for text in data["text"]], cfg.max_words)
    else:
        raise CorpusError(f"unknown adapter.corpus.kind={cfg.kind!r} (wordfreq, text_file, wikitext)")
    if not words:
        raise CorpusError(f"corpus {cfg.kind} ({cfg.path or cfg.lang}) holds no words")
    log.info("corpus %s: %d distinct words", cfg.kind, len(words))
    return words


WIKITEXT_REMEDY = (
    "WikiText-103 (the paper's fitting corpus) needs the `datasets` package (pip install "
    "'fuse-repro[wikitext]') and the Hugging Face hub once (or HF_DATASETS_OFFLINE=1 with it "
    "cached); without them set adapter.corpus.kind=wordfreq (README: fitting corpus)"
)


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise CorpusError(
            f"adapter.corpus.kind=wikitext: no `datasets` package. {WIKITEXT_REMEDY}") from err
    return datasets


def check_corpus(cfg: CorpusConfig, *, random_weights: bool = False) -> None:
    """Config-time check, before any model loads: a wikitext corpus needs the `datasets` package
    unless the run has random weights (then ``fitting_corpus`` may stand wordfreq in)."""
    if cfg.kind == "wikitext" and not random_weights:
        _datasets_module()
    if cfg.kind == "text_file" and cfg.path:
        _check_text_file(cfg.path)


_TEXT_FILE_FIX = "set adapter.corpus.path to a UTF-8 text file of words (or adapter.corpus.kind=wordfreq)"


def _check_text_file(path: str | Path, probe: int = 1 << 20) -> None:
    """The corpus file exists, is a file and its first ``probe`` bytes are UTF-8 text (the
    whole file is decoded when the fit reads it): one CorpusError line otherwise."""
    import codecs

    from fuse_repro.records import read_user_text

    p = Path(path)
    if not p.is_file():
        read_user_text(p, "corpus file", _TEXT_FILE_FIX, CorpusError)  # raises: missing, folder
    try:
        with p.open("rb") as fh:
            head = fh.read(probe)
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < probe)
    except UnicodeDecodeError:
        read_user_text(p, "corpus file", _TEXT_FILE_FIX, CorpusError)  # the one-line error
    except OSError as err:
        raise CorpusError(f"cannot read corpus file {str(p)!r}: {err.strerror or err}; "
                          f"{_TEXT_FILE_FIX}") from None


def fitting_corpus(
    cfg: CorpusConfig, *, random_weights: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """The words an adapter fit reads, and their ``corpus_identity`` (part of the cache key).

    One stand-in, never silent: when the corpus is WikiText, it cannot be had (no `datasets`, no
    hub) and ``random_weights`` (both models of the fit have random weights, ``weights=random``),
    the fit reads the wordfreq list instead, logs a warning naming why, and records
    ``stand_in_for: wikitext`` in the identity (so the cache key and the adapter's meta.json say
    so). With random embedding tables the maps carry no knowledge anyway; the corpus then only
    sets the bucket sizes, and wordfreq fills every bucket the paper's shapes need. A pretrained
    run never substitutes: it fails with the ``CorpusError`` and its remedy.
    """
    try:
        words = load_corpus_words(cfg)
    except CorpusError as err:
        if not (random_weights and cfg.kind == "wikitext"):
            raise
        stand_in = CorpusConfig(kind="wordfreq", lang="en", max_words=cfg.max_words)
        reason = str(err).split(". ")[0]  # the cause, without the remedy
        log.warning("weights=random: the fitting corpus WikiText cannot be had (%s); fitting on "
                    "the wordfreq list instead (recorded as stand_in_for=wikitext in the adapter "
                    "key)", reason)
        words = load_corpus_words(stand_in)
        return words, {**corpus_identity(stand_in, words), "stand_in_for": "wikitext"}
    return words, corpus_identity(cfg, words)


# ----------------------------------------------------------------------------------------------
# Identity of a corpus (for cache keys)
# ----------------------------------------------------------------------------------------------
# Which installed package supplies each corpus kind's words (its version is part of the key).
CORPUS_PACKAGES = {"wordfreq": "wordfreq", "wikitext": "datasets", "text_file": None}


def package_version(name: str | None) -> str | None:
    """Installed version of a distribution, "not installed" when absent, None for no package."""
    if name is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def words_digest(words: list[str]) -> str:
    """sha256 of the word list, in order (the order feeds the seeded sampler)."""
    digest = hashlib.sha256()
    for word in words:
        digest.update(word.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def corpus_identity(cfg: CorpusConfig, words: list[str]) -> dict[str, Any]:
    """What the corpus contributes to a cache key beyond its config: the words' hash and count,
    and the supplying package's name and version."""
    package = CORPUS_PACKAGES.get(cfg.kind)
    return {
        "words_sha256": words_digest(words),
        "words": len(words),
        "package": package,
        "package_version": package_version(package),
    }


# ----------------------------------------------------------------------------------------------
# Tokenization, cached per tokenizer
# ----------------------------------------------------------------------------------------------
TOKENIZED_FORMAT = 1


@dataclass(frozen=True)
class TokenizedWords:
    """The token ids of W words, packed: word k is ``flat[starts[k] : starts[k] + lengths[k]]``."""

    lengths: np.ndarray  # (W,) int64
    flat: np.ndarray  # (sum(lengths),) int64

    @staticmethod
    def from_lists(ids: list[list[int]]) -> TokenizedWords:
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        return TokenizedWords(lengths, flat)

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths  # (W,)

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, index: Any) -> list[list[int]]:
        """The id lists of the words at ``index`` (a sequence of word positions)."""
        index = np.asarray(index, dtype=np.int64)
        starts, lengths = self.starts[index], self.lengths[index]
        flat = self._flat_list
        return [flat[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist())]

    @functools.cached_property
    def _flat_list(self) -> list[int]:
        return self.flat.tolist()

    def lists(self) -> list[list[int]]:
        return self.select(np.arange(len(self)))

    def any_of(self, ids: frozenset[int] | set[int]) -> np.ndarray:
        """(W,) bool: the words holding at least one of ``ids``."""
        hit = np.isin(self.flat, np.fromiter(ids, dtype=np.int64, count=len(ids)))
        owner = np.repeat(np.arange(len(self)), self.lengths)  # word of each token
        return np.bincount(owner[hit], minlength=len(self)) > 0


def tokenize_words(
    words: list[str], tokenizer: Any, cache_root: Path | None = None, *, digest: str | None = None,
    chunk: int = 8192,
) -> TokenizedWords:
    """``tokenizer.mid_sentence_ids(words)`` (each word as it appears inside a sentence), read
    from ``cache_root/tokenized/<key>`` when a previous fit stored it. ``digest``: the words'
    ``words_digest`` when the caller has it already. ``cache_root=None``: no cache."""
    folder = None
    if cache_root is not None:
        key = stable_hash({
            "format": TOKENIZED_FORMAT,
            "form": "mid_sentence_ids",
            "tokenizer": tokenizer.fingerprint(),
            "words": digest or words_digest(words),
        })
        folder = Path(cache_root) / "tokenized" / key
        cached = _read_tokenized(folder, len(words))
        if cached is not None:
            log.info("tokenized corpus cache hit (%s): %s", getattr(tokenizer, "name", "?"), folder)
            return cached
    ids: list[list[int]] = []
    name = getattr(tokenizer, "name", "tokenizer")
    for start in tqdm(range(0, len(words), chunk), desc=f"tokenize corpus ({name})", unit="chunk",
                      leave=False):
        ids.extend(tokenizer.mid_sentence_ids(words[start : start + chunk]))
    packed = TokenizedWords.from_lists(ids)
    if folder is not None:
        atomic_dir(folder, lambda tmp: np.savez(tmp / "ids.npz", lengths=packed.lengths, flat=packed.flat),
                   replace=True)
    return packed


def _read_tokenized(folder: Path, n_words: int) -> TokenizedWords | None:
    """The cached ids, or None when absent or damaged (then they are recomputed and rewritten)."""
    path = folder / "ids.npz"
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            packed = TokenizedWords(data["lengths"].astype(np.int64), data["flat"].astype(np.int64))
        if len(packed) != n_words or int(packed.lengths.sum()) != len(packed.flat):
            raise ValueError(f"{len(packed)} words / {len(packed.flat)} ids, expected {n_words} words")
    except Exception as err:  # noqa: BLE001 - any damage means "tokenize again", loudly
        log.warning("tokenized corpus cache %s is unreadable (%s); tokenizing again", folder, err)
        return None
    return packed


# ----------------------------------------------------------------------------------------------
# Phase timing (FittedAdapter.timings)
# ----------------------------------------------------------------------------------------------
@contextmanager
def timed(timings: dict[str, float] | None, phase: str) -> Iterator[None]:
    """Add the wall seconds of the block to ``timings[phase]`` (nothing when timings is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Bucketing: which words fit which map
# ----------------------------------------------------------------------------------------------
@dataclass
class Bucket:
    length: int  # l, the target token count
    fit_src: list[list[int]]  # source ids of each fit word
    fit_tgt: list[list[int]]
    held_src: list[list[int]]
    held_tgt: list[list[int]]
    fit_words: list[str]
    depth: int  # D
    candidates: int = 0  # corpus words of this length (before sampling)


def make_buckets(
    words: list[str],
    source_tok: Any,
    target_tok: Any,
    max_tokens: int,
    words_per_bucket: int,
    heldout_words: int,
    seed: int,
    *,
    cache_root: Path | None = None,
    digest: str | None = None,
    timings: dict[str, float] | None = None,
) -> dict[int, Bucket]:
    """Split ``words`` by target token count (1..L) and draw the seeded fit / held-out samples.

    Words are tokenized in their mid-sentence form; a word qualifies for bucket ``l`` when its
    target tokenization has exactly ``l`` tokens and its source tokenization 1..L tokens, none of
    them special (unknown-token words would only teach the map noise). ``cache_root``: where the
    tokenized corpus is cached per tokenizer (``corpus.tokenize_words``); ``digest`` the words'
    hash when known.
    """
    with timed(timings, "tokenize source"):
        src = tokenize_words(words, source_tok, cache_root, digest=digest)
    with timed(timings, "tokenize target"):
        tgt = tokenize_words(words, target_tok, cache_root, digest=digest)
    usable = (tgt.lengths >= 1) & (tgt.lengths <= max_tokens) & (src.lengths >= 1) & (src.lengths <= max_tokens)
    usable &= ~tgt.any_of(target_tok.special_ids) & ~src.any_of(source_tok.special_ids)  # (W,)
    buckets: dict[int, Bucket] = {}
    for l in range(1, max_tokens + 1):
        candidates = np.flatnonzero(usable & (tgt.lengths == l))  # corpus order
        # One generator per bucket, seeded by (seed, l): a bucket's sample does not depend on
        # how many words the other buckets drew.
        rng = np.random.default_rng([seed, l])
        order = rng.permutation(len(candidates))
        # Held-out words are drawn first, so a bucket with fewer candidates than N + held-out
        # still reports a held-out residual (a tenth of its words at most).
        n_held = heldout_words
        if len(candidates) < words_per_bucket + heldout_words:
            n_held = min(heldout_words, len(candidates) // 10)
        held_idx = candidates[order[:n_held]]
        fit_idx = candidates[order[n_held : n_held + words_per_bucket]]
        depth = max(l, int(src.lengths[fit_idx].max())) if len(fit_idx) else l
        # Held-out words whose source form is deeper than the fitted map cannot be evaluated.
        held_idx = held_idx[src.lengths[held_idx] <= depth]
        buckets[l] = Bucket(
            length=l,
            fit_src=src.select(fit_idx),
            fit_tgt=tgt.select(fit_idx),
            held_src=src.select(held_idx),
            held_tgt=tgt.select(held_idx),
            fit_words=[words[k] for k in fit_idx.tolist()],
            depth=depth,
            candidates=len(candidates),
        )
    return buckets
