"""A whole caption search: steps until ``search.steps`` (or a sentence end), then the caption the
``search.returned`` convention names. ``search_items`` searches a list of items, several at a
time (``search.items_per_step``): their steps run in lockstep (``step_together``) and the
candidates of all of them share the secondary models' batches where the model's features do not
depend on the item (the prefix-cached path); every item gets the caption it gets alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TYPE_CHECKING

import torch

from fuse_repro.config import SearchConfig
from fuse_repro.objectives import ObjectiveError, SecondaryObjective, merge_extensions, prefix_cached_features
from fuse_repro.search.lm import SENTENCE_END
from fuse_repro.search.step import (
    SearchState,
    apply_step,
    eval_precision,
    evaluate_extensions,
    evaluate_pairs,
    pairs_of,
    propose,
    search_step,
    start_search,
)

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
    for _ in range(cfg.steps):
        search_step(state)
        if should_stop(state):
            break
    return result_of(state)


def result_of(state: SearchState) -> SearchResult:
    """The ``SearchResult`` of a finished search."""
    tok = state.primary.tokenizer
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


def step_together(states: list[SearchState]) -> None:
    """One ``search_step`` of every state, their candidates evaluated together: for an objective
    on the prefix-cached path (``SecondaryObjective.can_prefix_cache``) the features of every
    state's candidates come from one set of batches (features do not depend on the item; only
    the loss does, computed per item with its own context); other objectives are evaluated per
    state. Each state ends exactly as ``search_step`` would end it."""
    assert states, "no states"
    cfg = states[0].cfg
    searching = states[0].searching
    assert all(s.cfg == cfg and s.searching == searching for s in states), "states must share a search"
    proposals = []
    for state in states:  # proposals need the item's own context (its slot gradient)
        state.activate()
        candidates = propose(state)
        proposals.append((candidates, pairs_of(state, candidates)))
    raws: list[dict[str, torch.Tensor]] = [{} for _ in states]
    with eval_precision(cfg.eval_dtype, states[0].primary.device):
        for obj in searching:
            if cfg.prefix_cache and obj.can_prefix_cache():
                parts = [obj.bridge.extension_ids([s.prefix_ids + b for b in s.beams], pairs)
                         for s, (_, pairs) in zip(states, proposals)]
                features = prefix_cached_features(obj.model, merge_extensions(parts), cfg.eval_chunk)
                start = 0
                for i, (state, part) in enumerate(zip(states, parts)):
                    state.activate()
                    rows = features[start : start + len(part.candidates)]  # (K_i, e)
                    raws[i][obj.name] = obj.loss_from_features(rows).float().cpu()
                    start += len(part.candidates)
                continue
            for i, (state, (_, pairs)) in enumerate(zip(states, proposals)):
                state.activate()
                raws[i][obj.name] = evaluate_extensions(state, pairs)[obj.name]
    for state, (candidates, _), raw in zip(states, proposals, raws):
        state.activate()
        apply_step(state, candidates, evaluate_pairs(state, candidates, raw))


def search_items(
    items: list[Any],
    primary: PrimaryModel,
    objectives: list[SecondaryObjective],
    cfg: SearchConfig,
    lm_weight: float,
    seed: int,
    *,
    alone: Callable[..., tuple[SearchResult, float]] | None = None,
) -> Iterator[tuple[Any, SearchResult | ObjectiveError | OSError, float]]:
    """Search every item; yields ``(item, result or the item's error, seconds)`` as each item
    finishes, so a caller can save it at once (resume stays per item).

    ``cfg.items_per_step`` items at a time: their steps run in lockstep (``step_together``) and
    an item leaves its group when it stops; seconds are the group's wall time shared equally.
    With 1 this is ``timed_search`` item after item. An item whose search cannot start (no
    image, ...) yields its error; an error inside a shared step reruns that group's items one
    by one, so the error lands on its own item. ``alone`` searches one item (default
    ``timed_search``)."""
    alone = alone or timed_search
    if cfg.items_per_step == 1:
        for item in items:
            try:
                result, seconds = alone(item, primary, objectives, cfg, lm_weight, seed)
            except (ObjectiveError, OSError) as err:
                yield item, err, 0.0
                continue
            yield item, result, seconds
        return
    single = replace(cfg, items_per_step=1)
    for first in range(0, len(items), cfg.items_per_step):
        group = items[first : first + cfg.items_per_step]
        start = time.perf_counter()
        states: list[SearchState] = []
        for item in group:
            try:
                states.append(start_search(item, primary, objectives, cfg, lm_weight, seed))
            except (ObjectiveError, OSError) as err:
                yield item, err, 0.0
        live = list(states)
        try:
            for _ in range(cfg.steps):
                if not live:
                    break
                step_together(live)
                stopped = [should_stop(s) for s in live]
                done = [s for s, stop in zip(live, stopped) if stop]
                live = [s for s, stop in zip(live, stopped) if not stop]
                share = (time.perf_counter() - start) / max(len(states), 1)
                for state in done:
                    yield state.item, result_of(state), share
        except (ObjectiveError, OSError):
            yield from search_items([s.item for s in live], primary, objectives, single, lm_weight, seed,
                                    alone=alone)
            continue
        share = (time.perf_counter() - start) / max(len(states), 1)
        for state in live:
            state.activate()
            yield state.item, result_of(state), share


def timed_search(*args: Any, **kwargs: Any) -> tuple[SearchResult, float]:
    """``search_caption`` and its wall-clock seconds."""
    start = time.perf_counter()
    result = search_caption(*args, **kwargs)
    return result, time.perf_counter() - start
