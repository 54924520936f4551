"""The bridge (fuse_repro.bridge): exact forward, exact adjoint backward, overflow policies, the
map controls, the per-word paths and the device plumbing, on toy models where the truth is known.

Two toy shapes (fuse_repro.testing.toy): the exact one (source words never longer than target
words, map depth = word length) and the real one (source words often longer than their target
words, maps deeper than the word length, mixed depths within a batch), where a wrong depth test
in the backward (``l_i <= l_j`` instead of ``l_i <= D``) changes the gradient of many words.
"""

from __future__ import annotations

import pytest
import torch

from fuse_repro.adapter import AdapterError, fit_adapter
from fuse_repro.bridge import MAP_KINDS, Bridge
from fuse_repro.testing.toy import (
    ToyModel,
    make_toy_pair,
    naive_tprod,
    planted_adapter,
    real_shapes_pair,
    toy_adapter_config,
)


@pytest.fixture(scope="module")
def real():
    return real_shapes_pair()


@pytest.fixture(scope="module")
def real_adapter(real, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realfit")
    return fit_adapter(real.source, real.target, toy_adapter_config(tmp, real.words), None)


# ----------------------------------------------------------------------------------------------
# independent reference: the per-word linear surrogate, written with loops
# ----------------------------------------------------------------------------------------------
def reference_path(maps: dict[int, torch.Tensor], l_i: int, l_j: int) -> str:
    """The documented rule: a word is fitted when its target length has a map whose DEPTH holds
    its source tokens."""
    if l_i == 0 or l_j == 0:
        return "empty"
    return "fitted" if l_j in maps and l_i <= maps[l_j].shape[-1] else "overflow"


def surrogate(pair, maps, seqs: list[list[str]], e_i: torch.Tensor, tgt_len: int) -> torch.Tensor:
    """Target rows of each fitted word = first l_j slices of X_i(word) * M_l, placed where the
    bridge places them (after the target's CLS); overflow words give 0 (policy "zero").
    Differentiable in ``e_i``."""
    out = torch.zeros(len(seqs), tgt_len, pair.target.dim, dtype=e_i.dtype)
    for b, words in enumerate(seqs):
        s_pos, t_pos = 0, 1  # target starts with CLS
        for word in words:
            l_i = len(pair.source.tokenizer.word_ids(word))
            l_j = len(pair.target.tokenizer.word_ids(word))
            if reference_path(maps, l_i, l_j) == "fitted":
                x = e_i[b, s_pos : s_pos + l_i].T[None]  # (1, d_i, l_i)
                y = naive_tprod(x, maps[l_j].double())  # (1, d_j, D)
                out[b, t_pos : t_pos + l_j] = y[0, :, :l_j].T
            s_pos, t_pos = s_pos + l_i, t_pos + l_j
    return out


def sequences(pair, n_seq=3, seed=0, max_words=5) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_seq):
        k = int(torch.randint(1, max_words + 1, (1,), generator=g))
        idx = torch.randint(0, len(pair.words), (k,), generator=g).tolist()
        out.append([pair.words[i] for i in idx])
    return out


def mixed_sequences(pair, maps) -> list[list[str]]:
    """Three sequences that together hold, in one batch, words of every bucket, source words
    longer than their target words but within the map's depth, and overflow words."""
    src, tgt = pair.source.tokenizer, pair.target.tokenizer
    longer = [w for w in pair.words
              if len(tgt.word_ids(w)) < len(src.word_ids(w)) and reference_path(
                  maps, len(src.word_ids(w)), len(tgt.word_ids(w))) == "fitted"]
    per_bucket = [next(w for w in pair.words if len(tgt.word_ids(w)) == l) for l in sorted(maps)]
    over = [w for w in pair.words
            if reference_path(maps, len(src.word_ids(w)), len(tgt.word_ids(w))) == "overflow"]
    assert longer, "the toy must have source words longer than their target words"
    seqs = [longer[:4] + per_bucket[:2], per_bucket[2:] + longer[4:6], longer[6:9]]
    if over:
        seqs[2] += over[:2]
    return seqs


