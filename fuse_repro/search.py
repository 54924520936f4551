"""AutoDAN-style token-by-token caption search with beam search (paper section 4.2).

Shape glossary
--------------
B      live beams (<= beam_width)
V      primary vocabulary size; d_i primary embedding width
P      primary context length (BOS + prefix) ; n generated tokens so far
k      candidates per beam (top_k)
K      candidate pairs (beam, token) evaluated in one step, B * k

One step, for every beam:
1. append a slot (the LM's most likely allowed next token) and take the gradient of the
   weighted secondary losses w.r.t. the slot's one-hot vector, ``grad_E_slot @ V_i^T`` (V,),
   through each secondary model's bridge (FUSE, token matrix or identity);
2. score every token ``-grad + logit_weight * log p_LM(token | text so far)`` and keep the top k
   (the LM's own loss enters exactly through its log-probability: the slot is the last token, so
   its embedding cannot change the LM loss, only its identity can);
3. evaluate the true loss of all B*k one-token extensions: the LM term from the single forward of
   each beam (KV cache), each secondary term at the candidate's real length, in chunks;
4. keep the best ``beam_width`` distinct texts (ties broken by beam, then token id).

Methods: ``fuse`` (the above), ``lm_only`` (secondary weights 0: proposals and selection by the LM
alone) and ``random_proposal`` (k candidates drawn at random from the LM's top pool_factor*k
tokens, evaluated by the full objective; the same evaluation budget as ``fuse`` without the
gradient). Comparing them measures what the FUSE gradient adds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fuse_repro.config import SearchConfig, validate_search
from fuse_repro.objectives import ObjectiveError, SecondaryObjective, check_weights

log = logging.getLogger(__name__)

SENTENCE_END = (".", "!", "?")


@dataclass
class SearchResult:
    caption: str  # the full text, prefix included
    generated: str  # the text after the prefix
    ids: list[int]  # generated primary token ids
    losses: dict[str, float]  # total (as optimized), lm, and each objective's raw loss
    steps: int
    evaluations: int  # candidate pairs whose true loss was computed
    history: list[dict[str, float]] = field(default_factory=list)  # best beam after each step


def allowed_token_mask(model: Any, printable_only: bool = True) -> torch.Tensor:
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


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class LMState:
    """Next-token log-probs of the primary LM for every beam, advanced with a KV cache: one
    forward of one token per beam per step (the prefix is encoded once)."""

    def __init__(self, model: Any, context_ids: list[int]) -> None:
        self.model = model
        ids = torch.tensor([context_ids], dtype=torch.long, device=model.device)  # (1, P)
        with torch.no_grad():
            out = model.module(input_ids=ids, use_cache=True)
        self.cache = out.past_key_values
        self.logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (1, V)

    @torch.no_grad()
    def advance(self, parents: list[int], tokens: list[int]) -> None:
        """New beams = parent beams extended by one token each (all beams stay the same length)."""
        index = torch.tensor(parents, dtype=torch.long, device=self.model.device)
        if self.logprobs.shape[0] != len(parents) or parents != list(range(len(parents))):
            self.cache.reorder_cache(index)
        step = torch.tensor(tokens, dtype=torch.long, device=self.model.device)[:, None]  # (B, 1)
        out = self.model.module(input_ids=step, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)


def lm_context(model: Any, prefix_ids: list[int]) -> list[int]:
    """BOS (if the model uses one) + prefix: the leading specials of ``with_specials`` only."""
    full, offset = model.tokenizer.with_specials(list(prefix_ids))
    return list(full[:offset]) + list(prefix_ids)


@torch.no_grad()
def lm_losses_full(model: Any, prefix_ids: list[int], generated: list[list[int]]) -> torch.Tensor:
    """Reference LM loss by full recomputation: mean NLL of each generated continuation.
    (B,) — used to check the KV-cache scores and to score finished captions."""
    context = lm_context(model, prefix_ids)
    out = []
    for gen in generated:
        ids = torch.tensor([context + list(gen)], dtype=torch.long, device=model.device)
        logp = torch.log_softmax(model.module(input_ids=ids).logits[0].float(), dim=-1)  # (P+n, V)
        n = len(gen)
        targets = ids[0, len(context):]  # (n,)
        nll = -logp[len(context) - 1 : len(context) - 1 + n].gather(1, targets[:, None])[:, 0]
        out.append(nll.mean())
    return torch.stack(out).cpu()


def slot_gradient(
    primary: Any, objectives: list[SecondaryObjective], sequences: list[list[int]]
) -> torch.Tensor:
    """(B, V) gradient of sum_j w_j L_j w.r.t. the one-hot vector of each sequence's last token."""
    ids = torch.tensor(sequences, dtype=torch.long, device=primary.device)  # (B, S_i) equal lengths
    embeds = primary.embed(ids).detach().requires_grad_(True)  # (B, S_i, d_i)
    total = None
    for obj in objectives:
        if obj.weight == 0:
            continue
        term = obj.weight * obj.loss(obj.bridge(sequences, embeds)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(len(sequences), primary.embedding_table().shape[0])
    total.backward()
    assert embeds.grad is not None
    g_slot = embeds.grad[:, -1, :]  # (B, d_i)
    return (g_slot @ primary.embedding_table().detach().T).float().cpu()  # (B, V)


def evaluate_candidates(
    objectives: list[SecondaryObjective], sequences: list[list[int]], chunk: int
) -> dict[str, torch.Tensor]:
    """Raw loss (K,) of every objective for every full candidate sequence."""
    return {obj.name: obj.evaluate(sequences, chunk) for obj in objectives}


def encode_prefix(primary: Any, prefix: str) -> list[int]:
    """The prefix's ids; a clear error when the tokenizer cannot round-trip it."""
    tok = primary.tokenizer
    ids = tok.encode(prefix)
    if not ids or tok.decode(ids) != prefix:
        raise ObjectiveError(
            f"prefix {prefix!r} does not survive {primary.name}'s tokenizer "
            f"(encodes to {ids}, decodes to {tok.decode(ids)!r})"
        )
    return ids


@dataclass
class SearchState:
    """Everything one caption search carries from step to step."""

    item: Any
    primary: Any
    objectives: list[SecondaryObjective]
    cfg: SearchConfig
    lm_weight: float
    prefix_ids: list[int]
    searching: list[SecondaryObjective]  # objectives that drive the search (none for lm_only)
    allowed: torch.Tensor  # (V,) bool
    generator: torch.Generator
    lm: LMState
    beams: list[list[int]] = field(default_factory=lambda: [[]])
    nll_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(1))  # (B,)
    history: list[dict[str, float]] = field(default_factory=list)
    best_terms: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    steps_done: int = 0


