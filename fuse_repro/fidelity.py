"""How faithful is the FUSE gradient? (issue 11; the paper leaves this question open.)

At states visited by the fuse search (the best beam after 0..T steps), take the LM's top-K allowed
next tokens as candidates, compute each candidate's *true* weighted secondary loss exactly as the
search evaluates candidates (``search.evaluate_candidates``, same chunks), and ask how well each
condition's *predicted goodness* ranks them (metrics in ``fidelity_metrics``):

- ``fuse``: the gradient part of the search's own per-candidate score (``candidate_scores``:
  minus the slot gradient through the fitted bridge), i.e. exactly what ``propose`` ranks by, minus
  the LM part;
- ``random_maps``: the same, through bridges whose maps are seeded Gaussians of the same shape and
  scale (one per seed; mean over seeds, and the spread between seeds);
- ``mean_map``: the same through the fit report's mean-embedding baseline maps;
- ``fuse_overflow_<policy>``: the fitted maps with the *other* overflow policy for words past the
  cap (random Jacobian vs zero), to see what that policy does;
- ``lm_only``: the LM's log-probability; ``chance``: seeded random scores;
- ``exact``: the secondary model's own input gradient (first-order change of its loss when the
  appended token's embedding replaces the anchor's). It is defined only for candidates that add
  exactly one secondary token, so it is compared with the other conditions on that subset.

Shape glossary
--------------
B      live beams of the search state
V      primary vocabulary size
K      candidates of one state (the LM's top-K allowed tokens); m of them add one secondary token
S_j    a secondary sequence length (specials included); d_j its embedding width
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fuse_repro.config.fidelity import FidelityConfig
from fuse_repro.fidelity_metrics import mean_se, state_metrics
from fuse_repro.search import candidate_scores, evaluate_candidates, search_step, start_search

log = logging.getLogger(__name__)

# Rows of fidelity.csv, in order. Conditions on the one-secondary-token subset get a suffix.
CONDITIONS = ("fuse", "random_maps", "mean_map", "lm_only", "chance")
SUBSET_CONDITIONS = ("exact", "fuse", "lm_only", "chance")
SUBSET = "one_token"

__all__ = ["FidelityConfig", "candidate_tokens", "control_bridges", "exact_goodness", "measure_state",
           "predictions", "search_states", "summarize", "true_losses", "with_bridges"]


# ----------------------------------------------------------------------------------------------
# States and controls
# ----------------------------------------------------------------------------------------------
def search_states(
    item: Any, primary: Any, objectives: list[Any], search_cfg: Any, lm_weight: float, seed: int,
    after_steps: list[int],
) -> Iterator[tuple[int, Any]]:
    """(step, state) of the fuse search on ``item`` after each step in ``after_steps``."""
    wanted = sorted({int(s) for s in after_steps})
    state = start_search(item, primary, objectives, search_cfg, lm_weight, seed)
    for step in range(wanted[-1] + 1):
        if step > 0:
            search_step(state)
        if step in wanted:
            yield step, state


def with_bridges(state: Any, bridges: list[Any]) -> Any:
    """A view of ``state`` whose searching objectives use ``bridges`` (one per objective); the
    objectives are shallow copies, so their prepared targets are shared and nothing is mutated."""
    swapped = []
    for obj, bridge in zip(state.searching, bridges, strict=True):
        twin = copy.copy(obj)
        twin.bridge = bridge
        swapped.append(twin)
    return dataclasses.replace(state, searching=swapped)


def other_overflow(bridge: Any) -> Any:
    """The same fitted bridge with the other policy for words past the cap."""
    policy = "zero" if bridge.overflow == "random" else "random"
    return type(bridge)(bridge.source, bridge.target, bridge.adapter, overflow=policy, seed=bridge.seed,
                        device=bridge.device)


def control_bridges(objectives: list[Any], cfg: FidelityConfig, seed: int) -> dict[str, list[list[Any]]]:
    """Condition name -> list of bridge sets (one bridge per objective); built once per run."""
    controls: dict[str, list[list[Any]]] = {
        "random_maps": [[o.bridge.with_maps("random", seed=seed + r) for o in objectives] for r in range(cfg.random_maps)],
        "mean_map": [[o.bridge.with_maps("mean", seed=seed) for o in objectives]],
    }
    if cfg.overflow_control:
        controls[f"fuse_overflow_{overflow_name(objectives)}"] = [[other_overflow(o.bridge) for o in objectives]]
    return controls


def overflow_name(objectives: list[Any]) -> str:
    """The overflow policy the control uses (the opposite of the fitted bridges')."""
    policies = {o.bridge.overflow for o in objectives}
    assert len(policies) == 1, f"objectives disagree on the overflow policy: {policies}"
    return "zero" if policies.pop() == "random" else "random"


# ----------------------------------------------------------------------------------------------
# The exact (secondary-model) first-order ranking on the one-token subset
# ----------------------------------------------------------------------------------------------
def _inserted_position(base: list[int], ext: list[int]) -> int | None:
    """Index p where ``ext`` equals ``base`` with one id inserted at p, else None."""
    if len(ext) != len(base) + 1:
        return None
    p = next((i for i, (a, b) in enumerate(zip(base, ext)) if a != b), len(base))
    return p if ext[p + 1 :] == base[p:] else None


def exact_goodness(objectives: list[Any], base: list[int], candidates: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(K,) bool mask of the candidates that add exactly one token to every secondary sequence,
    and (K,) predicted goodness ``-sum_j w_j g_j . E_j[t_c]`` there (0 elsewhere), where ``g_j``
    (d_j,) is the gradient of ``w_j L_j`` w.r.t. the secondary input embedding of the appended
    token of the anchor (the subset's first candidate: the LM's favourite, the search's slot
    whenever it qualifies). Differences of this score are the first-order change of the loss."""
    K = len(candidates)
    mask = np.ones(K, dtype=bool)
    tokens, positions = [], []
    for obj in objectives:
        ids_base = obj.bridge.lookup([base]).ids[0]
        ids_ext = obj.bridge.lookup([base + [c] for c in candidates]).ids
        pos = [_inserted_position(list(ids_base), list(e)) for e in ids_ext]
        found = [p for p in pos if p is not None]
        common = Counter(found).most_common(1)[0][0] if found else None  # where appended ids go
        mask &= np.array([p is not None and p == common for p in pos])
        positions.append(common)
        tokens.append([e[common] if (p is not None and p == common) else -1 for p, e in zip(pos, ids_ext)])
    goodness = np.zeros(K, dtype=np.float64)
    if not mask.any():
        return mask, goodness
    anchor = int(np.flatnonzero(mask)[0])
    for obj, toks, p in zip(objectives, tokens, positions):
        tb = obj.bridge.lookup([base + [candidates[anchor]]])
        embeds = tb.embeds.detach().clone().requires_grad_(True)  # (1, S_j, d_j)
        (obj.weight * obj.loss(dataclasses.replace(tb, embeds=embeds)).sum()).backward()
        assert embeds.grad is not None
        g = embeds.grad[0, p].double().cpu()  # (d_j,)
        idx = torch.tensor([t if m else 0 for t, m in zip(toks, mask)], dtype=torch.long)
        rows = obj.model.embedding_table().detach()[idx.to(obj.model.device)].double().cpu()  # (K, d_j)
        goodness -= (rows @ g).numpy()
    goodness[~mask] = 0.0
    return mask, goodness


# ----------------------------------------------------------------------------------------------
# One state
# ----------------------------------------------------------------------------------------------
def candidate_tokens(scores: Any, top_k: int) -> torch.Tensor:
    """(K,) the LM's top-K allowed next tokens of the best beam (beam 0), most likely first."""
    lm = scores.lm[0]  # (V,) masked log-probs, -inf where disallowed
    n_allowed = int(torch.isfinite(lm).sum())
    if n_allowed < top_k:
        raise ValueError(f"fidelity.top_k={top_k} exceeds the {n_allowed} allowed tokens")
    return torch.sort(lm, descending=True, stable=True).indices[:top_k]


def true_losses(state: Any, cand: torch.Tensor) -> np.ndarray:
    """(K,) weighted secondary loss ``sum_j w_j L_j`` of the best beam extended by each candidate,
    evaluated exactly as the search evaluates its candidates (same function, same chunks)."""
    base = list(state.prefix_ids) + list(state.beams[0])
    raw = evaluate_candidates(state.searching, [base + [int(c)] for c in cand.tolist()], state.cfg.eval_chunk)
    return sum(o.weight * raw[o.name].double() for o in state.searching).numpy()


def predictions(
    state: Any, scores: Any, cand: torch.Tensor, controls: dict[str, list[list[Any]]]
) -> dict[str, list[np.ndarray]]:
    """Condition -> predicted goodness (K,) of the candidates, one array per control seed.
    ``fuse`` is the gradient part of ``scores`` (what ``propose`` ranks, minus its LM part)."""
    out = {
        "fuse": [scores.gradient[0, cand].double().numpy()],
        "lm_only": [scores.lm[0, cand].double().numpy()],
    }
    for name, bridge_sets in controls.items():
        out[name] = [candidate_scores(with_bridges(state, b)).gradient[0, cand].double().numpy() for b in bridge_sets]
    return out


def _mean_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}


def measure_state(
    state: Any, controls: dict[str, list[list[Any]]], cfg: FidelityConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """Candidates, true losses and every condition's metrics at the best beam of ``state``
    (beams are kept best first)."""
    scores = candidate_scores(state)  # the search's own per-candidate score, (B, V) parts
    cand = candidate_tokens(scores, cfg.top_k)  # (K,)
    loss = true_losses(state, cand)  # (K,)
    preds = predictions(state, scores, cand, controls)
    preds["chance"] = [rng.standard_normal(len(loss)) for _ in range(cfg.chance_draws)]
    runs = {name: [state_metrics(p, loss, cfg.recall_k) for p in ps] for name, ps in preds.items()}
    base = list(state.prefix_ids) + list(state.beams[0])
    record: dict[str, Any] = {
        "item": str(getattr(state.item, "id", "")),
        "text": state.primary.tokenizer.decode(base),
        "n_candidates": len(loss),
        "loss_best": float(loss.min()),
        "loss_mean": float(loss.mean()),
        "metrics": {name: _mean_metrics(r) for name, r in runs.items()},
        # per-seed metrics of the controls with several seeds (the spread between seeds)
        "per_seed": {name: r for name, r in runs.items() if name != "chance" and len(r) > 1},
    }
    if cfg.exact:
        mask, exact = exact_goodness(state.searching, base, cand.tolist())
        record["n_one_token"] = int(mask.sum())
        if mask.sum() >= 2:
            sub = {"exact": [exact], **{name: preds[name] for name in ("fuse", "lm_only", "chance")}}
            record[SUBSET] = {
                name: _mean_metrics([state_metrics(p[mask], loss[mask], cfg.recall_k) for p in ps])
                for name, ps in sub.items()
            }
    return record


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------
def summarize(records: list[dict[str, Any]], recall_k: int) -> list[dict[str, Any]]:
    """One row per condition: mean and standard error over states of each metric. For a control
    with several seeds (random maps), ``*_spread`` is the standard deviation of the per-seed means
    over states (NaN otherwise)."""
    if not records:
        return []
    names = list(CONDITIONS) + [n for n in records[0]["metrics"] if n not in CONDITIONS]
    labels = {"spearman": "spearman", "recall_at_k": f"recall_at_{recall_k}", "regret": "regret"}
    rows = []
    for subset, conditions, key in (("all", names, "metrics"), (SUBSET, list(SUBSET_CONDITIONS), SUBSET)):
        kept = [r for r in records if key in r]
        for name in conditions:
            if not kept or name not in kept[0][key]:
                continue
            row: dict[str, Any] = {"condition": name if subset == "all" else f"{name}@{SUBSET}", "subset": subset}
            for metric, label in labels.items():
                row[label], row[f"{label}_se"] = mean_se([r[key][name][metric] for r in kept])
            seeds = len(kept[0]["per_seed"].get(name, [])) if subset == "all" else 0
            for metric in ("spearman", "recall_at_k"):
                spread = float("nan")
                if seeds > 1:
                    per_seed = [np.mean([r["per_seed"][name][s][metric] for r in kept]) for s in range(seeds)]
                    spread = float(np.std(per_seed, ddof=1))
                row[f"{labels[metric]}_spread"] = spread
            row["n_states"] = len(kept)
            rows.append(row)
    return rows
