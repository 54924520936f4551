"""The "random weights" label every output of a ``weights=random`` run carries.

``weights=random`` builds every model at its true architecture with seeded random weights (no hub
access; ``fuse_repro.models``). Such a run has the paper's real shapes, tokenization, memory and
time, but every number it scores (caption metrics, similarities, objective values) is produced by
untrained networks and means nothing. So a random-weight run says so wherever it writes or prints
a number: ``run_info.json`` and ``metrics.json`` carry ``weights: random`` and
``weights_note``, the run's comparison table names each row ``<method> (random weights)`` under a
warning line, the printed summary starts with the warning, and ``stage=table`` leaves such runs
out of the paper's tables (naming why in its run listing). A pretrained run's outputs are
unchanged (no key is added), so the default run stays byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RANDOM = "random"
# One line, printed and recorded.
RANDOM_NOTE = ("random weights: real architectures, tokenizers, shapes, memory and time, but "
               "untrained networks; every score of this run is meaningless and not a result")
ROW_SUFFIX = " (random weights)"


def is_random(cfg_or_record: Any) -> bool:
    """A root config (``FuseConfig``), a ``run_info.json`` or a ``metrics.json`` dict of a
    random-weight run."""
    if isinstance(cfg_or_record, Mapping):
        return cfg_or_record.get("weights") == RANDOM
    return getattr(cfg_or_record, "weights", None) == RANDOM


def weights_fields(cfg: Any) -> dict[str, str]:
    """Keys to add to run_info.json / metrics.json: ``{weights, weights_note}`` for a random run,
    nothing for a pretrained one (its files stay as they were)."""
    if not is_random(cfg):
        return {}
    return {"weights": RANDOM, "weights_note": RANDOM_NOTE}


def row_name(method: str, cfg: Any) -> str:
    """A table row's method cell: ``fuse (random weights)`` for a random run, else ``fuse``."""
    return method + ROW_SUFFIX if is_random(cfg) else method


def banner(cfg: Any) -> str | None:
    """The warning line printed before a random run's results (None for a pretrained run)."""
    return f"WARNING: {RANDOM_NOTE}" if is_random(cfg) else None


def record_is_random(*records: Mapping[str, Any]) -> bool:
    """True when any of ``records`` (run_info, metrics) says ``weights: random``."""
    return any(isinstance(r, Mapping) and r.get("weights") == RANDOM for r in records)
