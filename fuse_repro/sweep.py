"""Multirun bookkeeping: one summary CSV per sweep, and merging sharded caption files.

``SweepSummaryCallback`` is registered in ``conf/hydra/default.yaml``; at the end of a
``--multirun`` it walks the sweep folder and writes ``sweep_summary.csv`` with one row per
job (per ``metrics.json`` when a job wrote several): the job's overrides, its ``run_info.json``
labels and every metric, nested keys flattened with dots. It reads only files, so it works
the same for the basic launcher and for submitit jobs that ran on other machines, and
``write_sweep_summary`` can be rerun by hand on an old sweep folder.

``merge_shards`` joins the ``captions.jsonl`` of dataset shards (``dataset.subset.mode=shard``)
into one file ordered by id, so a sharded run scores exactly like an unsharded one.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fuse_repro.data import id_sort_key
from fuse_repro.tables import natural_key

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary.csv"


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


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
        info_path = job / "run_info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            base.update(flatten(info, "run_info"))
        others = [j for j in jobs if j != job and job in j.parents]  # nested jobs are their own
        metric_files = sorted(
            (p for p in job.rglob("metrics.json")
             if ".hydra" not in p.parts and not any(o in p.parents for o in others)),
            key=lambda p: natural_key(p.relative_to(job).as_posix()))
        if not metric_files:
            rows.append({k: _cell(v) for k, v in {**base, "status": "no metrics.json"}.items()})
            continue
        for path in metric_files:
            row = dict(base)
            row["status"] = "ok"
            row["metrics_file"] = path.relative_to(job).as_posix()
            row.update(flatten(json.loads(path.read_text(encoding="utf-8"))))
            rows.append({k: _cell(v) for k, v in row.items()})
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
    _write_atomic(path, buf.getvalue())
    return path


class SweepSummaryCallback(Callback):
    """Hydra callback: write ``sweep_summary.csv`` into the sweep folder after a multirun."""

    def __init__(self, filename: str = SUMMARY_NAME) -> None:
        self.filename = filename

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("sweep summary skipped: sweep folder %s not found", sweep_dir)
            return
        path = write_sweep_summary(sweep_dir, sweep_dir / self.filename)
        log.info("sweep summary written to %s", path)


# --------------------------------------------------------------------------------------------
# shards


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their captions.jsonl) and glob patterns, in the order given."""
    out: list[Path] = []
    for entry in paths:
        text = str(entry)
        matches = sorted(glob.glob(text), key=natural_key) if glob.has_magic(text) else [text]
        if not matches:
            raise FileNotFoundError(f"no shard files match {text!r}")
        found = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                p = p / "captions.jsonl"
            elif glob.has_magic(text) and p.suffix != ".jsonl":
                continue  # a sweep folder's multirun.yaml, sweep_summary.csv, logs ...
            if glob.has_magic(text) and not p.is_file():
                continue  # a folder of the sweep that is not a caption job
            if not p.is_file():
                raise FileNotFoundError(f"shard captions file {str(p)!r} not found")
            found.append(p)
        if not found:
            raise FileNotFoundError(f"no shard captions.jsonl among the matches of {text!r}")
        out.extend(found)
    return out


def merge_shards(paths: Sequence[str | Path], out: str | Path) -> list[dict[str, Any]]:
    """Join shard ``captions.jsonl`` files into ``out``; returns the merged rows.

    Rows are keyed by (id, method). A key seen twice with the same caption is kept once (the
    first copy: timings may differ between reruns); with different captions it is an error,
    since there is no right one to keep. Output is sorted by id (numeric ids numerically), then
    method, with sorted JSON keys, so merged shards equal one unsharded run line for line.
    """
    from fuse_repro.scoring import read_captions_rows

    files = _expand(paths)
    if not files:
        raise ValueError("merge_shards needs at least one shard file")
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    origin: dict[tuple[str, str], Path] = {}
    for path in files:
        for row in read_captions_rows(path):
            row = dict(row)
            row["id"] = str(row["id"])
            key = (row["id"], "" if row.get("method") is None else str(row["method"]))
            if key in merged:
                if merged[key]["caption"] != row["caption"]:
                    raise ValueError(
                        f"conflicting captions for id {key[0]!r}"
                        f"{f' (method {key[1]!r})' if key[1] else ''}: "
                        f"{merged[key]['caption']!r} in {origin[key]} vs {row['caption']!r} "
                        f"in {path}")
                continue
            merged[key] = row
            origin[key] = path
    ordered = [merged[k] for k in sorted(merged, key=lambda k: (id_sort_key(k[0]), k[1]))]
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in ordered)
    _write_atomic(Path(out), text)
    return ordered


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
