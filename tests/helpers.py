"""Shared test helpers: running run.py in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
