"""Schemas of the groups that report results: ``scoring``, ``table``, ``merge``, ``logger``.

Defaults live here and validation in ``__post_init__``, as in ``schemas.py`` (its docstring says
how defaults are single-sourced).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from fuse_repro.coco_metrics import METRICS, canonical_metric
from fuse_repro.config.schemas import check_choice, check_min
from fuse_repro.errors import ConfigError, closest
from fuse_repro.sentiment import SENTIMENT_RULES
from fuse_repro.table_render import DEFAULT_DATASETS, FORMATS

# The metric names and the sentiment rules belong to their registries (coco_metrics, sentiment;
# both torch-free); the schema checks against those lists.


@dataclass
class MeteorConfig:
    java_heap: str = "2G"


@dataclass
class SpiceConfig:
    java_heap: str = "8G"
    # Wired to ${paths.cache_dir}/spice in conf/scoring/default.yaml.
    cache_dir: str | None = None
    timeout_s: float = 3600.0


@dataclass
class SentimentScoringConfig:
    """Sentiment accuracy (items with a sentiment, i.e. SentiCap). The label mapping comes from
    the classifier's config.id2label; rule: argmax (the top class over all labels, neutral
    included, must be the wanted one) or pos_vs_neg (compare those two)."""

    classifier: str | None = "cardiffnlp/twitter-roberta-base-sentiment-latest"
    rule: str = "argmax"
    batch_size: int = 32
    max_length: int = 128
    # Wired to ${device} in conf/scoring/default.yaml.
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_choice("scoring.sentiment.rule", self.rule, SENTIMENT_RULES)
        check_min("scoring.sentiment.batch_size", self.batch_size, 1)
        check_min("scoring.sentiment.max_length", self.max_length, 1)


@dataclass
class ScoringConfig:
    """Caption scoring with pycocoevalcap; metrics.json keeps its 0-1 scale."""

    # The results file stage=score reads: our captions.jsonl or a COCO results JSON
    # ([{"image_id", "caption"}]); null = this run's captions.jsonl. Scores go to the run folder.
    captions: str | None = None
    # Score only rows of this method (a captions file may hold several); null = its one method.
    method: str | None = None
    # Any of Bleu (1-4, with its statistics), METEOR, ROUGE_L, CIDEr, SPICE (case-insensitive).
    # SPICE needs Stanford CoreNLP 3.6.0 jars; without them it is recorded as unavailable.
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    # Text removed from the start of every caption before scoring (case-insensitive), e.g. the
    # search's prefix "An image of"; null scores captions as written.
    strip_prefix: str | None = None
    # false: every dataset item needs a caption; true: score the captioned items only.
    allow_missing: bool = False
    # The name of an external system whose results file is scored (e.g. ZeroCap): its table
    # rows are marked external, never "ours". null = our own captions.
    label: str | None = None
    meteor: MeteorConfig = field(default_factory=MeteorConfig)
    spice: SpiceConfig = field(default_factory=SpiceConfig)
    sentiment: SentimentScoringConfig = field(default_factory=SentimentScoringConfig)

    def __post_init__(self) -> None:
        # Aliases (rouge, bleu4, any case) become the registry's names, in the order given.
        self.metrics = [canonical_metric(m) for m in self.metrics]
        if self.strip_prefix is not None and not self.strip_prefix.strip():
            self.strip_prefix = None
        if self.label is not None and not self.label.strip():
            raise ConfigError("scoring.label is empty; name the external system (e.g. "
                              "scoring.label=ZeroCap) or leave it null")


# ---------------------------------------------------------------------------------- table, merge
@dataclass
class TableConfig:
    """stage=table: Tables 1 and 2 as Markdown, LaTeX and CSV from every metrics.json found."""

    # Run or multirun folders searched for metrics.json (conf/table/default.yaml: the log dir).
    roots: list[str] = MISSING
    # Where table{1,2}.{md,tex,csv} go; null = this run's output folder.
    out_dir: str | None = None
    # Keep only these experiments / methods (null = all found).
    experiments: list[str] | None = None
    methods: list[str] | None = None
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    # Which dataset names (dataset.name in metrics.json) fill which table columns (roles).
    datasets: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_DATASETS.items()})

    def __post_init__(self) -> None:
        if not self.roots:
            raise ConfigError("table.roots is empty: list the run/multirun folders to collect from")
        for fmt in self.formats:
            check_choice("table.formats", fmt, FORMATS, in_list=True)
        for role in self.datasets:
            if role not in DEFAULT_DATASETS:
                known = sorted(DEFAULT_DATASETS)
                pick = closest(role, known) or known[0]
                raise ConfigError(f"unknown table.datasets role {role!r}; known: {known}; use "
                                  f"one of them, e.g. table.datasets.{pick}=[<dataset names>]")


@dataclass
class MergeConfig:
    """stage=merge: join shard captions.jsonl files into one, deduplicated and ordered by id."""

    # Files, run folders (their captions.jsonl) or glob patterns.
    inputs: list[str] = field(default_factory=list)
    # null = <this run's output folder>/captions.jsonl
    output: str | None = None


# ------------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    """Experiment tracker. name: wandb | none. wandb mode: offline (sync later with `wandb sync`),
    online (needs `wandb login`) or disabled."""

    name: str = MISSING
    mode: str = "offline"
    project: str = "fuse-repro"
    entity: str | None = None
    # Wired to ${experiment_name} in conf/logger/wandb.yaml.
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # Log per-item caption tables (thumbnail or target text + caption).
    log_items: bool = True

    def __post_init__(self) -> None:
        check_choice("logger.name", self.name, ("wandb", "none"))
        check_choice("logger.mode", self.mode, ("online", "offline", "disabled"))
