"""Schemas of the method's groups: ``paths``, ``adapter``, ``objective``, ``search``, ``dataset``.

The others: ``model.py`` (models), ``reporting.py`` (scoring, table, merge, logger),
``fidelity.py``, ``root.py`` (the root config).

How defaults are single-sourced: **the dataclass holds every default, the yaml only what differs.**
A group's default option (``conf/search/fuse.yaml``, ``conf/adapter/default.yaml``, ...) states no
key whose value equals the default here; other options (``conf/search/paper.yaml``) state only the
keys they change. So ``SearchConfig()`` in Python is exactly what ``python run.py`` uses. The two
exceptions, checked by tests/test_config.py:

- fields with no sensible default are ``MISSING`` here and set by every yaml option (a dataset's
  ``name``/``format``, the ``paths``, a term's ``weight``);
- interpolations (``${seed}``, ``${paths.cache_dir}/spice``, ``${experiment_name}``) are wiring,
  not defaults: they live in yaml, since a Python caller has no root config to resolve them.

Validation lives in ``__post_init__``: it runs once, when the entry point validates the whole
config (``fuse_repro.config.validate``) or when Python code builds the dataclass, and raises
``ConfigError`` naming the key, the bad value and the fix. Names that belong to a registry in a
torch module (search methods, objectives) are checked by that library's own check, which the
stage's ``check`` calls before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from fuse_repro.config.model import ModelConfig
from fuse_repro.errors import ConfigError, use_one_of
from fuse_repro.sentiment import SENTIMENTS


def check_choice(name: str, value: Any, allowed: tuple[str, ...] | list[str],
                 in_list: bool = False) -> None:
    """``ConfigError`` unless ``value`` is one of ``allowed``: the line lists them and says
    which to use (``in_list``: ``value`` is an entry of the list ``name``)."""
    if value not in allowed:
        shown = f"{name} entry" if in_list else name
        raise ConfigError(f"{shown}={value!r} is not one of {sorted(allowed)}; "
                          f"{use_one_of(name, allowed, value, in_list)}")


def check_min(name: str, value: Any, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


# ---------------------------------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    """Where things live (values in conf/paths/default.yaml: every one is an interpolation)."""

    root_dir: str = MISSING
    data_dir: str = MISSING
    cache_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


# -------------------------------------------------------------------------------------- adapter
CORPUS_KINDS = ("wordfreq", "text_file", "wikitext")
# What a target word longer than the adapter's cap becomes (fuse_repro.bridge.Bridge applies it).
OVERFLOW_POLICIES = ("random", "zero")
FIT_DTYPES = ("float32", "float64")


@dataclass
class CorpusConfig:
    # wordfreq: the offline English word list shipped with the `wordfreq` package (our default);
    # text_file: whitespace words of a UTF-8 text file; wikitext: WikiText-103 train via
    # `datasets` (the paper's corpus; needs the hub).
    kind: str = "wordfreq"
    lang: str = "en"
    path: str | None = None
    # For wikitext: which configuration of the Salesforce/wikitext dataset.
    name: str = "wikitext-103-raw-v1"
    # Keep at most this many distinct corpus words (in corpus order) before sampling; null = all.
    max_words: int | None = None

    def __post_init__(self) -> None:
        check_choice("adapter.corpus.kind", self.kind, CORPUS_KINDS)
        if self.max_words is not None:
            check_min("adapter.corpus.max_words", self.max_words, 1)


@dataclass
class AdapterConfig:
    """FUSE adapter fitting (paper section 3.3, appendix B). Every field and both models are part
    of the adapter's cache key."""

    # L: words of 1..L target tokens get a fitted map (paper: 4).
    max_tokens: int = 4
    # N: fitting words per target length (paper: 16384).
    words_per_bucket: int = 16384
    # Extra words per bucket kept out of the fit to measure generalization in the fit report.
    heldout_words: int = 512
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # Wired to the root seed in conf/adapter/default.yaml.
    seed: int = 0
    # Relative singular-value cutoff of the t-pseudoinverse; null = max(w, d) * eps of fit_dtype.
    rcond: float | None = None
    # Words past the cap (more than L target tokens, or more source tokens than the map's depth):
    # "random" (the paper: a seeded random Jacobian per word) or "zero" (no gradient).
    overflow: str = "random"
    # Precision of the fit; the stored maps are float32.
    fit_dtype: str = "float64"
    # A bucket with 1..min_bucket_words-1 fitting words is refused (an error naming the length
    # and the count): fewer than 10 words leave no held-out word and a map that memorizes them.
    # 0 accepts any count. Empty buckets are allowed (no map: the overflow policy, with a warning).
    min_bucket_words: int = 10

    def __post_init__(self) -> None:
        check_min("adapter.max_tokens (L)", self.max_tokens, 1)
        check_min("adapter.min_bucket_words", self.min_bucket_words, 0)
        check_min("adapter.words_per_bucket (N)", self.words_per_bucket, 1)
        check_min("adapter.heldout_words", self.heldout_words, 0)
        if self.rcond is not None and not 0.0 <= self.rcond < 1.0:
            raise ConfigError(f"adapter.rcond must be null or in [0, 1), got {self.rcond}")
        check_choice("adapter.overflow", self.overflow, OVERFLOW_POLICIES)
        check_choice("adapter.fit_dtype", self.fit_dtype, FIT_DTYPES)


