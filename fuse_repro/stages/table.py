"""stage=table: rebuild Tables 1 and 2 (Markdown, LaTeX, CSV) from saved metrics.json files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fuse_repro.tables import build_tables

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    node = OmegaConf.to_container(cfg.table, resolve=True)
    assert isinstance(node, dict)
    known = {"roots", "out_dir", "datasets", "experiments", "methods", "formats"}
    unknown = sorted(set(node) - known)
    if unknown:
        raise ValueError(f"unknown keys table.{unknown}; known: {sorted(known)}")
    roots = node.get("roots") or []
    if isinstance(roots, str):
        roots = [roots]
    if not roots:
        raise ValueError("table.roots is empty: list the run/multirun folders to collect from")
    target = Path(node["out_dir"]) if node.get("out_dir") else Path(out_dir)
    summary = build_tables(roots, target, datasets=node.get("datasets"),
                           experiments=node.get("experiments"), methods=node.get("methods"),
                           formats=node.get("formats") or ("md", "tex", "csv"))
    for path in summary["files"]:
        if path.endswith(".md"):
            print(Path(path).read_text(encoding="utf-8"))
    log.info("tables from %d runs written to %s", summary["num_runs"], target)
    return summary
