"""Objectives and the AutoDAN-style beam search, on tiny models and the offline real ones."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from fuse_repro.adapter import fit_adapter
from fuse_repro.bridge import Bridge
from fuse_repro.config import AdapterConfig, CorpusConfig, SearchConfig
from fuse_repro.objectives import (
    OBJECTIVES,
    ClipImageSimilarity,
    ObjectiveError,
    Sentiment,
    TextSimilarity,
    build_objective,
)
from fuse_repro.search import (
    LMState,
    candidate_scores,
    lm_context,
    lm_losses_full,
    propose,
    search_caption,
    search_step,
    slot_gradient,
    start_search,
)
from fuse_repro import captioner as caption_stage

# Plumbing fits for the tiny random models: a small corpus is plenty.
SMALL_FIT = AdapterConfig(words_per_bucket=256, heldout_words=16, corpus=CorpusConfig(max_words=20000))


@pytest.fixture(scope="module")
def smol_minilm_bridge(smollm2, minilm, smol_minilm_adapter):
    return Bridge(smollm2, minilm, smol_minilm_adapter, overflow="random", seed=0)


def encode_all(model, texts):
    return [model.tokenizer.encode(t) for t in texts]


TEXTS = [
    "An image of a dog",
    "An image of a brown dog running on the beach near the water",
    "An image of",
    "An image of pizza, cheese and tomatoes on a wooden table!",
    "An image of a café",
]


# ----------------------------------------------------------------------------------------------
# per-candidate losses
# ----------------------------------------------------------------------------------------------
def test_text_similarity_losses_independent_of_batch_and_chunking(smollm2, minilm, smol_minilm_bridge):
    obj = TextSimilarity(minilm, smol_minilm_bridge, weight=1.0)
    obj.prepare(SimpleNamespace(id="x", target="A brown dog runs on the beach."))
    seqs = encode_all(smollm2, TEXTS)
    whole = obj.evaluate(seqs, chunk=64)
    assert whole.shape == (len(TEXTS),)
    torch.testing.assert_close(obj.evaluate(seqs, chunk=1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(obj.evaluate(seqs, chunk=2), whole, rtol=1e-5, atol=1e-5)
    perm = [3, 0, 4, 2, 1]
    torch.testing.assert_close(obj.evaluate([seqs[i] for i in perm], chunk=3), whole[perm], rtol=1e-5, atol=1e-5)
    # the most on-topic text is the most similar
    assert int(whole.argmin()) == 1
    # the differentiable path gives the same values as the evaluation path
    embeds = torch.zeros(len(seqs), max(map(len, seqs)), smollm2.dim)
    with torch.no_grad():
        via_bridge = obj.loss(smol_minilm_bridge(seqs, embeds))
    torch.testing.assert_close(via_bridge, whole, rtol=1e-5, atol=1e-5)


def test_sentiment_losses_are_per_candidate(tiny_gpt2, tiny_roberta, model_cache_dir):
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    bridge = Bridge(tiny_gpt2, tiny_roberta, adapter)
    obj = Sentiment(tiny_roberta, bridge, weight=1.0, sentiment="positive")
    obj.prepare(SimpleNamespace(id="x"))
    assert tiny_roberta.id2label[obj.label].lower() == "positive"
    seqs = encode_all(tiny_gpt2, TEXTS)
    whole = obj.evaluate(seqs, chunk=64)
    singles = torch.cat([obj.evaluate([s], chunk=1) for s in seqs])
    torch.testing.assert_close(singles, whole, rtol=1e-5, atol=1e-5)
    assert whole.std() > 0  # not one batch mean copied to every candidate
    obj.prepare(SimpleNamespace(id="y", sentiment="negative"))
    assert tiny_roberta.id2label[obj.label].lower() == "negative"
    with pytest.raises(ObjectiveError, match="not a label"):
        obj.label_index("ecstatic")


def test_clip_pooling_mixed_lengths(tiny_gpt2, tiny_clip, model_cache_dir, tmp_path):
    from PIL import Image

    adapter = fit_adapter(tiny_gpt2, tiny_clip, SMALL_FIT, model_cache_dir)
    bridge = Bridge(tiny_gpt2, tiny_clip, adapter)
    obj = ClipImageSimilarity(tiny_clip, bridge, weight=1.0)
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    obj.prepare(SimpleNamespace(id="img", image_path=str(image)))
    seqs = encode_all(tiny_gpt2, TEXTS)
    batch = obj.evaluate(seqs, chunk=64)
    singles = torch.cat([obj.evaluate([s], chunk=1) for s in seqs])
    # a short candidate padded next to a long one pools at its own end-of-text token
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-5)
    # and equals open_clip's own encode_text on the real text
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny_clip.module.encode_text(tok([tiny_gpt2.tokenizer.decode(seqs[1])])), dim=-1)
    ref_loss = 1 - (ref[0] * obj.image_features).sum()
    torch.testing.assert_close(batch[1], ref_loss, rtol=1e-4, atol=1e-4)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ObjectiveError, match="cannot read image"):
        obj.prepare(SimpleNamespace(id="bad", image_path=str(bad)))


# ----------------------------------------------------------------------------------------------
# the LM term from the KV cache
# ----------------------------------------------------------------------------------------------
def test_kv_cache_scores_equal_full_recomputation(tiny_gpt2):
    """The search's KV cache is a transformers ``Cache`` passed by its current keyword (no
    deprecated ``past_key_values``: a FutureWarning would fail this test), reordered per step."""
    import warnings

    from transformers import Cache

    prefix = tiny_gpt2.tokenizer.encode("An image of")
    ctx = lm_context(tiny_gpt2, prefix)
    g = torch.Generator().manual_seed(0)
    beams = [[]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        lm = LMState(tiny_gpt2, ctx)
        for _ in range(3):  # grow 3 beams with reordering, as the search does
            parents = torch.randint(0, len(beams), (3,), generator=g).tolist()
            tokens = torch.randint(100, 5000, (3,), generator=g).tolist()
            lm.advance(parents, tokens)
            beams = [beams[p] + [t] for p, t in zip(parents, tokens)]
    assert isinstance(lm.cache, Cache)
    assert lm.cache.get_seq_length() == len(ctx) + 3
    with torch.no_grad():
        for b, gen in enumerate(beams):
            ids = torch.tensor([ctx + gen])
            full = torch.log_softmax(tiny_gpt2.module(input_ids=ids).logits[0, -1].float(), -1)
            torch.testing.assert_close(lm.logprobs[b].cpu(), full, rtol=1e-4, atol=1e-4)


def test_search_lm_term_equals_full_recomputation(tiny_gpt2, tiny_roberta, model_cache_dir):
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    obj = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, adapter), weight=1.0, sentiment="positive")
    cfg = SearchConfig(steps=3, top_k=8, beam_width=3)
    state = start_search(SimpleNamespace(id="a"), tiny_gpt2, [obj], cfg, 1.0, seed=0)
    for _ in range(3):
        search_step(state)
    n = len(state.beams[0])
    full = lm_losses_full(tiny_gpt2, state.prefix_ids, state.beams)
    torch.testing.assert_close(state.nll_sums / n, full, rtol=1e-4, atol=1e-4)
    assert state.history[-1]["lm"] == pytest.approx(float(full[0]), rel=1e-4, abs=1e-4)
    assert state.evaluations == 8 + 3 * 8 + 3 * 8
    # The authors' LM term (prefix + generated) through the cache, on the real model too.
    authors = start_search(SimpleNamespace(id="a"), tiny_gpt2, [obj], dataclasses.replace(cfg, lm_term="prefix_and_generated"), 1.0, seed=0)
    for _ in range(3):
        search_step(authors)
    both = lm_losses_full(tiny_gpt2, authors.prefix_ids, authors.beams[:1], "prefix_and_generated")
    assert authors.history[-1]["lm"] == pytest.approx(float(both[0]), rel=1e-4, abs=1e-4)


def test_candidate_scores_are_what_propose_ranks_on_a_real_bridge(tiny_gpt2, tiny_roberta, model_cache_dir):
    """The public per-candidate score: gradient part = -slot_gradient at the LM-argmax slot,
    LM part = masked log-probs, and propose's candidates are exactly the top of ``total``."""
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    obj = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, adapter), weight=3.0, sentiment="positive")
    state = start_search(SimpleNamespace(id="s"), tiny_gpt2, [obj], SearchConfig(top_k=8, beam_width=3), 1.0, seed=0)
    search_step(state)
    scores = candidate_scores(state)
    slots = scores.lm.argmax(-1).tolist()
    seqs = [state.prefix_ids + b + [s] for b, s in zip(state.beams, slots)]
    torch.testing.assert_close(scores.gradient, -slot_gradient(tiny_gpt2, [obj], seqs), rtol=1e-5, atol=1e-6)
    assert scores.gradient.abs().sum() > 0
    top = torch.sort(scores.total, dim=-1, descending=True, stable=True).indices[:, :8]
    assert torch.equal(propose(state, scores), top)
    assert torch.equal(propose(state), top)


