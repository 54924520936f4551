"""Shared test helpers: running run.py in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
