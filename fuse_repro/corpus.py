"""Fitting corpora: an ordered list of distinct whitespace-free words.

Order matters for reproducibility: every source returns words in a fixed order (frequency order for
wordfreq, first occurrence for text), and the adapter's seeded sampler permutes from there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fuse_repro.config import CorpusConfig

log = logging.getLogger(__name__)


class CorpusError(ValueError):
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
