"""Shared test helpers: running run.py in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# False in mutation testing's logic mode (bin/mutation, FUSE_MUTATION_LOGIC=1): assertions on
# message text are then skipped, so a mutant is only killed by a test failing on something else.
TEXT_ASSERTIONS = os.environ.get("FUSE_MUTATION_LOGIC") != "1"


def run_py(
    args: list[str], env: dict[str, str], timeout: int = 240, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    """``python run.py *args`` from the repo root; with ``expect_ok`` a failure shows its output."""
    proc = subprocess.run(
        [sys.executable, "run.py", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect_ok:
        assert proc.returncode == 0, (
            f"run.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


# Public evaluation files beside the checkout (../shared/data); tests that need them skip without.
SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"public evaluation files not found at {SHARED}")


def fresh_cache_sharing_models(root: Path, model_cache_dir: Path) -> Path:
    """``root/cache``: an empty adapter cache whose converted tokenizers and models are the
    session's (symlinks), so subprocess runs refit adapters but never re-convert weights."""
    cache = root / "cache"
    cache.mkdir()
    for sub in ("tokenizers", "models"):
        (model_cache_dir / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(model_cache_dir / sub, target_is_directory=True)
    return cache


def read_wandb_run(run: Path) -> list[dict]:
    """The records of an offline wandb run folder (``<run>/wandb/offline-run-*``), decoded by
    wandb's own reader of its ``.wandb`` transaction log (``wandb leet inspect --json``, one JSON
    object per record: ``{"num", "type", <type>: {...}}``)."""
    files = sorted(run.glob("run-*.wandb"))
    assert len(files) == 1, sorted(run.iterdir())
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(files[0])],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert records and records[0]["type"] == "header", proc.stdout[:500]
    return records


def head_commit() -> str:
    """``git rev-parse HEAD`` of the checkout (what run_info.json and wandb must record)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def isolated_env(root: Path, cache: Path) -> dict[str, str]:
    """An environment that keeps every file (wandb's included) under ``root``."""
    wandb_home = root / "wandb_home"
    env = dict(
        os.environ,
        FUSE_CACHE_DIR=str(cache),
        FUSE_LOG_DIR=str(root / "logs"),
        FUSE_DATA_DIR=str(root / "data"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_CONFIG_DIR=str(wandb_home / "config"),
        WANDB_CACHE_DIR=str(wandb_home / "cache"),
        WANDB_DATA_DIR=str(wandb_home / "data"),
        WANDB_SILENT="true",
    )
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    return env


def root_config(overrides: tuple[str, ...] | list[str] = (), output_dir: str | Path = "/tmp/fuse-run"):
    """The typed root config (``FuseConfig``) of ``python run.py <overrides>``, validated the way
    the entry point does it (outside Hydra ``output_dir`` stands in for the run folder)."""
    from hydra import compose, initialize_config_dir

    from fuse_repro.config import validate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return validate(cfg, output_dir=str(output_dir))


def scoring_options(metrics=None, classifier: str | None = None, spice_cache_dir=None,
                    **keys):
    """A ``ScoringConfig`` for a Python caller: the given metrics (all by default), no sentiment
    classifier unless one is named (the run's default needs the hub), ``rule`` and
    ``batch_size`` for the sentiment group, the other keys for the scoring group."""
    from fuse_repro.coco_metrics import METRICS
    from fuse_repro.config import ScoringConfig, SentimentScoringConfig, SpiceConfig

    sentiment = {k: keys.pop(k) for k in ("rule", "batch_size") if k in keys}
    return ScoringConfig(
        metrics=list(METRICS if metrics is None else metrics),
        spice=SpiceConfig(cache_dir=spice_cache_dir),
        sentiment=SentimentScoringConfig(classifier=classifier, **sentiment),
        **keys,
    )
