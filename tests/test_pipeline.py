"""The embedded default (`python run.py`) end to end, with reduced settings, in a subprocess.

Real offline models (SmolLM2 -> MiniLM through FUSE), the bundled text targets, all three methods,
real pycocoevalcap metrics, the table and the plot. Also the real offline check of issue 3: FUSE
raises the similarity to the target over `lm_only`.
"""

from __future__ import annotations

import csv
import json
import os

import pytest

from tests.helpers import run_py

REDUCED = [
    "logger=none",
    "device=cpu",
    "adapter.words_per_bucket=4096",
    "adapter.heldout_words=256",
    "search.steps=4",
    "search.top_k=16",
    "search.beam_width=2",
    "dataset.subset.mode=first",
    "dataset.subset.n=3",
    "scoring.metrics=[Bleu,METEOR,ROUGE_L,CIDEr]",
]


@pytest.fixture(scope="module")
def pipeline_run(model_cache_dir, smol_minilm_adapter, tmp_path_factory):
    """One reduced default run; the model cache is shared with the in-process fixtures (SmolLM2
    is converted and the adapter fitted before the subprocess starts, which reuses both)."""
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, "FUSE_CACHE_DIR": str(model_cache_dir), "FUSE_LOG_DIR": str(logs)}
    proc = run_py(REDUCED, env, timeout=1500)
    runs = sorted((logs / "default").iterdir())
    assert len(runs) == 1
    return runs[0], proc.stdout


@pytest.mark.integration
def test_default_pipeline_writes_table_plot_and_metrics(pipeline_run):
    run_dir, stdout = pipeline_run
    table = (run_dir / "table.md").read_text(encoding="utf-8")
    assert table in stdout  # the summary prints the table ...
    assert str(run_dir / "search_curves.png") in stdout  # ... and where everything is
    with (run_dir / "table.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["fuse", "lm_only", "random_proposal"]
    for row in rows:
        for col in ("B-1", "B-4", "METEOR", "ROUGE-L", "CIDEr", "similarity (cos)", "LM NLL", "objective"):
            float(row[col])  # a number, not a placeholder
    png = (run_dir / "search_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    curves = json.loads((run_dir / "curves.json").read_text())
    assert set(curves) == {"fuse", "lm_only", "random_proposal"}
    assert all(len(c["objective"]) == 4 for c in curves.values())
    for method in ("fuse", "lm_only", "random_proposal"):
        metrics = json.loads((run_dir / method / "metrics.json").read_text())
        assert 0.0 <= metrics["metrics"]["Bleu_1"] <= 1.0
        assert metrics["num_captions"] == 3
        captions = [json.loads(l) for l in (run_dir / method / "captions.jsonl").read_text().splitlines()]
        assert [c["id"] for c in captions] == ["dog_beach", "pizza_table", "city_bus"]
        assert all(c["caption"].startswith("An image of") and c["steps"] == 4 for c in captions)
        info = json.loads((run_dir / method / "run_info.json").read_text())
        assert info["method"] == method and info["experiment"] == "default"
    assert (run_dir / "config_resolved.yaml").exists() and (run_dir / "run_info.json").exists()


@pytest.mark.integration
def test_fuse_raises_similarity_over_lm_only(pipeline_run):
    run_dir, _ = pipeline_run
    summary = json.loads((run_dir / "summary.json").read_text())
    sim = {m: r["objective"]["mean_cos_text_similarity"] for m, r in summary["results"].items()}
    print("mean cosine similarity to the target:", sim)
    assert sim["fuse"] > sim["lm_only"], sim
