"""The real offline cross-tokenizer pair: SmolLM2 (byte-level BPE) -> MiniLM (WordPiece)."""

from __future__ import annotations

import pytest
import torch

from fuse_repro.adapter import fit_adapter, format_report
from fuse_repro.config import AdapterConfig


@pytest.mark.integration
def test_smollm2_to_minilm_fit_beats_mean_baseline(smol_minilm_adapter, smollm2, minilm, model_cache_dir):
    adapter = smol_minilm_adapter
    print(format_report(adapter.report))
    assert adapter.kind == "fuse"
    assert sorted(adapter.maps) == [1, 2, 3, 4]
    for l, m in adapter.maps.items():
        assert m.shape[:2] == (smollm2.dim, minilm.dim)
        assert m.shape[2] == adapter.meta["depths"][str(l)] >= l
    rows = [r for r in adapter.report["buckets"] if r["words"] > 0]
    assert len(rows) == 4
    for row in rows:
        assert row["words"] == 4096 and row["heldout_words"] > 0
        # the held-out residual beats predicting the mean word embedding, in every bucket
        assert row["residual_heldout"] < row["baseline_heldout"], row
        assert row["residual_fit"] <= row["residual_heldout"] + 1e-6, row
    # a second fit with the same settings is a cache hit with identical maps
    again = fit_adapter(smollm2, minilm, AdapterConfig(words_per_bucket=4096, heldout_words=256), model_cache_dir)
    assert again.from_cache and again.key == adapter.key
    assert sorted(again.maps) == sorted(adapter.maps)
    for l, m in adapter.maps.items():
        assert torch.equal(again.maps[l], m), l  # bit for bit, not just the same key
