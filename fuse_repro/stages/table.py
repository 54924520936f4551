"""stage=table: rebuild Tables 1 and 2 and the offline COCO text-target table (Markdown, LaTeX,
CSV) from saved metrics.json files, and list every run found with why any was left out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fuse_repro.config import FuseConfig
from fuse_repro.tables import build_tables

log = logging.getLogger(__name__)

# Tables return nothing a sweeper could optimize.
OPTIMIZED_METRIC = None


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    table = cfg.table
    target = Path(table.out_dir) if table.out_dir else Path(out_dir)
    summary = build_tables(table.roots, target, datasets=table.datasets,
                           experiments=table.experiments, methods=table.methods,
                           formats=table.formats)
    if summary["num_runs"] == 0:
        roots = ", ".join(str(r) for r in table.roots)
        print(f"No runs found under {roots}: the tables hold the paper's rows only. Run "
              "`python run.py` (or an experiment, or stage=score on a results file) first, or "
              "point table.roots=[<run or multirun folders>] at earlier runs.")
    for path in summary["files"]:
        if path.endswith(".md"):
            print(Path(path).read_text(encoding="utf-8"))
    log.info("tables from %d of %d runs found written to %s", summary["num_used"],
             summary["num_runs"], target)
    return summary
