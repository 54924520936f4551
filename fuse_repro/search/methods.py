"""Search methods and the paper-convention options: small registries behind one interface.

A search method decides two things only: whether the proposal score carries the FUSE slot
gradient, and how the k candidates of each beam are picked from that score. Evaluation and
selection are shared by every method (``fuse_repro.search.step``), so comparing methods at the
same top_k compares proposals at the same evaluation budget.

Add a method: a ``SearchMethod`` subclass here with a docstring citing where it comes from, and
an entry in ``SEARCH_METHODS``; ``search.method=<name>`` then selects it.

Shape glossary
--------------
B      live beams
V      primary vocabulary size
k      candidates per beam (``top_k``)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fuse_repro.errors import ConfigError, use_one_of

if TYPE_CHECKING:
    from fuse_repro.config import SearchConfig
    from fuse_repro.objectives import SecondaryObjective


class SearchMethod:
    """The default: rank every allowed token by its proposal score (``CandidateScores.total``)
    and keep the top k per beam; ties keep the lower token id first (stable sort)."""

    name: ClassVar[str]
    # Whether the proposal score carries the gradient part (-slot gradient of the objectives).
    uses_gradient: ClassVar[bool] = False
    # Whether the secondary objectives enter the evaluated total (else the LM alone is optimized,
    # the secondary losses are still reported for the best beam).
    optimizes_secondary: ClassVar[bool] = True

    def searching(self, objectives: list[SecondaryObjective]) -> list[SecondaryObjective]:
        """The objectives that drive this method's search (proposal gradient and selection)."""
        if not self.optimizes_secondary:
            return []
        return [o for o in objectives if o.weight > 0]

    def pick(self, total: torch.Tensor, cfg: SearchConfig, generator: torch.Generator) -> torch.Tensor:
        """(B, V) proposal scores -> (B, k) candidate token ids."""
        order = torch.sort(total, dim=-1, descending=True, stable=True).indices  # (B, V)
        return order[:, : cfg.top_k]


class Fuse(SearchMethod):
    """AutoDAN's proposal (Zhu et al. 2023) with the gradient carried across tokenizers by the
    FUSE bridge (paper section 4.2): score = -gradient + logit_weight * log p_LM, top k."""

    name = "fuse"
    uses_gradient = True


class LMOnly(SearchMethod):
    """Ablation: secondary weights 0, so proposals and selection follow the LM alone (what the
    LM writes without the secondary models); every objective is still reported."""

    name = "lm_only"
    optimizes_secondary = False


class RandomProposal(SearchMethod):
    """Ablation at the same evaluation budget as ``fuse`` without its gradient: k candidates
    drawn uniformly (seeded) from the LM's top ``pool_factor * k`` allowed tokens, evaluated by
    the full objective."""

    name = "random_proposal"

    def pick(self, total: torch.Tensor, cfg: SearchConfig, generator: torch.Generator) -> torch.Tensor:
        order = torch.sort(total, dim=-1, descending=True, stable=True).indices  # (B, V)
        pool = order[:, : cfg.top_k * cfg.pool_factor]  # (B, pool_factor * k)
        picks = torch.stack(
            [torch.randperm(pool.shape[1], generator=generator)[: cfg.top_k] for _ in range(total.shape[0])]
        )  # (B, k) positions in the pool
        return torch.gather(pool, 1, picks).sort(dim=-1).values  # (B, k), ascending token id


SEARCH_METHODS: dict[str, type[SearchMethod]] = {cls.name: cls for cls in (Fuse, LMOnly, RandomProposal)}


def build_method(name: str) -> SearchMethod:
    if name not in SEARCH_METHODS:
        raise ConfigError(f"search.method={name!r} is not one of {sorted(SEARCH_METHODS)}")
    return SEARCH_METHODS[name]()


# ----------------------------------------------------------------------------------------------
# Paper conventions (README "Conventions" table): ours first, the authors' code second.
# ----------------------------------------------------------------------------------------------
# search.slot_init: the token appended as the slot whose one-hot gradient scores candidates.
# (B, V) masked LM log-probs -> (B,) slot ids.
SLOT_INITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "lm_argmax": lambda masked_lp: masked_lp.argmax(dim=-1),
    "token_zero": lambda masked_lp: torch.zeros(masked_lp.shape[0], dtype=torch.long),
}
# search.lm_term: which tokens the LM's mean NLL averages over.
LM_TERMS = ("generated", "prefix_and_generated")
# search.returned: which caption a search returns.
RETURNED = ("final_beam", "best_step")


# search.eval_dtype: the precision of candidate evaluation (the secondary models' forward over
# every candidate). tf32 and bfloat16 exist on CUDA only (fuse_repro.search.step.eval_precision).
EVAL_DTYPES = ("float32", "tf32", "bfloat16")


def check_eval_dtype(eval_dtype: str, device: Any) -> None:
    """One clear line when a lower evaluation precision is asked for off CUDA (checked from the
    config before any model loads, and again when a search starts)."""
    kind = getattr(device, "type", str(device).partition(":")[0])
    if eval_dtype != "float32" and kind != "cuda":
        raise ConfigError(
            f"search.eval_dtype={eval_dtype!r} needs a CUDA device (device is {str(device)!r}); "
            "use search.eval_dtype=float32 on the CPU"
        )


def check_conventions(cfg: SearchConfig) -> None:
    """One clear line for a convention value that does not exist, saying which to use."""
    for key, allowed in (("slot_init", tuple(SLOT_INITS)), ("lm_term", LM_TERMS), ("returned", RETURNED),
                         ("eval_dtype", EVAL_DTYPES)):
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(f"search.{key}={value!r} is not one of {list(allowed)}; "
                              f"{use_one_of(f'search.{key}', allowed, value)}")
