"""FUSE fitting, cache and the bridge's backward, on toy models where the truth is known."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from fuse_repro.adapter import (
    AdapterError,
    Bridge,
    fit_adapter,
    make_buckets,
)
from fuse_repro.config import AdapterConfig, CorpusConfig
from fuse_repro.corpus import CorpusError, load_corpus_words
from tests.toy import ToyModel, make_toy_pair, naive_tprod


def corpus_file(tmp_path: Path, words: list[str]) -> CorpusConfig:
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(words) + "\n", encoding="utf-8")
    return CorpusConfig(kind="text_file", path=str(path))


def toy_cfg(tmp_path: Path, words: list[str], **kw) -> AdapterConfig:
    base = dict(max_tokens=4, words_per_bucket=100000, heldout_words=0, fit_dtype="float64",
                corpus=corpus_file(tmp_path, words))
    base.update(kw)
    return AdapterConfig(**base)


@pytest.fixture(scope="module")
def toy():
    return make_toy_pair()


@pytest.fixture(scope="module")
def toy_adapter(toy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toyfit")
    return fit_adapter(toy.source, toy.target, toy_cfg(tmp, toy.words), cache_root=tmp / "cache")


# ----------------------------------------------------------------------------------------------
# fitting recovers the planted maps
# ----------------------------------------------------------------------------------------------
def test_fit_recovers_planted_t_linear_maps(toy, toy_adapter):
    assert toy_adapter.kind == "fuse"
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


# ----------------------------------------------------------------------------------------------
# the backward is the exact adjoint
# ----------------------------------------------------------------------------------------------
def surrogate(pair, adapter, seqs: list[list[str]], e_i: torch.Tensor, tgt_len: int) -> torch.Tensor:
    """Naive per-word linear model: target rows of each word = (X_i(word) * M_l) slices, placed
    where the bridge places them (after the target's CLS). Differentiable in ``e_i``."""
    out = torch.zeros(len(seqs), tgt_len, pair.target.dim, dtype=e_i.dtype)
    for b, words in enumerate(seqs):
        s_pos, t_pos = 0, 1  # target starts with CLS
        for word in words:
            l_i = len(pair.source.tokenizer.word_ids(word))
            l_j = len(pair.target.tokenizer.word_ids(word))
            m = adapter.maps[l_j].double()
            x = e_i[b, s_pos : s_pos + l_i].T[None]  # (1, d_i, l_i)
            y = naive_tprod(x, m)  # (1, d_j, D)
            out[b, t_pos : t_pos + l_j] = y[0, :, :l_j].T
            s_pos, t_pos = s_pos + l_i, t_pos + l_j
    return out


def sequences(toy, n_seq=3, seed=0) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_seq):
        k = int(torch.randint(1, 6, (1,), generator=g))
        idx = torch.randint(0, len(toy.words), (k,), generator=g).tolist()
        out.append([toy.words[i] for i in idx])
    return out


