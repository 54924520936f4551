"""Resolvers, hashing and run labels.

Artifacts are cached by ``stable_hash`` of exactly the config that determines them (STYLE.md:
audiocraft); run-level hashes exclude what cannot change a result (paths, logger, device).
"""

from __future__ import annotations

import dataclasses
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


def sha256_json(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON: sorted keys, no spaces, UTF-8 (non-ASCII text
    as itself, not ``\\u`` escapes). The one digest behind every cache key, fingerprint and run
    hash."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """``sha256_json`` of ``obj`` (a config node or dataclass is made plain first), truncated to
    ``length`` hex chars."""
    return sha256_json(to_plain(obj))[:length]


# Top-level keys that never change a result: where files go, how runs are logged, which device.
RUN_HASH_EXCLUDE = (
    "paths", "logger", "device", "stage", "threads", "resume", "optimized_metric", "debug",
    "print_config",
)
# Fields that name a device below the root (wired to ${device}): masked like the root key.
DEVICE_FIELDS = {("scoring", "sentiment", "device")}
# The path roots a value is masked by (paths.root_dir is not: bundled resources live under it).
MASKED_PATHS = ("data_dir", "cache_dir", "log_dir", "output_dir")


def _mask(node: Any, paths: list[tuple[str, str]], where: tuple[str, ...]) -> Any:
    """``node`` with every string under one of ``paths`` written ``<paths.x>/rest``, and the
    device fields written ``<device>``."""
    if where in DEVICE_FIELDS:
        return "<device>"
    if isinstance(node, dict):
        return {k: _mask(v, paths, (*where, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v, paths, where) for v in node]
    if isinstance(node, str):
        for name, value in paths:
            if node == value or node.startswith(value.rstrip("/") + "/"):
                return f"<paths.{name}>" + node[len(value.rstrip("/")):]
    return node


def masked_groups(cfg: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The root config's ``keys`` as plain values, with paths and devices masked, so that moving
    the data, the cache or the logs, or switching device, cannot change a hash of them."""
    roots = [(name, str(getattr(cfg.paths, name))) for name in MASKED_PATHS]
    roots = sorted((r for r in roots if r[1] not in ("", "???")), key=lambda r: -len(r[1]))
    return {key: _mask(to_plain(getattr(cfg, key)), roots, (key,)) for key in keys}


def run_config_hash(cfg: Any) -> str:
    """Hash of the validated root config (``FuseConfig``) minus ``RUN_HASH_EXCLUDE``, paths and
    devices masked: labels a table row."""
    kept = tuple(f.name for f in dataclasses.fields(cfg) if f.name not in RUN_HASH_EXCLUDE)
    return stable_hash(masked_groups(cfg, kept))


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
