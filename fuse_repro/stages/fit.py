"""stage=fit: fit (or load from the cache) the FUSE adapter from ``source`` to ``target``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fuse_repro.adapter import fit_adapter, format_report
from fuse_repro.config import FuseConfig
from fuse_repro.models import load_model
from fuse_repro.records import write_json
from fuse_repro.runtime import resolve_device
from fuse_repro.tracking import open_tracker
from fuse_repro.weights import check_available

log = logging.getLogger(__name__)


# What a sweep over the fit optimizes: the mean held-out relative residual over the buckets.
OPTIMIZED_METRIC = "heldout_residual"


def check(cfg: FuseConfig) -> None:
    """Config-only checks: both models can be loaded here."""
    check_available(cfg.source)
    check_available(cfg.target)


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    cache_dir = Path(cfg.paths.cache_dir)
    source = load_model(cfg.source, cache_dir=cache_dir, device=device)
    target = load_model(cfg.target, cache_dir=cache_dir, device=device)
    adapter = fit_adapter(source, target, cfg.adapter, cache_dir)
    held = [row["residual_heldout"] for row in adapter.report.get("buckets", [])
            if row.get("residual_heldout") is not None]
    summary = {
        "heldout_residual": sum(held) / len(held) if held else None,
        "adapter_key": adapter.key,
        "adapter_kind": adapter.kind,
        "adapter_path": str(adapter.path) if adapter.path else None,
        "from_cache": adapter.from_cache,
        "report": adapter.report,
    }
    print(f"FUSE adapter {source.name} -> {target.name}: kind={adapter.kind} key={adapter.key} "
          f"({'cache hit' if adapter.from_cache else 'fitted'})")
    if adapter.report:
        print(format_report(adapter.report))
    write_json(out_dir / "fit_report.json", summary)
    with open_tracker(cfg, out_dir, "fit", {"adapter_key": adapter.key}) as tracker:
        tracker.summary({"adapter_key": adapter.key, "adapter_kind": adapter.kind})
        for row in adapter.report.get("buckets", []):
            l = row["target_tokens"]
            tracker.summary({f"fit/l{l}/{k}": v for k, v in row.items() if k != "target_tokens"})
    return summary
