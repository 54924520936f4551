"""The ``tiny_*`` model backends: tiny random models on real offline tokenizers, for plumbing
runs, tests and benchmarks (``model@source=tiny_gpt2``; ``fuse_repro.testing`` re-exports them).

Each builder takes a ``conf/model/tiny_*.yaml`` node (backend ``tiny_gpt2``, ``tiny_roberta``,
``tiny_clip``) and returns a frozen ``TextModel`` whose weights are drawn from the node's
``seed`` (so ``TextModel.weights`` is "random"; the root ``weights`` key changes nothing here);
``fuse_repro.models.load_model`` dispatches to them like to any other backend. The
tokenizer is a real one (``tokenizer:`` node, see ``fuse_repro.tokenizers.load_tokenizer``), so
word spans and bridges see real segmentation while the forward passes stay cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fuse_repro.text_model import TextModel, freeze, hf_text_model, model_dtype, seeded
from fuse_repro.tokenizers import OpenClipTokenizer, load_tokenizer
from fuse_repro.weights import cfg_get

__all__ = ["tiny_clip", "tiny_gpt2", "tiny_roberta"]


def tiny_gpt2(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    """A random GPT-2 (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``) on a real tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_tokenizer(cfg_get(cfg, "tokenizer"), cache_dir, str(cfg_get(cfg, "name")))
    hf = tokenizer.hf  # type: ignore[attr-defined]
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=int(cfg_get(cfg, "n_positions")),
        n_embd=int(cfg_get(cfg, "n_embd")),
        n_layer=int(cfg_get(cfg, "n_layer")),
        n_head=int(cfg_get(cfg, "n_head")),
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id,
        pad_token_id=tokenizer.pad_id,
    )
    with seeded(int(cfg_get(cfg, "seed"))):
        module = GPT2LMHeadModel(config)
    dtype = model_dtype(cfg)
    module = freeze(module, dtype, device)
    model = hf_text_model(cfg, "causal_lm", tokenizer, module)
    model.weights = "random"
    return model


def tiny_roberta(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    """A random RoBERTa sequence classifier with the configured ``labels``."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tokenizer = load_tokenizer(cfg_get(cfg, "tokenizer"), cache_dir, str(cfg_get(cfg, "name")))
    labels = [str(x) for x in cfg_get(cfg, "labels")]
    max_length = int(cfg_get(cfg, "max_length"))
    hidden = int(cfg_get(cfg, "hidden_size"))
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=int(cfg_get(cfg, "num_layers")),
        num_attention_heads=int(cfg_get(cfg, "num_heads")),
        intermediate_size=int(cfg_get(cfg, "intermediate_size")),
        # RoBERTa numbers positions from pad_id + 1, so it needs max_length + pad_id + 1 rows.
        max_position_embeddings=max_length + tokenizer.pad_id + 1,
        pad_token_id=tokenizer.pad_id,
        type_vocab_size=1,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    with seeded(int(cfg_get(cfg, "seed"))):
        module = RobertaForSequenceClassification(config)
    dtype = model_dtype(cfg)
    module = freeze(module, dtype, device)
    # the borrowed tokenizer's own limit (RoBERTa's 512) must not exceed the positions built
    tokenizer.max_length = min(tokenizer.max_length or max_length, max_length)
    model = hf_text_model(cfg, "classifier", tokenizer, module, dict(enumerate(labels)))
    model.weights = "random"
    return model


def tiny_clip(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    """A random open_clip CLIP (both towers) on open_clip's own BPE tokenizer."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    tokenizer = load_tokenizer(cfg_get(cfg, "tokenizer"), cache_dir, str(cfg_get(cfg, "name")))
    assert isinstance(tokenizer, OpenClipTokenizer), "tiny_clip needs open_clip's tokenizer"
    image_size = int(cfg_get(cfg, "image_size"))
    vision_cfg = {
        "layers": int(cfg_get(cfg, "vision_layers")),
        "width": int(cfg_get(cfg, "vision_width")),
        "head_width": int(cfg_get(cfg, "vision_head_width")),
        "patch_size": int(cfg_get(cfg, "patch_size")),
        "image_size": image_size,
    }
    text_cfg = {
        "context_length": int(tokenizer.max_length or 77),
        "vocab_size": tokenizer.vocab_size,
        "width": int(cfg_get(cfg, "text_width")),
        "heads": int(cfg_get(cfg, "text_heads")),
        "layers": int(cfg_get(cfg, "text_layers")),
    }
    embed_dim = int(cfg_get(cfg, "embed_dim"))
    with seeded(int(cfg_get(cfg, "seed"))):
        module = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    preprocess = open_clip.image_transform(
        image_size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD
    )
    dtype = model_dtype(cfg)
    module = freeze(module, dtype, device)
    identity = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    return TextModel(
        str(cfg_get(cfg, "name")),
        "clip",
        tokenizer,
        module,
        identity,
        image_preprocess=preprocess,
        weights="random",
    )
