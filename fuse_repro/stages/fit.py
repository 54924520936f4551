"""stage=fit: fit (or load from the cache) the FUSE adapter from ``source`` to ``target``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fuse_repro.adapter import fit_adapter, format_report
from fuse_repro.app import resolve_device
from fuse_repro.config import AdapterConfig, typed, validate_adapter, write_json
from fuse_repro.models import load_model
from fuse_repro.tracking import open_tracker

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    adapter_cfg = validate_adapter(typed(cfg.adapter, AdapterConfig))
    device = resolve_device(cfg.device)
    cache_dir = Path(cfg.paths.cache_dir)
    source = load_model(cfg.source, cache_dir=cache_dir, device=device)
    target = load_model(cfg.target, cache_dir=cache_dir, device=device)
    adapter = fit_adapter(source, target, adapter_cfg, cache_dir)
    summary = {
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
