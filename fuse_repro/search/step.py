"""One step of the AutoDAN-style beam search (paper section 4.2), as public pieces.

Shape glossary
--------------
B      live beams (<= beam_width)
V      primary vocabulary size; d_i primary embedding width
S_i    primary sequence length of a beam + slot (prefix + generated + 1)
k      candidates per beam (top_k)
K      candidate pairs (beam, token) evaluated in one step, B * k

One step, for every beam:
1. ``candidate_scores``: append a slot (``search.slot_init``) and take the gradient of the
   weighted secondary losses w.r.t. the slot's one-hot vector, ``grad_E_slot @ V_i^T`` (V,),
   through each secondary model's bridge; the score of every token is
   ``-gradient + logit_weight * log p_LM(token | text so far)`` (the LM's own loss enters exactly
   through its log-probability: the slot is the last token, so its embedding cannot change the
   LM loss, only its identity can);
2. ``propose``: the method (``SEARCH_METHODS``) picks k tokens per beam from that score;
3. ``evaluate_pairs``: the true loss of all B*k one-token extensions: the LM term from the single
   forward of each beam (KV cache), each secondary term at the candidate's real length, in chunks
   (``evaluate_extensions``: ids-only retokenization incremental per beam; with
   ``search.prefix_cache`` a causal secondary runs each beam's tokens once and each candidate only
   its new tokens; ``evaluate_candidates`` is the plain path and the tests' oracle);
4. ``select_beams``: keep the best ``beam_width`` distinct texts (ties keep pair order: beam
   index, then the candidate's proposal rank).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

import torch

from fuse_repro.config import SearchConfig
from fuse_repro.objectives import ObjectiveError, SecondaryObjective, check_weights
from fuse_repro.search.lm import LMState, allowed_token_mask, encode_prefix, lm_context
from fuse_repro.search.methods import SLOT_INITS, SearchMethod, build_method, check_eval_dtype

if TYPE_CHECKING:
    from fuse_repro.text_model import PrimaryModel


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def slot_gradient(
    primary: PrimaryModel, objectives: list[SecondaryObjective], sequences: list[list[int]]
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


@contextlib.contextmanager
def eval_precision(eval_dtype: str, device: Any, *, allow_cpu: bool = False) -> Iterator[None]:
    """Candidate evaluation at ``search.eval_dtype``: float32 as is; tf32 (TF32 matmuls and
    convolutions, float32 storage) or bfloat16 (autocast) on CUDA. ``allow_cpu`` (the precision
    agreement benchmark only) lets bfloat16 autocast run on the CPU; the option itself refuses
    anything but float32 off CUDA (``check_eval_dtype``)."""
    device = torch.device(device)
    if eval_dtype == "float32":
        yield
        return
    if not allow_cpu:
        check_eval_dtype(eval_dtype, device)
    if eval_dtype == "bfloat16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    assert eval_dtype == "tf32", eval_dtype
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def evaluate_extensions(state: SearchState, pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Raw loss (K,) of every searching objective for every (beam, token) pair of ``state``:
    the values ``evaluate_candidates`` gives for the full sequences (its plain path), with ids-only
    incremental retokenization and, where ``search.prefix_cache`` and the model allow, each
    beam's prefix run once (``SecondaryObjective.evaluate_extensions``)."""
    beams = [state.prefix_ids + b for b in state.beams]
    with eval_precision(state.cfg.eval_dtype, state.primary.device):
        return {
            obj.name: obj.evaluate_extensions(beams, pairs, state.cfg.eval_chunk, state.cfg.prefix_cache)
            for obj in state.searching
        }


@dataclass
class SearchState:
    """Everything one caption search carries from step to step."""

    item: Any
    primary: PrimaryModel
    objectives: list[SecondaryObjective]
    cfg: SearchConfig
    method: SearchMethod
    lm_weight: float
    prefix_ids: list[int]
    searching: list[SecondaryObjective]  # objectives that drive the search (none for lm_only)
    allowed: torch.Tensor  # (V,) bool
    generator: torch.Generator
    lm: LMState
    beams: list[list[int]] = field(default_factory=lambda: [[]])
    nll_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(1))  # (B,) generated tokens
    history: list[dict[str, float]] = field(default_factory=list)
    best_terms: dict[str, float] = field(default_factory=dict)  # best beam after the last step
    best_step: tuple[list[int], dict[str, float]] | None = None  # lowest total at any step
    evaluations: int = 0
    steps_done: int = 0
    # objective name -> the context its prepare(item) set (several items searched together)
    prepared: dict[str, dict[str, Any]] = field(default_factory=dict)

    def activate(self) -> None:
        """Give every objective this item's context again (``SecondaryObjective.use_prepared_context``)."""
        for obj in self.objectives:
            obj.use_prepared_context(self.prepared[obj.name])