def test_objectives_declare_metrics_and_check_their_options(tiny_gpt2, tiny_roberta, model_cache_dir):
    assert TextSimilarity.metrics == ClipImageSimilarity.metrics == ("cosine",)
    assert Sentiment.metrics == ("cross_entropy",)
    assert all(set(cls.metrics) <= {"cosine", "cross_entropy"} for cls in OBJECTIVES.values())
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    bridge = Bridge(tiny_gpt2, tiny_roberta, adapter)
    assert build_objective("sentiment", tiny_roberta, bridge, 1.0, sentiment="negative").default_sentiment == "negative"
    with pytest.raises(ObjectiveError, match="objective 'sentiment' has no option 'sentimnet'"):
        build_objective("sentiment", tiny_roberta, bridge, 1.0, sentimnet="negative")
    with pytest.raises(ObjectiveError, match="unknown objective kind 'sim'"):
        build_objective("sim", tiny_roberta, bridge, 1.0)


# ----------------------------------------------------------------------------------------------
# determinism and bad input
# ----------------------------------------------------------------------------------------------
def test_same_seed_same_caption_and_methods_differ(tiny_gpt2, tiny_roberta, model_cache_dir):
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    obj = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, adapter), weight=5.0, sentiment="positive")
    item = SimpleNamespace(id="same")
    cfg = SearchConfig(steps=3, top_k=8, beam_width=2)
    a = search_caption(item, tiny_gpt2, [obj], cfg, 1.0, seed=0)
    b = search_caption(item, tiny_gpt2, [obj], cfg, 1.0, seed=0)
    assert a == b
    r1 = search_caption(item, tiny_gpt2, [obj], dataclasses.replace(cfg, method="random_proposal"), 1.0, seed=0)
    r2 = search_caption(item, tiny_gpt2, [obj], dataclasses.replace(cfg, method="random_proposal"), 1.0, seed=1)
    assert r1.evaluations == a.evaluations  # same evaluation budget
    assert r1.ids != r2.ids or r1.history != r2.history  # the seed drives the proposals
    lm = search_caption(item, tiny_gpt2, [obj], dataclasses.replace(cfg, method="lm_only"), 1.0, seed=0)
    assert lm.losses["total"] == pytest.approx(lm.losses["lm"])  # lm_only optimizes the LM alone
    assert "sentiment" in lm.losses  # ... but still reports every objective


