"""Config schemas, resolvers and hashing.

The YAML files in ``conf/`` are the user-facing configs; the dataclasses here are their schemas.
``typed(node, Schema)`` merges a config node onto its schema, so a misspelled key or a value of the
wrong type fails at start-up with OmegaConf's message naming the key, not deep inside a stage.

Artifacts are cached by ``stable_hash`` of exactly the config that determines them (STYLE.md:
audiocraft); run-level hashes exclude what cannot change a result (paths, logger, hydra, device).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _fuse_root() -> str:
    """The checkout holding run.py (an editable install); else the current directory."""
    if (REPO_ROOT / "run.py").exists():
        return str(REPO_ROOT)
    return str(Path.cwd())


def _fuse_resource(name: str) -> str:
    """Path of a file bundled inside the package (works for editable and regular installs)."""
    path = Path(__file__).resolve().parent / "resources" / name
    if not path.exists():
        raise FileNotFoundError(f"no bundled resource {name!r} in {path.parent}")
    return str(path)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("fuse_root"):
        OmegaConf.register_new_resolver("fuse_root", _fuse_root)
    if not OmegaConf.has_resolver("fuse_resource"):
        OmegaConf.register_new_resolver("fuse_resource", _fuse_resource)


register_resolvers()


# ----------------------------------------------------------------------------------------------
# Schemas
# ----------------------------------------------------------------------------------------------
@dataclass
class CorpusConfig:
    # wordfreq: the offline English word list shipped with the `wordfreq` package (our default);
    # text_file: whitespace words of a UTF-8 text file; wikitext: WikiText-103 train via `datasets`
    # (the paper's corpus; needs the hub).
    kind: str = "wordfreq"
    lang: str = "en"
    path: str | None = None
    # For wikitext: which configuration of the Salesforce/wikitext dataset.
    name: str = "wikitext-103-raw-v1"
    # Keep at most this many distinct corpus words (in corpus order) before sampling; null = all.
    max_words: int | None = None


@dataclass
class AdapterConfig:
    # L: words of 1..L target tokens get a fitted map (paper: 4).
    max_tokens: int = 4
    # N: fitting words per target length (paper: 16384).
    words_per_bucket: int = 16384
    # Extra words per bucket kept out of the fit to measure generalization in the fit report.
    heldout_words: int = 512
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seed: int = 0
    # Relative singular-value cutoff of the t-pseudoinverse; null = max(w, d) * eps of fit_dtype.
    rcond: float | None = None
    # Words past the cap (more than L target tokens, or more source tokens than the map's depth):
    # "random" (the paper: a seeded random Jacobian per word) or "zero" (no gradient).
    overflow: str = "random"
    # Precision of the fit; the stored maps are float32.
    fit_dtype: str = "float64"


@dataclass
class SearchConfig:
    # fuse (gradient through every objective), lm_only (secondary weights 0), random_proposal
    # (candidates drawn at random from the LM's top tokens, same evaluation budget).
    method: str = "fuse"
    prefix: str = "An image of"
    steps: int = 16
    top_k: int = 512
    beam_width: int = 5
    # w in score = -grad + w * log p_LM(token | text so far).
    logit_weight: float = 1.0
    # random_proposal draws top_k candidates from the LM's top (pool_factor * top_k) tokens.
    pool_factor: int = 4
    # Stop early when the best beam ends a sentence ("." "!" "?") after at least min_steps.
    stop_at_sentence_end: bool = False
    min_steps: int = 4
    # (beam, candidate) pairs per forward pass of each secondary model.
    eval_chunk: int = 512
    # Drop candidate tokens that are special, decode to nothing printable, hold a newline or a
    # broken UTF-8 fragment: they cannot be part of a caption.
    printable_only: bool = True


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: str = "offline"
    project: str = "fuse-repro"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_items: bool = True


def typed(node: Any, schema: type[T]) -> T:
    """Validate a config node against its dataclass schema and return the dataclass instance."""
    base = OmegaConf.structured(schema)
    if isinstance(node, DictConfig):  # resolve ${...} against the full config first
        node = OmegaConf.to_container(node, resolve=True)
    merged = OmegaConf.merge(base, node)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def check_choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {sorted(allowed)}")


def validate_adapter(cfg: AdapterConfig) -> AdapterConfig:
    if cfg.max_tokens < 1:
        raise ValueError(f"adapter.max_tokens (L) must be >= 1, got {cfg.max_tokens}")
    if cfg.words_per_bucket < 1:
        raise ValueError(f"adapter.words_per_bucket (N) must be >= 1, got {cfg.words_per_bucket}")
    if cfg.heldout_words < 0:
        raise ValueError(f"adapter.heldout_words must be >= 0, got {cfg.heldout_words}")
    if cfg.rcond is not None and not (0.0 <= cfg.rcond < 1.0):
        raise ValueError(f"adapter.rcond must be null or in [0, 1), got {cfg.rcond}")
    check_choice("adapter.overflow", cfg.overflow, ("random", "zero"))
    check_choice("adapter.fit_dtype", cfg.fit_dtype, ("float32", "float64"))
    check_choice("adapter.corpus.kind", cfg.corpus.kind, ("wordfreq", "text_file", "wikitext"))
    return cfg


def validate_search(cfg: SearchConfig) -> SearchConfig:
    check_choice("search.method", cfg.method, ("fuse", "lm_only", "random_proposal"))
    for key in ("steps", "top_k", "beam_width", "eval_chunk", "pool_factor"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"search.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.min_steps < 0:
        raise ValueError(f"search.min_steps must be >= 0, got {cfg.min_steps}")
    return cfg


# ----------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------
def to_plain(obj: Any) -> Any:
    """OmegaConf nodes / dataclasses -> plain JSON-able Python (resolved)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if hasattr(obj, "__dataclass_fields__"):
        return to_plain(OmegaConf.structured(obj))
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), truncated to ``length`` hex chars."""
    text = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


# Top-level keys that never change a result: where files go, how runs are logged, which device.
RUN_HASH_EXCLUDE = ("paths", "logger", "hydra", "device", "stage")


def _placeholders(node: Any, prefix: str) -> Any:
    """Every leaf of an excluded node replaced by the text ``<its.key.path>``."""
    if isinstance(node, dict):
        return {k: _placeholders(v, f"{prefix}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_placeholders(v, f"{prefix}.{i}") for i, v in enumerate(node)]
    return f"<{prefix}>"


def run_config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved run config minus RUN_HASH_EXCLUDE: labels a table row.

    Kept keys that interpolate an excluded one (``scoring.spice.cache_dir:
    ${paths.cache_dir}/spice``, ``scoring.sentiment.device: ${device}``, ``table.roots``) see a
    fixed placeholder instead of its value, so moving the cache or the logs or switching device
    cannot change the hash.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    for key in RUN_HASH_EXCLUDE:
        if key in raw:
            raw[key] = _placeholders(raw[key], key)
    masked = OmegaConf.create(raw)
    kept = {key: to_plain(masked[key]) for key in masked if key not in RUN_HASH_EXCLUDE}
    return stable_hash(kept)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write with sorted keys and a trailing newline (diffs cleanly, no timestamps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