# ------------------------------------------------------------------------------------ objective
@dataclass
class TermConfig:
    """One secondary term of the objective: ``weight * loss_kind(model(bridge(caption)))``."""

    # A key of fuse_repro.objectives.OBJECTIVES: text_similarity | clip | sentiment.
    kind: str = MISSING
    weight: float = MISSING
    model: ModelConfig = MISSING
    # kind=sentiment only: the wanted label when an item has none of its own.
    sentiment: str | None = None

    def __post_init__(self) -> None:
        if self.sentiment is not None and self.kind != "sentiment":
            raise ConfigError(
                f"objective term of kind {self.kind!r} has a 'sentiment' key; only kind=sentiment "
                "reads it (remove it)"
            )


@dataclass
class ObjectiveConfig:
    """``lm_weight * NLL + sum_t terms[t].weight * loss_t`` (paper eq. 6)."""

    lm_weight: float = MISSING
    terms: dict[str, TermConfig] = field(default_factory=dict)

    # Keys a search's loss record and history already use beside each term's name (the LM's
    # term, the optimized and the full totals, the step: search/step.py): a term so named
    # would overwrite one (a term named lm, the LM's weight in the objectives' check).
    RESERVED_TERM_NAMES: ClassVar[tuple[str, ...]] = ("lm", "objective", "step", "total")

    def __post_init__(self) -> None:
        for name in self.terms:
            if name in self.RESERVED_TERM_NAMES:
                raise ConfigError(
                    f"objective.terms.{name}: a term may not be named {name!r}, a name the "
                    f"losses already use ({', '.join(self.RESERVED_TERM_NAMES)}; the LM's weight "
                    f"is objective.lm_weight); give the term another name, e.g. "
                    f"objective.terms.{name}_term")
        weights = {"lm_weight": self.lm_weight}
        weights.update({f"terms.{name}.weight": t.weight for name, t in self.terms.items()})
        for name, w in weights.items():
            if not math.isfinite(w) or w < 0:
                raise ConfigError(f"objective.{name}={w!r} must be a finite number >= 0")
        if sum(weights.values()) <= 0:
            raise ConfigError(f"all objective weights are zero ({weights}): nothing to optimize")


# --------------------------------------------------------------------------------------- search
@dataclass
class SearchConfig:
    """Token-by-token beam search. These defaults are the offline run's, sized for a 2-core CPU;
    conf/search/paper.yaml holds the paper's (top_k 512, beam 5, 16 steps, logit_weight 1)."""

    # A key of fuse_repro.search.methods.SEARCH_METHODS: fuse (gradient through every
    # objective), lm_only (secondary weights 0), random_proposal (candidates drawn at random from
    # the LM's top tokens, same evaluation budget).
    method: str = "fuse"
    prefix: str = "An image of"
    steps: int = 6
    top_k: int = 32
    beam_width: int = 3
    # w in score = -grad + w * log p_LM(token | text so far). 0.1 lets the FUSE gradient (std
    # ~0.1 at weight 10 for MiniLM similarity) compete with log p (std ~4) in the offline run.
    logit_weight: float = 0.1
    # random_proposal draws top_k candidates from the LM's top (pool_factor * top_k) tokens.
    pool_factor: int = 4
    # Stop early when the best beam ends a sentence ("." "!" "?") after at least min_steps.
    stop_at_sentence_end: bool = False
    min_steps: int = 4
    # (beam, candidate) pairs per forward pass of each secondary model.
    eval_chunk: int = 256
    # Causal secondaries (CLIP's text tower): run each beam's tokens once and each candidate
    # only its new tokens (exact; false runs every candidate whole, for comparison). Ignored
    # by bidirectional models (MiniLM, RoBERTa), which always run whole.
    prefix_cache: bool = True
    # Items searched together, their steps in lockstep and their candidates in shared batches
    # (amortizes per-step overhead on a GPU); every item's caption is the one it gets alone.
    items_per_step: int = 1
    # Precision of candidate evaluation: float32 | tf32 | bfloat16 (the last two on CUDA only;
    # README "What the paper's tables cost" says when they are safe).
    eval_dtype: str = "float32"
    # Drop candidate tokens that are special, decode to nothing printable, hold a newline or a
    # broken UTF-8 fragment: they cannot be part of a caption.
    printable_only: bool = True
    # Conventions where the paper, the authors' code and ours differ (README table; the
    # paper_* experiments select the authors' choices through conf/search/paper.yaml).
    # LM term: mean NLL over the generated tokens (ours) | over prefix + generated (authors).
    lm_term: str = "generated"
    # Returned caption: the best beam after the last step (ours) | the lowest total seen at
    # any step (authors).
    returned: str = "final_beam"
    # The slot appended before taking the gradient: the LM's most likely allowed token (ours)
    # | token id 0 (authors).
    slot_init: str = "lm_argmax"

    def __post_init__(self) -> None:
        # method, lm_term, returned and slot_init are names of the search registries; the
        # search library checks them (fuse_repro.captioner.check_search) before a model loads.
        for key in ("steps", "top_k", "beam_width", "eval_chunk", "pool_factor", "items_per_step"):
            check_min(f"search.{key}", getattr(self, key), 1)
        check_min("search.min_steps", self.min_steps, 0)
        if not math.isfinite(self.logit_weight):
            raise ConfigError(f"search.logit_weight must be finite, got {self.logit_weight}")