def start_search(
    item: Any, primary: PrimaryModel, objectives: list[SecondaryObjective], cfg: SearchConfig, lm_weight: float, seed: int
) -> SearchState:
    """Prepare every objective for ``item`` and encode the prefix once. ``cfg`` was validated
    when it was built (``SearchConfig.__post_init__``); the weights are checked here."""
    method = build_method(cfg.method)
    check_eval_dtype(cfg.eval_dtype, primary.device)
    check_weights(lm_weight, {o.name: o.weight for o in objectives})
    prefix_ids = encode_prefix(primary, cfg.prefix)
    for obj in objectives:
        obj.prepare(item)
    allowed = allowed_token_mask(primary, cfg.printable_only)
    if int(allowed.sum()) < cfg.top_k:
        raise ObjectiveError(f"top_k={cfg.top_k} exceeds the {int(allowed.sum())} allowed tokens")
    generator = torch.Generator().manual_seed(_stable_seed(seed, getattr(item, "id", ""), cfg.method))
    lm = LMState(primary, lm_context(primary, prefix_ids))
    return SearchState(
        item=item, primary=primary, objectives=objectives, cfg=cfg, method=method,
        lm_weight=lm_weight, prefix_ids=prefix_ids, searching=method.searching(objectives),
        allowed=allowed, generator=generator, lm=lm,
        prepared={obj.name: obj.prepared_context() for obj in objectives},
    )


@dataclass(frozen=True)
class CandidateScores:
    """The proposal score of every vocabulary token at every beam, split in its two parts."""

    gradient: torch.Tensor  # (B, V) -slot gradient of the weighted objectives; zeros without one
    lm: torch.Tensor  # (B, V) LM log-probs of the next token, -inf on disallowed tokens
    logit_weight: float

    @property
    def total(self) -> torch.Tensor:
        """(B, V) ``gradient + logit_weight * lm``: what ``propose`` ranks; -inf where disallowed
        (also when logit_weight is 0)."""
        return (self.gradient + self.logit_weight * self.lm).masked_fill(self.lm == float("-inf"), float("-inf"))


def candidate_scores(state: SearchState) -> CandidateScores:
    """Score every token for every beam of ``state`` exactly as the search's proposal does."""
    cfg = state.cfg
    masked_lp = state.lm.logprobs.cpu().masked_fill(~state.allowed, float("-inf"))  # (B, V)
    if state.method.uses_gradient and state.searching:
        slots = SLOT_INITS[cfg.slot_init](masked_lp).tolist()  # (B,)
        seqs = [state.prefix_ids + b + [s] for b, s in zip(state.beams, slots)]
        gradient = -slot_gradient(state.primary, state.searching, seqs)  # (B, V)
    else:
        gradient = torch.zeros_like(masked_lp)
    return CandidateScores(gradient, masked_lp, float(cfg.logit_weight))


def propose(state: SearchState, scores: CandidateScores | None = None) -> torch.Tensor:
    """(B, k) candidate tokens per beam, picked by the method from ``scores.total``."""
    if scores is None:
        scores = candidate_scores(state)
    return state.method.pick(scores.total, state.cfg, state.generator)


@dataclass
class PairTotals:
    """The true losses of every (beam, candidate) pair of one step."""

    pairs: list[tuple[int, int]]  # K (beam, token), beam-major in proposal order
    sequences: list[list[int]]  # K full primary sequences (prefix + beam + token)
    lm: torch.Tensor  # (K,) LM term (search.lm_term) after the extension
    raw: dict[str, torch.Tensor]  # objective name -> (K,) raw loss, for the searching objectives
    total: torch.Tensor  # (K,) lm_weight * lm + sum_j w_j raw_j: what selection minimizes


def pairs_of(state: SearchState, candidates: torch.Tensor) -> list[tuple[int, int]]:
    """(beam, token) for every candidate of ``candidates`` (B, k), beam-major in proposal order."""
    assert candidates.shape[0] == len(state.beams), (candidates.shape, len(state.beams))
    return [(b, int(c)) for b in range(len(state.beams)) for c in candidates[b].tolist()]


