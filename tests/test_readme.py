"""Every command in the README is exercised, so the README cannot rot.

The two quick-start commands are what CI runs (`.ci/run` calls the test command) and what
`test_pipeline.py` runs with reduced settings. Every `run.py` command in the README is composed
here with Hydra's `--cfg job` (the real CLI parser, config groups and overrides, no work done), so
a renamed group, key or experiment breaks this test.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                cmds.append(line)
    return cmds


def test_quick_start_is_first_and_ci_runs_the_test_command():
    cmds = readme_commands()
    assert cmds[0] == "bin/with-venv python run.py"
    assert cmds[1] == "bin/with-venv python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert cmds[1] in ci.splitlines()
    assert os.access(ROOT / "bin" / "with-venv", os.X_OK)


def run_py_commands() -> list[tuple[dict[str, str], list[str]]]:
    out = []
    for cmd in readme_commands():
        if "run.py" not in cmd:
            continue
        words = shlex.split(cmd)
        env = {}
        while "=" in words[0] and not words[0].startswith("-"):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert words[:3] == ["bin/with-venv", "python", "run.py"], cmd
        out.append((env, words[3:]))
    return out


def first_sweep_value(arg: str) -> str:
    """``key=a,b`` -> ``key=a`` (a sweep composes as its first job); lists in [] are kept."""
    key, sep, value = arg.partition("=")
    if sep and "," in value and not value.startswith("["):
        return f"{key}={value.split(',')[0]}"
    return arg


@pytest.mark.parametrize("env,args", run_py_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_readme_run_commands_compose(env, args, monkeypatch):
    from hydra import compose, initialize_config_dir

    from fuse_repro.app import resolve_stage

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = [first_sweep_value(a) for a in args if a not in ("-m", "--multirun")]
    args = [a.replace("<time>", "x").replace("<merge_run>", "/tmp/merged") for a in args]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
    resolve_stage(cfg.stage)  # a known stage
    for key in ("source", "adapter", "search", "objective", "dataset", "scoring"):
        assert key in cfg, key
