"""Fast tests written to kill what mutation testing (``bin/mutation``, mutmut) left alive.

Each test says which behaviour it pins; together with the modules' own tests they kill every
mutant of the t-product algebra, the bridge, beam selection/proposal and the adapter cache key
that a CPU test can tell apart (the README's testing section says what the survivors are). No
model weights: stubs, toys and small float64 tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from types import SimpleNamespace

import pytest
import torch

from fuse_repro.adapter import FORMAT_VERSION, AdapterError, cache_fields
from fuse_repro.bridge import Bridge
from fuse_repro.config import AdapterConfig
from fuse_repro.config.schemas import CorpusConfig
from fuse_repro.search import (
    build_method,
    search_caption,
    search_step,
    select_beams,
    should_stop,
    slot_gradient,
    start_search,
    timed_search,
)
from fuse_repro.tensor import teye, tlstsq, tpad, tpinv, tprod, ttranspose
from fuse_repro.testing.toy import make_toy_pair, planted_adapter
from tests.test_search_step import PREFIX, StubTokenizer, TokenCost, V, cfg_of, start, world


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _with_singular_values(m: int, k: int, sv: list[float], seed: int = 0) -> torch.Tensor:
    """(m, k, 1) float64 with exactly the singular values ``sv`` (depth 1: one Fourier slice)."""
    u, _ = torch.linalg.qr(_rand(m, k, seed=seed))  # (m, k) orthonormal columns
    v, _ = torch.linalg.qr(_rand(k, k, seed=seed + 1))  # (k, k) orthogonal
    return (u @ torch.diag(torch.tensor(sv, dtype=torch.float64)) @ v.T).unsqueeze(-1)


# ---------------------------------------------------------------------------- tensor: errors


def test_tensor_errors_name_the_bad_operand():
    good, half = _rand(2, 2, 2), torch.ones(2, 2, 2, dtype=torch.float16)
    cases = [
        (lambda: tprod(half, good), r"^A must be a real"),
        (lambda: tprod(good, half), r"^B must be a real"),
        (lambda: tprod(good.float(), good), r"^A and B must have the same dtype"),
        (lambda: tpad(half, 3), r"^a must be a real"),
        (lambda: tpinv(half), r"^A must be a real"),
        (lambda: ttranspose(half), r"^A must be a real"),
        (lambda: tlstsq(half, good), r"^A must be a real"),
        (lambda: tlstsq(good, half), r"^B must be a real"),
        (lambda: tlstsq(good.float(), good), r"^A and B must have the same dtype"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    # The inner-dims message names each operand's own k.
    with pytest.raises(ValueError, match=r"\(3, 4, 2\) = \(\.\.\., m, k=4, p\).*\(5, 2, 2\) = "
                                         r"\(\.\.\., k=5, n, p\)"):
        tprod(_rand(3, 4, 2), _rand(5, 2, 2))


def test_teye_shapes_devices_and_bad_sizes():
    assert teye(0, 3).shape == (0, 0, 3)  # an empty identity is valid
    eye = teye(3, 2, dtype=torch.float64, device="meta")
    assert eye.device.type == "meta" and eye.dtype == torch.float64 and eye.shape == (3, 3, 2)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"^n must be an int >= 0, got "):
            teye(bad, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^dtype must be torch.float32 or torch.float64, got "):
        teye(2, 2, dtype=torch.float16)


def test_tensor_type_device_depth_and_broadcast_errors():
    b = _rand(2, 2, 1)
    with pytest.raises(TypeError, match=r"^A must be a torch.Tensor, got list"):
        tprod([1.0], b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^A and B must be on the same device, got cpu and meta"):
        tprod(b, torch.zeros(2, 2, 1, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match=r"do not broadcast: \(2,\) vs \(3,\)$"):
        tprod(_rand(2, 3, 4, 1), _rand(3, 4, 2, 1))
    for bad in (2.5, True, 0):
        with pytest.raises(ValueError, match=r"^p must be an int >= 1, got "):
            tpad(b, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^accum_dtype must be torch.float32 or torch.float64, "
                                         r"got torch.float16"):
        tlstsq(_rand(5, 3, 2), _rand(5, 2, 2), accum_dtype=torch.float16)


def test_rcond_zero_is_a_valid_cutoff():
    a, b = _rand(7, 3, 2, seed=20), _rand(7, 2, 2, seed=21)
    torch.testing.assert_close(tpinv(a, rcond=0.0), tpinv(a), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tlstsq(a, b, rcond=0.0), tprod(tpinv(a), b), rtol=1e-8, atol=1e-12)


def test_a_batch_of_three_broadcasts_against_an_unbatched_operand():
    a, b = _rand(3, 6, 2, 2, seed=22), _rand(6, 3, 2, seed=23)
    x = tlstsq(a, b)
    c = tprod(_rand(3, 4, 6, 2, seed=24), b)
    assert x.shape == (3, 2, 3, 2) and c.shape == (3, 4, 3, 2)
    for i in range(3):
        torch.testing.assert_close(x[i], tlstsq(a[i], b), rtol=1e-9, atol=1e-12)


def test_tlstsq_of_empty_and_single_column_tensors():
    assert tlstsq(torch.zeros(0, 3, 2, dtype=torch.float64), torch.zeros(0, 4, 2, dtype=torch.float64)).shape == (3, 4, 2)
    empty = tlstsq(torch.zeros(2, 0, 3, 2, dtype=torch.float64), torch.zeros(0, 4, 3, dtype=torch.float64))
    assert empty.shape == (2, 3, 4, 3) and torch.count_nonzero(empty) == 0
    for shape in ((5, 1, 3), (1, 4, 3)):  # min(m, k) == 1: a real solution, not zeros
        a, b = _rand(*shape, seed=25), _rand(shape[0], 2, 3, seed=26)
        want = tprod(tpinv(a), b)
        assert torch.count_nonzero(want) > 0
        torch.testing.assert_close(tlstsq(a, b), want, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------- tensor: tpinv


def test_tpinv_of_empty_and_single_row_tensors():
    assert tpinv(torch.zeros(0, 3, 2, dtype=torch.float64)).shape == (3, 0, 2)
    assert tpinv(torch.zeros(2, 4, 0, 3, dtype=torch.float64)).shape == (2, 0, 4, 3)
    for shape in ((1, 3, 4), (3, 1, 4)):  # min(m, k) == 1 is a real pseudoinverse, not zeros
        a = _rand(*shape, seed=3)
        x = tpinv(a)
        assert x.shape == (shape[1], shape[0], shape[2])
        torch.testing.assert_close(tprod(tprod(a, x), a), a, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(tprod(tprod(x, a), x), x, rtol=1e-9, atol=1e-9)


def test_rcond_one_drops_even_the_largest_singular_value():
    """The cut-off keeps sigma > rcond * sigma_max only: at rcond = 1 nothing is left."""
    a, b = _rand(6, 3, 2, seed=4), _rand(6, 2, 2, seed=5)
    assert torch.count_nonzero(tpinv(a, rcond=1.0)) == 0
    for solver in ("auto", "eigh"):
        assert torch.count_nonzero(tlstsq(a, b, rcond=1.0, solver=solver)) == 0


def test_batched_cutoffs_are_per_batch_element():
    """A batch of [A, 1e-4 A]: each element is cut relative to its own sigma_max, so each equals
    its own unbatched result (a cut-off shared over the batch would zero the small one)."""
    a, b = _rand(8, 3, 3, seed=6), _rand(8, 2, 3, seed=7)
    a2 = torch.stack([a, 1e-4 * a])  # (2, 8, 3, 3)
    b2 = torch.stack([b, b])
    pinv = tpinv(a2, rcond=1e-3)
    for i in range(2):
        torch.testing.assert_close(pinv[i], tpinv(a2[i], rcond=1e-3), rtol=1e-9, atol=0)
    for solver in ("auto", "eigh"):
        x = tlstsq(a2, b2, rcond=1e-3, solver=solver)
        for i in range(2):
            torch.testing.assert_close(x[i], tlstsq(a2[i], b, rcond=1e-3, solver=solver),
                                       rtol=1e-8, atol=0)
        torch.testing.assert_close(x[1], 1e4 * x[0], rtol=1e-8, atol=0)


# ---------------------------------------------------------------------------- tensor: tlstsq


def test_tlstsq_of_a_zero_matrix_is_zero():
    """No direction survives the cut-off of an all-zero A (no 0/0): the least-norm solution is 0."""
    b = _rand(5, 2, 3, seed=8)
    for solver in ("auto", "eigh"):
        x = tlstsq(torch.zeros(5, 3, 3, dtype=torch.float64), b, solver=solver)
        assert torch.isfinite(x).all() and torch.count_nonzero(x) == 0


def test_tlstsq_is_scale_invariant_at_tiny_scales():
    """tlstsq(c A, B) = tlstsq(A, B) / c: the cut-off is relative, also when lambda_max << 1."""
    a, b = _rand(20, 4, 2, seed=9), _rand(20, 3, 2, seed=10)
    for solver in ("auto", "eigh"):
        x = tlstsq(a, b, rcond=1e-3, solver=solver)
        torch.testing.assert_close(tlstsq(1e-4 * a, b, rcond=1e-3, solver=solver), 1e4 * x,
                                   rtol=1e-7, atol=0)


def test_auto_solver_truncates_like_eigh_at_large_scale():
    """A singular value below rcond * sigma_max must be dropped by the auto (Cholesky-certified)
    solver too, also when the data is large (the certificate's shift scales with lambda_max)."""
    a = 100.0 * _with_singular_values(30, 4, [1.0, 1.0, 1.0, 1e-4])
    b = _rand(30, 2, 1, seed=11)
    want = tprod(tpinv(a, rcond=1e-2), b)
    for solver in ("auto", "eigh"):
        torch.testing.assert_close(tlstsq(a, b, rcond=1e-2, solver=solver), want, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------- cache key


def _model(name: str, tokenizer: str) -> SimpleNamespace:
    return SimpleNamespace(fingerprint=lambda: f"model:{name}",
                           tokenizer=SimpleNamespace(fingerprint=lambda: f"tok:{tokenizer}"))


def test_cache_fields_are_exactly_the_documented_fields():
    """The adapter key hashes these fields, under these names: a renamed or dropped field would
    silently orphan or, worse, share every cached adapter."""
    cfg = AdapterConfig(max_tokens=3, words_per_bucket=100, heldout_words=7, seed=5, rcond=1e-6,
                        fit_dtype="float32", min_bucket_words=2, overflow="zero",
                        corpus=CorpusConfig(kind="text_file", path="/x.txt", max_words=50))
    corpus = {"words_sha256": "abc", "package_version": "1.2"}
    fields = cache_fields(_model("s", "ts"), _model("t", "tt"), cfg, corpus)
    assert fields == {
        "format_version": FORMAT_VERSION,
        "source_model": "model:s",
        "target_model": "model:t",
        "source_tokenizer": "tok:ts",
        "target_tokenizer": "tok:tt",
        "max_tokens": 3,
        "words_per_bucket": 100,
        "heldout_words": 7,
        "min_bucket_words": 2,
        "corpus": {"kind": "text_file", "lang": "en", "path": "/x.txt",
                   "name": "wikitext-103-raw-v1", "max_words": 50},
        "seed": 5,
        "rcond": 1e-6,
        "fit_dtype": "float32",
        "corpus_content": corpus,
    }
    assert "corpus_content" not in cache_fields(_model("s", "ts"), _model("t", "tt"), cfg)


# ---------------------------------------------------------------------------- search
# The stub world of tests/test_search_step.py: a bigram LM with an identity embedding table and
# a per-token-cost objective, all losses known in closed form.

class PositionCost(TokenCost):
    """loss = sum_t (t + 1) * costs[x_t]: the gradient differs at every position."""

    def loss(self, tb):
        per_token = tb.embeds @ self.costs  # (B, S)
        pos = torch.arange(1, per_token.shape[1] + 1, dtype=per_token.dtype)  # (S,)
        return (per_token * pos * tb.attention_mask).sum(-1)


class RecordingCost(TokenCost):
    def prepare(self, item):
        self.prepared = item


def test_slot_gradient_is_the_weighted_sum_at_the_last_position():
    primary, a = world(seed=11)
    b = PositionCost(primary, torch.linspace(-1, 1, V), weight=3.0)
    b.name = "position"
    zero = TokenCost(primary, torch.ones(V), weight=0.0)
    zero.name = "zero"
    seqs = [[1, 2, 3, 4], [4, 3, 2, 1]]  # the slot is the last token, at position 4
    got = slot_gradient(primary, [zero, a, b], seqs)  # a weight-0 term first: skipped, not a stop
    want = (a.weight * a.costs + b.weight * 4 * b.costs).expand(2, V)
    torch.testing.assert_close(got, want)
    empty = slot_gradient(primary, [zero], seqs)  # nothing weighted: zeros (B, V)
    assert empty.shape == (2, V) and not empty.any()


def test_slot_gradient_without_terms_has_the_vocabulary_width():
    """(B, V) with V the table's rows, also when the embedding width differs from V."""
    table = torch.zeros(V, 3)
    primary = SimpleNamespace(device=torch.device("cpu"), embedding_table=lambda: table,
                              embed=lambda ids: table[ids])
    assert slot_gradient(primary, [], [[1, 2]] * 5).shape == (5, V)


def test_slot_gradient_builds_ids_on_the_primarys_device():
    class Seen(Exception):
        pass

    def embed(ids):
        raise Seen(ids.device, ids.dtype)

    primary = SimpleNamespace(device=torch.device("meta"), embed=embed)
    with pytest.raises(Seen) as seen:
        slot_gradient(primary, [], [[1, 2, 3]])
    assert seen.value.args == (torch.device("meta"), torch.long)


def test_start_search_prepares_the_item_and_seeds_per_item_and_method():
    primary, _ = world(seed=13)
    obj = RecordingCost(primary, torch.zeros(V))
    item = SimpleNamespace(id="img-7")
    state = start_search(item, primary, [obj], cfg_of(printable_only=False), 1.0, 4)
    assert obj.prepared is item and state.item is item
    assert bool(state.allowed[11])  # printable_only=False keeps the newline token

    def spec(*parts):  # the documented derivation: sha256 of "seed|id|method", 63 bits
        digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    assert state.generator.initial_seed() == spec(4, "img-7", "fuse")
    no_id = start_search(SimpleNamespace(), primary, [obj], cfg_of(method="random_proposal"), 1.0, 4)
    assert no_id.generator.initial_seed() == spec(4, "", "random_proposal")


def test_searching_keeps_only_weighted_objectives():
    primary, obj = world(seed=14)
    zero = TokenCost(primary, torch.ones(V), weight=0.0)
    assert build_method("fuse").searching([zero, obj]) == [obj]
    assert build_method("random_proposal").searching([zero, obj]) == [obj]
    assert build_method("lm_only").searching([zero, obj]) == []


def test_select_beams_boundaries():
    assert select_beams(torch.tensor([0.3, 0.1, 0.2]), 1, "abc".__getitem__) == [1]
    with pytest.raises(AssertionError):
        select_beams(torch.zeros(2, 2), 1, "ab".__getitem__)
    with pytest.raises(AssertionError):
        select_beams(torch.zeros(3), 0, "abc".__getitem__)


def test_should_stop_ignores_trailing_whitespace():
    tok = StubTokenizer()
    state = SimpleNamespace(cfg=cfg_of(stop_at_sentence_end=True, min_steps=1, steps=5),
                            steps_done=2, beams=[tok.encode(" a dog. ")],
                            primary=SimpleNamespace(tokenizer=tok))
    assert tok.decode(state.beams[0]) == " a dog. "
    assert should_stop(state)


def test_history_objective_is_the_full_weighted_objective():
    primary, obj = world(seed=15, weight=2.0)
    state = start(primary, obj, cfg_of(), lm_weight=3.0)
    for _ in range(3):
        search_step(state)
        h = state.history[-1]
        assert h["objective"] == pytest.approx(3.0 * h["lm"] + 2.0 * h[obj.name], rel=1e-6)


def test_best_step_is_the_earliest_best_beam():
    """Every step's best total ties (flat LM, no costs): best_step keeps the first step's best
    beam, which is also what a one-step search returns."""
    flat = dict(bigram=torch.zeros(V, V), bonus=torch.zeros(V, V), costs=torch.zeros(V))
    primary, obj = world(**flat)
    item = SimpleNamespace(id="x")
    best = search_caption(item, primary, [obj], cfg_of(steps=3, returned="best_step"), 1.0, 0)
    primary, obj = world(**flat)
    one = search_caption(item, primary, [obj], cfg_of(steps=1), 1.0, 0)
    assert len({round(h["total"], 9) for h in best.history}) == 1
    assert best.ids == one.ids and len(best.ids) == 1
    # Costs make step 1's second beam differ from its best: best_step must hold beam 0's ids.
    primary, obj = world(bigram=torch.zeros(V, V), bonus=torch.zeros(V, V), costs=torch.ones(V))
    best = search_caption(item, primary, [obj], cfg_of(steps=3, returned="best_step"), 1.0, 0)
    primary, obj = world(bigram=torch.zeros(V, V), bonus=torch.zeros(V, V), costs=torch.ones(V))
    state = start(primary, obj, cfg_of(steps=3))
    search_step(state)
    assert best.ids == state.beams[0] != state.beams[1]


def test_search_caption_uses_item_and_seed_and_timed_search_times_it():
    primary, _ = world(seed=16)
    obj = RecordingCost(primary, torch.randn(V, generator=torch.Generator().manual_seed(1)))
    item = SimpleNamespace(id="img-9")
    cfg = cfg_of(method="random_proposal", steps=3)
    result = search_caption(item, primary, [obj], cfg, 1.0, 5)
    assert obj.prepared is item
    assert result.generated == primary.tokenizer.decode(result.ids)
    assert result.caption == PREFIX + result.generated
    state = start_search(item, primary, [obj], cfg, 1.0, 5)
    for _ in range(3):
        search_step(state)
    assert result.ids == state.beams[0]  # the same seeded draws
    before = time.perf_counter()
    timed, seconds = timed_search(item, primary, [obj], cfg, 1.0, seed=5)
    elapsed = time.perf_counter() - before
    assert timed.ids == result.ids and 0.0 <= seconds <= elapsed


# ---------------------------------------------------------------------------- bridge
def _word_seed(seed: int, word: str, l_i: int, l_j: int) -> int:
    digest = hashlib.sha256(f"{seed}|{word}|{l_i}|{l_j}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _spec_overflow_rows(g_j: torch.Tensor, l_i: int, d_i: int, word_seed: int) -> torch.Tensor:
    """The documented overflow Jacobian: per source token t a Gaussian block with entries of
    variance 1 / (l_j d_j), drawn on the CPU from the word's seed; rows g_i[t] = vec(g_j) @ block."""
    l_j, d_j = g_j.shape
    gen = torch.Generator(device="cpu").manual_seed(word_seed)
    blocks = [torch.randn(l_j * d_j, d_i, generator=gen) * (l_j * d_j) ** -0.5 for _ in range(l_i)]
    return torch.stack([g_j.reshape(-1) @ b.double() for b in blocks])  # (l_i, d_i)


def test_overflow_words_get_the_documented_random_jacobian():
    """Six overflow words in one sequence (six word seeds, so every bit of the seed matters)."""
    pair = make_toy_pair()
    adapter = planted_adapter(pair)
    only_one = dataclasses.replace(adapter, maps={1: adapter.maps[1]})  # longer words overflow
    src, tgt = pair.source.tokenizer, pair.target.tokenizer
    words = [w for w in pair.words if len(tgt.word_ids(w)) >= 2][:6]
    ids = src.encode(" ".join(words))
    bridge = Bridge(pair.source, pair.target, only_one, overflow="random", seed=7)
    assert bridge.word_paths([ids]) == [["overflow"] * len(words)]
    e = torch.zeros(1, len(ids), pair.source.dim, dtype=torch.float64, requires_grad=True)
    tb = bridge([ids], e)
    weights = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (tb.embeds * weights).sum().backward()
    s_pos, t_pos = 0, 1  # the target starts with its CLS
    for word in words:
        l_i, l_j = len(src.word_ids(word)), len(tgt.word_ids(word))
        want = _spec_overflow_rows(weights[0, t_pos : t_pos + l_j], l_i, pair.source.dim,
                                   _word_seed(7, word, l_i, l_j))
        torch.testing.assert_close(e.grad[0, s_pos : s_pos + l_i], want, rtol=1e-12, atol=1e-12)
        s_pos, t_pos = s_pos + l_i, t_pos + l_j
    assert s_pos == len(ids)


def test_random_control_maps_follow_their_definition():
    pair = make_toy_pair()
    adapter = planted_adapter(pair)
    bridge = Bridge(pair.source, pair.target, adapter)
    default = bridge.with_maps("random")
    for seed in (0, 3):
        rnd = bridge.with_maps("random", seed=seed)
        for l, m in adapter.maps.items():
            r = torch.randn(m.shape, generator=torch.Generator().manual_seed(seed * 1009 + l),
                            dtype=torch.float64)
            want = (r * (torch.linalg.vector_norm(m.double()) / torch.linalg.vector_norm(r))).float()
            torch.testing.assert_close(rnd.adapter.maps[l], want, rtol=1e-6, atol=0)
            if seed == 0:
                assert torch.equal(default.adapter.maps[l], rnd.adapter.maps[l])  # seed 0 default


def test_token_and_identity_bridges_on_a_batch():
    """Shared tokenizer: the target sees the very ids (its specials added), and row b of the batch
    sends g_b @ A^T to row b; the identity bridge passes embeddings, ids and texts through."""
    from fuse_repro.adapter import FittedAdapter
    from fuse_repro.testing.toy import ToyModel

    pair = make_toy_pair()
    a = torch.randn(pair.source.dim, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = ToyModel("toy-linear", pair.source.tokenizer, pair.source.table @ a)
    token = Bridge(pair.source, target, FittedAdapter(kind="token", key="t", maps={1: a.float()}))
    tok = pair.source.tokenizer
    ids = [tok.encode(" ".join(pair.words[:3])), tok.encode(pair.words[5])]
    texts = [tok.decode(i) for i in ids]
    e = torch.zeros(2, max(map(len, ids)), pair.source.dim, dtype=torch.float64, requires_grad=True)
    tb = token(ids, e)
    full = [tok.with_specials(i) for i in ids]
    assert tb.ids == [f for f, _ in full] and tb.texts == texts
    assert tb.embeds.dtype == torch.float64 and tb.attention_mask.dtype == torch.long
    g = torch.randn(tb.embeds.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (tb.embeds * g).sum().backward()
    for b, (f, offset) in enumerate(full):
        want = g[b, offset : offset + len(ids[b])] @ a.float().double().T
        torch.testing.assert_close(e.grad[b, : len(ids[b])], want)
    same = Bridge(pair.source, pair.source, FittedAdapter(kind="identity", key="i"))
    tb = same(ids, e.detach())
    assert tb.ids == ids and tb.texts == texts
    assert tb.attention_mask.tolist() == [[1] * len(i) + [0] * (e.shape[1] - len(i)) for i in ids]


def test_fuse_bridge_outputs_defaults_paths_and_messages():
    pair = make_toy_pair()
    adapter = planted_adapter(pair)
    bridge = Bridge(pair.source, pair.target, adapter)
    assert bridge.seed == 0 and bridge.overflow == "random" and bridge.maps_kind == "fitted"
    tok = pair.source.tokenizer
    ids = [tok.encode(" ".join(pair.words[:2])), tok.encode(pair.words[3])]
    e = torch.zeros(2, max(map(len, ids)), pair.source.dim, dtype=torch.float64)
    tb = bridge(ids, e)
    assert tb.texts == [tok.decode(i) for i in ids]
    assert tb.embeds.dtype == torch.float64 and tb.attention_mask.dtype == torch.long
    # a word one side tokenizes to nothing takes the "empty" path, whatever the other side has
    assert [bridge._word_path(0, 2), bridge._word_path(2, 0)] == ["empty", "empty"]
    # maps are cast once per (device, dtype), and land on the asked device
    assert all(m.dtype == torch.float16 for m in bridge.maps_on(torch.device("cpu"), torch.float16).values())
    assert all(m.dtype == torch.float64 for m in bridge.maps_on(torch.device("cpu"), torch.float64).values())
    assert all(m.device.type == "meta" for m in bridge.maps_on(torch.device("meta"), torch.float32).values())
    with pytest.raises(AdapterError, match=r"^maps kind 'x' is not one of \['fitted', 'random', 'mean'\]"):
        Bridge(pair.source, pair.target, adapter, maps_kind="x")
    with pytest.raises(AdapterError, match=r"^a source sequence is longer than src_embeds' sequence"):
        bridge(ids, e[:, :1])
    with pytest.raises(AdapterError, match=r"^the identity bridge has no maps to replace"):
        Bridge(pair.source, pair.source, dataclasses.replace(adapter, kind="identity", maps={})).with_maps("random")
    bad = dataclasses.replace(adapter, maps={1: torch.zeros(pair.source.dim + 1, pair.target.dim, 1)})
    with pytest.raises(AssertionError, match="map 1"):
        Bridge(pair.source, pair.target, bad)


# ---------------------------------------------------------------------------- search/lm.py (issue 18)


def test_allowed_token_mask_is_computed_once_per_model_and_mode(tiny_gpt2):
    """The mask is cached on the model: the same tensor comes back, per printable_only mode."""
    from fuse_repro.search.lm import allowed_token_mask

    first = allowed_token_mask(tiny_gpt2, printable_only=True)
    assert allowed_token_mask(tiny_gpt2, printable_only=True) is first
    everything = allowed_token_mask(tiny_gpt2, printable_only=False)
    assert everything is not first and bool((everything | ~first).all())
    assert allowed_token_mask(tiny_gpt2, printable_only=False) is everything


def test_cache_keyword_of_old_and_new_transformers():
    from fuse_repro.search.lm import cache_keyword

    class Old:
        def forward(self, input_ids, past_key_values=None, use_cache=False):
            return None

    class New:
        def forward(self, input_ids, cache=None, past_key_values=None):
            return None

    class Neither:
        def forward(self, input_ids):
            return None

    assert cache_keyword(Old()) == "past_key_values"
    assert cache_keyword(New()) == "cache"
    with pytest.raises(TypeError):
        cache_keyword(Neither())