# -------------------------------------------------------------------------------------- dataset
SUBSET_MODES = ("all", "first", "sample", "shard")
DATASET_FORMATS = ("coco_captions", "embedded_refs", "image_folder", "karpathy", "nocaps",
                   "nocaps_corpus", "senticap", "synthetic_images", "text_targets")
# Formats read from an annotations file (the others: image_folder, synthetic_images).
ANNOTATED_FORMATS = ("coco_captions", "embedded_refs", "karpathy", "nocaps", "nocaps_corpus",
                     "senticap", "text_targets")


@dataclass
class SubsetConfig:
    """Which items a run works on (fuse_repro.data.select_subset)."""

    # all | first (the first n) | sample (n drawn with seed) | shard (block index of count)
    mode: str = "all"
    n: int | None = None
    # Wired to the root seed in conf/config.yaml.
    seed: int | None = None
    index: int | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        check_choice("dataset.subset.mode", self.mode, SUBSET_MODES)
        if self.mode in ("first", "sample") and (self.n is None or self.n < 1):
            raise ConfigError(f"dataset.subset.mode={self.mode} needs subset.n >= 1, got n={self.n!r}")
        if self.mode == "sample" and self.seed is None:
            raise ConfigError("dataset.subset.mode=sample needs subset.seed (an int), got null")
        if self.mode == "shard":
            if self.count is None or self.count < 1:
                raise ConfigError(
                    f"dataset.subset.mode=shard needs subset.count >= 1, got count={self.count!r}")
            if self.index is None or not 0 <= self.index < self.count:
                raise ConfigError(f"dataset.subset.mode=shard needs 0 <= subset.index < "
                                  f"count={self.count}, got index={self.index!r}")


@dataclass
class SyntheticImagesConfig:
    """``format: synthetic_images``: seeded generated pictures (coloured shapes on a background)."""

    # How many images (before the subset); the subset's n then picks among them.
    num_images: int = 8
    # Side of the square images in pixels (CLIP resizes to its own input size).
    size: int = 224
    # Shapes per image.
    shapes: int = 3
    # Wired to the root seed in conf/dataset/synthetic_images.yaml.
    seed: int = 0

    def __post_init__(self) -> None:
        check_min("dataset.synthetic.num_images", self.num_images, 1)
        check_min("dataset.synthetic.size", self.size, 8)
        check_min("dataset.synthetic.shapes", self.shapes, 1)


@dataclass
class DatasetConfig:
    """An evaluation dataset: which reader (``format``), its files, and the subset."""

    # Label in metrics.json and the tables' column mapping (table.datasets).
    name: str = MISSING
    format: str = MISSING
    annotations: str | None = None
    image_dir: str | None = None
    split: str = "test"
    # senticap (and SentiCap cocofmt files): the wanted sentiment of the references.
    sentiment: str | None = None
    # Captioning needs the images; scoring only the references. True: fail early when missing.
    require_images: bool = False
    # Each item's first reference becomes its text target (offline stand-in for an image).
    target_from_references: bool = False
    # Read by format synthetic_images only (always present, so an override never meets null);
    # another format refuses any value but the defaults (seed included: not wired there).
    synthetic: SyntheticImagesConfig = field(default_factory=SyntheticImagesConfig)
    subset: SubsetConfig = field(default_factory=SubsetConfig)

    def __post_init__(self) -> None:
        check_choice("dataset.format", self.format, DATASET_FORMATS)
        if self.format in ANNOTATED_FORMATS and not self.annotations:
            raise ConfigError(f"dataset format {self.format!r} needs dataset.annotations "
                              f"(got {self.annotations!r})")
        if self.format == "image_folder" and not self.image_dir:
            raise ConfigError("dataset format 'image_folder' needs dataset.image_dir")
        if self.sentiment is not None:
            check_choice("dataset.sentiment", self.sentiment, SENTIMENTS)
        default = SyntheticImagesConfig()
        unread = [f"dataset.synthetic.{f.name}={getattr(self.synthetic, f.name)}"
                  for f in dataclasses.fields(default)
                  if getattr(self.synthetic, f.name) != getattr(default, f.name)]
        if self.format != "synthetic_images" and unread:
            raise ConfigError(f"{', '.join(unread)}: dataset.synthetic is read by format "
                              f"synthetic_images only, not {self.format!r} "
                              f"(dataset={self.name}); remove the override, or use "
                              f"dataset=synthetic_images")
        if self.format == "senticap" and self.sentiment is None:
            raise ConfigError("dataset format 'senticap' needs dataset.sentiment: positive or negative")
