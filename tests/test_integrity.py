"""Run integrity, end to end through ``run.py`` (issue 13 item 3):

- a multirun with one failing job goes on past it, records it, and exits non-zero naming it;
- the offline wandb run is read back with wandb's own reader (``wandb leet inspect --json``, the
  decoder of the ``.wandb`` transaction log that ships with the installed wandb) and its config,
  summary metrics, caption table and exit code match the run folder's files;
- two runs with the same seed on the real offline pair (SmolLM2 -> MiniLM) write byte-identical
  files, except the declared timing fields below (and the run folder's own path).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, fresh_cache_sharing_models, head_commit, isolated_env, read_wandb_run, run_py

# What may differ between two runs with the same seed, and nothing else: the wall-clock seconds of
# every caption (captions.jsonl) and the log, whose lines carry times.
TIMING_FIELDS = {"captions.jsonl": ("seconds",)}
TIMING_FILES = {"run.log"}




# ---------------------------------------------------------------------------- multirun


@pytest.mark.slow
def test_multirun_with_a_failing_job_goes_on_and_exits_nonzero(tmp_path: Path) -> None:
    """Job 0 merges a glob that matches nothing (a user error inside the job), job 1 a real shard:
    the sweep runs job 1 after job 0 failed, records both, and exits 1 naming job 0 only."""
    shard = tmp_path / "shard" / "captions.jsonl"
    shard.parent.mkdir()
    rows = [{"caption": "a dog", "id": "1"}, {"caption": "a cat", "id": "2"}]
    shard.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    missing = tmp_path / "nothing_here" / "*"
    sweep = tmp_path / "sweep"
    proc = run_py(
        ["-m", "stage=merge", "logger=none", f"merge.inputs=['{missing}'],['{shard}']",
         f"hydra.sweep.dir={sweep}"],
        isolated_env(tmp_path, tmp_path / "cache"),
        timeout=180,
        expect_ok=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert re.search(r"\b1 sweep job\(s\) failed: 0 \([^)]*merge\.inputs=[^)]*nothing_here[^)]*\): "
                     r".*no shard files match", proc.stderr), proc.stderr[-3000:]
    assert "failed: 1 (" not in proc.stderr  # job 1 is not named
    info = {job: json.loads((sweep / job / "run_info.json").read_text()) for job in ("0", "1")}
    assert info["0"]["status"] == "failed" and "no shard files match" in info["0"]["error"]
    assert info["1"]["status"] == "finished" and "error" not in info["1"]
    # The job after the failure did its work.
    merged = [json.loads(line) for line in (sweep / "1" / "captions.jsonl").read_text().splitlines()]
    assert merged == rows
    # The sweep summary lists the failure too.
    with (sweep / "sweep_summary.csv").open(newline="") as fh:
        status = {row["job"]: row["status"] for row in csv.DictReader(fh)}
    assert status["0"].startswith("failed") and "no shard files match" in status["0"], status
    assert "no metrics.json" in status["1"] and "failed" not in status["1"], status


# ---------------------------------------------------------------------------- wandb read-back


TINY_PIPELINE = [
    "stage=pipeline",
    "pipeline.methods=[fuse,random_proposal]",
    "pipeline.plot=false",
    "model@source=tiny_gpt2",
    "objective=tiny_sentiment",
    "dataset=text_targets",
    "adapter.words_per_bucket=64",
    "adapter.corpus.max_words=5000",
    "search.steps=2",
    "search.top_k=4",
    "search.beam_width=2",
    "search.min_steps=1",
    "scoring.metrics=[Bleu,ROUGE_L,CIDEr]",
    "device=cpu",
    "logger=wandb",
    "logger.mode=offline",
]


@pytest.fixture(scope="module")
def wandb_pipeline(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> dict[str, Any]:
    """A tiny pipeline run (tiny GPT-2 -> tiny RoBERTa sentiment, 2 items, 2 methods) logging to
    an offline wandb run."""
    root = tmp_path_factory.mktemp("integrity_wandb")
    cache = fresh_cache_sharing_models(root, model_cache_dir)
    data = root / "targets.json"
    data.write_text(json.dumps([
        {"id": "a", "target": "a dog on a beach", "references": ["a dog runs on the beach"]},
        {"id": "b", "target": "a red bus", "references": ["a red bus in the street"]},
    ]))
    run_dir = root / "run"
    before = head_commit()
    proc = run_py([*TINY_PIPELINE, f"dataset.annotations={data}", f"hydra.run.dir={run_dir}"],
                  isolated_env(root, cache), timeout=400)
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted((run_dir / "wandb").iterdir())
    return {"dir": run_dir, "wandb": runs[0], "proc": proc, "commits": {before, head_commit()},
            "records": read_wandb_run(runs[0])}


@pytest.mark.slow
def test_wandb_run_config_is_the_resolved_config(wandb_pipeline) -> None:
    run_dir, records = wandb_pipeline["dir"], wandb_pipeline["records"]
    run_records = [r for r in records if r["type"] == "run"]
    assert len(run_records) == 1
    config = run_records[0]["run"]["config"]["update"]
    config.pop("_wandb", None)
    resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    # The resolved config, plus the commit and the adapter cache keys, and nothing else.
    assert set(config) == set(resolved) | {"git_commit", "adapter_keys"}
    assert {k: v for k, v in config.items() if k in resolved} == resolved
    assert config["git_commit"] == info["git_commit"]
    assert config["git_commit"] in wandb_pipeline["commits"]
    assert config["adapter_keys"] == summary["adapter_keys"] and config["adapter_keys"]
    assert run_records[0]["run"]["job_type"] == "pipeline"


@pytest.mark.slow
def test_wandb_summary_holds_every_method_metric(wandb_pipeline) -> None:
    run_dir, records = wandb_pipeline["dir"], wandb_pipeline["records"]
    summary: dict[str, Any] = {}
    for record in records:  # the run's final summary: every update in order
        if record["type"] == "summary":
            summary.update(record["summary"].get("update", {}))
            for key in record["summary"].get("remove", []):
                summary.pop(key, None)
    for method in ("fuse", "random_proposal"):
        objective = json.loads((run_dir / method / "objective.json").read_text())
        metrics = json.loads((run_dir / method / "metrics.json").read_text())["metrics"]
        assert objective and {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"} <= set(metrics)
        for key, value in {**objective, **metrics}.items():
            if isinstance(value, (int, float)):
                assert summary[f"{method}/{key}"] == pytest.approx(value, rel=1e-12, abs=0), key


@pytest.mark.slow
def test_wandb_caption_tables_match_captions_jsonl(wandb_pipeline) -> None:
    run_dir, run, records = wandb_pipeline["dir"], wandb_pipeline["wandb"], wandb_pipeline["records"]
    logged = [r["files"]["files"] for r in records if r["type"] == "files"]
    tables = {f["path"] for files in logged for f in files if f["path"].endswith(".table.json")}
    for method in ("fuse", "random_proposal"):
        paths = [p for p in tables if p.startswith(f"media/table/{method}/captions_")]
        assert len(paths) == 1, tables
        table = json.loads((run / "files" / paths[0]).read_text())
        assert table["columns"] == ["id", "input", "caption", "total_loss"]
        captions = [json.loads(line)
                    for line in (run_dir / method / "captions.jsonl").read_text().splitlines()]
        assert [[c["id"], c["caption"], c["losses"]["total"]] for c in captions] == \
            [[row[0], row[2], row[3]] for row in table["data"]]
        assert [row[1] for row in table["data"]] == ["a dog on a beach", "a red bus"]
        # Every item's losses were also logged as history, one step per captioned item.
        steps = [r["history"]["item"] for r in records if r["type"] == "history"
                 and f"{method}/total" in r["history"]["item"]]
        assert [s[f"{method}/total"] for s in steps] == [c["losses"]["total"] for c in captions]


@pytest.mark.slow
def test_wandb_run_exited_once_with_code_zero(wandb_pipeline) -> None:
    exits = [r["exit"] for r in wandb_pipeline["records"] if r["type"] == "exit"]
    assert [e.get("exit_code", 0) for e in exits] == [0], exits
    assert "wandb run closed (offline, exit code 0)" in (wandb_pipeline["dir"] / "run.log").read_text()


# ---------------------------------------------------------------------------- determinism


REAL_REDUCED = [
    "logger=none",
    "device=cpu",
    "adapter.words_per_bucket=4096",  # the session's shared SmolLM2 -> MiniLM adapter
    "adapter.heldout_words=256",
    "pipeline.methods=[fuse,random_proposal]",
    "search.steps=2",
    "search.min_steps=1",
    "search.top_k=8",
    "search.beam_width=2",
    "dataset.subset.mode=first",
    "dataset.subset.n=2",
    "scoring.metrics=[Bleu,ROUGE_L,CIDEr]",
]


def _mask(name: str, data: bytes, run_dir: Path) -> bytes:
    """``data`` with the run folder's path and every declared timing field's value masked."""
    data = data.replace(str(run_dir).encode(), b"<RUN>")
    for key in TIMING_FIELDS.get(name, ()):
        data, n = re.subn(rb'"' + key.encode() + rb'": [0-9.eE+-]+', b'"' + key.encode() + b'": T', data)
        assert n > 0, f"declared timing field {key!r} not found in {name}"
    return data


def tree_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder (relative path -> masked bytes), the timing files left out."""
    return {
        path.relative_to(run_dir).as_posix(): _mask(path.name, path.read_bytes(), run_dir)
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file())
        if path.name not in TIMING_FILES
    }


@pytest.mark.integration
def test_same_seed_twice_gives_byte_identical_outputs(
    tmp_path: Path, model_cache_dir: Path, smol_minilm_adapter
) -> None:
    """Two reduced default runs on the real pair with the same seed, side by side (one per core),
    each into its own folder; the folder's own path is the only other thing masked."""
    env = isolated_env(tmp_path, model_cache_dir)  # converted weights and the fitted adapter
    dirs = [tmp_path / "run_a", tmp_path / "run_b"]
    logs = [tmp_path / f"{d.name}.log" for d in dirs]
    procs = []
    for run_dir, log in zip(dirs, logs):
        with log.open("w") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "run.py", *REAL_REDUCED, f"hydra.run.dir={run_dir}"],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT))
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=900) == 0, log.read_text()[-5000:]
    first, second = (tree_bytes(d) for d in dirs)
    assert "fuse/captions.jsonl" in first and "random_proposal/metrics.json" in first
    assert "search_curves.png" in first and "table.csv" in first and "summary.json" in first
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, differing