def test_forward_is_exact_retokenization(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    seqs = sequences(toy)
    src_ids = [toy.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    s_max = max(map(len, src_ids))
    e_i = torch.zeros(len(seqs), s_max, toy.source.dim, dtype=torch.float64)
    tb = bridge(src_ids, e_i)
    for b, words in enumerate(seqs):
        expect = [0] + toy.target.tokenizer.encode(" ".join(words)) + [1]
        assert tb.ids[b] == expect
        n = len(expect)
        torch.testing.assert_close(tb.embeds[b, :n], toy.target.table[expect])
        assert tb.attention_mask[b].tolist() == [1] * n + [0] * (tb.embeds.shape[1] - n)


def test_backward_equals_exact_gradient_of_linear_loss(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    seqs = sequences(toy, n_seq=4, seed=1)
    src_ids = [toy.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    s_max = max(map(len, src_ids))
    e_i = torch.zeros(len(seqs), s_max, toy.source.dim, dtype=torch.float64)
    for b, ids in enumerate(src_ids):
        e_i[b, : len(ids)] = toy.source.table[ids]
    e_i.requires_grad_(True)
    tb = bridge(src_ids, e_i)
    weights = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (tb.embeds * weights).sum().backward()
    ours = e_i.grad.clone()

    # Reference: autograd through the naive surrogate, which here equals the true forward
    e_ref = e_i.detach().clone().requires_grad_(True)
    sur = surrogate(toy, toy_adapter, seqs, e_ref, tb.embeds.shape[1])
    # the surrogate reproduces the real target embeddings on content rows (the toy is t-linear)
    content = torch.zeros(tb.embeds.shape[:2], dtype=torch.bool)
    for b, ids in enumerate(tb.ids):
        content[b, 1 : len(ids) - 1] = True  # between CLS and SEP
    torch.testing.assert_close(sur.detach()[content], tb.embeds.detach()[content], rtol=1e-4, atol=1e-4)
    (sur * weights).sum().backward()
    torch.testing.assert_close(ours, e_ref.grad, rtol=1e-5, atol=1e-6)
    # padding rows of the source get nothing
    for b, ids in enumerate(src_ids):
        assert torch.count_nonzero(ours[b, len(ids):]) == 0


def test_backward_is_adjoint_dot_product_test(toy, toy_adapter):
    """<S(x), g> = <x, S^T(g)> for the per-word linear model S, random x and g."""
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    seqs = sequences(toy, n_seq=3, seed=7)
    src_ids = [toy.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    s_max = max(map(len, src_ids))
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(len(seqs), s_max, toy.source.dim, dtype=torch.float64, generator=gen)
    for b, ids in enumerate(src_ids):
        x[b, len(ids):] = 0
    e_i = torch.zeros_like(x, requires_grad=True)
    tb = bridge(src_ids, e_i)
    g = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=gen)
    (tb.embeds * g).sum().backward()
    lhs = (surrogate(toy, toy_adapter, seqs, x, tb.embeds.shape[1]) * g).sum()
    rhs = (x * e_i.grad).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-6)


def test_special_tokens_send_no_gradient(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    src_ids = [toy.source.tokenizer.encode(toy.words[0] + " " + toy.words[1])]
    e_i = torch.zeros(1, len(src_ids[0]), toy.source.dim, dtype=torch.float64, requires_grad=True)
    tb = bridge(src_ids, e_i)
    g = torch.zeros_like(tb.embeds)
    g[0, 0] = 1.0  # CLS
    g[0, len(tb.ids[0]) - 1] = 1.0  # SEP
    (tb.embeds * g).sum().backward()
    assert torch.count_nonzero(e_i.grad) == 0


def test_overflow_policies(toy, toy_adapter, tmp_path):
    # a word of 10 chars has 5 target tokens > L = 4: past the cap
    # words of 9-10 letters have 5 target tokens > L = 4: past the cap
    extended = make_toy_pair(n_words=1200, seed=0, max_len=10)
    adapter = fit_adapter(extended.source, extended.target, toy_cfg(tmp_path, extended.words), None)
    over = next(w for w in extended.words if len(extended.target.tokenizer.word_ids(w)) == 5)
    short = next(w for w in extended.words if len(extended.target.tokenizer.word_ids(w)) == 1)
    text = f"{short} {over}"
    ids = [extended.source.tokenizer.encode(text)]
    l_short = len(extended.source.tokenizer.word_ids(short))

    def grad(policy: str, seq_ids=ids, seed=0):
        bridge = Bridge(extended.source, extended.target, adapter, overflow=policy, seed=seed)
        e = torch.zeros(len(seq_ids), max(map(len, seq_ids)), extended.source.dim,
                        dtype=torch.float64, requires_grad=True)
        tb = bridge(seq_ids, e)
        (tb.embeds * torch.ones_like(tb.embeds)).sum().backward()
        return e.grad

    zero = grad("zero")
    assert torch.count_nonzero(zero[0, l_short:]) == 0  # the long word gets nothing
    assert torch.count_nonzero(zero[0, :l_short]) > 0  # the short word still does
    rand1, rand2 = grad("random"), grad("random")
    assert torch.count_nonzero(rand1[0, l_short:]) > 0
    torch.testing.assert_close(rand1, rand2)  # seeded: same word, same Jacobian
    assert not torch.allclose(rand1, grad("random", seed=1))  # a different seed differs
    # independent of batch composition: the same sequence next to another one
    other = [extended.source.tokenizer.encode(short)]
    batched = grad("random", seq_ids=other + ids)
    torch.testing.assert_close(batched[1, : len(ids[0])], rand1[0])
    with pytest.raises(AdapterError, match="overflow"):
        Bridge(extended.source, extended.target, adapter, overflow="bogus")


# ----------------------------------------------------------------------------------------------
# shared tokenizer (section 3.2) and identity
# ----------------------------------------------------------------------------------------------
def test_shared_tokenizer_sanity_case_gives_grad_times_a_transpose(toy, tmp_path):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(toy.source.dim, 4, dtype=torch.float64, generator=gen)
    target = ToyModel("toy-linear", toy.source.tokenizer, toy.source.table @ a)
    adapter = fit_adapter(toy.source, target, toy_cfg(tmp_path, toy.words), None)
    assert adapter.kind == "token"
    torch.testing.assert_close(adapter.maps[1].double(), a, rtol=1e-5, atol=1e-5)
    bridge = Bridge(toy.source, target, adapter)
    # one-token words (chunk >= 2, words of 1-2 letters are one token)
    singles = [w for w in toy.words if len(toy.source.tokenizer.word_ids(w)) == 1][:5]
    ids = [toy.source.tokenizer.encode(" ".join(singles))]
    e = toy.source.table[ids[0]][None].clone().requires_grad_(True)
    tb = bridge(ids, e)
    assert tb.ids[0][: len(ids[0])] == ids[0]  # no retokenization, no specials for the toy source
    g = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=gen)
    (tb.embeds * g).sum().backward()
    expect = g[0, : len(ids[0])] @ adapter.maps[1].double().T
    torch.testing.assert_close(e.grad[0], expect)
    torch.testing.assert_close(e.grad[0], g[0, : len(ids[0])] @ a.T, rtol=1e-4, atol=1e-4)


def test_same_model_is_identity(toy, tmp_path):
    adapter = fit_adapter(toy.source, toy.source, toy_cfg(tmp_path, toy.words), tmp_path / "c")
    assert adapter.kind == "identity" and adapter.maps == {}
    bridge = Bridge(toy.source, toy.source, adapter)
    ids = [toy.source.tokenizer.encode(toy.words[0])]
    e = toy.source.table[ids[0]][None].clone().requires_grad_(True)
    tb = bridge(ids, e)
    tb.embeds.sum().backward()
    assert torch.equal(e.grad, torch.ones_like(e))


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
def test_cache_hit_key_fields_and_corruption(toy, tmp_path):
    cfg = toy_cfg(tmp_path, toy.words[:400], words_per_bucket=60, heldout_words=5)
    cache = tmp_path / "cache"
    first = fit_adapter(toy.source, toy.target, cfg, cache)
    assert not first.from_cache and (first.path / "meta.json").exists()
    second = fit_adapter(toy.source, toy.target, cfg, cache)
    assert second.from_cache and second.key == first.key
    for l in first.maps:
        assert torch.equal(first.maps[l], second.maps[l])
    # every determining field changes the key
    changes = dict(max_tokens=3, words_per_bucket=61, heldout_words=6, seed=1, rcond=1e-9,
                   fit_dtype="float32",
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
    # a truncated cache file is refitted with a warning, not a crash
    maps_file = first.path / "maps.safetensors"
    maps_file.write_bytes(maps_file.read_bytes()[:50])
    with pytest.warns(UserWarning, match="refitting"):
        third = fit_adapter(toy.source, toy.target, cfg, cache)
    assert not third.from_cache
    for l in first.maps:
        assert torch.equal(first.maps[l], third.maps[l])
    assert fit_adapter(toy.source, toy.target, cfg, cache).from_cache  # repaired


def test_held_out_report_and_baseline(toy, tmp_path):
    cfg = toy_cfg(tmp_path, toy.words, words_per_bucket=80, heldout_words=40)
    adapter = fit_adapter(toy.source, toy.target, cfg, None)
    for row in adapter.report["buckets"]:
        assert row["words"] == 80
        assert row["heldout_words"] > 0
        assert row["residual_heldout"] < 1e-8 < row["baseline_heldout"]


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("max_tokens", 0, "max_tokens"),
    ("words_per_bucket", 0, "words_per_bucket"),
    ("overflow", "sometimes", "overflow"),
    ("fit_dtype", "float16", "fit_dtype"),
])
def test_bad_adapter_config(toy, tmp_path, field, value, match):
    cfg = dataclasses.replace(toy_cfg(tmp_path, toy.words), **{field: value})
    with pytest.raises(ValueError, match=match):
        fit_adapter(toy.source, toy.target, cfg, None)


def test_empty_and_missing_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="holds no words"):
        load_corpus_words(CorpusConfig(kind="text_file", path=str(empty)))
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus_words(CorpusConfig(kind="text_file", path=str(tmp_path / "nope.txt")))
    with pytest.raises(CorpusError, match="needs adapter.corpus.path"):
        load_corpus_words(CorpusConfig(kind="text_file"))


def test_corpus_without_some_length_is_documented_behaviour(toy, tmp_path):
    # only words of 1-4 letters: target lengths 1 and 2, none of 3 or 4
    short = [w for w in toy.words if len(w) <= 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = fit_adapter(toy.source, toy.target, toy_cfg(tmp_path, short), None)
    assert sorted(adapter.maps) == [1, 2]
    rows = {r["target_tokens"]: r for r in adapter.report["buckets"]}
    assert rows[3]["words"] == 0 and rows[3]["residual_fit"] is None
    # words of missing lengths follow the overflow policy instead of crashing
    long_word = next(w for w in toy.words if len(toy.target.tokenizer.word_ids(w)) == 4)
    bridge = Bridge(toy.source, toy.target, adapter, overflow="zero")
    ids = [toy.source.tokenizer.encode(long_word)]
    e = torch.zeros(1, len(ids[0]), toy.source.dim, dtype=torch.float64, requires_grad=True)
    bridge(ids, e).embeds.sum().backward()
    assert torch.count_nonzero(e.grad) == 0


def test_corpus_with_no_usable_word_is_an_error(tmp_path):
    pair = make_toy_pair(n_words=600, seed=2, max_len=10)
    long_only = [w for w in pair.words if len(w) > 8]  # 5 target tokens each
    assert long_only
    with pytest.raises(AdapterError, match="nothing to fit"):
        fit_adapter(pair.source, pair.target, toy_cfg(tmp_path, long_only), None)


def test_bridge_rejects_bad_shapes(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    ids = [toy.source.tokenizer.encode(toy.words[0])]
    with pytest.raises(AdapterError, match="src_embeds"):
        bridge(ids, torch.zeros(2, 5, toy.source.dim))
    with pytest.raises(AdapterError, match="longer"):
        bridge(ids, torch.zeros(1, 0, toy.source.dim))
