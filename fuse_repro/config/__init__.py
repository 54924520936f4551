"""Config schemas, the one conversion point, resolvers and hashing.

The YAML files in ``conf/`` are the user-facing configs; the dataclasses in ``schemas.py`` and
``model.py`` are their schemas, registered with Hydra's ConfigStore on import (``run.py`` imports
this package before composing). The entry point validates the composed config once,

    root = validate(cfg)                  # FuseConfig: every group's __post_init__ runs here

and hands the typed root to the stage, which passes each library its own group (``root.search``).
Unknown keys fail while composing (the root schema types every group) or, for ``+key=`` overrides
and plain mappings, in ``convert``; both name the key and its group. Defaults live in the
dataclasses; a yaml states only what differs (see ``schemas.py``). How to add a field or a group:
ARCHITECTURE.md.
"""

from fuse_repro.config.fidelity import FidelityConfig
from fuse_repro.config.hashing import (
    REPO_ROOT,
    RUN_HASH_EXCLUDE,
    git_commit,
    register_resolvers,
    run_config_hash,
    stable_hash,
    to_plain,
)
from fuse_repro.config.model import (
    MODEL_DTYPES,
    MODEL_KINDS,
    MODEL_SCHEMAS,
    GGUFModelConfig,
    HFModelConfig,
    ModelConfig,
    OpenClipConfig,
    TinyClipConfig,
    TinyGPT2Config,
    TinyRobertaConfig,
    TokenizerConfig,
)
from fuse_repro.config.reporting import (
    LoggerConfig,
    MergeConfig,
    MeteorConfig,
    ScoringConfig,
    SentimentScoringConfig,
    SpiceConfig,
    TableConfig,
)
from fuse_repro.config.root import FuseConfig, PipelineConfig
from fuse_repro.config.schemas import (
    DATASET_FORMATS,
    SUBSET_MODES,
    AdapterConfig,
    CorpusConfig,
    DatasetConfig,
    ObjectiveConfig,
    PathsConfig,
    SearchConfig,
    SubsetConfig,
    SyntheticImagesConfig,
    TermConfig,
    check_choice,
    check_min,
)
from fuse_repro.config.store import (
    ROOT_SCHEMA,
    compose_error_line,
    convert,
    model_schema,
    register_schemas,
    validate,
)
from fuse_repro.errors import ConfigError

register_resolvers()
register_schemas()

__all__ = [
    "DATASET_FORMATS",
    "MODEL_DTYPES",
    "MODEL_KINDS",
    "MODEL_SCHEMAS",
    "REPO_ROOT",
    "ROOT_SCHEMA",
    "RUN_HASH_EXCLUDE",
    "SUBSET_MODES",
    "AdapterConfig",
    "ConfigError",
    "CorpusConfig",
    "DatasetConfig",
    "FidelityConfig",
    "FuseConfig",
    "GGUFModelConfig",
    "HFModelConfig",
    "LoggerConfig",
    "MergeConfig",
    "MeteorConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OpenClipConfig",
    "PathsConfig",
    "PipelineConfig",
    "ScoringConfig",
    "SearchConfig",
    "SentimentScoringConfig",
    "SpiceConfig",
    "SubsetConfig",
    "SyntheticImagesConfig",
    "TableConfig",
    "TermConfig",
    "TinyClipConfig",
    "TinyGPT2Config",
    "TinyRobertaConfig",
    "TokenizerConfig",
    "check_choice",
    "check_min",
    "compose_error_line",
    "convert",
    "git_commit",
    "model_schema",
    "register_resolvers",
    "register_schemas",
    "run_config_hash",
    "stable_hash",
    "to_plain",
    "validate",
]
