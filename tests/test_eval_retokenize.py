"""Evaluation-only retokenization (issue 16 item 2): ``Bridge.extension_ids`` (ids without word
spans, incremental per beam) and ``Bridge.target_ids`` give exactly the ids of the bridge's full
forward encode (``Bridge._encode``, with its word spans), over thousands of candidates built
from real COCO captions with real tokenizers (GPT-2's BPE -> CLIP's BPE)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from fuse_repro.adapter import FittedAdapter
from fuse_repro.bridge import Bridge
from fuse_repro.text_model import TextModel
from tests.test_prefix_cache import TokenizerOnly, coco_captions, gpt2_tok  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def bridge(gpt2_tok: Any, tiny_clip: TextModel) -> Bridge:  # noqa: F811
    return Bridge(TokenizerOnly(gpt2_tok), tiny_clip, FittedAdapter(kind="fuse", key="ids-only"))


def real_step(gpt2_tok: Any, captions: list[str], per_beam: int, seed: int) -> tuple[list[list[int]], list[tuple[int, int]]]:  # noqa: F811
    """Beams: a random-length GPT-2 prefix of each caption; candidates: the caption's next token,
    tokens of other captions (real words, word pieces, punctuation) and random vocabulary ids
    (unicode fragments, odd bytes: the fallback path)."""
    rng = random.Random(seed)
    encoded = [gpt2_tok.encode("An image of " + c.strip()) for c in captions]
    pool = sorted({t for ids in encoded for t in ids})
    beams, pairs = [], []
    for ids in encoded:
        cut = rng.randrange(3, len(ids))
        b = len(beams)
        beams.append(ids[:cut])
        tokens = [ids[cut]] + rng.sample(pool, per_beam - 4) + [rng.randrange(50256) for _ in range(3)]
        pairs.extend((b, t) for t in tokens)
    return beams, pairs


def test_extension_ids_equal_full_encode_on_real_captions(bridge: Bridge, gpt2_tok: Any) -> None:  # noqa: F811
    beams, pairs = real_step(gpt2_tok, coco_captions(300), per_beam=12, seed=0)
    assert len(pairs) >= 3000
    ext = bridge.extension_ids(beams, pairs)
    sequences = [beams[b] + [t] for b, t in pairs]
    _, full, _, _, _, _ = bridge._encode(sequences)  # the differentiable forward's ids (oracle)
    texts, plain = bridge.target_ids(sequences)
    assert plain == full
    assert ext.candidates == full
    assert ext.texts == texts
    _, beam_full, _, _, _, _ = bridge._encode(beams)
    assert ext.beams == beam_full
    # most candidates take the incremental path; the random ids exercise the fallback
    assert 0.7 * len(pairs) < ext.incremental < len(pairs), ext.incremental


def test_lookup_is_the_forward_without_spans(bridge: Bridge, gpt2_tok: Any) -> None:  # noqa: F811
    beams, pairs = real_step(gpt2_tok, coco_captions(40), per_beam=8, seed=1)
    sequences = [beams[b] + [t] for b, t in pairs]
    tb = bridge.lookup(sequences)
    _, full, ids_pad, mask, _, _ = bridge._encode(sequences)
    assert tb.ids == full and torch.equal(tb.attention_mask, mask)
    assert torch.equal(tb.embeds, bridge.target.embed(ids_pad))


def test_separable_is_refused_where_cleaning_matters(bridge: Bridge) -> None:
    tok = bridge.target.tokenizer
    assert tok.separable("a dog on the grass.")
    for text in ("a dog &amp; a cat", "caf\u00e9 au lait", "a\u00a0dog", "tab\there"):
        assert not tok.separable(text), text
    for text in ("a dog &amp; a cat", "caf\u00e9 au lait"):  # the full encode still serves them
        ids = bridge.extension_ids([bridge.source.tokenizer.encode(text)], [(0, 13)]).candidates[0]
        assert ids == bridge._encode([bridge.source.tokenizer.encode(text) + [13]])[1][0]
