"""What ``run.py`` does after Hydra composed the config: pick the stage, record the run, call it.

Stages are plain modules with ``run(cfg, out_dir) -> dict`` (STYLE.md: audiocraft's stage dict),
imported lazily so ``stage=table`` does not pay for torch model imports it never uses.
"""

from __future__ import annotations

import importlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fuse_repro.config import git_commit, run_config_hash, write_json

log = logging.getLogger(__name__)

STAGES: dict[str, str] = {
    "pipeline": "fuse_repro.stages.pipeline",
    "fit": "fuse_repro.stages.fit",
    "caption": "fuse_repro.stages.caption",
    "score": "fuse_repro.stages.score",
    "table": "fuse_repro.stages.table",
    "merge": "fuse_repro.stages.merge",
}


def resolve_stage(name: Any) -> Any:
    """The stage module for ``name``; a clear error listing the known stages otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage={name!r}; known stages: {', '.join(sorted(STAGES))}")
    return importlib.import_module(STAGES[name])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available; anything else must be a device torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a torch device (try cpu, cuda, auto)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return device


def print_config_tree(cfg: DictConfig) -> str:
    """The resolved config as YAML (hydra node left out), printed at the start of every run."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    text = OmegaConf.to_yaml(OmegaConf.create(plain))
    print("=" * 30 + " resolved config " + "=" * 30)
    print(text, end="")
    print("=" * 77, flush=True)
    return text


def output_dir_of(cfg: DictConfig) -> Path:
    """Hydra's runtime output dir (never os.getcwd())."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def run_stage(cfg: DictConfig, out_dir: Path | None = None) -> float | None:
    """Run ``cfg.stage``; returns the stage's ``objective`` value (for sweepers) when it has one."""
    module = resolve_stage(cfg.get("stage"))
    out_dir = Path(out_dir) if out_dir is not None else output_dir_of(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = print_config_tree(cfg)
    (out_dir / "config_resolved.yaml").write_text(tree, encoding="utf-8")
    if cfg.get("seed") is None:
        raise ValueError("seed must be set (an integer; 0 is a valid seed)")
    seed_everything(int(cfg.seed))
    info = {
        "stage": cfg.stage,
        "experiment": cfg.get("experiment_name", "default"),
        "config_hash": run_config_hash(cfg),
        "git_commit": git_commit(),
    }
    write_json(out_dir / "run_info.json", info)
    start = time.perf_counter()
    try:
        result = module.run(cfg, out_dir) or {}
    except Exception:
        # Into run.log too (Hydra's file handler), not only the terminal.
        log.exception("stage %s failed; outputs so far are in %s", cfg.stage, out_dir)
        raise
    log.info("stage %s finished in %.1f s; outputs in %s", cfg.stage, time.perf_counter() - start, out_dir)
    objective = result.get("objective") if isinstance(result, dict) else None
    return float(objective) if objective is not None else None
