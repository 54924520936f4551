"""A whole caption search: steps until ``search.steps`` (or a sentence end), then the caption the
``search.returned`` convention names."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

from fuse_repro.config import SearchConfig
from fuse_repro.objectives import SecondaryObjective
from fuse_repro.search.lm import SENTENCE_END
from fuse_repro.search.step import SearchState, search_step, start_search

if TYPE_CHECKING:
    from fuse_repro.text_model import PrimaryModel


@dataclass
class SearchResult:
    caption: str  # the full text, prefix included
    generated: str  # the text after the prefix
    ids: list[int]  # generated primary token ids
    losses: dict[str, float]  # total (as optimized), lm, and each objective's raw loss
    steps: int
    evaluations: int  # candidate pairs whose true loss was computed
    history: list[dict[str, float]] = field(default_factory=list)  # best beam after each step


def should_stop(state: SearchState) -> bool:
    """Early stop: ``stop_at_sentence_end`` and the best beam ends a sentence after at least
    ``min_steps`` steps."""
    cfg = state.cfg
    if not cfg.stop_at_sentence_end or state.steps_done < cfg.min_steps:
        return False
    return state.primary.tokenizer.decode(state.beams[0]).rstrip().endswith(SENTENCE_END)


def returned_caption(state: SearchState) -> tuple[list[int], dict[str, float]]:
    """The generated ids and terms a search returns: the best final beam (``final_beam``) or
    the lowest total after any step, earliest on ties (``best_step``, the authors' choice)."""
    if state.cfg.returned == "best_step" and state.best_step is not None:
        ids, terms = state.best_step
        return list(ids), dict(terms)
    return list(state.beams[0]), dict(state.best_terms)


def search_caption(
    item: Any,
    primary: PrimaryModel,
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
        if should_stop(state):
            break
    best_ids, losses = returned_caption(state)
    # total: what the method optimized; objective: the full weighted objective, comparable
    # across methods; plus every term's raw loss on the returned caption.
    return SearchResult(
        caption=tok.decode(state.prefix_ids + best_ids),
        generated=tok.decode(best_ids),
        ids=best_ids,
        losses=losses,
        steps=state.steps_done,
        evaluations=state.evaluations,
        history=state.history,
    )


def timed_search(*args: Any, **kwargs: Any) -> tuple[SearchResult, float]:
    """``search_caption`` and its wall-clock seconds."""
    start = time.perf_counter()
    result = search_caption(*args, **kwargs)
    return result, time.perf_counter() - start