def test_bad_search_input(tiny_gpt2, tiny_roberta, model_cache_dir):
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    obj = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, adapter), weight=1.0, sentiment="positive")
    item = SimpleNamespace(id="x")
    with pytest.raises(ObjectiveError, match="prefix"):
        search_caption(item, tiny_gpt2, [obj], SearchConfig(prefix="", steps=1, top_k=4), 1.0, 0)
    with pytest.raises(ObjectiveError, match="weight"):
        search_caption(item, tiny_gpt2, [obj], SearchConfig(steps=1, top_k=4), -1.0, 0)
    obj.weight = 0.0
    with pytest.raises(ObjectiveError, match="all objective weights are zero"):
        search_caption(item, tiny_gpt2, [obj], SearchConfig(steps=1, top_k=4), 0.0, 0)
    obj.weight = float("nan")
    with pytest.raises(ObjectiveError, match="finite"):
        search_caption(item, tiny_gpt2, [obj], SearchConfig(steps=1, top_k=4), 1.0, 0)
    with pytest.raises(ValueError, match="top_k"):
        search_caption(item, tiny_gpt2, [], SearchConfig(steps=1, top_k=0), 1.0, 0)


# ----------------------------------------------------------------------------------------------
# resume after a crash
# ----------------------------------------------------------------------------------------------
def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_resume_after_crash_gives_same_captions(tiny_gpt2, tiny_roberta, model_cache_dir, tmp_path, monkeypatch):
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    obj = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, adapter), weight=2.0, sentiment="positive")
    captioner = caption_stage.Captioner(tiny_gpt2, [obj], 1.0, {"sentiment": adapter.key})
    items = [SimpleNamespace(id=f"i{k}", image_path=None, target=None) for k in range(4)]
    cfg = SearchConfig(steps=2, top_k=6, beam_width=2)
    full = caption_stage.caption_items(items, captioner, cfg, 0, tmp_path / "full")

    crash_dir = tmp_path / "crash"
    real = caption_stage.timed_search
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(caption_stage, "timed_search", crashing)
    with pytest.raises(KeyboardInterrupt):
        caption_stage.caption_items(items, captioner, cfg, 0, crash_dir)
    monkeypatch.setattr(caption_stage, "timed_search", real)
    written = [json.loads(l) for l in (crash_dir / "captions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == ["i0", "i1"]  # nothing finished was lost
    # a torn half-line from the crash is dropped on resume
    with (crash_dir / "captions.jsonl").open("a") as fh:
        fh.write('{"id": "i2", "capt')
    resumed = caption_stage.caption_items(items, captioner, cfg, 0, crash_dir)
    assert _strip(resumed) == _strip(full)
    on_disk = [json.loads(l) for l in (crash_dir / "captions.jsonl").read_text().splitlines()]
    assert _strip(on_disk) == _strip(full)


def test_failed_item_is_logged_and_run_goes_on(tiny_gpt2, tiny_clip, model_cache_dir, tmp_path):
    from PIL import Image

    adapter = fit_adapter(tiny_gpt2, tiny_clip, SMALL_FIT, model_cache_dir)
    obj = ClipImageSimilarity(tiny_clip, Bridge(tiny_gpt2, tiny_clip, adapter), weight=1.0)
    captioner = caption_stage.Captioner(tiny_gpt2, [obj], 1.0, {"clip": adapter.key})
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (0, 128, 255)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_text("garbage")
    items = [SimpleNamespace(id="good", image_path=str(good)), SimpleNamespace(id="bad", image_path=str(bad)),
             SimpleNamespace(id="good2", image_path=str(good))]
    out = caption_stage.caption_items(items, captioner, SearchConfig(steps=1, top_k=4, beam_width=1), 0, tmp_path / "run")
    assert [r["id"] for r in out] == ["good", "good2"]
    errors = [json.loads(l) for l in (tmp_path / "run" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["id"] == "bad" and "cannot read image" in errors[0]["error"]


# ----------------------------------------------------------------------------------------------
# the FUSE gradient finds what the LM alone would not
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_planted_word_found_by_fuse_not_by_lm_only(smollm2, minilm, smol_minilm_bridge):
    """The secondary objective rewards one word ("pizza"); after "An image of a" the LM alone
    ranks it ~400th. FUSE's gradient through MiniLM must surface it within two steps, with the
    same top_k, while lm_only and random_proposal (same budget, no gradient) cannot."""
    obj = TextSimilarity(minilm, smol_minilm_bridge, weight=10.0)
    item = SimpleNamespace(id="planted", target="pizza")
    base = SearchConfig(prefix="An image of a", steps=2, top_k=16, beam_width=2, logit_weight=0.05)
    found = {}
    for method in ("fuse", "lm_only", "random_proposal"):
        res = search_caption(item, smollm2, [obj], dataclasses.replace(base, method=method), 1.0, seed=0)
        found[method] = ("pizza" in res.caption.lower(), res.caption, round(res.losses["text_similarity"], 4))
    print("planted-word search:", found)
    assert found["fuse"][0], found
    assert not found["lm_only"][0], found
    # "pizza" lies far outside the LM's top pool_factor * top_k, so random proposals cannot reach it
    assert not found["random_proposal"][0], found
    assert found["fuse"][2] < found["lm_only"][2]
    assert found["fuse"][2] < found["random_proposal"][2]
