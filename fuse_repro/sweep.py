"""Multirun bookkeeping: one summary CSV per sweep, and the list of jobs that failed.

``SweepSummaryCallback`` is registered in ``conf/hydra/default.yaml``; at the end of a
``--multirun`` it walks the sweep folder and writes ``sweep_summary.csv`` with one row per
job (per ``metrics.json`` when a job wrote several; a caption job's ``objective.json``, its mean
losses as ``objective.*``): the job's overrides, its ``run_info.json`` labels and every metric,
nested keys flattened with dots. It reads only files, so it works
the same for the basic launcher and for submitit jobs that ran on other machines, and
``write_sweep_summary`` can be rerun by hand on an old sweep folder.

At the end of a multirun the callback also fills ``FAILED_JOBS`` from the jobs' ``run_info.json``
(``status`` failed, interrupted, or still running); ``run.py`` then exits non-zero naming them.
Merging shard captions lives in ``records.merge_captions`` (``stage=merge``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fuse_repro.records import OBJECTIVE_NAME, RUN_INFO_NAME, natural_key, write_text
from fuse_repro.table_render import format_cell

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary.csv"
# "<job> (<overrides>): <error>" for every job of the last multirun that did not finish.
FAILED_JOBS: list[str] = []


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2, 3]}`` -> ``{"a.b": 1, "c.0": 2, "c.1": 3}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        if not obj and prefix:
            out[prefix] = ""
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, (list, tuple)):
        if not obj and prefix:
            out[prefix] = ""
        for idx, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}.{idx}" if prefix else str(idx)))
    else:
        out[prefix] = obj
    return out


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Folders holding ``.hydra/overrides.yaml`` (one per job), in natural order."""
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(dirs, key=lambda d: natural_key(d.relative_to(sweep_dir).as_posix()))


def _overrides(job_dir: Path) -> list[str]:
    loaded = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    return [str(o) for o in loaded] if loaded is not None else []


def summary_rows(sweep_dir: str | Path) -> list[dict[str, str]]:
    """One row per job metrics file under ``sweep_dir`` (a job without one gets a row too)."""
    root = Path(sweep_dir)
    jobs = _job_dirs(root)
    rows: list[dict[str, str]] = []
    for job in jobs:
        overrides = _overrides(job)
        base: dict[str, Any] = {"job": job.relative_to(root).as_posix(),
                                "overrides": " ".join(overrides)}
        for item in overrides:
            key, sep, value = item.partition("=")
            base[f"override.{key}"] = value if sep else ""
        info_path = job / RUN_INFO_NAME
        failure = None
        if info_path.is_file():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            base.update(flatten(info, "run_info"))
            failure = job_failure(info)
        others = [j for j in jobs if j != job and job in j.parents]  # nested jobs are their own
        # metrics.json files; a caption folder without one (stage=caption) gives its
        # objective.json (the mean losses) instead
        found = [p for p in job.rglob("metrics.json") if ".hydra" not in p.parts]
        found += [p for p in job.rglob(OBJECTIVE_NAME)
                  if ".hydra" not in p.parts and not (p.parent / "metrics.json").is_file()]
        metric_files = sorted(
            (p for p in found if not any(o in p.parents for o in others)),
            key=lambda p: natural_key(p.relative_to(job).as_posix()))
        if failure is not None:
            rows.append({k: format_cell(v) for k, v in {**base, "status": failure}.items()})
            continue
        if not metric_files:
            status = "finished, no metrics.json" if info_path.is_file() else "no metrics.json"
            rows.append({k: format_cell(v) for k, v in {**base, "status": status}.items()})
            continue
        for path in metric_files:
            row = dict(base)
            row["status"] = "ok"
            row["metrics_file"] = path.relative_to(job).as_posix()
            values = json.loads(path.read_text(encoding="utf-8"))
            row.update(flatten(values, "objective" if path.name == OBJECTIVE_NAME else ""))
            rows.append({k: format_cell(v) for k, v in row.items()})
    return rows


def write_sweep_summary(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the summary CSV (default ``<sweep_dir>/sweep_summary.csv``); returns its path.

    Columns: job, status, metrics_file, overrides, then ``override.*``, ``run_info.*`` and
    metric columns, each group sorted, so two summaries of the same sweep are identical.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder {str(root)!r} does not exist")
    rows = summary_rows(root)
    fixed = ["job", "status", "metrics_file", "overrides"]
    keys = sorted({k for r in rows for k in r} - set(fixed))
    overrides = [k for k in keys if k.startswith("override.")]
    info = [k for k in keys if k.startswith("run_info.")]
    rest = [k for k in keys if k not in overrides and k not in info]
    header = fixed + overrides + info + rest
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out) if out is not None else root / SUMMARY_NAME
    write_text(path, buf.getvalue())
    return path


def job_failure(info: Mapping[str, Any]) -> str | None:
    """Why a job did not finish, from its run_info.json (None when it finished)."""
    status = info.get("status")
    if status in (None, "finished"):
        return None
    if status == "running":
        return "failed: it stopped without recording an end (killed?)"
    return f"{status}: {info.get('error', '')}".rstrip(": ")


def failed_jobs(sweep_dir: str | Path) -> list[str]:
    """``"<job> (<overrides>): <why>"`` for every job of the sweep that did not finish."""
    root = Path(sweep_dir)
    out = []
    for job in _job_dirs(root):
        info_path = job / RUN_INFO_NAME
        if not info_path.is_file():
            continue
        why = job_failure(json.loads(info_path.read_text(encoding="utf-8")))
        if why is not None:
            why = why.removeprefix("failed: ")
            out.append(f"{job.relative_to(root).as_posix()} ({' '.join(_overrides(job))}): {why}")
    return out


class SweepSummaryCallback(Callback):
    """Hydra callback: write ``sweep_summary.csv`` into the sweep folder after a multirun."""

    def __init__(self, filename: str = SUMMARY_NAME) -> None:
        self.filename = filename

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("sweep summary skipped: sweep folder %s not found", sweep_dir)
            return
        FAILED_JOBS[:] = failed_jobs(sweep_dir)
        path = write_sweep_summary(sweep_dir, sweep_dir / self.filename)
        log.info("sweep summary written to %s", path)
