"""The runtime every stage shares: the device, the seed and torch's thread count.

``setup(seed, threads)`` is called once by the entry point (``app.run_stage``) before a stage runs; stages
and libraries call ``resolve_device`` for the one device rule. Nothing here is part of any
cache key or results hash (device and threads do not change what is computed, only where and
how fast; see the note on ``threads`` in ``conf/config.yaml``).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from fuse_repro.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: Any) -> Any:
    """``auto`` -> cuda when available, else cpu; anything else must be a device torch knows
    and can use here. Returns a ``torch.device``."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError as err:
        raise ConfigError(
            f"device={name!r} is not a torch device; use cpu, cuda, cuda:N or auto") from err
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} but MPS (Apple-silicon GPU) is not available here; "
                          "use device=cpu or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them")
    return device


def check_device(name: Any) -> None:
    """Config-only check of ``device``: its spelling, and for an accelerator that it exists here
    (the same rule as ``resolve_device``; torch is imported only in that case)."""
    text = "auto" if name is None else str(name)
    head, _, index = text.partition(":")
    if head not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ConfigError(f"device={name!r} is not a torch device; use cpu, cuda, cuda:N or auto")
    if head in ("cuda", "mps"):
        resolve_device(text)


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch from the one ``seed`` (0 is a seed)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None`` keeps the default); returns the count used."""
    import torch

    cores = cpu_cores()
    if threads is not None and threads > cores:
        log.warning("threads=%d is more than the %d CPU cores here: torch runs slower with more "
                    "threads than cores; use threads=%d or less (or threads=null)", threads, cores, cores)
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup(seed: int, threads: int | None) -> dict[str, Any]:
    """Apply the run's ``seed`` and ``threads``; returns what was set."""
    seed = seed_everything(seed)
    threads = set_threads(threads)
    log.debug("runtime: seed=%d, torch threads=%d", seed, threads)
    return {"seed": seed, "threads": threads}
