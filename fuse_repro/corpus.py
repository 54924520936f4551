"""Fitting corpora: an ordered list of distinct whitespace-free words, and their tokenization.

Order matters for reproducibility: every source returns words in a fixed order (frequency order for
wordfreq, first occurrence for text), and the adapter's seeded sampler permutes from there.

What a corpus contributes to the adapter's cache key (``corpus_identity``): the sha256 of the
words actually used and the version of the package that supplied them (wordfreq, datasets), so
a changed word list or a package upgrade refits instead of reusing a stale adapter.

The mid-sentence tokenization of a corpus (``tokenize_words``) is cached per tokenizer, keyed by
the tokenizer's fingerprint (its vocabulary and rules) and the words' hash: a second fit that
shares a tokenizer and a corpus (another target model, another N or L) skips it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fuse_repro.config import CorpusConfig, stable_hash
from fuse_repro.errors import FuseError
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
        path = Path(cfg.path)
        if not path.is_file():
            raise CorpusError(f"corpus file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise CorpusError(f"corpus file {path} is not UTF-8 text: {err}") from err
        words = distinct_words(text.splitlines(), cfg.max_words)
    elif cfg.kind == "wikitext":
        try:
            import datasets
        except ImportError as err:
            raise CorpusError(
                "adapter.corpus.kind=wikitext needs the `datasets` package "
                "(pip install 'fuse-repro[wikitext]') and access to the Hugging Face hub"
            ) from err
        try:
            data = datasets.load_dataset("Salesforce/wikitext", cfg.name, split="train")
        except Exception as err:  # noqa: BLE001 - any hub/network failure gets the same advice
            raise CorpusError(
                f"could not load WikiText ({cfg.name}) from the hub: {err}. Use "
                "adapter.corpus.kind=wordfreq offline, or a local text file with kind=text_file."
            ) from err
        words = distinct_words(data["text"], cfg.max_words)
    else:
        raise CorpusError(f"unknown adapter.corpus.kind={cfg.kind!r} (wordfreq, text_file, wikitext)")
    if not words:
        raise CorpusError(f"corpus {cfg.kind} ({cfg.path or cfg.lang}) holds no words")
    log.info("corpus %s: %d distinct words", cfg.kind, len(words))
    return words


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


def tokenize_words(
    words: list[str], tokenizer: Any, cache_root: Path | None = None, *, digest: str | None = None,
    chunk: int = 8192,
) -> list[list[int]]:
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
    if folder is not None:
        lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        atomic_dir(folder, lambda tmp: np.savez(tmp / "ids.npz", lengths=lengths, flat=flat),
                   replace=True)
    return ids


def _read_tokenized(folder: Path, n_words: int) -> list[list[int]] | None:
    """The cached ids, or None when absent or damaged (then they are recomputed and rewritten)."""
    path = folder / "ids.npz"
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            lengths, flat = data["lengths"], data["flat"]
        if len(lengths) != n_words or int(lengths.sum()) != len(flat):
            raise ValueError(f"{len(lengths)} words / {len(flat)} ids, expected {n_words} words")
    except Exception as err:  # noqa: BLE001 - any damage means "tokenize again", loudly
        log.warning("tokenized corpus cache %s is unreadable (%s); tokenizing again", folder, err)
        return None
    ends = np.cumsum(lengths).tolist()
    flat_list = flat.tolist()
    return [flat_list[e - n : e] for e, n in zip(ends, lengths.tolist())]
