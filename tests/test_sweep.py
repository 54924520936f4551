"""Sweep summary callback and failed jobs (fuse_repro/sweep.py), shard merging
(fuse_repro/records.py, stage=merge)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fuse_repro.data import Item, select_subset
from fuse_repro.errors import FuseError
from tests.helpers import root_config
from fuse_repro.records import merge_captions as merge_shards
from fuse_repro.sweep import FAILED_JOBS, SweepSummaryCallback, flatten, write_sweep_summary

REPO = Path(__file__).resolve().parents[1]


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict | None,
         run_info: dict | None = None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if run_info is not None:
        (job / "run_info.json").write_text(json.dumps(run_info))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [2, {"d": 3}]}, "e": None, "f": {}}) == {
        "a.b": 1, "a.c.0": 2, "a.c.1.d": 3, "e": None, "f": ""}


def test_callback_writes_summary_for_two_job_multirun(tmp_path):
    sweep = tmp_path / "multirun" / "exp" / "2024-01-01_00-00-00"
    _job(sweep, "0", ["search.steps=2", "seed=0"],
         {"metrics": {"CIDEr": 0.5, "Bleu_4": 0.1}, "bleu_stats": {"guess": [4, 3]},
          "unavailable": {"SPICE": "no jars"}},
         run_info={"experiment": "exp", "config_hash": "abc"})
    _job(sweep, "1", ["search.steps=4", "seed=0"],
         {"metrics": {"CIDEr": 0.75, "Bleu_4": 0.2}, "bleu_stats": {"guess": [5, 4]}},
         run_info={"experiment": "exp", "config_hash": "def"})
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SweepSummaryCallback().on_multirun_end(config=config)
    path = sweep / "sweep_summary.csv"
    rows = _read_csv(path)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["job", "status", "metrics_file", "overrides"]
    assert header.index("override.search.steps") < header.index("run_info.config_hash") \
        < header.index("metrics.CIDEr")
    assert [(r["job"], r["status"], r["override.search.steps"], r["metrics.CIDEr"]) for r in rows] \
        == [("0", "ok", "2", "0.5"), ("1", "ok", "4", "0.75")]
    assert rows[0]["overrides"] == "search.steps=2 seed=0"
    assert rows[0]["bleu_stats.guess.1"] == "3" and rows[1]["bleu_stats.guess.0"] == "5"
    assert rows[0]["unavailable.SPICE"] == "no jars" and rows[1]["unavailable.SPICE"] == ""
    assert rows[1]["run_info.config_hash"] == "def"


def test_summary_failed_jobs_nested_metrics_and_order(tmp_path):
    sweep = tmp_path / "sweep"
    for n in [10, 2]:
        _job(sweep, str(n), [f"x={n}"], {"metrics": {"CIDEr": n / 100}})
    failed = _job(sweep, "3", ["x=3"], None)
    for method in ["lm_only", "fuse"]:  # a pipeline job writes one metrics.json per method
        (failed.parent / "4" / method).mkdir(parents=True)
        (failed.parent / "4" / method / "metrics.json").write_text(
            json.dumps({"method": method, "metrics": {"CIDEr": 0.4}}))
    (sweep / "4" / ".hydra").mkdir()
    (sweep / "4" / ".hydra" / "overrides.yaml").write_text("- x=4\n")
    out = write_sweep_summary(sweep)
    rows = _read_csv(out)
    assert [(r["job"], r["status"], r["metrics_file"]) for r in rows] == [
        ("2", "ok", "metrics.json"), ("3", "no metrics.json", ""),
        ("4", "ok", "fuse/metrics.json"), ("4", "ok", "lm_only/metrics.json"),
        ("10", "ok", "metrics.json")]
    assert rows[2]["method"] == "fuse" and rows[1]["metrics.CIDEr"] == ""
    before = out.read_bytes()
    write_sweep_summary(sweep)
    assert out.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        write_sweep_summary(tmp_path / "missing")


# ---------------------------------------------------------------------------- shards


def _fake_captioner(item: Item) -> dict:
    """Stands in for stage=caption: a deterministic record per item."""
    return {"id": item.id, "caption": item.references[0].lower(), "method": "fuse",
            "steps": len(item.references[0]), "losses": {"clip": 0.5}}


def _write_run(path: Path, items: list[Item]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(_fake_captioner(it)) + "\n" for it in items))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_shards_merged_equal_one_unsharded_run(tmp_path):
    items = [Item(id=str(i), references=[f"Caption number {i}"]) for i in range(11)]
    full = _write_run(tmp_path / "full" / "captions.jsonl", items)
    shards = [_write_run(tmp_path / f"shard{i}" / "captions.jsonl",
                         select_subset(items, "shard", index=i, count=2)) for i in range(2)]
    # Given in reverse order, as folders: the result must not depend on either.
    merged = merge_shards([shards[1].parent, shards[0].parent], tmp_path / "merged.jsonl")
    assert _rows(tmp_path / "merged.jsonl") == merged == _rows(full)
    assert [r["id"] for r in merged] == [str(i) for i in range(11)]


def test_merge_dedupes_and_rejects_conflicts(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text('{"id": "2", "caption": "a dog", "seconds": 1.0}\n'
                 '{"id": "10", "caption": "a cat"}\n')
    b.write_text('{"id": 2, "caption": "a dog", "seconds": 2.0}\n{"id": "9", "caption": "x"}\n')
    merged = merge_shards([a, b], tmp_path / "out.jsonl")
    assert [(r["id"], r.get("seconds")) for r in merged] == [("2", 1.0), ("9", None),
                                                             ("10", None)]
    assert (tmp_path / "out.jsonl").read_text().splitlines()[0] == \
        '{"caption": "a dog", "id": "2", "seconds": 1.0}'
    b.write_text('{"id": "2", "caption": "a wolf"}\n')
    with pytest.raises(ValueError, match=r"conflicting captions for id '2': 'a dog' in .*a.jsonl "
                                         r"vs 'a wolf' in .*b.jsonl"):
        merge_shards([a, b], tmp_path / "out2.jsonl")
    assert not (tmp_path / "out2.jsonl").exists()
    with pytest.raises(FuseError, match="no shard files match"):
        merge_shards([str(tmp_path / "nothing*" / "captions.jsonl")], tmp_path / "o.jsonl")


def test_merge_keeps_methods_apart(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text('{"id": "1", "caption": "x", "method": "lm_only"}\n'
                 '{"id": "1", "caption": "y", "method": "fuse"}\n')
    merged = merge_shards([a], tmp_path / "o.jsonl")
    assert [(r["id"], r["method"]) for r in merged] == [("1", "fuse"), ("1", "lm_only")]


def test_merge_stage_with_glob(tmp_path):
    from fuse_repro.stages import merge as merge_stage

    items = [Item(id=str(i), references=[f"C {i}"]) for i in range(5)]
    for i in range(3):
        _write_run(tmp_path / "multirun" / str(i) / "captions.jsonl",
                   select_subset(items, "shard", index=i, count=3))
    cfg = root_config(["stage=merge", f"merge.inputs=[{tmp_path / 'multirun' / '*'}]"])
    out = merge_stage.run(cfg, tmp_path / "merged_run")
    assert out == {"output": str(tmp_path / "merged_run" / "captions.jsonl"), "num_captions": 5}
    assert [r["id"] for r in _rows(tmp_path / "merged_run" / "captions.jsonl")] == list("01234")
    with pytest.raises(ValueError, match="merge.inputs is empty"):
        merge_stage.check(root_config(["stage=merge"]))


# ---------------------------------------------------------------------------- real multirun


@pytest.mark.slow
def test_real_hydra_multirun_writes_summary(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "config.yaml").write_text(textwrap.dedent(f"""\
        x: 1
        name: tiny
        hydra:
          sweep:
            dir: {tmp_path / "multirun"}
            subdir: ${{hydra.job.num}}
          callbacks:
            sweep_summary:
              _target_: fuse_repro.sweep.SweepSummaryCallback
        """))
    (app / "app.py").write_text(textwrap.dedent("""\
        import json
        from pathlib import Path

        import hydra
        from hydra.core.hydra_config import HydraConfig


        @hydra.main(config_path=".", config_name="config", version_base="1.3")
        def main(cfg):
            out = Path(HydraConfig.get().runtime.output_dir)
            metrics = {"metrics": {"CIDEr": cfg.x / 10}, "dataset": {"name": cfg.name}}
            (out / "metrics.json").write_text(json.dumps(metrics))


        if __name__ == "__main__":
            main()
        """))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "app.py", "--multirun", "x=1,2"], cwd=app, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = _read_csv(tmp_path / "multirun" / "sweep_summary.csv")
    assert [(r["job"], r["override.x"], r["metrics.CIDEr"], r["dataset.name"]) for r in rows] == [
        ("0", "1", "0.1", "tiny"), ("1", "2", "0.2", "tiny")]


# ---------------------------------------------------------------------------- wandb names


def test_each_multirun_gets_its_own_wandb_group(monkeypatch, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fuse_repro.tracking import run_names

    from fuse_repro.config import LoggerConfig

    logger = LoggerConfig(name="wandb", group="coco")
    assert run_names(logger, "coco", tmp_path / "2024-01-01_00-00-00", "caption") == (
        "coco", "coco-caption-2024-01-01_00-00-00")  # a single run keeps logger.group
    job = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": "/out/multirun/coco/2024-05-06"},
                            "overrides": {"task": ["search.top_k=32", "seed=1"]}, "job": {"num": 3}})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: job))
    assert run_names(logger, "coco", tmp_path / "3", "caption") == (
        "coco-sweep-2024-05-06", "3: search.top_k=32 seed=1")
    logger.group = "my_study"  # an explicit group wins
    assert run_names(logger, "coco", tmp_path / "3", "caption")[0] == "my_study"


def test_failed_jobs_are_named(tmp_path):
    from fuse_repro.sweep import failed_jobs

    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["x=1"], {"metrics": {"CIDEr": 0.1}}, run_info={"status": "finished"})
    _job(sweep, "1", ["x=2"], None, run_info={"status": "failed", "error": "bad x"})
    _job(sweep, "2", ["x=3"], None, run_info={"status": "running"})
    _job(sweep, "3", ["x=4"], None)  # no run_info: not a run.py job, not judged
    assert failed_jobs(sweep) == ["1 (x=2): bad x",
                                  "2 (x=3): it stopped without recording an end (killed?)"]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SweepSummaryCallback().on_multirun_end(config=config)
    assert FAILED_JOBS == failed_jobs(sweep)
    rows = {r["job"]: r["status"] for r in _read_csv(sweep / "sweep_summary.csv")}
    assert rows == {"0": "ok", "1": "failed: bad x",
                    "2": "failed: it stopped without recording an end (killed?)",
                    "3": "no metrics.json"}
