"""``run.py`` as a user runs it, in subprocesses: an unknown stage, stage=fit with the tiny
models (run folder files, cache hit, printed config), and the offline wandb run's lifecycle,
including a stage that fails inside an open wandb run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import fresh_cache_sharing_models, head_commit, isolated_env, read_wandb_run, run_py

FIT = [
    "stage=fit",
    "model@source=tiny_gpt2",
    "model@target=tiny_roberta",
    "adapter.words_per_bucket=64",
    "adapter.corpus.max_words=5000",
    "device=cpu",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> dict[str, Any]:
    """A fresh adapter cache (converted tokenizers shared with the session's model cache) and an
    environment keeping every file, wandb's included, under the test's folder."""
    root = tmp_path_factory.mktemp("run_stages")
    cache = fresh_cache_sharing_models(root, model_cache_dir)
    env = isolated_env(root, cache)
    return {"root": root, "env": env}


@pytest.mark.slow
def test_unknown_stage_exits_nonzero_listing_stages(workdir):
    proc = run_py(
        ["stage=bogus", "logger=none", f"hydra.run.dir={workdir['root'] / 'bogus'}"],
        workdir["env"],
        timeout=120,
        expect_ok=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown stage='bogus'; known stages: caption, fidelity, fit, merge, pipeline, "
        "score, table; use one of them, e.g. stage=caption"
    )
    # Refused before doing anything: the empty run folder is removed.
    assert not (workdir["root"] / "bogus").exists()


@pytest.fixture(scope="module")
def fit_runs(workdir) -> dict[str, Any]:
    """Two fit runs of the same adapter: the first fits it (logger=none); the second is
    identical but for the logger (wandb, offline), which is in no cache key, so it must load it."""
    first, second = workdir["root"] / "fit1", workdir["root"] / "fit2"
    proc1 = run_py([*FIT, "logger=none", f"hydra.run.dir={first}"], workdir["env"])
    proc2 = run_py(
        [*FIT, "logger=wandb", "logger.mode=offline", f"hydra.run.dir={second}"], workdir["env"]
    )
    return {"first": first, "second": second, "proc1": proc1, "proc2": proc2}


@pytest.mark.slow
def test_fit_writes_run_folder(fit_runs):
    run_dir, proc = fit_runs["first"], fit_runs["proc1"]
    report = json.loads((run_dir / "fit_report.json").read_text())
    assert report["from_cache"] is False and report["adapter_kind"]
    assert len(report["adapter_key"]) >= 8
    assert Path(report["adapter_path"]).is_dir()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["stage"] == "fit" and info["experiment"] == "default"
    assert info["status"] == "finished"
    assert proc.stdout.strip().splitlines()[-1] == f"run folder: {run_dir}"  # the last line
    assert len(info["config_hash"]) == 16 and info["git_commit"] == head_commit()
    # A few start lines are printed (the whole tree only with print_config=true); the resolved
    # config is saved beside the outputs, hydra node left out.
    saved = (run_dir / "config_resolved.yaml").read_text()
    assert "resolved config" not in proc.stdout and saved not in proc.stdout
    assert proc.stdout.splitlines()[:4] == [
        "fuse-repro: stage=fit experiment=default",
        "  models:     source tiny_gpt2 -> target tiny_roberta",
        f"  run folder: {run_dir}",
        f"  config:     {run_dir / 'config_resolved.yaml'} (print_config=true prints it)"]
    resolved = yaml.safe_load(saved)
    assert "hydra" not in resolved
    assert resolved["stage"] == "fit" and resolved["source"]["name"] == "tiny_gpt2"
    assert resolved["target"]["name"] == "tiny_roberta"
    assert resolved["adapter"]["words_per_bucket"] == 64
    assert resolved["paths"]["output_dir"] == str(run_dir)
    assert "${" not in saved
    assert "fitted" in proc.stdout and "cache hit" not in proc.stdout


@pytest.mark.slow
def test_second_identical_fit_is_a_cache_hit(fit_runs):
    first = json.loads((fit_runs["first"] / "fit_report.json").read_text())
    second = json.loads((fit_runs["second"] / "fit_report.json").read_text())
    assert second["from_cache"] is True
    assert second["adapter_key"] == first["adapter_key"]
    assert second["adapter_path"] == first["adapter_path"]
    assert "cache hit" in fit_runs["proc2"].stdout
    # The logger is not part of the run hash either.
    hashes = [
        json.loads((fit_runs[k] / "run_info.json").read_text())["config_hash"]
        for k in ("first", "second")
    ]
    assert hashes[0] == hashes[1]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_exit_codes(run: Path) -> list[int]:
    """The exit codes in ``run``'s exit records, read back by wandb's own reader (one per close;
    proto3 JSON leaves out a zero)."""
    return [r["exit"].get("exit_code", 0) for r in read_wandb_run(run) if r["type"] == "exit"]


@pytest.mark.slow
def test_wandb_offline_run_folder(fit_runs):
    run_dir = fit_runs["second"]
    runs = offline_runs(run_dir)
    assert len(runs) == 1, sorted((run_dir / "wandb").glob("*"))
    assert list(runs[0].glob("run-*.wandb")), list(runs[0].iterdir())
    assert "wandb run closed (offline, exit code 0)" in (run_dir / "run.log").read_text()
    assert wandb_exit_codes(runs[0]) == [0]
    # logger=none opens no wandb run at all.
    assert not (fit_runs["first"] / "wandb").exists()


@pytest.mark.slow
def test_failing_stage_closes_wandb_run(workdir, fit_runs):
    """Every item fails (a sentiment the classifier does not have), so the pipeline raises
    inside its open wandb run: the process must exit non-zero, promptly, with the run closed
    with exit code 1. Runs after fit_runs so the adapter comes from the cache."""
    data = workdir["root"] / "one_target.json"
    data.write_text(json.dumps([{"id": "1", "target": "a dog on a beach"}]))
    run_dir = workdir["root"] / "failing"
    proc = run_py(
        [
            "stage=pipeline",
            "pipeline.methods=[fuse]",
            "model@source=tiny_gpt2",
            "objective=tiny_sentiment",
            "objective.terms.sentiment.sentiment=bogus",
            "dataset=text_targets",
            f"dataset.annotations={data}",
            "adapter.words_per_bucket=64",
            "adapter.corpus.max_words=5000",
            "search.steps=1",
            "search.top_k=4",
            "search.beam_width=1",
            "device=cpu",
            "logger=wandb",
            "logger.mode=offline",
            f"hydra.run.dir={run_dir}",
        ],
        workdir["env"],
        timeout=180,
        expect_ok=False,
    )
    assert proc.returncode != 0
    assert "no item could be captioned" in proc.stderr
    errors = (run_dir / "fuse" / "errors.jsonl").read_text()
    assert "'bogus' is not a label of tiny_roberta" in errors
    runs = offline_runs(run_dir)
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert "wandb run closed (offline, exit code 1)" in (run_dir / "run.log").read_text()
    assert wandb_exit_codes(runs[0]) == [1]
