"""The root schema, ``FuseConfig``: root keys and one typed field per group.

``conf/config.yaml`` names it (``fuse_schema`` in the ConfigStore) first in its defaults list, so
Hydra types every group while composing. Defaults live here, as in ``schemas.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from fuse_repro.config.fidelity import FidelityConfig
from fuse_repro.config.model import WEIGHTS, ModelConfig
from fuse_repro.config.reporting import LoggerConfig, MergeConfig, ScoringConfig, TableConfig
from fuse_repro.config.schemas import (
    AdapterConfig,
    DatasetConfig,
    ObjectiveConfig,
    PathsConfig,
    SearchConfig,
    check_choice,
    check_min,
)
from fuse_repro.errors import ConfigError

# --------------------------------------------------------------------------------------- root
# check: refuse to resume a caption folder made with other settings; force: mix them
# (fuse_repro.provenance).
RESUME_MODES = ("check", "force")
# The largest seed: numpy's generators take 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1


@dataclass
class PipelineConfig:
    # Methods the pipeline stage runs on the same targets at the same budget.
    methods: list[str] = field(default_factory=lambda: ["fuse", "lm_only", "random_proposal"])
    # Draw search_curves.png.
    plot: bool = True

    def __post_init__(self) -> None:
        # The names are checked against the search registry by the pipeline stage's check.
        if not self.methods:
            raise ConfigError("pipeline.methods is empty: list at least one search method")


@dataclass
class FuseConfig:
    """The root config (conf/config.yaml names it first in its defaults list)."""

    # Which stage to run: pipeline (fit + caption x methods + score + table + plot), fit,
    # caption, score, table, merge, fidelity (checked by fuse_repro.app.STAGES, the registry).
    stage: str = "pipeline"
    # The one seed every random choice derives from (word sampling, overflow Jacobians, subsets).
    seed: int = 0
    # cpu, cuda, cuda:1, ... or auto (cuda when available). Never part of any cache key.
    device: str = "auto"
    # Label of this run in tables, wandb and output folders; experiment files set it.
    experiment_name: str = "default"
    # pretrained: every model loads its published weights; random: random weights at the true
    # architecture, no hub access (the numbers it scores mean nothing).
    weights: str = "pretrained"
    # The key of the stage's returned metrics a sweeper optimizes; null = the stage's own default.
    optimized_metric: str | None = None
    # Rerunning into a run folder made with other result-determining settings: check (refuse,
    # naming the differing keys) | force (go on; each caption records its config hash).
    resume: str = "check"
    # Torch intra-op CPU threads (runtime.set_threads); null keeps torch's default (one per
    # core). 1 by default: on a busy 2-core machine one thread was ~8x faster per FUSE gradient
    # and ~2x per candidate evaluation than two (benchmarks/threads.py measures it). Never part of a cache key.
    threads: int | None = 1
    # Full tracebacks for user errors (else one line `error: ...`); HYDRA_FULL_ERROR=1 also does.
    debug: bool = False
    # Print the whole resolved config at the start (it is always saved as config_resolved.yaml);
    # else a few lines: stage, experiment, models, run folder.
    print_config: bool = False
    paths: PathsConfig = MISSING
    logger: LoggerConfig = MISSING
    source: ModelConfig = MISSING
    target: ModelConfig = MISSING
    adapter: AdapterConfig = MISSING
    objective: ObjectiveConfig = MISSING
    search: SearchConfig = MISSING
    dataset: DatasetConfig = MISSING
    scoring: ScoringConfig = MISSING
    table: TableConfig = MISSING
    merge: MergeConfig = MISSING
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # The gradient-fidelity measurement's settings (conf/fidelity/*, stage=fidelity).
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)

    def __post_init__(self) -> None:
        check_choice("weights", self.weights, WEIGHTS)
        check_choice("resume", self.resume, RESUME_MODES)
        if self.threads is not None:
            check_min("threads", self.threads, 1)
        if not 0 <= self.seed <= SEED_MAX:  # numpy's seed range (every generator derives from it)
            raise ConfigError(f"seed={self.seed} must be between 0 and {SEED_MAX}; e.g. seed=0")
