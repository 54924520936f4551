"""stage=merge: join the captions.jsonl files of dataset shards into one captions.jsonl.

Shards made with different settings (their recorded config hashes differ) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fuse_repro.config import MergeConfig, convert
from fuse_repro.errors import ConfigError
from fuse_repro.records import merge_captions

log = logging.getLogger(__name__)

# Merging returns nothing a sweeper could optimize.
OPTIMIZED_METRIC = None


def _inputs(cfg: DictConfig) -> tuple[list[str], str | None]:
    merge = convert(cfg.merge, MergeConfig)
    if not merge.inputs:
        raise ConfigError("merge.inputs is empty: list shard captions.jsonl files, shard run "
                          "folders or glob patterns (e.g. 'outputs/multirun/x/*/*')")
    return [str(i) for i in merge.inputs], merge.output


def check(cfg: DictConfig) -> None:
    _inputs(cfg)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    inputs, output_node = _inputs(cfg)
    output = Path(output_node) if output_node else Path(out_dir) / "captions.jsonl"
    rows = merge_captions(inputs, output)
    log.info("merged %d captions into %s", len(rows), output)
    return {"output": str(output), "num_captions": len(rows)}
