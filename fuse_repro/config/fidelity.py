"""Schema of the ``fidelity`` group (``stage=fidelity``, ``fuse_repro.fidelity``; issue 11).

Kept in its own module beside ``schemas.py`` (which types it in the root ``FuseConfig``); like every
schema here it holds the defaults (``conf/fidelity/default.yaml`` changes none) and validates in
``__post_init__`` with one ``ConfigError`` line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035 - OmegaConf 2.3 schemas, as in schemas.py

from fuse_repro.errors import ConfigError


@dataclass
class FidelityConfig:
    """What the gradient-fidelity measurement looks at; the models, adapter (L, N), objective,
    search and dataset come from their own groups."""

    # States: the fuse search's best beam after each of these steps (0 = the bare prefix).
    after_steps: List[int] = field(default_factory=lambda: [0, 1, 2, 3])
    # Dataset items used, in dataset order; null = all (the bundled demo set has 8).
    max_items: Optional[int] = None
    # K: candidates per state, the LM's top-K allowed next tokens.
    top_k: int = 256
    # k of recall@k.
    recall_k: int = 16
    # Random-map controls, seeded seed, seed+1, ...: their mean is reported, with the spread.
    random_maps: int = 3
    # Random score draws per state for the chance row (averaged per state).
    chance_draws: int = 20
    # Also rank by the secondary model's own input gradient, on the candidates that add exactly
    # one secondary token (where it is defined).
    exact: bool = True
    # Also rank with the fitted maps and the other overflow policy (random <-> zero) for words
    # past the cap.
    overflow_control: bool = True

    def __post_init__(self) -> None:
        if not self.after_steps or any(int(s) < 0 for s in self.after_steps):
            raise ConfigError(f"fidelity.after_steps must be a non-empty list of steps >= 0, got {list(self.after_steps)}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"fidelity.max_items must be null or >= 1, got {self.max_items}")
        if self.top_k < 2:
            raise ConfigError(f"fidelity.top_k must be >= 2 (a ranking needs two candidates), got {self.top_k}")
        if not 1 <= self.recall_k <= self.top_k:
            raise ConfigError(f"fidelity.recall_k must be in 1..top_k={self.top_k}, got {self.recall_k}")
        for key in ("random_maps", "chance_draws"):
            if getattr(self, key) < 1:
                raise ConfigError(f"fidelity.{key} must be >= 1, got {getattr(self, key)}")
