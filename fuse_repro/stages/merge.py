"""stage=merge: join the captions.jsonl files of dataset shards into one captions.jsonl."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fuse_repro.sweep import merge_shards

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    node = OmegaConf.to_container(cfg.merge, resolve=True)
    assert isinstance(node, dict)
    unknown = sorted(set(node) - {"inputs", "output"})
    if unknown:
        raise ValueError(f"unknown keys merge.{unknown}; known: ['inputs', 'output']")
    inputs = node.get("inputs") or []
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        raise ValueError("merge.inputs is empty: list shard captions.jsonl files, shard run "
                         "folders or glob patterns (e.g. 'outputs/multirun/x/*/*')")
    output = Path(node["output"]) if node.get("output") else Path(out_dir) / "captions.jsonl"
    rows = merge_shards(inputs, output)
    log.info("merged %d captions into %s", len(rows), output)
    return {"output": str(output), "num_captions": len(rows)}
