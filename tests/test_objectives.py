"""The secondary objectives on stub models, against float64 references (issue 18: the
mutation score of ``fuse_repro/objectives.py`` with fast tests; the real-model tests are in
``tests/test_search.py``).

Glossary: B candidates, S tokens (padded per chunk), h hidden size, C classes, e features.
The stub encoder's hidden states are ``tanh((embeds + mean of the real tokens) @ W)``
(B, S, h), so the attention mask matters as in a transformer; the stub classifier's logits are
their masked mean (B, C); the stub bridge looks candidates up in
the target table (right padding with a pad row that is not zero, so an unmasked mean is wrong).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fuse_repro.bridge import TargetBatch
from fuse_repro.objectives import (
    OBJECTIVES,
    ClipImageSimilarity,
    ObjectiveError,
    Sentiment,
    TextSimilarity,
    build_objective,
    check_weights,
    objective_options,
)

V, D, H, C = 12, 5, 4, 3
PAD = 11


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class StubTokenizer:
    """Words -> ids 2..; 0 is BOS, 1 is EOS (``with_specials`` wraps a sequence)."""

    words = ["a", "dog", "cat", "on", "the", "beach", "red", "bus"]

    def encode(self, text: str) -> list[int]:
        return [2 + self.words.index(w) for w in text.split()]

    def with_specials(self, ids: list[int]) -> tuple[list[int], int]:
        return [0, *ids, 1], 1


class StubModel:
    def __init__(self, head: torch.Tensor, classifier: bool = False) -> None:
        self.name = "stub"
        self.tokenizer = StubTokenizer()
        self.device = torch.device("cpu")
        self.table = _rand(V, D, seed=1)
        self.head = head
        self.classifier = classifier
        self.id2label = {0: "NEGATIVE", 1: "neutral", 2: "Positive"}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]

    def forward_embeds(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Like attention, every position sees the mean of the real (unmasked) tokens.
        m = mask.to(embeds.dtype).unsqueeze(-1)  # (B, S, 1)
        context = (embeds * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)  # (B, 1, d)
        hidden = torch.tanh((embeds + context) @ self.head)  # (B, S, h) or (B, S, C)
        if not self.classifier:
            return hidden
        return (hidden * m).sum(1) / m.sum(1)  # (B, C)


class StubBridge:
    def __init__(self, model: StubModel) -> None:
        self.model = model
        self.calls: list[int] = []

    def lookup(self, src_ids: list[list[int]]) -> TargetBatch:
        self.calls.append(len(src_ids))
        full = [[0, *ids, 1] for ids in src_ids]
        width = max(len(f) for f in full)
        padded = torch.tensor([f + [PAD] * (width - len(f)) for f in full])  # (B, S)
        mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full])
        return TargetBatch(self.model.table[padded], mask, full, [""] * len(full))


def _ref_hidden(model: StubModel, full: list[int]) -> torch.Tensor:
    """float64 reference: the stub's hidden states of one unpadded sequence, (S, h)."""
    x = model.table[full]  # (S, d)
    return torch.tanh((x + x.mean(0)) @ model.head)


def _ref_hidden_mean(model: StubModel, ids: list[int]) -> torch.Tensor:
    """The mean hidden state over the real tokens of one sequence, (h,)."""
    return _ref_hidden(model, [0, *ids, 1]).mean(0)


CANDIDATES = [[3], [2, 3, 5, 7], [4, 5], [2, 3, 5, 7, 6, 8]]  # mixed lengths: padding per chunk