def run_backward(pair, bridge, seqs, weights_seed=5):
    src_ids = [pair.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    s_max = max(map(len, src_ids))
    e_i = torch.zeros(len(seqs), s_max, pair.source.dim, dtype=torch.float64)
    for b, ids in enumerate(src_ids):
        e_i[b, : len(ids)] = pair.source.table[ids]
    e_i.requires_grad_(True)
    tb = bridge(src_ids, e_i)
    weights = torch.randn(tb.embeds.shape, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(weights_seed))
    (tb.embeds * weights).sum().backward()
    return src_ids, e_i, tb, weights


def assert_exact_gradient(pair, bridge, maps, seqs):
    src_ids, e_i, tb, weights = run_backward(pair, bridge, seqs)
    e_ref = e_i.detach().clone().requires_grad_(True)
    (surrogate(pair, maps, seqs, e_ref, tb.embeds.shape[1]) * weights).sum().backward()
    torch.testing.assert_close(e_i.grad, e_ref.grad, rtol=1e-5, atol=1e-6)
    for b, ids in enumerate(src_ids):  # padding rows of the source get nothing
        assert torch.count_nonzero(e_i.grad[b, len(ids):]) == 0
    return e_i.grad, tb


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------
def test_forward_is_exact_retokenization(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    seqs = sequences(toy)
    src_ids = [toy.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    e_i = torch.zeros(len(seqs), max(map(len, src_ids)), toy.source.dim, dtype=torch.float64)
    tb = bridge(src_ids, e_i)
    for b, words in enumerate(seqs):
        expect = [0] + toy.target.tokenizer.encode(" ".join(words)) + [1]
        assert tb.ids[b] == expect
        n = len(expect)
        torch.testing.assert_close(tb.embeds[b, :n], toy.target.table[expect])
        assert tb.attention_mask[b].tolist() == [1] * n + [0] * (tb.embeds.shape[1] - n)
    looked = bridge.lookup(src_ids)
    torch.testing.assert_close(looked.embeds, tb.embeds.detach())


# ----------------------------------------------------------------------------------------------
# the backward is the exact adjoint
# ----------------------------------------------------------------------------------------------
def test_backward_equals_exact_gradient_on_the_exact_toy(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    seqs = sequences(toy, n_seq=4, seed=1)
    _, tb = assert_exact_gradient(toy, bridge, toy_adapter.maps, seqs)
    # on the exact toy the surrogate also reproduces the real target embeddings (content rows)
    e = torch.zeros(len(seqs), max(len(toy.source.tokenizer.encode(" ".join(w))) for w in seqs),
                    toy.source.dim, dtype=torch.float64)
    for b, words in enumerate(seqs):
        ids = toy.source.tokenizer.encode(" ".join(words))
        e[b, : len(ids)] = toy.source.table[ids]
    sur = surrogate(toy, toy_adapter.maps, seqs, e, tb.embeds.shape[1])
    content = torch.zeros(tb.embeds.shape[:2], dtype=torch.bool)
    for b, ids in enumerate(tb.ids):
        content[b, 1 : len(ids) - 1] = True  # between CLS and SEP
    torch.testing.assert_close(sur[content], tb.embeds.detach()[content], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["fitted", "planted"])
def test_backward_equals_exact_gradient_with_real_shapes(real, real_adapter, which):
    """Source words longer than target words, maps deeper than the words, mixed depths in one
    batch; the fitted maps (depths 2 and 4, some overflow words) and the planted ones (depths
    2, 4, 6, 8: every word fitted)."""
    adapter = real_adapter if which == "fitted" else planted_adapter(real)
    depths = {l: m.shape[-1] for l, m in adapter.maps.items()}
    assert len(set(depths.values())) > 1 and any(d > l for l, d in depths.items())
    bridge = Bridge(real.source, real.target, adapter, overflow="zero")
    seqs = mixed_sequences(real, adapter.maps)
    grad, _ = assert_exact_gradient(real, bridge, adapter.maps, seqs)
    # the words longer on the source side get their gradient from the map, not from overflow
    src, tgt = real.source.tokenizer, real.target.tokenizer
    for b, words in enumerate(seqs):
        pos = 0
        for word in words:
            l_i, l_j = len(src.word_ids(word)), len(tgt.word_ids(word))
            rows = grad[b, pos : pos + l_i]
            if reference_path(adapter.maps, l_i, l_j) == "fitted":
                assert torch.count_nonzero(rows) > 0, word
            else:
                assert torch.count_nonzero(rows) == 0, word
            pos += l_i


def test_backward_is_adjoint_dot_product_test(real):
    """<S(x), g> = <x, S^T(g)> for the per-word linear model S, random x and g, planted maps of
    mixed depths and source words longer than their target words."""
    adapter = planted_adapter(real)
    bridge = Bridge(real.source, real.target, adapter)
    seqs = mixed_sequences(real, adapter.maps)
    src_ids = [real.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(len(seqs), max(map(len, src_ids)), real.source.dim, dtype=torch.float64, generator=gen)
    for b, ids in enumerate(src_ids):
        x[b, len(ids):] = 0
    e_i = torch.zeros_like(x, requires_grad=True)
    tb = bridge(src_ids, e_i)
    g = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=gen)
    (tb.embeds * g).sum().backward()
    lhs = (surrogate(real, adapter.maps, seqs, x, tb.embeds.shape[1]) * g).sum()
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


# ----------------------------------------------------------------------------------------------
# which path each word takes
# ----------------------------------------------------------------------------------------------
def test_word_paths_follow_the_depth_rule(real, real_adapter):
    bridge = Bridge(real.source, real.target, real_adapter)
    seqs = mixed_sequences(real, real_adapter.maps)
    src_ids = [real.source.tokenizer.encode(" ".join(ws)) for ws in seqs]
    paths = bridge.word_paths(src_ids)
    src, tgt = real.source.tokenizer, real.target.tokenizer
    expect = [[reference_path(real_adapter.maps, len(src.word_ids(w)), len(tgt.word_ids(w))) for w in ws]
              for ws in seqs]
    assert paths == expect
    flat = [p for seq in paths for p in seq]
    assert "fitted" in flat and "overflow" in flat
    assert bridge.word_paths([]) == []


def test_word_paths_of_token_and_identity_bridges(toy, tmp_path):
    a = torch.randn(toy.source.dim, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = ToyModel("toy-linear", toy.source.tokenizer, toy.source.table @ a)
    ids = [toy.source.tokenizer.encode(" ".join(toy.words[:3]))]
    token = fit_adapter(toy.source, target, toy_adapter_config(tmp_path, toy.words), None)
    assert Bridge(toy.source, target, token).word_paths(ids) == [["fitted"] * 3]
    same = fit_adapter(toy.source, toy.source, toy_adapter_config(tmp_path, toy.words), None)
    assert Bridge(toy.source, toy.source, same).word_paths(ids) == [["identity"] * 3]


# ----------------------------------------------------------------------------------------------
# overflow policies
# ----------------------------------------------------------------------------------------------
def test_overflow_policies(tmp_path):
    # words of 9-10 letters have 5 target tokens > L = 4: past the cap
    extended = make_toy_pair(n_words=1200, seed=0, max_len=10)
    adapter = fit_adapter(extended.source, extended.target, toy_adapter_config(tmp_path, extended.words), None)
    over = next(w for w in extended.words if len(extended.target.tokenizer.word_ids(w)) == 5)
    short = next(w for w in extended.words if len(extended.target.tokenizer.word_ids(w)) == 1)
    ids = [extended.source.tokenizer.encode(f"{short} {over}")]
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
# map controls
# ----------------------------------------------------------------------------------------------
def test_random_maps_control(real, real_adapter):
    bridge = Bridge(real.source, real.target, real_adapter, overflow="zero", seed=3)
    rnd = bridge.with_maps("random", seed=0)
    assert rnd.maps_kind == "random" and rnd.overflow == "zero" and rnd.seed == 3
    assert bridge.adapter.maps is real_adapter.maps  # the fitted adapter is not modified
    for l, fitted in real_adapter.maps.items():
        m = rnd.adapter.maps[l]
        assert m.shape == fitted.shape and m.dtype == fitted.dtype
        torch.testing.assert_close(torch.linalg.vector_norm(m), torch.linalg.vector_norm(fitted))
        assert not torch.allclose(m, fitted)
        torch.testing.assert_close(m, bridge.with_maps("random", seed=0).adapter.maps[l], rtol=0, atol=0)
        assert not torch.allclose(m, bridge.with_maps("random", seed=1).adapter.maps[l])
    # the backward is the exact adjoint of whatever maps the bridge holds
    assert_exact_gradient(real, rnd, rnd.adapter.maps, mixed_sequences(real, real_adapter.maps))
    assert bridge.with_maps("fitted").adapter.maps == real_adapter.maps


def test_mean_maps_control_has_zero_jacobian(real, real_adapter):
    """The fit report's mean baseline is a constant predictor: its Jacobian is zero, so fitted
    words send nothing and only overflow words (random policy) carry a gradient."""
    mean = Bridge(real.source, real.target, real_adapter).with_maps("mean")
    assert mean.maps_kind == "mean" and mean.overflow == "random"
    assert all(torch.count_nonzero(m) == 0 for m in mean.adapter.maps.values())
    seqs = mixed_sequences(real, real_adapter.maps)
    _, e_i, _, _ = run_backward(real, mean, seqs)
    src, tgt = real.source.tokenizer, real.target.tokenizer
    paths = mean.word_paths([src.encode(" ".join(ws)) for ws in seqs])
    saw_overflow = False
    for b, words in enumerate(seqs):
        pos = 0
        for word, path in zip(words, paths[b]):
            rows = e_i.grad[b, pos : pos + len(src.word_ids(word))]
            if path == "fitted":
                assert torch.count_nonzero(rows) == 0, word
            else:
                saw_overflow = True
                assert torch.count_nonzero(rows) > 0, word
            pos += len(src.word_ids(word))
    assert saw_overflow
    assert len(tgt.word_ids(seqs[0][0])) >= 1


def test_map_controls_reject_bad_input(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    assert MAP_KINDS == ("fitted", "random", "mean")
    with pytest.raises(AdapterError, match="maps kind"):
        bridge.with_maps("shuffled")
    same = fit_adapter(toy.source, toy.source, toy_adapter_config(toy_adapter.path.parent, toy.words), None)
    with pytest.raises(AdapterError, match="identity"):
        Bridge(toy.source, toy.source, same).with_maps("random")


# ----------------------------------------------------------------------------------------------
# shared tokenizer (section 3.2) and identity
# ----------------------------------------------------------------------------------------------
def test_shared_tokenizer_sanity_case_gives_grad_times_a_transpose(toy, tmp_path):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(toy.source.dim, 4, dtype=torch.float64, generator=gen)
    target = ToyModel("toy-linear", toy.source.tokenizer, toy.source.table @ a)
    adapter = fit_adapter(toy.source, target, toy_adapter_config(tmp_path, toy.words), None)
    assert adapter.kind == "token"
    torch.testing.assert_close(adapter.maps[1].double(), a, rtol=1e-5, atol=1e-5)
    bridge = Bridge(toy.source, target, adapter)
    singles = [w for w in toy.words if len(toy.source.tokenizer.word_ids(w)) == 1][:5]
    ids = [toy.source.tokenizer.encode(" ".join(singles))]
    e = toy.source.table[ids[0]][None].clone().requires_grad_(True)
    tb = bridge(ids, e)
    assert tb.ids[0][: len(ids[0])] == ids[0]  # no retokenization, no specials for the toy source
    g = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=gen)
    (tb.embeds * g).sum().backward()
    torch.testing.assert_close(e.grad[0], g[0, : len(ids[0])] @ adapter.maps[1].double().T)
    torch.testing.assert_close(e.grad[0], g[0, : len(ids[0])] @ a.T, rtol=1e-4, atol=1e-4)
    # the random control keeps the shape and the scale of the token matrix
    rnd = bridge.with_maps("random", seed=2).adapter.maps[1]
    assert rnd.shape == adapter.maps[1].shape
    torch.testing.assert_close(rnd.norm(), adapter.maps[1].norm())


def test_same_model_is_identity(toy, tmp_path):
    adapter = fit_adapter(toy.source, toy.source, toy_adapter_config(tmp_path, toy.words), tmp_path / "c")
    assert adapter.kind == "identity" and adapter.maps == {}
    bridge = Bridge(toy.source, toy.source, adapter)
    ids = [toy.source.tokenizer.encode(toy.words[0])]
    e = toy.source.table[ids[0]][None].clone().requires_grad_(True)
    tb = bridge(ids, e)
    tb.embeds.sum().backward()
    assert torch.equal(e.grad, torch.ones_like(e))


# ----------------------------------------------------------------------------------------------
# device plumbing (no GPU here: the meta device checks placement without data)
# ----------------------------------------------------------------------------------------------
def test_maps_live_on_the_bridge_device_and_are_not_copied_per_call(toy, toy_adapter):
    meta = Bridge(toy.source, toy.target, toy_adapter, device="meta")
    assert meta.device == torch.device("meta")
    assert all(m.device.type == "meta" for m in meta.maps_on("meta", torch.float32).values())
    assert meta.maps_on("meta", torch.float32) is meta._maps_t  # the stored maps, no copy
    cpu = Bridge(toy.source, toy.target, toy_adapter)
    assert cpu.device == toy.source.device
    first = cpu.maps_on("cpu", torch.float64)  # float64 gradients in the tests: one cast, kept
    assert cpu.maps_on("cpu", torch.float64) is first
    assert all(m.dtype == torch.float64 for m in first.values())
    # the controls stay on the bridge's device
    assert all(m.device.type == "meta" for m in meta.with_maps("mean")._maps_t.values())


def test_backward_runs_on_the_device_of_the_embeddings(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter, device="meta", overflow="zero")
    ids = [toy.source.tokenizer.encode(" ".join(toy.words[:3]))]
    e = torch.zeros(1, len(ids[0]), toy.source.dim, device="meta", requires_grad=True)
    # the target table is on the CPU: the looked-up rows are moved to the embeddings' device
    tb = bridge(ids, e)
    assert tb.embeds.device.type == "meta" and tb.attention_mask.device.type == "meta"
    tb.embeds.sum().backward()
    assert e.grad.device.type == "meta" and e.grad.shape == e.shape


def test_bridge_rejects_bad_shapes(toy, toy_adapter):
    bridge = Bridge(toy.source, toy.target, toy_adapter)
    ids = [toy.source.tokenizer.encode(toy.words[0])]
    with pytest.raises(AdapterError, match="src_embeds"):
        bridge(ids, torch.zeros(2, 5, toy.source.dim))
    with pytest.raises(AdapterError, match="longer"):
        bridge(ids, torch.zeros(1, 0, toy.source.dim))


def test_overflow_jacobian_cache_is_exact_and_bounded(tmp_path):
    """The drawn overflow Jacobians are kept (Bridge.overflow_cache_bytes): a cache hit, the
    uncached block-by-block path (bound 0) and an eviction all give the same gradient as a
    float64 reference drawn from the documented seed, and the cache never holds more bytes
    than its bound."""
    import hashlib

    extended = make_toy_pair(n_words=1200, seed=0, max_len=10)
    adapter = fit_adapter(extended.source, extended.target,
                          toy_adapter_config(tmp_path, extended.words), None)
    tok_i, tok_j = extended.source.tokenizer, extended.target.tokenizer
    longs = [w for w in extended.words if len(tok_j.word_ids(w)) == 5][:3]
    assert len(longs) == 3
    ids = [tok_i.encode(f"{longs[0]} {longs[1]}"), tok_i.encode(f"{longs[1]} {longs[2]}")]
    d_i, d_j = extended.source.dim, extended.target.dim

    def grad(bridge: Bridge) -> torch.Tensor:
        e = torch.zeros(len(ids), max(map(len, ids)), d_i, dtype=torch.float64, requires_grad=True)
        tb = bridge(ids, e)
        weights = torch.arange(tb.embeds.numel(), dtype=torch.float64).reshape(tb.embeds.shape)
        (tb.embeds * torch.sin(weights)).sum().backward()
        return e.grad, torch.sin(weights)

    cached = Bridge(extended.source, extended.target, adapter, overflow="random", seed=5)
    first, g_tgt = grad(cached)
    one_word = 5 * d_j * d_i * 8  # float64 blocks of a word of 5 target tokens, l_i <= 5
    assert len(cached._overflow_cache) == 3  # longs[1] appears twice, drawn once
    again, _ = grad(cached)  # every word from the cache
    streamed, _ = grad(Bridge(extended.source, extended.target, adapter, overflow="random",
                              seed=5, overflow_cache_bytes=0))
    small = Bridge(extended.source, extended.target, adapter, overflow="random", seed=5,
                   overflow_cache_bytes=4 * one_word)
    evicted, _ = grad(small)
    assert small._overflow_bytes <= small.overflow_cache_bytes
    assert torch.equal(first, again) and torch.equal(first, streamed) and torch.equal(first, evicted)

    # float64 reference from the documented seed: sha256("seed|word|l_i|l_j"), blocks of
    # N(0, 1/(l_j d_j)) drawn in float32, in order, on the CPU; rows of word tokens only (no specials here)
    ref = torch.zeros_like(first)
    for b, text in enumerate([f"{longs[0]} {longs[1]}", f"{longs[1]} {longs[2]}"]):
        s_pos, t_pos = 0, 1  # the toy target starts with CLS (as surrogate() above)
        for word in text.split():
            l_i, l_j = len(tok_i.word_ids(word)), len(tok_j.word_ids(word))
            digest = hashlib.sha256(f"5|{word}|{l_i}|{l_j}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            g = g_tgt[b, t_pos : t_pos + l_j].reshape(-1)  # (l_j*d_j,)
            for t in range(l_i):
                block = (torch.randn(l_j * d_j, d_i, generator=gen) * (l_j * d_j) ** -0.5).double()
                ref[b, s_pos + t] = g @ block
            s_pos, t_pos = s_pos + l_i, t_pos + l_j
    torch.testing.assert_close(first, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(AdapterError, match="overflow_cache_bytes"):
        Bridge(extended.source, extended.target, adapter, overflow_cache_bytes=-1)
