"""FUSE fitting, its guards and its cache (fuse_repro.adapter, fuse_repro.corpus), on toy models
where the truth is known. The bridge is tested in test_bridge.py."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fuse_repro.corpus as corpus_mod
from fuse_repro.adapter import AdapterError, cache_fields, fit_adapter, word_tensor
from fuse_repro.config import CorpusConfig, stable_hash
from fuse_repro.corpus import CorpusError, corpus_identity, load_corpus_words, make_buckets, tokenize_words
from fuse_repro.testing.toy import ToyModel, make_toy_pair, real_shapes_pair, toy_adapter_config


# ----------------------------------------------------------------------------------------------
# fitting recovers the planted maps
# ----------------------------------------------------------------------------------------------
def test_fit_recovers_planted_t_linear_maps(toy, toy_adapter):
    assert toy.exact and toy_adapter.kind == "fuse"
    assert sorted(toy_adapter.maps) == [1, 2, 3, 4]
    for l, truth in toy.maps.items():
        fitted = toy_adapter.maps[l].double()
        assert fitted.shape == truth.shape, (l, fitted.shape)
        # stored maps are float32: compare at float32 precision
        torch.testing.assert_close(fitted, truth, rtol=1e-5, atol=1e-5)
    for row in toy_adapter.report["buckets"]:
        assert row["words"] > toy.source.dim  # enough words to pin the map down
        assert row["residual_fit"] < 1e-10
        assert row["baseline_fit"] > 0.5  # the mean embedding is a poor predictor
        assert row["capped"] is True and row["requested_words"] == 100000  # "all of them"


def _bcirc_lstsq(x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
    """Independent reference: min ||X_i * M - X_j|| as one dense least-squares problem on the
    block-circulant matrix (Kilmer & Martin), float64. x_i (w, d_i, D), x_j (w, d_j, D)."""
    w, d_i, p = x_i.shape
    bc = torch.zeros(w * p, d_i * p, dtype=torch.float64)
    for a in range(p):
        for b in range(p):
            bc[a * w : (a + 1) * w, b * d_i : (b + 1) * d_i] = x_i[:, :, (a - b) % p]
    rhs = torch.cat([x_j[:, :, s] for s in range(p)], dim=0)  # (w*D, d_j)
    sol = torch.linalg.lstsq(bc, rhs, driver="gelsd").solution  # (d_i*D, d_j)
    return torch.stack([sol[s * d_i : (s + 1) * d_i] for s in range(p)], dim=-1)  # (d_i, d_j, D)


def test_fit_with_real_shapes_matches_dense_least_squares(tmp_path):
    """Source words longer than target words, so maps deeper than the words and mixed depths
    between buckets: each map is the least-squares solution over the bucket's words, built here
    with loops from the token ids and solved densely."""
    real = real_shapes_pair()
    assert not real.exact
    adapter = fit_adapter(real.source, real.target, toy_adapter_config(tmp_path, real.words), None)
    src, tgt = real.source.tokenizer, real.target.tokenizer
    depths = {l: m.shape[-1] for l, m in adapter.maps.items()}
    assert depths == {1: 2, 2: 4, 3: 3, 4: 4}  # deeper than l for l < 3, mixed across buckets
    for l, m in adapter.maps.items():
        words = [w for w in real.words if len(tgt.word_ids(w)) == l and len(src.word_ids(w)) <= 4]
        p = depths[l]
        x_i = torch.zeros(len(words), real.source.dim, p, dtype=torch.float64)
        x_j = torch.zeros(len(words), real.target.dim, p, dtype=torch.float64)
        for r, w in enumerate(words):
            for s, tok in enumerate(src.word_ids(w)):
                x_i[r, :, s] = real.source.table[tok]
            for s, tok in enumerate(tgt.word_ids(w)):
                x_j[r, :, s] = real.target.table[tok]
        row = next(r for r in adapter.report["buckets"] if r["target_tokens"] == l)
        assert row["words"] == len(words) and row["depth"] == p
        torch.testing.assert_close(m.double(), _bcirc_lstsq(x_i, x_j), rtol=1e-4, atol=1e-5)


def test_buckets_use_mid_sentence_forms_and_seeded_samples(toy):
    words = toy.words
    a = make_buckets(words, toy.source.tokenizer, toy.target.tokenizer, 4, 50, 10, seed=3)
    b = make_buckets(words, toy.source.tokenizer, toy.target.tokenizer, 4, 50, 10, seed=3)
    c = make_buckets(words, toy.source.tokenizer, toy.target.tokenizer, 4, 50, 10, seed=4)
    assert [a[l].fit_words for l in a] == [b[l].fit_words for l in b]
    assert [a[l].fit_words for l in a] != [c[l].fit_words for l in c]
    for l, bucket in a.items():
        assert len(bucket.fit_words) == 50
        assert all(len(t) == l for t in bucket.fit_tgt)
        assert bucket.depth == max([l] + [len(s) for s in bucket.fit_src])
        assert not set(map(tuple, bucket.fit_tgt)) & set(map(tuple, bucket.held_tgt))
        # mid-sentence form: the leading-space piece, as the word appears inside a caption
        assert toy.source.tokenizer.decode(bucket.fit_src[0]).startswith(" ")


def test_word_tensor_layout_and_device():
    table = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # token t -> [2t, 2t+1]
    x = word_tensor(table, [[1], [2, 3, 4]], depth=3, dtype=torch.float64)
    assert x.shape == (2, 2, 3) and x.dtype == torch.float64
    expect = torch.tensor([[[2, 0, 0], [3, 0, 0]], [[4, 6, 8], [5, 7, 9]]], dtype=torch.float64)
    assert torch.equal(x, expect)
    assert x[..., 1].is_contiguous() is False and x.permute(0, 2, 1).is_contiguous()  # (w, D, d)
    meta = word_tensor(table.to("meta"), [[1], [2, 3]], depth=4, dtype=torch.float32)
    assert meta.device.type == "meta" and meta.shape == (2, 2, 4)
    on = word_tensor(table, [[1]], depth=1, dtype=torch.float32, device="meta")
    assert on.device.type == "meta"


# ----------------------------------------------------------------------------------------------
# guards
# ----------------------------------------------------------------------------------------------
def test_too_few_words_in_a_bucket_is_refused(toy, tmp_path):
    two_letter = [w for w in toy.words if len(w) == 2][:5]  # 5 words of 1 target token
    cfg = toy_adapter_config(tmp_path, two_letter + [w for w in toy.words if 3 <= len(w) <= 4])
    with pytest.raises(AdapterError, match=r"1 target tokens has only 5 fitting words.*min_bucket_words=10"):
        fit_adapter(toy.source, toy.target, cfg, None)
    adapter = fit_adapter(toy.source, toy.target, dataclasses.replace(cfg, min_bucket_words=0), None)
    assert adapter.report["buckets"][0]["words"] == 5
    with pytest.raises(ValueError, match="min_bucket_words"):
        dataclasses.replace(cfg, min_bucket_words=-1)


def test_capped_bucket_is_flagged_in_report_and_log(toy, tmp_path, caplog):
    cfg = toy_adapter_config(tmp_path, toy.words, words_per_bucket=250, heldout_words=20)
    with caplog.at_level(logging.WARNING, logger="fuse_repro.adapter"):
        adapter = fit_adapter(toy.source, toy.target, cfg, None)
    rows = {r["target_tokens"]: r for r in adapter.report["buckets"]}
    capped = [l for l, r in rows.items() if r["capped"]]
    assert capped and all(rows[l]["words"] < 250 for l in capped)
    assert all(rows[l]["words"] == 250 for l in rows if l not in capped)
    for l in capped:
        assert f"adapter bucket l={l} is capped: {rows[l]['words']} fitting words of the requested N=250" in caplog.text
    from fuse_repro.adapter import format_report

    assert "capped: N=250 requested" in format_report(adapter.report)


def test_corpus_without_some_length_is_documented_behaviour(toy, tmp_path, caplog):
    # only words of 1-4 letters: target lengths 1 and 2, none of 3 or 4
    short = [w for w in toy.words if len(w) <= 4]
    with caplog.at_level(logging.WARNING, logger="fuse_repro.adapter"):
        adapter = fit_adapter(toy.source, toy.target, toy_adapter_config(tmp_path, short), None)
    assert sorted(adapter.maps) == [1, 2]
    rows = {r["target_tokens"]: r for r in adapter.report["buckets"]}
    assert rows[3]["words"] == 0 and rows[3]["residual_fit"] is None and rows[3]["capped"] is False
    assert "no corpus word has exactly 3 target tokens" in caplog.text


def test_corpus_with_no_usable_word_is_an_error(tmp_path):
    pair = make_toy_pair(n_words=600, seed=2, max_len=10)
    long_only = [w for w in pair.words if len(w) > 8]  # 5 target tokens each
    assert long_only
    with pytest.raises(AdapterError, match="nothing to fit"):
        fit_adapter(pair.source, pair.target, toy_adapter_config(tmp_path, long_only), None)


@pytest.mark.parametrize("field,value,match", [
    ("max_tokens", 0, "max_tokens"),
    ("words_per_bucket", 0, "words_per_bucket"),
    ("overflow", "sometimes", "overflow"),
    ("fit_dtype", "float16", "fit_dtype"),
])
def test_bad_adapter_config(toy, tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(toy_adapter_config(tmp_path, toy.words), **{field: value})


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
def test_cache_hit_key_fields_and_corruption(toy, tmp_path, caplog):
    cfg = toy_adapter_config(tmp_path, toy.words[:400], words_per_bucket=60, heldout_words=5)
    cache = tmp_path / "cache"
    first = fit_adapter(toy.source, toy.target, cfg, cache)
    assert not first.from_cache and (first.path / "meta.json").exists()
    second = fit_adapter(toy.source, toy.target, cfg, cache)
    assert second.from_cache and second.key == first.key
    assert second.report == first.report and sorted(second.maps) == sorted(first.maps)
    for l in first.maps:
        assert torch.equal(first.maps[l], second.maps[l])
    # every determining field changes the key
    changes = dict(max_tokens=3, words_per_bucket=61, heldout_words=6, seed=1, rcond=1e-9,
                   fit_dtype="float32", min_bucket_words=11,
                   corpus=dataclasses.replace(cfg.corpus, max_words=300))
    keys = {first.key}
    for name, value in changes.items():
        changed = fit_adapter(toy.source, toy.target, dataclasses.replace(cfg, **{name: value}), None)
        assert changed.key not in keys, name
        keys.add(changed.key)
    # the use-time overflow policy does not
    assert fit_adapter(toy.source, toy.target, dataclasses.replace(cfg, overflow="zero"), cache).key == first.key
    # other models change it
    other_target = ToyModel("toy-target", toy.target.tokenizer, toy.target.table * 2)
    assert fit_adapter(toy.source, other_target, cfg, None).key != first.key
    # a truncated cache file is refitted with a warning in the log (run.log), not a crash
    maps_file = first.path / "maps.safetensors"
    maps_file.write_bytes(maps_file.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="fuse_repro.adapter"):
        third = fit_adapter(toy.source, toy.target, cfg, cache)
    assert "unreadable or mismatched" in caplog.text and "refitting" in caplog.text
    assert not third.from_cache
    for l in first.maps:
        assert torch.equal(first.maps[l], third.maps[l])
    assert fit_adapter(toy.source, toy.target, cfg, cache).from_cache  # repaired


@pytest.mark.parametrize("copied", ["maps.safetensors", "report.json"])
def test_file_copied_from_another_cache_entry_is_refitted(toy, tmp_path, caplog, copied):
    cache = tmp_path / "cache"
    cfg_a = toy_adapter_config(tmp_path, toy.words[:400], words_per_bucket=60, heldout_words=5)
    cfg_b = dataclasses.replace(cfg_a, seed=7)  # same lengths and depths, different words
    a = fit_adapter(toy.source, toy.target, cfg_a, cache)
    b = fit_adapter(toy.source, toy.target, cfg_b, cache)
    assert a.key != b.key and sorted(a.maps) == sorted(b.maps)
    shutil.copy(b.path / copied, a.path / copied)  # a valid file, from the wrong entry
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fuse_repro.adapter"):
        again = fit_adapter(toy.source, toy.target, cfg_a, cache)
    assert not again.from_cache and "mismatched" in caplog.text and b.key in caplog.text
    for l in a.maps:
        assert torch.equal(again.maps[l], a.maps[l])


def test_every_corpus_field_and_the_corpus_content_change_the_key(toy, tmp_path):
    """Bug C1: a key that keeps only part of the corpus config, or not its content."""
    words = toy.words[:300]
    base_cfg = toy_adapter_config(tmp_path, [], corpus=CorpusConfig(kind="wordfreq"))
    ident = {"words_sha256": "a" * 64, "words": 300, "package": "wordfreq", "package_version": "3.1.1"}

    def key(cfg=base_cfg, corpus=ident):
        return stable_hash(cache_fields(toy.source, toy.target, cfg, corpus))

    keys = {key()}
    variants = {"kind": "text_file", "lang": "de", "path": "/some/words.txt", "name": "wikitext-2-raw-v1",
                "max_words": 1000}
    assert set(variants) == {f.name for f in dataclasses.fields(CorpusConfig)}  # every field varied
    for name, value in variants.items():
        cfg = dataclasses.replace(base_cfg, corpus=dataclasses.replace(base_cfg.corpus, **{name: value}))
        assert key(cfg) not in keys, name
        keys.add(key(cfg))
    for name, value in {"words_sha256": "b" * 64, "words": 301, "package_version": "3.2.0"}.items():
        assert key(corpus={**ident, name: value}) not in keys, name
        keys.add(key(corpus={**ident, name: value}))
    # the identity itself reads the words and the installed package
    cfg = CorpusConfig(kind="wordfreq")
    assert corpus_identity(cfg, words) == corpus_identity(cfg, list(words))
    assert corpus_identity(cfg, words)["words_sha256"] != corpus_identity(cfg, words[::-1])["words_sha256"]
    assert corpus_identity(cfg, words)["package_version"] == corpus_mod.package_version("wordfreq")


def test_changed_corpus_content_or_package_version_refits(toy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = toy_adapter_config(tmp_path, toy.words[:400], words_per_bucket=60, heldout_words=5)
    first = fit_adapter(toy.source, toy.target, cfg, cache)
    assert fit_adapter(toy.source, toy.target, cfg, cache).from_cache
    # same file name, other words: the key follows the content
    Path(cfg.corpus.path).write_text(" ".join(toy.words[:399]) + "\n", encoding="utf-8")
    changed = fit_adapter(toy.source, toy.target, cfg, cache)
    assert not changed.from_cache and changed.key != first.key
    # a new version of the package that supplies the corpus refits too
    Path(cfg.corpus.path).write_text(" ".join(toy.words[:400]) + "\n", encoding="utf-8")
    assert fit_adapter(toy.source, toy.target, cfg, cache).key == first.key
    monkeypatch.setitem(corpus_mod.CORPUS_PACKAGES, "text_file", "wordfreq")
    monkeypatch.setattr(corpus_mod, "package_version", lambda name: "99.0")
    upgraded = fit_adapter(toy.source, toy.target, cfg, cache)
    assert not upgraded.from_cache and upgraded.key != first.key


def test_cache_load_puts_maps_on_the_requested_device(toy, tmp_path):
    cfg = toy_adapter_config(tmp_path, toy.words[:400], words_per_bucket=60, heldout_words=5)
    fit_adapter(toy.source, toy.target, cfg, tmp_path / "cache")
    loaded = fit_adapter(toy.source, toy.target, cfg, tmp_path / "cache", device="meta")
    assert loaded.from_cache and all(m.device.type == "meta" for m in loaded.maps.values())


# ----------------------------------------------------------------------------------------------
# tokenized-corpus cache
# ----------------------------------------------------------------------------------------------
def test_tokenized_corpus_is_cached_per_tokenizer(toy, tmp_path, caplog):
    words = toy.words[:300]
    tok = toy.source.tokenizer
    fresh = tokenize_words(words, tok, None).lists()
    assert fresh == tok.mid_sentence_ids(words)
    stored = tokenize_words(words, tok, tmp_path)
    entries = list((tmp_path / "tokenized").iterdir())
    assert stored.lists() == fresh and len(entries) == 1
    assert stored.select([3, 0]) == [fresh[3], fresh[0]]
    with caplog.at_level(logging.INFO, logger="fuse_repro.corpus"):
        again = tokenize_words(words, tok, tmp_path)
    assert again.lists() == fresh and "cache hit" in caplog.text
    special = {fresh[5][0]}  # a token of word 5 only (toy pieces belong to one word)
    assert np.flatnonzero(again.any_of(special)).tolist() == [5]
    # another tokenizer or other words are other entries
    tokenize_words(words, toy.target.tokenizer, tmp_path)
    tokenize_words(words[:-1], tok, tmp_path)
    assert len(list((tmp_path / "tokenized").iterdir())) == 3
    # a damaged entry is tokenized again and rewritten
    ids_file = entries[0] / "ids.npz"
    np.savez(ids_file, lengths=np.array([1], dtype=np.int32), flat=np.array([5]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fuse_repro.corpus"):
        assert tokenize_words(words, tok, tmp_path).lists() == fresh
    assert "unreadable" in caplog.text
    assert tokenize_words(words, tok, tmp_path).lists() == fresh


# ----------------------------------------------------------------------------------------------
# corpora
# ----------------------------------------------------------------------------------------------
def test_empty_and_missing_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="holds no words"):
        load_corpus_words(CorpusConfig(kind="text_file", path=str(empty)))
    with pytest.raises(CorpusError, match="not found"):
        load_corpus_words(CorpusConfig(kind="text_file", path=str(tmp_path / "nope.txt")))
    with pytest.raises(CorpusError, match="needs adapter.corpus.path"):
        load_corpus_words(CorpusConfig(kind="text_file"))