def test_text_similarity_matches_a_float64_reference_in_any_chunking():
    model = StubModel(_rand(D, H, seed=2))
    bridge = StubBridge(model)
    obj = TextSimilarity(model, bridge, weight=2.5)
    assert (obj.name, obj.weight, obj.needs, obj.metrics) == ("text_similarity", 2.5, "target", ("cosine",))
    obj.prepare(SimpleNamespace(id="x", target="a dog on the beach"))
    target = _ref_hidden_mean(model, model.tokenizer.encode("a dog on the beach"))
    assert torch.allclose(obj.target_embedding, target / target.norm())
    ref = torch.tensor([1.0 - torch.nn.functional.cosine_similarity(
        _ref_hidden_mean(model, c), target, dim=0).item() for c in CANDIDATES], dtype=torch.float64)
    for chunk in (1, 3, 4, 100):
        got = obj.evaluate(CANDIDATES, chunk)
        assert got.dtype == torch.float32 and got.shape == (len(CANDIDATES),)
        assert torch.allclose(got.double(), ref, atol=1e-6), (chunk, got, ref)
    assert bridge.calls == [1, 1, 1, 1, 3, 1, 4, 4]  # chunks of 1, 3, 4 and 100
    # the target text itself is the best candidate, at loss 0
    best = obj.evaluate([model.tokenizer.encode("a dog on the beach")], 8)
    assert abs(best.item()) < 1e-6 and (ref > 1e-3).all()
    assert obj.evaluate([], 4).shape == (0,)


