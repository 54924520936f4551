"""``TextModel``: a frozen text model behind ``embed`` / ``forward_embeds``, so callers can feed
embeddings (the FUSE bridge) instead of ids; and the protocols naming what callers need of one.

Shape glossary (used in comments and docstrings):
    B   batch size (sequences)
    S   sequence length in tokens, specials and right padding included
    V   vocabulary size = rows of the input embedding table
    d   input token embedding width (``TextModel.dim``)
    d_h hidden width of an encoder's last layer (equals d for the models here)
    C   number of classes of a sequence classifier
    e   width of CLIP's projected joint text/image space
    G   beams whose keys/values a prefix cache holds; P their longest prefix (tokens)
    T   new tokens per candidate after its cached prefix (right-padded); H heads, hd head width

Protocols (structural: anything with these members qualifies, e.g. the toy models of
``fuse_repro.testing``):
    ``EmbeddingModel``  what fitting an adapter and the bridge need: a tokenizer, an input
                        embedding table and a fingerprint.
    ``PrimaryModel``    what the search needs of the causal LM f whose tokens it optimizes.
    ``SecondaryModel``  what an objective needs of the model g it scores through the bridge.

Build helpers shared by every backend: ``model_dtype``, ``freeze``, ``seeded`` and
``hf_text_model``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from fuse_repro.errors import ConfigError
from fuse_repro.config.model import MODEL_DTYPES, MODEL_KINDS
from fuse_repro.config.model import WEIGHTS as MODEL_WEIGHTS
from fuse_repro.weights import cfg_get
from fuse_repro.word_spans import WordTokenizer, sha256_json

if TYPE_CHECKING:
    from fuse_repro.tokenizers import HFTokenizer

# The model kinds and weight sources are the model schema's lists (fuse_repro.config.model).
KINDS, WEIGHTS = MODEL_KINDS, MODEL_WEIGHTS


# ----------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------
@runtime_checkable
class EmbeddingModel(Protocol):
    """What the adapter fit and the bridge need of a model: its tokenizer, its input embedding
    table (V, d) and a fingerprint that keys the adapter cache."""

    name: str
    kind: str  # one of KINDS
    tokenizer: WordTokenizer

    @property
    def dim(self) -> int: ...  # d

    @property
    def device(self) -> torch.device: ...

    def embedding_table(self) -> torch.Tensor: ...  # (V, d), the weight itself

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, S) long -> (B, S, d)

    def fingerprint(self) -> str: ...


@runtime_checkable
class PrimaryModel(EmbeddingModel, Protocol):
    """What the search needs of the primary causal LM f: an ``EmbeddingModel`` whose ``module``
    is a transformers causal LM, called as ``module(input_ids=(B, S), cache=<DynamicCache>,
    use_cache=True)`` (the cache filled in place; ``past_key_values=`` on transformers that
    predate ``cache``, see ``fuse_repro.search.lm.cache_keyword``) and returning ``.logits``
    (B, S, V)."""

    module: nn.Module


@runtime_checkable
class SecondaryModel(EmbeddingModel, Protocol):
    """What an objective needs of a secondary model g: an ``EmbeddingModel`` that runs on
    input embeddings. ``id2label`` names a classifier's classes; ``image_preprocess`` and
    ``module.encode_image`` serve CLIP's image side."""

    module: nn.Module
    id2label: dict[int, str] | None
    image_preprocess: Callable[..., torch.Tensor] | None

    @property
    def dtype(self) -> torch.dtype: ...

    def forward_embeds(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor: ...  # (B, S, d), (B, S) -> see TextModel.forward_embeds


# ----------------------------------------------------------------------------------------------
# TextModel
# ----------------------------------------------------------------------------------------------
# Config entries that say where or how a model was loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "quantization_config",
        "_commit_hash",
        "architectures",
        "dtype",
        "torch_dtype",
        "use_cache",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


@dataclass
class TextModel:
    """A frozen text model fed with input embeddings, so gradients and the FUSE bridge can
    enter below the token lookup.

    ``identity``: a JSON-able description of the architecture (no paths), part of the
    fingerprint. ``image_preprocess`` (clip only): open_clip's eval transform for
    ``module.encode_image``. ``id2label`` (classifier only): class index -> label name.
    ``weights``: "pretrained" (published weights) or "random" (random init at the model's
    architecture, e.g. ``weights=random`` or a tiny test model): its scores mean nothing, and
    outputs say so. A random model built by ``weights=random`` also has ``weights: random`` in
    its ``identity``, so its fingerprint and every cache key built on it differ.
    """

    name: str
    kind: str
    tokenizer: WordTokenizer
    module: nn.Module
    identity: dict[str, Any] = field(default_factory=dict)
    id2label: dict[int, str] | None = None
    image_preprocess: Callable[..., torch.Tensor] | None = None
    weights: str = "pretrained"
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; known: {list(KINDS)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown weights {self.weights!r}; known: {list(WEIGHTS)}")

    # -- embeddings ----------------------------------------------------------------------------
    def embedding_table(self) -> torch.Tensor:
        """The input token embedding weight itself (V, d), not a copy."""
        if self.kind == "clip":
            return self.module.token_embedding.weight
        return self.module.get_input_embeddings().weight

    @property
    def dim(self) -> int:
        return int(self.embedding_table().shape[1])

    @property
    def device(self) -> torch.device:
        return self.embedding_table().device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_table().dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token lookup: ids (B, S) long -> (B, S, d). Nothing else (no positions, no scaling):
        ``forward_embeds`` adds what the model adds after the lookup."""
        assert ids.ndim == 2 and ids.dtype == torch.long, (
            f"ids must be (B, S) long, got {tuple(ids.shape)} {ids.dtype}"
        )
        return nn.functional.embedding(ids, self.embedding_table())

    def fingerprint(self) -> str:
        """sha256 of kind, architecture, tokenizer and the embedding table's bytes: equal for
        the same weights however they were loaded (GGUF or its safetensors cache)."""
        if self._fingerprint is None:
            table = self.embedding_table().detach().to("cpu").contiguous()
            digest = hashlib.sha256()
            digest.update(f"{table.dtype}|{tuple(table.shape)}|".encode())
            digest.update(table.view(torch.uint8).numpy())  # hashed in place, no copy
            payload = {
                "kind": self.kind,
                "module_class": type(self.module).__name__,
                "identity": self.identity,
                "tokenizer": self.tokenizer.fingerprint(),
                "embedding_sha256": digest.hexdigest(),
            }
            self._fingerprint = sha256_json(payload)
        return self._fingerprint

    # -- forward -------------------------------------------------------------------------------
    def forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the model on input embeddings (B, S, d) with a (B, S) mask of real tokens.

        causal_lm -> logits (B, S, V); encoder -> last hidden state (B, S, d_h);
        classifier -> logits (B, C); clip -> projected text features (B, e), unnormalized,
        pooled at each sequence's last real token (its end-of-text with ``with_specials``).
        Equals the module's own forward on the ids whose lookup ``embeds`` is.
        """
        B, S, d = embeds.shape
        assert d == self.dim, f"embeds width {d} != model width {self.dim}"
        assert attention_mask.shape == (B, S), f"mask {tuple(attention_mask.shape)} != {(B, S)}"
        embeds = embeds.to(self.dtype)
        if self.kind == "clip":
            return self._clip_text_features(embeds, attention_mask)
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if self.kind == "causal_lm":
            kwargs["use_cache"] = False  # a KV cache here would only hold memory
        position_ids = self._padding_aware_positions(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = self.module(**kwargs)
        if self.kind == "causal_lm":
            return out.logits  # (B, S, V)
        if self.kind == "classifier":
            return out.logits  # (B, C)
        return out.last_hidden_state  # (B, S, d_h)

    # -- prefix-cached evaluation (causal secondaries) ----------------------------------------
    @property
    def supports_prefix_cache(self) -> bool:
        """True when a sequence's output depends only on its own tokens up to its last one
        (a causal model pooled at its last real token: CLIP's text tower), so candidates that
        share a beam's prefix can reuse its keys and values (``prefix_cache`` /
        ``extend_features``). Bidirectional encoders (MiniLM, RoBERTa) cannot."""
        if self.kind != "clip":
            return False
        m = self.module
        blocks = getattr(getattr(m, "transformer", None), "resblocks", None)
        if blocks is None or getattr(m, "attn_mask", None) is None:
            return False
        if getattr(m, "text_pool_type", "argmax") not in ("argmax", "eos"):
            return False
        return all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention)
            and b.attn.in_proj_weight is not None and not hasattr(b, "ln_1_kv")
            for b in blocks
        )

    def _clip_block(
        self, block: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One open_clip ``ResidualAttentionBlock`` on x (B, T, w) whose queries attend to the
        cached keys/values ``past`` ((B, H, P, hd) each, or None) and then to their own.
        ``mask`` (B, 1, T, P+T) bool, True = may attend; None = causal over x alone.
        Returns the block's output (B, T, w) and x's own keys/values (B, H, T, hd)."""
        attn = block.attn
        B, T, w = x.shape
        H = attn.num_heads
        hd = w // H
        h = block.ln_1(x)
        qkv = nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, T, 3w)
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # (B, H, T, hd)
        if past is None:
            o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        elif past[0].shape[0] == 1:  # every row extends the same prefix: no copy of its keys
            o = _shared_prefix_attention(q, k, v, past[0][0], past[1][0], mask)
        else:
            keys = torch.cat([past[0], k], dim=2)  # (B, H, P+T, hd)
            values = torch.cat([past[1], v], dim=2)
            o = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        o = o.transpose(1, 2).reshape(B, T, w)  # (B, H, T, hd) -> (B, T, w)
        x = x + block.ls_1(attn.out_proj(o))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, (k, v)

    @torch.no_grad()
    def prefix_cache(self, embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values ((G, H, P, hd) each) of G right-padded prefixes
        (G, P, d) at positions 0..P-1. Causal: a position's keys never depend on the padding
        after a shorter prefix, so one batch serves prefixes of every length."""
        assert self.supports_prefix_cache, f"{self.name} has no prefix cache"
        m = self.module
        G, P, d = embeds.shape
        assert d == self.dim and P <= m.positional_embedding.shape[0], (tuple(embeds.shape),)
        cast = m.transformer.get_cast_dtype()
        x = embeds.to(self.dtype).to(cast) + m.positional_embedding[:P].to(cast)  # (G, P, w)
        cache = []
        for block in m.transformer.resblocks:
            x, kv = self._clip_block(block, x, None, None)
            cache.append(kv)
        return cache

    @torch.no_grad()
    def extend_features(
        self,
        cache: list[tuple[torch.Tensor, torch.Tensor]],
        group: torch.Tensor,
        prefix_lengths: torch.Tensor,
        embeds: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Projected text features (B, e) of B sequences, each = the first
        ``prefix_lengths[b]`` tokens of cached prefix ``group[b]`` followed by its own
        ``lengths[b]`` new tokens ``embeds[b]`` (B, T, d), right-padded; pooled at its last new
        token (its end-of-text). Equals ``forward_embeds`` on the whole sequence: the keys of a
        causal model's first p positions depend only on those p tokens."""
        m = self.module
        B, T, d = embeds.shape
        assert group.shape == prefix_lengths.shape == lengths.shape == (B,), (
            group.shape, prefix_lengths.shape, lengths.shape)
        P = cache[0][0].shape[2]
        assert bool((prefix_lengths <= P).all()) and bool((lengths >= 1).all()), "bad lengths"
        context = m.positional_embedding.shape[0]
        assert int((prefix_lengths + lengths).max()) <= context, "a sequence exceeds the context"
        cast = m.transformer.get_cast_dtype()
        steps = torch.arange(T, device=embeds.device)
        positions = (prefix_lengths[:, None] + steps[None, :]).clamp_max(context - 1)  # (B, T)
        x = embeds.to(self.dtype).to(cast) + m.positional_embedding[positions].to(cast)  # (B, T, w)
        # (B, 1, T, P+T): a cached key j while j < prefix_length; a new key t' <= the query's t
        old = torch.arange(P, device=embeds.device)[None, None, :] < prefix_lengths[:, None, None]
        new = (steps[None, :, None] >= steps[None, None, :]).expand(B, T, T)
        mask = torch.cat([old.expand(B, T, P), new], dim=2)[:, None]
        shared = bool((group == group[0]).all())  # one prefix for all rows: broadcast, no gather
        for block, (k, v) in zip(m.transformer.resblocks, cache):
            past = (k[group[:1]], v[group[:1]]) if shared else (k[group], v[group])
            x, _ = self._clip_block(block, x, past, mask)
        return _clip_pool(m, x, lengths)

    def _padding_aware_positions(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """RoBERTa numbers positions from its padding index and skips pads, but only when it
        sees ids; from embeddings it would count pads too. Rebuild its ids-path numbering."""
        base = getattr(self.module, "base_model", None)
        emb = getattr(base, "embeddings", None)
        if emb is None or not hasattr(emb, "create_position_ids_from_input_ids"):
            return None
        pad = int(emb.padding_idx)
        mask = attention_mask.long()
        return torch.cumsum(mask, dim=1) * mask + pad  # (B, S)

    def _clip_text_features(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` from the token lookup on, for S <= context length.

        ``encode_text`` always runs all 77 positions and pools at ``argmax(ids)``, the EOT
        (the largest id). With right padding and a causal mask, positions beyond a sequence's
        end never influence it, so slicing positions and mask to S and pooling at the last
        real position gives the same features for every sequence, however long the others are.
        """
        m = self.module
        B, S, _ = embeds.shape
        if getattr(m, "text_pool_type", "argmax") not in ("argmax", "eos"):
            raise NotImplementedError(f"clip text pooling {m.text_pool_type!r} is not supported")
        assert S <= m.positional_embedding.shape[0], f"S={S} exceeds the context length"
        lengths = attention_mask.long().sum(dim=1)  # (B,)
        if not attention_mask.is_meta:  # meta tensors (shape checks) hold no values to check
            assert bool((lengths >= 1).all()), "every sequence needs at least one real token"
            positions = torch.arange(S, device=attention_mask.device)
            right_padded = (positions[None, :] < lengths[:, None]).to(attention_mask.dtype)
            assert torch.equal(attention_mask, right_padded), "clip expects right-padded sequences"
        cast_dtype = m.transformer.get_cast_dtype()
        x = embeds.to(cast_dtype) + m.positional_embedding[:S].to(cast_dtype)  # (B, S, w)
        attn_mask = m.attn_mask[:S, :S] if m.attn_mask is not None else None  # (S, S) causal
        x = m.transformer(x, attn_mask=attn_mask)  # (B, S, w)
        return _clip_pool(m, x, lengths)


def _clip_pool(m: Any, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """CLIP's text features: final norm, the hidden state at each row's last real token (EOT),
    then the text projection: (B, S, w), (B,) -> (B, e)."""
    x = m.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, w)
    if m.text_projection is None:
        return pooled
    if isinstance(m.text_projection, nn.Linear):
        return m.text_projection(pooled)  # (B, e)
    return pooled @ m.text_projection  # (B, e)


def _shared_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_old: torch.Tensor, v_old: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention of q (B, H, T, hd) over one shared prefix's keys/values (H, P, hd) and
    each row's own k, v (B, H, T, hd), with ``mask`` (B, 1, T, P+T) True = may attend. The
    prefix is multiplied once for all rows as an (H, B*T, hd) x (H, hd, P) product instead of
    being copied B times. Same result as ``scaled_dot_product_attention`` on the concatenation."""
    B, H, T, hd = q.shape
    P = k_old.shape[1]
    scale = hd ** -0.5
    q_h = q.permute(1, 0, 2, 3).reshape(H, B * T, hd)  # (B, H, T, hd) -> (H, B*T, hd)
    s_old = (q_h @ k_old.transpose(1, 2)).reshape(H, B, T, P).permute(1, 0, 2, 3)  # (B, H, T, P)
    s_new = q @ k.transpose(2, 3)  # (B, H, T, T)
    scores = (torch.cat([s_old, s_new], dim=3) * scale).masked_fill(~mask, float("-inf"))
    p = scores.softmax(dim=3)  # (B, H, T, P+T)
    p_old = p[..., :P].permute(1, 0, 2, 3).reshape(H, B * T, P)  # (H, B*T, P)
    o_old = (p_old @ v_old).reshape(H, B, T, hd).permute(1, 0, 2, 3)  # (B, H, T, hd)
    return o_old + p[..., P:] @ v


# ----------------------------------------------------------------------------------------------
# Build helpers
# ----------------------------------------------------------------------------------------------
_DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES}  # the schema's one list


def model_dtype(cfg: Any) -> torch.dtype:
    """The torch dtype a model config's ``dtype`` names (float32 when absent)."""
    name = str(cfg_get(cfg, "dtype", "float32"))
    if name not in _DTYPES:
        raise ConfigError(f"model dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def freeze(module: nn.Module, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    """The module in ``dtype`` on ``device``, in eval mode, every parameter frozen."""
    module = module.to(device=device, dtype=dtype)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def hf_identity(module: nn.Module) -> dict[str, Any]:
    """A transformers module's config, minus the entries that say how it was loaded."""
    config = module.config.to_dict()
    return {k: v for k, v in sorted(config.items()) if k not in _VOLATILE_CONFIG_KEYS}


def hf_text_model(
    cfg: Any,
    kind: str,
    tokenizer: HFTokenizer,
    module: nn.Module,
    id2label: dict[int, str] | None = None,
) -> TextModel:
    """Wrap a frozen transformers module; a tokenizer without a length limit of its own
    (SmolLM2's says 1e30) takes the model's number of positions. RoBERTa numbers positions
    from ``pad_token_id + 1``, so it takes that many fewer (514 rows -> 512 tokens)."""
    if tokenizer.max_length is None:
        config = module.config
        limit = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        embeddings = getattr(getattr(module, "base_model", None), "embeddings", None)
        if limit and hasattr(embeddings, "create_position_ids_from_input_ids"):
            limit -= int(embeddings.padding_idx) + 1
        tokenizer.max_length = int(limit) if limit else None
    return TextModel(
        str(cfg_get(cfg, "name")), kind, tokenizer, module, hf_identity(module), id2label
    )
