"""The primary LM's side of the caption search: which tokens may be proposed, the prefix, and
every beam's next-token log-probs through a KV cache (transformers' ``Cache`` API).

Shape glossary
--------------
B      live beams
V      primary vocabulary size
P      primary context length (BOS, if the model uses one, + prefix)
n      generated tokens so far (equal for every beam)
"""

from __future__ import annotations

import inspect
from typing import Any, TYPE_CHECKING

import torch

from fuse_repro.errors import ObjectiveError

if TYPE_CHECKING:
    from fuse_repro.text_model import PrimaryModel


SENTENCE_END = (".", "!", "?")


def allowed_token_mask(model: PrimaryModel, printable_only: bool = True) -> torch.Tensor:
    """(V,) bool: tokens that may be proposed. Specials never; with ``printable_only`` also not
    tokens that decode to nothing visible, to a newline/tab, or to a broken UTF-8 fragment."""
    cache = getattr(model, "_allowed_mask_cache", None)
    if cache is not None and cache[0] == printable_only:
        return cache[1]
    tok = model.tokenizer
    vocab = model.embedding_table().shape[0]
    mask = torch.zeros(vocab, dtype=torch.bool)
    for token_id in range(min(vocab, tok.vocab_size)):
        if token_id in tok.special_ids:
            continue
        if printable_only:
            text = tok.decode([token_id])
            if not text.strip() or "\ufffd" in text or not text.isprintable():
                continue
        mask[token_id] = True
    model._allowed_mask_cache = (printable_only, mask)
    return mask


def encode_prefix(primary: PrimaryModel, prefix: str) -> list[int]:
    """The prefix's ids; a clear error when the tokenizer cannot round-trip it."""
    tok = primary.tokenizer
    ids = tok.encode(prefix)
    if not ids or tok.decode(ids) != prefix:
        raise ObjectiveError(
            f"prefix {prefix!r} does not survive {primary.name}'s tokenizer "
            f"(encodes to {ids}, decodes to {tok.decode(ids)!r}); choose another search.prefix"
        )
    return ids


def lm_context(model: PrimaryModel, prefix_ids: list[int]) -> list[int]:
    """BOS (if the model uses one) + prefix: the leading specials of ``with_specials`` only."""
    full, offset = model.tokenizer.with_specials(list(prefix_ids))
    return list(full[:offset]) + list(prefix_ids)


def cache_keyword(module: Any) -> str:
    """The keyword a causal LM's ``forward`` takes its ``Cache`` by: ``cache`` in current
    transformers (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    params = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(f"{type(module).__name__}.forward takes neither `cache` nor `past_key_values`")


def new_cache(module: Any) -> Any:
    """An empty ``transformers.DynamicCache`` laid out for ``module``'s config (sliding-window
    layers and the like); a module without a config gets plain layers, added as it fills them."""
    from transformers import DynamicCache

    return DynamicCache(config=getattr(module, "config", None))


class LMState:
    """Next-token log-probs of the primary LM for every beam, advanced with a KV cache: one
    forward of one token per beam per step (the context is encoded once).

    The cache is a ``transformers.DynamicCache`` that the model fills in place; ``advance``
    reorders it to the chosen parents (``Cache.reorder_cache``) before feeding the new tokens.
    """

    def __init__(self, model: PrimaryModel, context_ids: list[int]) -> None:
        self.model = model
        self.cache = new_cache(model.module)
        self._keyword = cache_keyword(model.module)
        ids = torch.tensor([context_ids], dtype=torch.long, device=model.device)  # (1, P)
        with torch.no_grad():
            out = model.module(input_ids=ids, use_cache=True, **{self._keyword: self.cache})
            self.logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (1, V)
            # NLL of every context token that has a predecessor (the prefix, and its first token
            # too when a BOS precedes it): the authors' LM term also averages over these.
            context_lp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)  # (P-1, V)
            self.context_nll = float(-context_lp.gather(1, ids[0, 1:, None]).sum())
        self.context_scored = len(context_ids) - 1

    @torch.no_grad()
    def advance(self, parents: list[int], tokens: list[int]) -> None:
        """New beams = parent beams extended by one token each (all beams stay the same length)."""
        assert len(parents) == len(tokens) > 0, (parents, tokens)
        if self.logprobs.shape[0] != len(parents) or parents != list(range(len(parents))):
            index = torch.tensor(parents, dtype=torch.long, device=self.model.device)  # (B,)
            self.cache.reorder_cache(index)
        step = torch.tensor(tokens, dtype=torch.long, device=self.model.device)[:, None]  # (B, 1)
        out = self.model.module(input_ids=step, use_cache=True, **{self._keyword: self.cache})
        self.logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)


@torch.no_grad()
def lm_losses_full(
    model: PrimaryModel, prefix_ids: list[int], generated: list[list[int]], lm_term: str = "generated"
) -> torch.Tensor:
    """Reference LM loss by full recomputation (no cache), (B,): the mean NLL of each generated
    continuation (``lm_term="generated"``) or of every token of context + continuation that has a
    predecessor (``"prefix_and_generated"``). Checks the KV-cache terms of the search."""
    context = lm_context(model, prefix_ids)
    first = {"generated": len(context), "prefix_and_generated": 1}[lm_term]
    out = []
    for gen in generated:
        ids = torch.tensor([context + list(gen)], dtype=torch.long, device=model.device)  # (1, P+n)
        logp = torch.log_softmax(model.module(input_ids=ids).logits[0].float(), dim=-1)  # (P+n, V)
        targets = ids[0, first:]  # (m,) every scored token
        nll = -logp[first - 1 : ids.shape[1] - 1].gather(1, targets[:, None])[:, 0]
        out.append(nll.mean())
    return torch.stack(out).cpu()