def evaluate_pairs(
    state: SearchState, candidates: torch.Tensor, raw: dict[str, torch.Tensor] | None = None
) -> PairTotals:
    """Evaluate every (beam, candidate) of ``candidates`` (B, k) exactly: the LM term read from
    the one forward of each beam, the secondary losses batched in chunks of ``eval_chunk``
    (``evaluate_extensions``), or given as ``raw`` (computed with other items' candidates:
    ``fuse_repro.search.loop.step_together``)."""
    cfg, logprobs = state.cfg, state.lm.logprobs.cpu()  # (B, V)
    pairs = pairs_of(state, candidates)
    n = len(state.beams[0])
    # Mean NLL after the extension; the authors' convention also counts the context tokens.
    extra_nll, extra_count = (0.0, 0)
    if cfg.lm_term == "prefix_and_generated":
        extra_nll, extra_count = state.lm.context_nll, state.lm.context_scored
    lm_terms = torch.tensor(
        [(float(state.nll_sums[b]) - float(logprobs[b, c]) + extra_nll) / (n + 1 + extra_count) for b, c in pairs]
    )  # (K,)
    sequences = [state.prefix_ids + state.beams[b] + [c] for b, c in pairs]
    if raw is None:
        raw = evaluate_extensions(state, pairs)
    total = state.lm_weight * lm_terms
    for obj in state.searching:
        total = total + obj.weight * raw[obj.name]
    return PairTotals(pairs, sequences, lm_terms, raw, total)


def select_beams(totals: torch.Tensor, beam_width: int, text_of: Callable[[int], str]) -> list[int]:
    """Indices of the kept pairs: lowest total first, ties in input order (stable), at most one
    pair per distinct text (``text_of(index)``), at most ``beam_width``."""
    assert totals.dim() == 1 and beam_width >= 1, (totals.shape, beam_width)
    chosen: list[int] = []
    seen: set[str] = set()
    for k in torch.sort(totals, stable=True).indices.tolist():
        text = text_of(k)
        if text in seen:
            continue
        seen.add(text)
        chosen.append(k)
        if len(chosen) == beam_width:
            break
    return chosen


@dataclass(frozen=True)
class StepChoice:
    """What one ``search_step`` chose: new beam b = old beam ``parents[b]`` + ``tokens[b]``."""

    parents: list[int]
    tokens: list[int]
    totals: list[float]  # the evaluated total of each kept pair, ascending
    candidates: torch.Tensor  # (B, k) the proposals of the step (B: beams before the step)
    evaluations: int  # pairs whose true loss was computed in this step


def search_step(state: SearchState) -> StepChoice:
    """One token for every beam: propose, evaluate every (beam, candidate) exactly, keep the best."""
    candidates = propose(state)
    return apply_step(state, candidates, evaluate_pairs(state, candidates))


def apply_step(state: SearchState, candidates: torch.Tensor, ev: PairTotals) -> StepChoice:
    """The end of a step: keep the best pairs of ``ev``, extend the beams, record the terms and
    advance the LM. ``state``'s objectives must hold its item's context (``activate``)."""
    cfg, tok = state.cfg, state.primary.tokenizer
    state.evaluations += len(ev.pairs)
    chosen = select_beams(ev.total, cfg.beam_width, lambda k: tok.decode(ev.sequences[k]))
    parents = [ev.pairs[k][0] for k in chosen]
    tokens = [ev.pairs[k][1] for k in chosen]
    logprobs = state.lm.logprobs.cpu()  # (B, V)
    state.nll_sums = torch.tensor([float(state.nll_sums[p]) - float(logprobs[p, t]) for p, t in zip(parents, tokens)])
    state.beams = [state.beams[p] + [t] for p, t in zip(parents, tokens)]
    best = chosen[0]
    terms = {"total": float(ev.total[best]), "lm": float(ev.lm[best])}
    terms.update({name: float(v[best]) for name, v in ev.raw.items()})
    # Terms the search did not evaluate (lm_only) are computed for the best beam alone, so
    # every method's history carries the same full objective for plots.
    for obj in state.objectives:
        if obj.name not in terms:
            terms[obj.name] = float(obj.evaluate([ev.sequences[best]], cfg.eval_chunk)[0])
    terms["objective"] = state.lm_weight * terms["lm"] + sum(o.weight * terms[o.name] for o in state.objectives)
    state.best_terms = terms
    state.steps_done += 1
    state.history.append({"step": state.steps_done, **terms})
    if state.best_step is None or terms["total"] < state.best_step[1]["total"]:
        state.best_step = (list(state.beams[0]), dict(terms))
    state.lm.advance(parents, tokens)
    return StepChoice(parents, tokens, [float(ev.total[k]) for k in chosen], candidates, len(ev.pairs))