def start_search(
    item: Any, primary: Any, objectives: list[SecondaryObjective], cfg: SearchConfig, lm_weight: float, seed: int
) -> SearchState:
    """Validate the inputs, prepare every objective for ``item`` and encode the prefix once."""
    validate_search(cfg)
    check_weights(lm_weight, {o.name: o.weight for o in objectives})
    prefix_ids = encode_prefix(primary, cfg.prefix)
    for obj in objectives:
        obj.prepare(item)
    # lm_only optimizes the LM alone; the secondary losses are still reported.
    searching = [] if cfg.method == "lm_only" else [o for o in objectives if o.weight > 0]
    allowed = allowed_token_mask(primary, cfg.printable_only)
    if int(allowed.sum()) < cfg.top_k:
        raise ObjectiveError(f"top_k={cfg.top_k} exceeds the {int(allowed.sum())} allowed tokens")
    generator = torch.Generator().manual_seed(_stable_seed(seed, getattr(item, "id", ""), cfg.method))
    lm = LMState(primary, lm_context(primary, prefix_ids))
    return SearchState(item, primary, objectives, cfg, lm_weight, prefix_ids, searching, allowed, generator, lm)


def propose(state: SearchState) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) candidate tokens per beam and the (B, V) LM log-probs they were scored with."""
    cfg = state.cfg
    logprobs = state.lm.logprobs.cpu()  # (B, V)
    masked_lp = logprobs.masked_fill(~state.allowed, float("-inf"))
    if cfg.method == "fuse" and state.searching:
        slots = masked_lp.argmax(dim=-1).tolist()
        seqs = [state.prefix_ids + b + [s] for b, s in zip(state.beams, slots)]
        grad = slot_gradient(state.primary, state.searching, seqs)
        scores = -grad + cfg.logit_weight * masked_lp
    else:
        scores = cfg.logit_weight * masked_lp
    # Stable descending sort: equal scores keep the lower token id first (deterministic).
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (B, V)
    if cfg.method == "random_proposal":
        pool = order[:, : cfg.top_k * cfg.pool_factor]
        picks = torch.stack(
            [torch.randperm(pool.shape[1], generator=state.generator)[: cfg.top_k] for _ in state.beams]
        )
        return torch.gather(pool, 1, picks).sort(dim=-1).values, logprobs  # (B, k)
    return order[:, : cfg.top_k], logprobs  # (B, k)


def search_step(state: SearchState) -> None:
    """One token for every beam: propose, evaluate every (beam, candidate) exactly, keep the best."""
    cfg, tok = state.cfg, state.primary.tokenizer
    cand, logprobs = propose(state)
    pairs = [(b, int(c)) for b in range(len(state.beams)) for c in cand[b].tolist()]  # K pairs
    n = len(state.beams[0])
    # (K,) mean NLL after the extension, read from the one forward of each beam
    lm_terms = torch.tensor([(float(state.nll_sums[b]) - float(logprobs[b, c])) / (n + 1) for b, c in pairs])
    sequences = [state.prefix_ids + state.beams[b] + [c] for b, c in pairs]
    raw = evaluate_candidates(state.searching, sequences, cfg.eval_chunk)
    state.evaluations += len(pairs)
    total = state.lm_weight * lm_terms
    for obj in state.searching:
        total = total + obj.weight * raw[obj.name]
    # Select: lowest total first; ties keep the (beam, token) order of ``pairs``; distinct texts.
    ranking = torch.sort(total, stable=True).indices.tolist()
    chosen, seen = [], set()
    for k in ranking:
        text = tok.decode(sequences[k])
        if text in seen:
            continue
        seen.add(text)
        chosen.append(k)
        if len(chosen) == cfg.beam_width:
            break
    parents = [pairs[k][0] for k in chosen]
    tokens = [pairs[k][1] for k in chosen]
    state.nll_sums = torch.tensor([float(state.nll_sums[p]) - float(logprobs[p, t]) for p, t in zip(parents, tokens)])
    state.beams = [state.beams[p] + [t] for p, t in zip(parents, tokens)]
    best = chosen[0]
    terms = {"total": float(total[best]), "lm": float(lm_terms[best])}
    terms.update({name: float(v[best]) for name, v in raw.items()})
    # Terms the search did not evaluate (lm_only) are computed for the best beam alone, so
    # every method's history carries the same full objective for plots.
    for obj in state.objectives:
        if obj.name not in terms:
            terms[obj.name] = float(obj.evaluate([sequences[best]], cfg.eval_chunk)[0])
    terms["objective"] = state.lm_weight * terms["lm"] + sum(o.weight * terms[o.name] for o in state.objectives)
    state.best_terms = terms
    state.steps_done += 1
    state.history.append({"step": state.steps_done, **terms})
    state.lm.advance(parents, tokens)


def search_caption(
    item: Any,
    primary: Any,
    objectives: list[SecondaryObjective],
    cfg: SearchConfig,
    lm_weight: float,
    seed: int,
) -> SearchResult:
    """Optimize one caption for ``item``. Deterministic for a given seed and inputs."""
    state = start_search(item, primary, objectives, cfg, lm_weight, seed)
    tok = primary.tokenizer
    for _ in range(cfg.steps):
        search_step(state)
        if cfg.stop_at_sentence_end and state.steps_done >= cfg.min_steps:
            if tok.decode(state.beams[0]).rstrip().endswith(SENTENCE_END):
                break
    best_ids = state.beams[0]
    # total: what the method optimized; objective: the full weighted objective, comparable
    # across methods; plus every term's raw loss on the final caption.
    return SearchResult(
        caption=tok.decode(state.prefix_ids + best_ids),
        generated=tok.decode(best_ids),
        ids=best_ids,
        losses=dict(state.best_terms),
        steps=state.steps_done,
        evaluations=state.evaluations,
        history=state.history,
    )


def timed_search(*args: Any, **kwargs: Any) -> tuple[SearchResult, float]:
    start = time.perf_counter()
    result = search_caption(*args, **kwargs)
    return result, time.perf_counter() - start
