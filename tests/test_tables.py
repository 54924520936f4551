"""Table regeneration from a tree of fake run folders (fuse_repro/tables.py, stage=table)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fuse_repro.errors import FuseError
from tests.helpers import SHARED, isolated_env, needs_shared, root_config, run_py
from fuse_repro.tables import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    build_tables,
    collect_runs,
    format_value,
)

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, metrics: dict, run_info: dict | None = None,
         hydra_cfg: dict | None = None, sub: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if run_info is not None:
        (folder / "run_info.json").write_text(json.dumps(run_info))
    if hydra_cfg is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(hydra_cfg))
    target = folder / sub if sub else folder
    target.mkdir(parents=True, exist_ok=True)
    (target / "metrics.json").write_text(json.dumps(metrics))
    return target


SENTI_CFG = {"experiment_name": "senti_pos", "seed": 0, "stage": "caption",
             "dataset": {"name": "senticap_positive", "format": "senticap"},
             "search": {"method": "fuse", "steps": 16}, "paths": {"log_dir": "/somewhere"}}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    # COCO run of experiment fuse_coco (labels from run_info.json, SPICE unavailable).
    _run(out / "fuse_coco" / "2024-01-01_00-00-00",
         {"dataset": {"name": "coco_karpathy"}, "method": "fuse",
          "metrics": {"Bleu_4": 0.01594, "METEOR": 0.14716, "CIDEr": 0.15934},
          "unavailable": {"SPICE": "jars missing"}},
         run_info={"experiment": "fuse_coco", "config_hash": "aaaaaaaa11112222"})
    # An older COCO run of the same experiment: superseded by the newer folder.
    _run(out / "fuse_coco" / "2023-12-31_00-00-00",
         {"dataset": {"name": "coco_karpathy"}, "method": "fuse",
          "metrics": {"Bleu_4": 0.5, "METEOR": 0.5, "CIDEr": 0.5}},
         run_info={"experiment": "fuse_coco", "config_hash": "0000000000000000"})
    # NoCaps run: metrics one level below the run folder that holds run_info.json.
    _run(out / "fuse_coco" / "2024-01-02_00-00-00",
         {"dataset": {"name": "nocaps_val"}, "method": "fuse",
          "metrics": {"CIDEr": 0.2065, "SPICE": 0.0664, "Bleu_4": 0.3},
          "domains": {"in-domain": {"CIDEr": 0.3}}},
         run_info={"experiment": "fuse_coco", "config_hash": "bbbbbbbb33334444"}, sub="fuse")
    # SentiCap positive run with labels only in .hydra/config.yaml.
    _run(out / "multirun" / "senti" / "2024-02-01_00-00-00" / "0",
         {"dataset": {"name": "senticap_positive"},
          "metrics": {"Bleu_3": 0.0191, "METEOR": 0.104},
          "sentiment": {"accuracy": 0.838}},
         hydra_cfg=SENTI_CFG)
    # SentiCap negative run_info with method and dataset overriding metrics.json.
    _run(out / "senti_neg" / "2024-02-02_00-00-00",
         {"dataset": {"name": "other"}, "metrics": {"Bleu_3": 0.0229, "METEOR": 0.0742},
          "sentiment": {"accuracy": 0.856}},
         run_info={"experiment": "senti_neg", "config_hash": "cccccccc55556666",
                   "method": "fuse", "dataset": "senticap_negative"})
    # A run of a dataset no table shows.
    _run(out / "demo" / "2024-03-01_00-00-00",
         {"dataset": {"name": "demo_text_targets"}, "metrics": {"CIDEr": 1.0}},
         run_info={"experiment": "demo", "config_hash": "dddddddddddddddd"})
    return out


def _senti_hash() -> str:
    """A saved config that is not a whole run config (no run_info.json beside it) is labelled by
    the hash of its result-determining keys as saved."""
    from fuse_repro.config import RUN_HASH_EXCLUDE, stable_hash

    return stable_hash({k: v for k, v in SENTI_CFG.items() if k not in RUN_HASH_EXCLUDE})


def test_collect_runs_labels(tree):
    runs = {r.relpath: r for r in collect_runs([tree])}
    assert sorted(runs) == [
        "outputs/demo/2024-03-01_00-00-00",
        "outputs/fuse_coco/2023-12-31_00-00-00",
        "outputs/fuse_coco/2024-01-01_00-00-00",
        "outputs/fuse_coco/2024-01-02_00-00-00/fuse",
        "outputs/multirun/senti/2024-02-01_00-00-00/0",
        "outputs/senti_neg/2024-02-02_00-00-00",
    ]
    nocaps = runs["outputs/fuse_coco/2024-01-02_00-00-00/fuse"]
    assert (nocaps.experiment, nocaps.config_hash, nocaps.method, nocaps.dataset) == (
        "fuse_coco", "bbbbbbbb33334444", "fuse", "nocaps_val")
    senti = runs["outputs/multirun/senti/2024-02-01_00-00-00/0"]
    assert (senti.experiment, senti.method, senti.dataset) == ("senti_pos", "fuse",
                                                               "senticap_positive")
    assert senti.config_hash == _senti_hash()
    neg = runs["outputs/senti_neg/2024-02-02_00-00-00"]
    assert (neg.method, neg.dataset) == ("fuse", "senticap_negative")


def test_tables_markdown_csv_latex(tree, tmp_path):
    summary = build_tables([tree], tmp_path / "tables")
    assert summary["num_runs"] == 6
    assert summary["rows"] == {"table1": 1, "table2": 2, "table_coco_text": 0}
    md1 = (tmp_path / "tables" / "table1.md").read_text()
    lines = md1.splitlines()
    assert ("| Method | Source | MS-COCO B-4 | MS-COCO M | MS-COCO C | MS-COCO S | "
            "NoCaps-val (overall) C | NoCaps-val (overall) S |") in lines
    assert "| ZeroCap (Tewel et al., 2022) | paper | 2.60 | 11.50 | 14.60 | 5.50 | – | – |" \
        in lines
    assert "| FUSE (GPT2-M + ViT-B/32) | paper | 1.59 | 14.72 | 15.93 | 9.15 | 20.65 | 6.64 |" \
        in lines
    assert ("| fuse_coco [fuse] | ours (aaaaaaaa, bbbbbbbb) | 1.59 | 14.72 | 15.93 | – | "
            "20.65 | 6.64 |") in lines
    assert ("- fuse_coco [fuse]: coco run outputs/fuse_coco/2023-12-31_00-00-00 superseded by "
            "outputs/fuse_coco/2024-01-01_00-00-00") in lines
    assert "demo" not in md1

    md2 = (tmp_path / "tables" / "table2.md").read_text().splitlines()
    assert ("| FUSE (GPT2-M + ViT-B/32 + RoBERTa) | paper | 1.91 | 10.40 | 83.8 | 2.29 | 7.42 | "
            "85.6 |") in md2
    senti = _senti_hash()[:8]
    assert f"| senti_pos [fuse] | ours ({senti}) | 1.91 | 10.40 | 83.8 | – | – | – |" in md2
    assert "| senti_neg [fuse] | ours (cccccccc) | – | – | – | 2.29 | 7.42 | 85.6 |" in md2

    rows = list(csv.DictReader(io.StringIO((tmp_path / "tables" / "table1.csv").read_text())))
    assert [r["source"] for r in rows] == ["paper"] * len(PAPER_TABLE1) + ["ours"]
    ours = rows[-1]
    assert ours == {
        "method": "fuse_coco [fuse]", "source": "ours", "experiment": "fuse_coco",
        "config_hashes": "coco=aaaaaaaa11112222;nocaps=bbbbbbbb33334444",
        "runs": "coco=outputs/fuse_coco/2024-01-01_00-00-00;"
                "nocaps=outputs/fuse_coco/2024-01-02_00-00-00/fuse", "coverage": "",
        "coco_B4": "1.59", "coco_M": "14.72", "coco_C": "15.93", "coco_S": "–",
        "nocaps_C": "20.65", "nocaps_S": "6.64"}
    rows2 = list(csv.DictReader(io.StringIO((tmp_path / "tables" / "table2.csv").read_text())))
    assert len(rows2) == len(PAPER_TABLE2) + 2
    assert rows2[0]["pos_Acc"] == "97.2" and rows2[0]["neg_B3"] == "1.78"

    tex = (tmp_path / "tables" / "table1.tex").read_text().splitlines()
    assert r"Method & Source & \multicolumn{4}{c}{MS-COCO} & " \
           r"\multicolumn{2}{c}{NoCaps-val (overall)} \\" in tex
    assert r"ZeroCap (Tewel et al., 2022) & paper & 2.60 & 11.50 & 14.60 & 5.50 & -- & -- \\" \
        in tex
    assert r"fuse\_coco [fuse] & ours (aaaaaaaa, bbbbbbbb) & 1.59 & 14.72 & 15.93 & -- & " \
           r"20.65 & 6.64 \\" in tex
    assert tex.count(r"\midrule") == 2  # after the header, between paper and our rows


def test_tables_are_deterministic_and_filterable(tree, tmp_path):
    build_tables([tree], tmp_path / "a")
    build_tables([tree], tmp_path / "b")
    for name in ["table1.md", "table1.tex", "table1.csv", "table2.md", "table2.tex",
                 "table2.csv"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    only = build_tables([tree], tmp_path / "c", experiments=["senti_neg"], formats=["md"])
    assert only["rows"] == {"table1": 0, "table2": 1, "table_coco_text": 0}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "runs.md", "table1.md", "table2.md", "table_coco_text.md"]
    with pytest.raises(ValueError, match=r"unknown table formats \['html'\]"):
        build_tables([tree], tmp_path / "d", formats=["html"])
    with pytest.raises(FuseError, match="does not exist"):
        build_tables([tmp_path / "nope"], tmp_path / "d")


def test_custom_dataset_roles(tree, tmp_path):
    summary = build_tables([tree], tmp_path / "t", datasets={"coco": ["demo_text_targets"]})
    assert summary["rows"]["table1"] == 1
    md = (tmp_path / "t" / "table1.md").read_text()
    assert "| demo | ours (dddddddd) | – | – | 100.00 | – | – | – |" in md
    with pytest.raises(ValueError, match=r"unknown table.datasets roles \['flickr'\]"):
        build_tables([tree], tmp_path / "t", datasets={"flickr": ["x"]})


def test_every_run_found_is_listed_with_why_it_is_left_out(tree, tmp_path):
    (tree / "broken" / "2024-04-01_00-00-00").mkdir(parents=True)
    (tree / "broken" / "2024-04-01_00-00-00" / "metrics.json").write_text("{not json")
    summary = build_tables([tree], tmp_path / "t", experiments=["fuse_coco", "demo"])
    assert summary["num_runs"] == 7 and summary["num_used"] == 2
    why = {r["run"]: r["left_out"] for r in summary["runs"]}
    assert why["outputs/fuse_coco/2024-01-01_00-00-00"] is None
    assert why["outputs/fuse_coco/2023-12-31_00-00-00"] == (
        "superseded by outputs/fuse_coco/2024-01-01_00-00-00")
    assert why["outputs/demo/2024-03-01_00-00-00"].startswith(
        "dataset 'demo_text_targets' is in no table")
    assert why["outputs/senti_neg/2024-02-02_00-00-00"] == (
        "experiment 'senti_neg' not in table.experiments")
    assert why["outputs/broken/2024-04-01_00-00-00"].startswith("metrics.json is not valid JSON")
    runs_md = (tmp_path / "t" / "runs.md").read_text()
    assert runs_md.startswith("**Runs found: 7; in a table: 2; left out: 5**")
    assert ("| outputs/fuse_coco/2024-01-02_00-00-00/fuse | fuse_coco | fuse | nocaps_val | ours | "
            "table1 row 'fuse_coco [fuse]' |") in runs_md


def test_format_value():
    assert format_value(None, 2) == "–"
    assert format_value(15.934, 2) == "15.93"
    assert format_value(83.75, 1) == "83.8"


def test_table_stage(tree, tmp_path):
    from fuse_repro.stages import table as table_stage

    cfg = root_config(["stage=table", f"paths.log_dir={tree}"])
    out = tmp_path / "stage_out"
    summary = table_stage.run(cfg, out)
    assert summary["rows"] == {"table1": 1, "table2": 2, "table_coco_text": 0}
    assert (out / "table1.md").read_text() == _fresh(tree, tmp_path / "direct", "table1.md")
    with pytest.raises(ValueError, match=r"unknown key table.bogus"):
        root_config(["stage=table", "+table.bogus=1"])


def _fresh(tree: Path, out: Path, name: str) -> str:
    build_tables([tree], out)
    return (out / name).read_text()


@pytest.mark.slow
@needs_shared
def test_an_external_results_file_is_never_shown_as_ours(tmp_path: Path) -> None:
    """Issue 18: a 2-caption COCO results file scored under experiment=coco_text_targets (whose
    search.method is fuse) is an external row named after the file, with its partial coverage;
    it neither appears as ``coco_text_targets [fuse] | ours`` nor replaces our FUSE row."""
    coco = json.loads((SHARED / "coco_karpathy" / "captions_karpathy_test5k_cocofmt.json")
                      .read_text())
    ids = [im["id"] for im in coco["images"][:2]]
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": i, "caption": "a man riding a horse"}
                                   for i in ids]))
    logs = tmp_path / "logs"
    # Our FUSE row, as a pipeline's method folder records it.
    ours = logs / "coco_text_targets" / "2020-01-01_00-00-00" / "fuse"
    ours.mkdir(parents=True)
    (ours / "metrics.json").write_text(json.dumps({
        "dataset": {"name": "coco_text_targets"}, "method": "fuse", "num_captions": 50,
        "num_items": 50, "metrics": {"Bleu_1": 0.5, "Bleu_4": 0.1, "METEOR": 0.2,
                                      "ROUGE_L": 0.3, "CIDEr": 0.4}}))
    (ours / "run_info.json").write_text(json.dumps({
        "experiment": "coco_text_targets", "method": "fuse", "config_hash": "f" * 16,
        "dataset": "coco_text_targets"}))
    env = {**isolated_env(tmp_path, tmp_path / "cache"), "FUSE_DATA_DIR": str(SHARED),
           "FUSE_LOG_DIR": str(logs)}
    # the command; scoring.metrics=[Bleu] only spares METEOR's 20 s
    run_py(["stage=score", "experiment=coco_text_targets", "dataset.subset.mode=all",
            "scoring.allow_missing=true", f"scoring.captions={results}", "scoring.metrics=[Bleu]",
            "logger=none"], env)
    run_py(["stage=table", f"table.roots=[{logs}]", "logger=none",
            f"hydra.run.dir={tmp_path / 'table'}"], env)
    md = (tmp_path / "table" / "table_coco_text.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2, md
    assert rows[0].startswith("| results.json | external; partial: 2/5000 items | "), rows
    assert rows[1] == "| coco_text_targets [fuse] | ours (ffffffff) | 50.00 | 10.00 | 20.00 | " \
                      "30.00 | 40.00 |", rows
    table_csv = list(csv.DictReader(io.StringIO((tmp_path / "table" / "table_coco_text.csv")
                                                .read_text())))
    assert [(r["method"], r["source"], r["coverage"]) for r in table_csv] == [
        ("results.json", "external", "coco_text=2/5000"), ("coco_text_targets [fuse]", "ours", "")]
