"""Resolvers, hashing and run labels.

Artifacts are cached by ``stable_hash`` of exactly the config that determines them (STYLE.md:
audiocraft); run-level hashes exclude what cannot change a result (paths, logger, hydra, device).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fuse_root() -> str:
    """The checkout holding run.py (an editable install); else the current directory."""
    if (REPO_ROOT / "run.py").exists():
        return str(REPO_ROOT)
    return str(Path.cwd())


def _fuse_resource(name: str) -> str:
    """Path of a file bundled inside the package (works for editable and regular installs)."""
    path = Path(__file__).resolve().parents[1] / "resources" / name
    if not path.exists():
        raise FileNotFoundError(f"no bundled resource {name!r} in {path.parent}")
    return str(path)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("fuse_root"):
        OmegaConf.register_new_resolver("fuse_root", _fuse_root)
    if not OmegaConf.has_resolver("fuse_resource"):
        OmegaConf.register_new_resolver("fuse_resource", _fuse_resource)


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
RUN_HASH_EXCLUDE = (
    "paths", "logger", "hydra", "device", "stage", "threads", "resume", "optimized_metric",
    "debug",
)


def placeholders(node: Any, prefix: str) -> Any:
    """Every leaf of an excluded node replaced by the text ``<its.key.path>``."""
    if isinstance(node, dict):
        return {k: placeholders(v, f"{prefix}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [placeholders(v, f"{prefix}.{i}") for i, v in enumerate(node)]
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
            raw[key] = placeholders(raw[key], key)
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
    """Kept for old imports: the one atomic JSON writer is ``fuse_repro.records.write_json``."""
    from fuse_repro.records import write_json as _write_json

    _write_json(path, obj)
