"""Sharded captioning end to end through ``run.py`` in subprocesses (tiny random models, CPU).

One unsharded ``stage=caption`` run; the same run as a 2-job multirun through the submitit
LOCAL launcher (``+launcher=local``, conf/launcher/local.yaml), one shard per job; then
``stage=merge`` of the two shard files must equal the unsharded file line for line (timings
aside), and the multirun's SweepSummaryCallback must have written one summary row per job.

The module shares one cache folder, so the adapter is fitted once (by the unsharded run, before
the shard jobs start) and converted tokenizers are reused from the session's model cache.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fresh_cache_sharing_models, run_py

EXPERIMENT = "shard_test"

# Four items with alternating wanted sentiments, so the shards' captions differ by item; ids
# whose dataset order is also their numeric order (merge sorts numerically: 2 < 10).
TARGETS = [
    {
        "id": 1,
        "target": "a dog runs on the beach",
        "sentiment": "positive",
        "references": ["a dog running on a beach", "a brown dog on the sand"],
    },
    {
        "id": 2,
        "target": "two people ride bikes",
        "sentiment": "negative",
        "references": ["two people riding bicycles"],
    },
    {
        "id": 3,
        "target": "a red car parked outside",
        "sentiment": "positive",
        "references": ["a red car on a street"],
    },
    {
        "id": 10,
        "target": "a cat sleeps on a sofa",
        "sentiment": "negative",
        "references": ["a cat asleep on a couch"],
    },
]

SMALL = [
    "stage=caption",
    "model@source=tiny_gpt2",
    "objective=tiny_sentiment",
    "dataset=text_targets",
    "adapter.words_per_bucket=64",
    "adapter.heldout_words=8",
    "adapter.corpus.max_words=5000",
    "search.steps=2",
    "search.top_k=8",
    "search.beam_width=2",
    "device=cpu",
    "logger=none",
    f"experiment_name={EXPERIMENT}",
]
SHARDS = ["dataset.subset.mode=shard", "dataset.subset.count=2", "dataset.subset.index=0,1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> dict[str, Any]:
    """Folders and environment shared by this module's runs."""
    root = tmp_path_factory.mktemp("shards")
    cache = fresh_cache_sharing_models(root, model_cache_dir)
    annotations = root / "targets.json"
    annotations.write_text(json.dumps(TARGETS, indent=1), encoding="utf-8")
    env = dict(
        os.environ,
        FUSE_CACHE_DIR=str(cache),
        FUSE_LOG_DIR=str(root / "logs"),
        FUSE_DATA_DIR=str(root / "data"),
        HYDRA_FULL_ERROR="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
    )
    return {
        "root": root,
        "env": env,
        "logs": root / "logs",
        "dataset": f"dataset.annotations={annotations}",
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def unsharded(workdir: dict[str, Any]) -> Path:
    """captions.jsonl of one unsharded caption run (it also fills the adapter cache)."""
    run_py([*SMALL, workdir["dataset"]], workdir["env"])
    runs = sorted((workdir["logs"] / EXPERIMENT).iterdir())
    assert len(runs) == 1, runs
    return runs[0] / "captions.jsonl"


@pytest.fixture(scope="module")
def sweep(workdir: dict[str, Any], unsharded: Path) -> dict[str, Any]:
    """The 2-shard multirun through the submitit local launcher; its sweep folder."""
    proc = run_py(
        ["-m", "+launcher=local", *SMALL, workdir["dataset"], *SHARDS], workdir["env"], timeout=400
    )
    sweeps = sorted((workdir["logs"] / "multirun" / EXPERIMENT).iterdir())
    assert len(sweeps) == 1, sweeps
    return {"dir": sweeps[0], "log": proc.stdout + proc.stderr}


@pytest.mark.slow
def test_unsharded_run(unsharded: Path):
    rows = read_rows(unsharded)
    assert [r["id"] for r in rows] == ["1", "2", "3", "10"]
    assert {r["method"] for r in rows} == {"fuse"}
    assert all(r["steps"] == 2 and r["caption"].startswith("An image of") for r in rows)
    info = json.loads((unsharded.parent / "run_info.json").read_text())
    assert info["stage"] == "caption" and info["experiment"] == EXPERIMENT
    # The wanted sentiment changes the objective, so the items were searched separately.
    assert len({r["losses"]["sentiment"] for r in rows}) > 1


@pytest.mark.slow
def test_submitit_local_shards_merge_to_the_unsharded_run(workdir, unsharded, sweep):
    sweep_dir = sweep["dir"]
    assert "Submitit 'local' sweep output dir" in sweep["log"]
    # submitit's own job folders (pickled job, result, stdout/stderr per job).
    submitit_jobs = [p for p in (sweep_dir / ".submitit").iterdir() if any(p.glob("*_result.pkl"))]
    assert len(submitit_jobs) == 2
    shards = [sweep_dir / str(n) / "captions.jsonl" for n in range(2)]
    ids = [[r["id"] for r in read_rows(p)] for p in shards]
    assert ids == [["1", "2"], ["3", "10"]]
    for n in range(2):
        overrides = (sweep_dir / str(n) / ".hydra" / "overrides.yaml").read_text()
        assert f"dataset.subset.index={n}" in overrides

    merged_dir = workdir["root"] / "merged"
    # A glob over the job folders, as conf/launcher/*.yaml documents it.
    run_py(
        [
            "stage=merge",
            f"hydra.run.dir={merged_dir}",
            "logger=none",
            f"merge.inputs=['{sweep_dir}/*/captions.jsonl']",
        ],
        workdir["env"],
    )
    merged = read_rows(merged_dir / "captions.jsonl")
    full = read_rows(unsharded)
    assert [r["id"] for r in merged] == ["1", "2", "3", "10"]
    assert without_timing(merged) == without_timing(full)
    for a, b in zip(merged, full):
        assert (a["id"], a["method"], a["caption"], a["losses"]) == (
            b["id"],
            b["method"],
            b["caption"],
            b["losses"],
        )
    assert json.loads((merged_dir / "run_info.json").read_text())["stage"] == "merge"
    # Shards of one sweep were made with the same settings: the merge keeps their provenance.
    shard_hashes = {json.loads((sweep_dir / str(n) / "captions_config.json").read_text())["hash"]
                    for n in range(2)}
    merged_hash = json.loads((merged_dir / "captions_config.json").read_text())["hash"]
    assert shard_hashes == {merged_hash}


@pytest.mark.slow
def test_multirun_writes_sweep_summary(sweep):
    path = sweep["dir"] / "sweep_summary.csv"
    assert path.is_file(), sweep["log"][-3000:]
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["override.dataset.subset.index"] for r in rows] == ["0", "1"]
    assert all(r["override.+launcher"] == "local" for r in rows)
    assert all(
        r["run_info.stage"] == "caption" and r["run_info.experiment"] == EXPERIMENT for r in rows
    )
    # Shards differ in dataset.subset.index, a key that determines the run: distinct hashes.
    assert rows[0]["run_info.config_hash"] != rows[1]["run_info.config_hash"]
    # stage=caption writes no metrics.json (stage=score does): its objective.json gives the
    # rows their numbers (issue 18).
    assert [(r["status"], r["metrics_file"]) for r in rows] == [("ok", "objective.json")] * 2
    assert all(float(r["objective.mean_total"]) > 0 for r in rows)
