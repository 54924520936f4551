"""stage=merge: join the captions.jsonl files of dataset shards into one captions.jsonl.

Shards made with different settings (their recorded config hashes differ) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fuse_repro.config import ConfigError, FuseConfig
from fuse_repro.records import CAPTIONS_NAME, merge_captions

log = logging.getLogger(__name__)

# Merging returns nothing a sweeper could optimize.
OPTIMIZED_METRIC = None


def check(cfg: FuseConfig) -> None:
    if not cfg.merge.inputs:
        raise ConfigError("merge.inputs is empty: list shard captions.jsonl files, shard run "
                          "folders or glob patterns (e.g. 'outputs/multirun/x/*/*')")


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    output = Path(cfg.merge.output) if cfg.merge.output else Path(out_dir) / CAPTIONS_NAME
    rows = merge_captions(cfg.merge.inputs, output)
    log.info("merged %d captions into %s", len(rows), output)
    return {"output": str(output), "num_captions": len(rows)}
