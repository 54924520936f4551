"""Ranking metrics of the gradient-fidelity measurement (``stage=fidelity``).

Every metric compares, at one search state, a *predicted goodness* of each candidate token (higher
means "this token should lower the loss": minus the FUSE slot gradient, log p, a random score...)
with the candidate's *true loss* (lower is better), computed exactly after appending the token.

Shape glossary
--------------
K      candidates at one state (the LM's top-K allowed tokens)
k      the recall cut-off (recall@k, 16 by default)

Definitions (the tests check each against hand-computed cases):

- ``spearman``: Pearson correlation of the average ranks (ties share the mean of their ranks) of
  the predicted goodness and of minus the true loss. numpy has no rank correlation and scipy is not
  a dependency of the project, so the ranks are computed here (``average_ranks``) and checked in
  the tests against a float64 O(K^2) reference. A constant prediction (e.g. an all-zero gradient)
  carries no ranking information: its Spearman is defined as 0, not NaN, so means stay finite.
- ``recall_at_k``: the share of the true best k found among the predicted best k. On the true
  side, ties at the k-th smallest loss are counted in: every candidate whose loss equals it is a
  "true best". On the predicted side, the candidates tied at the k-th predicted value fill the
  remaining places of the predicted best k fractionally (the expected count under a uniformly
  random tie-break), so a constant predictor scores chance (about k/K), never 1.
- ``regret``: the true loss of the predicted-best candidate minus the smallest true loss (the mean
  over the candidates tied at the top predicted value: again the expectation of a random tie-break).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} holds a non-finite value: {out[~np.isfinite(out)][:3].tolist()}")
    return out


def _pair(pred: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, l = _vector(pred, "predicted goodness"), _vector(loss, "true loss")
    if p.shape != l.shape or p.size == 0:
        raise ValueError(f"predicted goodness {p.shape} and true loss {l.shape} must be equal, non-empty")
    return p, l


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """(K,) float64 ranks 1..K of ``values``; tied values share the mean of the ranks they span."""
    x = _vector(values, "values")
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)  # (U,) distinct values
    first = np.cumsum(counts) - counts  # (U,) rank - 1 of each distinct value's first copy
    return (first + (counts + 1) / 2.0)[inverse]


def spearman(pred: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray) -> float:
    """Spearman correlation between predicted goodness and minus the true loss (0 if either is
    constant)."""
    p, l = _pair(pred, loss)
    rp, rl = average_ranks(p), average_ranks(-l)
    rp, rl = rp - rp.mean(), rl - rl.mean()
    denom = math.sqrt(float(rp @ rp) * float(rl @ rl))
    if denom == 0.0:
        return 0.0
    return float(rp @ rl) / denom


def recall_at_k(pred: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray, k: int) -> float:
    """Share of the true best ``k`` (ties counted in) among the predicted best ``k`` (ties at the
    k-th predicted value filled in by their expected share)."""
    p, l = _pair(pred, loss)
    if not 1 <= k <= p.size:
        raise ValueError(f"recall cut-off k={k} must be in 1..{p.size} (the number of candidates)")
    true_best = l <= np.sort(l)[k - 1]  # (K,) bool, at least k True
    kth = np.sort(p)[::-1][k - 1]  # the k-th largest predicted goodness
    above, tied = p > kth, p == kth  # above: fewer than k; tied: at least one
    free = k - int(above.sum())  # places of the predicted best k left for the tied candidates
    hits = float((above & true_best).sum()) + free * float((tied & true_best).sum()) / float(tied.sum())
    return hits / k


def regret(pred: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray) -> float:
    """True loss of the predicted-best candidate minus the best true loss (>= 0)."""
    p, l = _pair(pred, loss)
    top = p == p.max()
    return float(l[top].mean() - l.min())


def state_metrics(pred: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray, k: int) -> dict[str, float]:
    """Every metric of one state (``k`` is capped at the number of candidates)."""
    k = min(k, len(loss))
    return {
        "spearman": spearman(pred, loss),
        "recall_at_k": recall_at_k(pred, loss, k),
        "regret": regret(pred, loss),
    }


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) over states; SE is NaN for one state."""
    x = _vector(values, "per-state values")
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
