"""AutoDAN-style token-by-token caption search with beam search (paper section 4.2).

Public API (see ``step.py`` for the step, ``methods.py`` for the method registry and the paper
conventions, ``lm.py`` for the primary LM side):

- ``search_caption(item, primary, objectives, cfg, lm_weight, seed) -> SearchResult`` and
  ``timed_search`` (the same, with seconds); ``search_items`` (a list of items,
  ``search.items_per_step`` at a time in lockstep: ``step_together``);
- the step in pieces: ``start_search -> SearchState``; ``candidate_scores(state) ->
  CandidateScores`` (gradient part, LM part, ``total``); ``propose(state, scores) -> (B, k)``;
  ``evaluate_pairs(state, candidates) -> PairTotals``; ``select_beams(totals, beam_width,
  text_of)``; ``search_step(state) -> StepChoice``;
- ``SEARCH_METHODS`` (``fuse``, ``lm_only``, ``random_proposal``) and ``build_method``;
- ``slot_gradient``, ``evaluate_candidates`` (plain), ``evaluate_extensions`` (fast), ``allowed_token_mask``, ``encode_prefix``,
  ``lm_context``, ``LMState``, ``lm_losses_full``.

Methods: ``fuse`` (the proposal score carries the FUSE slot gradient), ``lm_only`` (secondary
weights 0: proposals and selection by the LM alone) and ``random_proposal`` (k candidates drawn
at random from the LM's top pool_factor*k tokens, evaluated by the full objective: the same
evaluation budget as ``fuse`` without the gradient). Comparing them measures what the FUSE
gradient adds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> submodule. Loaded on first use (PEP 562), so that importing the light
# ``fuse_repro.search.methods`` (the registry the config schema checks names against) does not
# pull in the objectives, the bridge and the adapter.
_SUBMODULE = {
    **dict.fromkeys(
        ("SENTENCE_END", "LMState", "allowed_token_mask", "cache_keyword", "encode_prefix",
         "lm_context", "lm_losses_full"), "lm"),
    **dict.fromkeys(
        ("SearchResult", "returned_caption", "search_caption", "search_items", "should_stop",
         "step_together", "timed_search"), "loop"),
    **dict.fromkeys(
        ("EVAL_DTYPES", "LM_TERMS", "RETURNED", "SEARCH_METHODS", "SLOT_INITS", "SearchMethod",
         "build_method", "check_conventions", "check_eval_dtype"), "methods"),
    **dict.fromkeys(
        ("CandidateScores", "PairTotals", "SearchState", "StepChoice", "apply_step",
         "candidate_scores", "evaluate_candidates", "evaluate_extensions", "evaluate_pairs",
         "eval_precision", "pairs_of", "propose", "search_step", "select_beams", "slot_gradient",
         "start_search"), "step"),
}
__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from fuse_repro.search.lm import (
        SENTENCE_END,
        LMState,
        allowed_token_mask,
        cache_keyword,
        encode_prefix,
        lm_context,
        lm_losses_full,
    )
    from fuse_repro.search.loop import (
        SearchResult,
        returned_caption,
        search_caption,
        search_items,
        should_stop,
        step_together,
        timed_search,
    )
    from fuse_repro.search.methods import (
        EVAL_DTYPES,
        LM_TERMS,
        RETURNED,
        SEARCH_METHODS,
        SLOT_INITS,
        SearchMethod,
        build_method,
        check_conventions,
        check_eval_dtype,
    )
    from fuse_repro.search.step import (
        CandidateScores,
        PairTotals,
        SearchState,
        StepChoice,
        apply_step,
        candidate_scores,
        evaluate_candidates,
        evaluate_extensions,
        evaluate_pairs,
        eval_precision,
        pairs_of,
        propose,
        search_step,
        select_beams,
        slot_gradient,
        start_search,
    )