def test_text_similarity_pool_is_a_masked_mean():
    model = StubModel(_rand(D, H, seed=2))
    hidden = _rand(2, 3, H, seed=4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    raw = torch.stack([hidden[0, :2].mean(0), hidden[1, 0]])  # the masked mean, by hand
    unit = TextSimilarity(model, StubBridge(model), 1.0).pool(hidden, mask)
    assert torch.allclose(unit, raw / raw.norm(dim=-1, keepdim=True))
    # an all-padding row pools to zeros instead of dividing by zero
    empty = TextSimilarity(model, StubBridge(model), 1.0).pool(hidden, torch.zeros(2, 3))
    assert torch.equal(empty, torch.zeros(2, H, dtype=torch.float64))


def test_text_similarity_needs_a_target_and_prepare_first():
    model = StubModel(_rand(D, H, seed=2))
    obj = TextSimilarity(model, StubBridge(model), 1.0)
    with pytest.raises(AssertionError):
        obj.evaluate([[2]], 1)
    for item in (SimpleNamespace(id="x"), SimpleNamespace(id="x", target="")):
        with pytest.raises(ObjectiveError):
            obj.prepare(item)


def test_sentiment_is_the_cross_entropy_of_the_wanted_label():
    model = StubModel(_rand(D, C, seed=3), classifier=True)
    obj = Sentiment(model, StubBridge(model), weight=1.0, sentiment="negative")
    assert (obj.name, obj.needs, obj.metrics) == ("sentiment", None, ("cross_entropy",))
    assert obj.label_index("POSITIVE") == 2 and obj.label_index("negative") == 0
    with pytest.raises(ObjectiveError):
        obj.label_index("angry")
    obj.prepare(SimpleNamespace(id="x"))  # the objective's default
    assert obj.label == 0
    obj.prepare(SimpleNamespace(id="x", sentiment="positive"))  # the item's wins
    assert obj.label == 2
    got = obj.evaluate(CANDIDATES, 3)
    for c, loss in zip(CANDIDATES, got):
        logits = _ref_hidden(model, [0, *c, 1]).mean(0)  # (C,)
        assert loss.item() == pytest.approx(-torch.log_softmax(logits, 0)[2].item(), abs=1e-6)
    with pytest.raises(ObjectiveError):
        Sentiment(model, StubBridge(model), 1.0).prepare(SimpleNamespace(id="x"))
    with pytest.raises(AssertionError):
        Sentiment(model, StubBridge(model), 1.0).evaluate([[2]], 1)


class StubClip(StubModel):
    """Image features: the mean colour of the picture through a fixed (3, h) map."""

    def __init__(self) -> None:
        super().__init__(_rand(D, H, seed=5))
        self.colour_map = _rand(3, H, seed=6)
        self.module = SimpleNamespace(encode_image=lambda px: px @ self.colour_map)

    def image_preprocess(self, image):
        import numpy as np

        pixels = torch.tensor(np.asarray(image, dtype=np.float64)) / 255.0  # (h, w, 3)
        return pixels.mean((0, 1))  # (3,)

    def forward_embeds(self, embeds, mask):  # (B, S, d) -> (B, h): the text tower at EOS
        hidden = super().forward_embeds(embeds, mask)
        last = mask.sum(1) - 1
        return hidden[torch.arange(len(last)), last]


def test_clip_image_similarity_reads_the_image_once_from_memory_or_file(tmp_path):
    from PIL import Image

    model = StubClip()
    obj = ClipImageSimilarity(model, StubBridge(model), weight=22.0)
    assert (obj.name, obj.needs) == ("clip", "image")
    picture = Image.new("RGB", (8, 8), (200, 30, 60))
    picture.save(tmp_path / "red.png")
    obj.prepare(SimpleNamespace(id="m", image=picture))
    in_memory = obj.image_features.clone()
    obj.prepare(SimpleNamespace(id="f", image=None, image_path=str(tmp_path / "red.png")))
    assert torch.allclose(obj.image_features, in_memory)
    colour = torch.tensor([200, 30, 60], dtype=torch.float64) / 255.0
    feats = colour @ model.colour_map
    assert torch.allclose(in_memory.double(), feats / feats.norm(), atol=1e-6)
    got = obj.evaluate(CANDIDATES, 2)
    for c, loss in zip(CANDIDATES, got):
        text = _ref_hidden(model, [0, *c, 1])[-1]  # at EOS
        want = 1.0 - torch.nn.functional.cosine_similarity(text, feats, dim=0).item()
        assert loss.item() == pytest.approx(want, abs=1e-6)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for item in (SimpleNamespace(id="b", image=None, image_path=str(tmp_path / "bad.png")),
                 SimpleNamespace(id="n", image=None, image_path=None)):
        with pytest.raises(ObjectiveError):
            obj.prepare(item)


def test_objective_options_and_build():
    assert objective_options("text_similarity") == ()
    assert objective_options("sentiment") == ("sentiment",)
    assert objective_options("clip") == ()
    with pytest.raises(ObjectiveError):
        objective_options("bleu")
    model = StubModel(_rand(D, C, seed=3), classifier=True)
    obj = build_objective("sentiment", model, StubBridge(model), 3.0, sentiment="positive")
    assert isinstance(obj, Sentiment) and obj.weight == 3.0 and obj.default_sentiment == "positive"
    assert isinstance(build_objective("text_similarity", model, StubBridge(model), 1.0), TextSimilarity)
    with pytest.raises(ObjectiveError):  # an option the objective does not have
        build_objective("text_similarity", model, StubBridge(model), 1.0, normalize=False)
    with pytest.raises(ObjectiveError):
        build_objective("clip", model, StubBridge(model), 1.0, sentiment="positive")
    assert set(OBJECTIVES) == {"text_similarity", "clip", "sentiment"}


@pytest.mark.parametrize("lm,weights,ok", [
    (1.0, {"a": 0.0}, True), (0.0, {"a": 2.0}, True), (0, {"a": 1}, True),
    (0.0, {"a": 0.0}, False), (-1.0, {"a": 2.0}, False), (1.0, {"a": -0.5}, False),
    (1.0, {"a": math.nan}, False), (1.0, {"a": math.inf}, False), (1.0, {"a": "2"}, False),
    # a term named lm would silently replace the LM's weight (0.0 here: the check would pass)
    (0.0, {"lm": 1.0}, False), (1.0, {"a": 1.0, "total": 1.0}, False),
])
def test_check_weights(lm, weights, ok):
    if ok:
        check_weights(lm, weights)
    else:
        with pytest.raises(ObjectiveError):
            check_weights(lm, weights)
