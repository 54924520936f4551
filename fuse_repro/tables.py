"""Regenerate the paper's Tables 1 and 2, and our offline COCO text-target table, from saved
``metrics.json`` files.

Tables are built from files only (never from a dashboard), so anyone holding the output
folders can rebuild them. Every ``metrics.json`` under the given roots is one run; its labels
come from, in order:

1. ``run_info.json`` beside the metrics file or in a parent run folder
   (``{experiment, config_hash, method?, dataset?, source?, label?}``; ``run.py`` writes it);
2. the run folder's ``.hydra/config.yaml`` (``experiment_name``, ``dataset.name``,
   ``search.method``; the hash is recomputed from it);
3. ``metrics.json`` itself (``dataset.name``, ``method``, ``label``).

Rows: the paper's figures; external systems (a published results file scored with
``stage=score scoring.label=<system>``), one row per label, marked "external"; ours, keyed by
(experiment, method). A row takes each dataset's columns from the run of that dataset. When
several runs fill the same cell, the one whose folder path sorts last wins (run folders are named
by time, so that is the newest) and the others are listed in the notes. ``runs.md`` lists every
run found and, for each one no table shows, why. Values are shown x100 (pycocoevalcap's 0-1
scores, sentiment accuracy as a percentage).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_repro.errors import ConfigError, closest, use_one_of
from fuse_repro.records import (
    CAPTIONS_NAME,
    RUN_INFO_NAME,
    natural_key,
    read_provenance,
    read_run_info,
    write_text,
)
from fuse_repro.table_render import (
    DEFAULT_DATASETS,
    FORMATS,
    MISSING,
    Column,
    Row,
    format_cell,
    format_value,
    render_csv,
    render_latex,
    render_markdown,
)
from fuse_repro.weights_label import record_is_random

log = logging.getLogger(__name__)

__all__ = [
    "MISSING",
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "TABLES",
    "Column",
    "Row",
    "build_tables",
    "collect_runs",
    "format_value",
]

# Paper figures, Williams & Kolter, "FUSE" (arXiv 2408.04816), Table 1 (zero-shot rows:
# MS-COCO Karpathy test B-4, METEOR, CIDEr, SPICE; NoCaps-val overall CIDEr, SPICE) and
# Table 2 (SentiCap zero-shot rows: B-3, METEOR, accuracy % per sentiment). Copied from
# ../shared/notes/method.md "Paper figures to compare with", which quotes the paper.
PAPER_TABLE1: tuple[dict[str, Any], ...] = (
    {"method": "ZeroCap (Tewel et al., 2022)", "coco_B4": 2.60, "coco_M": 11.50,
     "coco_C": 14.60, "coco_S": 5.50, "nocaps_C": None, "nocaps_S": None},
    {"method": "ConZIC (Zeng et al., 2023)", "coco_B4": 1.29, "coco_M": 11.23,
     "coco_C": 13.26, "coco_S": 5.01, "nocaps_C": None, "nocaps_S": None},
    {"method": "FUSE (GPT2-M + ViT-B/32)", "coco_B4": 1.59, "coco_M": 14.72,
     "coco_C": 15.93, "coco_S": 9.15, "nocaps_C": 20.65, "nocaps_S": 6.64},
)
PAPER_TABLE2: tuple[dict[str, Any], ...] = (
    {"method": "ConZIC (Zeng et al., 2023)", "pos_B3": 1.89, "pos_M": 5.39, "pos_Acc": 97.2,
     "neg_B3": 1.78, "neg_M": 5.54, "neg_Acc": 99.1},
    {"method": "FUSE (GPT2-M + ViT-B/32 + RoBERTa)", "pos_B3": 1.91, "pos_M": 10.40,
     "pos_Acc": 83.8, "neg_B3": 2.29, "neg_M": 7.42, "neg_Acc": 85.6},
)


TABLE1_COLUMNS = (
    Column("coco_B4", "MS-COCO", "B-4", "coco", ("metrics", "Bleu_4")),
    Column("coco_M", "MS-COCO", "M", "coco", ("metrics", "METEOR")),
    Column("coco_C", "MS-COCO", "C", "coco", ("metrics", "CIDEr")),
    Column("coco_S", "MS-COCO", "S", "coco", ("metrics", "SPICE")),
    Column("nocaps_C", "NoCaps-val (overall)", "C", "nocaps", ("metrics", "CIDEr")),
    Column("nocaps_S", "NoCaps-val (overall)", "S", "nocaps", ("metrics", "SPICE")),
)
TABLE2_COLUMNS = (
    Column("pos_B3", "Positive", "B-3", "senticap_positive", ("metrics", "Bleu_3")),
    Column("pos_M", "Positive", "M", "senticap_positive", ("metrics", "METEOR")),
    Column("pos_Acc", "Positive", "Acc", "senticap_positive", ("sentiment", "accuracy"), 1),
    Column("neg_B3", "Negative", "B-3", "senticap_negative", ("metrics", "Bleu_3")),
    Column("neg_M", "Negative", "M", "senticap_negative", ("metrics", "METEOR")),
    Column("neg_Acc", "Negative", "Acc", "senticap_negative", ("sentiment", "accuracy"), 1),
)
# Our offline stand-in for Table 1 (README: experiment=coco_text_targets): COCO Karpathy test
# images, one human caption as the MiniLM text target, the other captions as references.
COCO_TEXT_COLUMNS = (
    Column("ct_B1", "COCO text targets", "B-1", "coco_text", ("metrics", "Bleu_1")),
    Column("ct_B4", "COCO text targets", "B-4", "coco_text", ("metrics", "Bleu_4")),
    Column("ct_M", "COCO text targets", "M", "coco_text", ("metrics", "METEOR")),
    Column("ct_R", "COCO text targets", "R-L", "coco_text", ("metrics", "ROUGE_L")),
    Column("ct_C", "COCO text targets", "C", "coco_text", ("metrics", "CIDEr")),
)
TABLES = {
    "table1": ("Table 1: zero-shot captioning, MS-COCO Karpathy test and NoCaps-val",
               TABLE1_COLUMNS, PAPER_TABLE1),
    "table2": ("Table 2: zero-shot captioning with sentiment, SentiCap test",
               TABLE2_COLUMNS, PAPER_TABLE2),
    "table_coco_text": ("Offline stand-in for Table 1: COCO Karpathy test with one human caption "
                        "as the text target, the others as references (no paper figures)",
                        COCO_TEXT_COLUMNS, ()),
}


@dataclass
class RunRecord:
    """One metrics.json with the labels of the run that produced it."""

    metrics_dir: Path
    relpath: str  # metrics_dir relative to its root (stable across machines)
    experiment: str
    config_hash: str
    method: str | None
    dataset: str | None
    metrics: dict[str, Any] = field(repr=False)
    source: str = "ours"  # or "external": a published system's results, scored by us
    label: str | None = None  # the external system's name
    problem: str | None = None  # why this metrics.json cannot be used at all


# --------------------------------------------------------------------------------------------
# collecting runs


def _find_upwards(start: Path, root: Path, relative: str) -> Path | None:
    """The nearest ``relative`` file in ``start`` or its parents, not above ``root``."""
    current = start
    while True:
        candidate = current / relative
        if candidate.is_file():
            return candidate
        if current == root or current.parent == current:
            return None
        current = current.parent


def _hydra_labels(config_yaml: Path) -> dict[str, Any]:
    """experiment_name, dataset.name, search.method and the run hash from a saved config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_yaml)
    labels: dict[str, Any] = {
        "experiment": OmegaConf.select(cfg, "experiment_name", default=None),
        "weights": OmegaConf.select(cfg, "weights", default=None),
        "dataset": OmegaConf.select(cfg, "dataset.name", default=None),
        "method": OmegaConf.select(cfg, "search.method", default=None),
    }
    try:
        from fuse_repro.config import run_config_hash, validate

        labels["config_hash"] = run_config_hash(validate(cfg, output_dir=str(config_yaml.parents[1])))
    except Exception:  # noqa: BLE001 - unresolvable interpolations outside that run's machine
        from fuse_repro.config import RUN_HASH_EXCLUDE, stable_hash

        plain = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(plain, dict)
        labels["config_hash"] = stable_hash(
            {k: v for k, v in plain.items() if k not in RUN_HASH_EXCLUDE})
    return labels


def _first(*values: Any) -> Any:
    for v in values:
        if v not in (None, ""):
            return v
    return None


def collect_runs(roots: Sequence[str | Path]) -> list[RunRecord]:
    """Every ``metrics.json`` under ``roots`` (recursively), labelled; sorted by path. A file
    that cannot be read is kept with its ``problem`` (the run listing shows it)."""
    records: list[RunRecord] = []
    for root_like in roots:
        root = Path(root_like)
        if not root.exists():
            raise ConfigError(f"table root {str(root)!r} does not exist; set table.roots to run "
                              "or multirun folders")
        for metrics_path in sorted(root.rglob("metrics.json")):
            if ".hydra" in metrics_path.parts:
                continue
            run_dir = metrics_path.parent
            rel = run_dir.relative_to(root).as_posix()
            relpath = root.name if rel == "." else f"{root.name}/{rel}"
            problem = None
            try:
                metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
                if not isinstance(metrics, dict):
                    problem, metrics = "metrics.json is not a JSON object", {}
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problem, metrics = f"metrics.json is not valid JSON ({exc})", {}
            info_path = _find_upwards(run_dir, root, RUN_INFO_NAME)
            info = read_run_info(info_path) if info_path is not None else {}
            cfg_path = _find_upwards(run_dir, root, ".hydra/config.yaml")
            hydra = _hydra_labels(cfg_path) if cfg_path is not None else {}
            if problem is None and record_is_random(metrics, info, hydra):
                problem = "random weights (weights=random): its scores are not results"
            ds = metrics.get("dataset")
            ds_name = ds.get("name") if isinstance(ds, dict) else None
            label = _first(metrics.get("label"), info.get("label"))
            external = "external" in (metrics.get("source"), info.get("source"))
            records.append(RunRecord(
                metrics_dir=run_dir,
                relpath=relpath,
                experiment=str(_first(info.get("experiment"), hydra.get("experiment"),
                                      "unknown")),
                config_hash=str(_first(info.get("config_hash"), hydra.get("config_hash"),
                                       "unknown")),
                # a scoring run's own search.method says nothing about who wrote the captions
                method=_first(label if external else None, info.get("method"),
                              metrics.get("method"),
                              None if info.get("stage") == "score" else hydra.get("method")),
                dataset=_first(info.get("dataset"), ds_name, hydra.get("dataset")),
                metrics=metrics,
                source="external" if external else "ours",
                label=str(label) if external and label else None,
                problem=problem,
            ))
    return records


def caption_only_runs(roots: Sequence[str | Path],
                      records: Sequence[RunRecord]) -> list[RunRecord]:
    """Caption folders under ``roots`` with no ``metrics.json`` of their own (``stage=caption``
    runs), for the run listing: each says where it was scored, or the command that scores it."""
    scored: dict[str, list[str]] = {}
    for rec in records:
        run = rec.metrics.get("captions_run")
        if isinstance(run, str):
            scored.setdefault(str(Path(run).resolve()), []).append(rec.relpath)
    found: list[RunRecord] = []
    for root_like in roots:
        root = Path(root_like)
        for captions in sorted(root.rglob(CAPTIONS_NAME)):
            folder = captions.parent
            if ".hydra" in captions.parts or (folder / "metrics.json").is_file():
                continue
            rel = folder.relative_to(root).as_posix()
            info_path = _find_upwards(folder, root, RUN_INFO_NAME)
            try:
                info = read_run_info(info_path) if info_path is not None else {}
                fields = (read_provenance(folder) or {}).get("fields") or {}
            except (ValueError, OSError):  # unreadable bookkeeping: still listed
                info, fields = {}, {}
            by = scored.get(str(folder.resolve()))
            problem = (f"captions only; scored in {', '.join(by)}" if by else
                       "captions only, not scored: python run.py stage=score "
                       f"scoring.captions={captions}")
            found.append(RunRecord(
                metrics_dir=folder, relpath=root.name if rel == "." else f"{root.name}/{rel}",
                experiment=str(info.get("experiment") or "unknown"),
                config_hash=str(info.get("config_hash") or "unknown"),
                method=_first(info.get("method"), fields.get("search.method")),
                dataset=_first(info.get("dataset"), fields.get("dataset.name")),
                metrics={}, problem=problem))
    return found


# --------------------------------------------------------------------------------------------
# rows


def _lookup(metrics: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


def _coverage(metrics: Mapping[str, Any]) -> str | None:
    """``"<captions>/<items>"`` when a run scored fewer captions than its dataset has items
    (``scoring.allow_missing``), else None."""
    n, total = metrics.get("num_captions"), metrics.get("num_items")
    if isinstance(n, int) and isinstance(total, int) and n < total:
        return f"{n}/{total}"
    return None


def _row_values(row: Row, columns: Sequence[Column], chosen: Mapping[str, RunRecord]) -> Row:
    for col in columns:
        rec = chosen.get(col.role)
        value = _lookup(rec.metrics, col.path) if rec is not None else None
        row.values[col.key] = None if value is None else 100.0 * value
    for col in columns:  # hashes and runs in column order, one per role
        if col.role in chosen and col.role not in row.hashes:
            row.hashes[col.role] = chosen[col.role].config_hash
            row.runs[col.role] = chosen[col.role].relpath
            covered = _coverage(chosen[col.role].metrics)
            if covered is not None:
                row.coverage[col.role] = covered
    return row


def our_rows(
    records: Sequence[RunRecord], columns: Sequence[Column], datasets: Mapping[str, Sequence[str]],
    experiments: Sequence[str] | None = None, methods: Sequence[str] | None = None,
    used: dict[str, str] | None = None,
) -> tuple[list[Row], list[str]]:
    """Rows for our runs (one per experiment and method) and the external systems' results
    (one per label), with notes on superseded runs. ``used`` collects, per run, the row that
    shows it (or the run that superseded it)."""
    roles = {c.role for c in columns}
    role_of = {name: role for role, names in datasets.items() for name in names if role in roles}
    cells: dict[tuple[str, str, str], dict[str, list[RunRecord]]] = {}
    for rec in records:
        if rec.problem is not None or rec.dataset not in role_of:
            continue
        if rec.source == "ours" and experiments is not None and rec.experiment not in experiments:
            continue
        if rec.source == "ours" and methods is not None and rec.method not in methods:
            continue
        key = ((0, rec.label or "", "") if rec.source == "external"
               else (1, rec.experiment, rec.method or ""))
        cells.setdefault(key, {}).setdefault(role_of[rec.dataset], []).append(rec)
    rows: list[Row] = []
    notes: list[str] = []
    for (kind, first, method), by_role in sorted(cells.items()):
        row = (Row(method=first, source="external", values={}) if kind == 0
               else Row(method=method, source="ours", values={}, experiment=first))
        chosen: dict[str, RunRecord] = {}
        for role, recs in sorted(by_role.items()):
            recs = sorted(recs, key=lambda r: natural_key(r.relpath))
            chosen[role] = recs[-1]
            if used is not None:
                used[recs[-1].relpath] = f"row {row.label()!r}"
            for old in recs[:-1]:
                notes.append(f"{row.label()}: {role} run {old.relpath} superseded by "
                             f"{recs[-1].relpath}")
                if used is not None:
                    used.setdefault(old.relpath, f"superseded by {recs[-1].relpath}")
        rows.append(_row_values(row, columns, chosen))
    return rows, notes


def paper_rows(figures: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> list[Row]:
    return [Row(method=str(f["method"]), source="paper",
                values={c.key: f.get(c.key) for c in columns}) for f in figures]


# --------------------------------------------------------------------------------------------
# the run listing


def left_out_reason(rec: RunRecord, datasets: Mapping[str, Sequence[str]],
                    experiments: Sequence[str] | None, methods: Sequence[str] | None) -> str:
    """Why no table shows ``rec``."""
    if rec.problem is not None:
        return rec.problem
    if rec.dataset is None:
        return "no dataset name (neither run_info.json, metrics.json nor .hydra names one)"
    if not any(rec.dataset in names for names in datasets.values()):
        return (f"dataset {rec.dataset!r} is in no table (table.datasets maps "
                f"{sorted(n for names in datasets.values() for n in names)})")
    if rec.source == "ours" and experiments is not None and rec.experiment not in experiments:
        return f"experiment {rec.experiment!r} not in table.experiments"
    if rec.source == "ours" and methods is not None and rec.method not in methods:
        return f"method {rec.method!r} not in table.methods"
    return "not placed in any table"


def render_runs(records: Sequence[RunRecord], shown: Mapping[str, list[str]],
                reasons: Mapping[str, str]) -> str:
    """Markdown list of every run found: where it is shown, or why it is left out."""
    lines = [f"**Runs found: {len(records)}; in a table: {len(shown)}; left out: "
             f"{len(records) - len(shown)}**", "",
             "| run | experiment | method | dataset | source | shown in / left out because |",
             "|---|---|---|---|---|---|"]
    for rec in records:
        where = "; ".join(shown[rec.relpath]) if rec.relpath in shown else \
            "left out: " + reasons[rec.relpath]
        cells = [rec.relpath, rec.experiment, rec.method or MISSING, rec.dataset or MISSING,
                 rec.label and f"external ({rec.label})" or rec.source, where]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def build_tables(
    roots: Sequence[str | Path], out_dir: str | Path,
    datasets: Mapping[str, Sequence[str]] | None = None,
    experiments: Sequence[str] | None = None, methods: Sequence[str] | None = None,
    formats: Sequence[str] = FORMATS,
) -> dict[str, Any]:
    """Write ``<table>.{md,tex,csv}`` for every table in ``TABLES`` and ``runs.md``; return
    the paths, row counts and the run listing.

    ``datasets`` maps a role (coco, nocaps, senticap_positive, senticap_negative, coco_text) to
    the dataset names (``dataset.name``) that fill it (default ``DEFAULT_DATASETS``).
    """
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ConfigError(f"unknown table formats {bad}; known: {list(FORMATS)}; "
                          f"{use_one_of('table.formats', FORMATS, bad[0], in_list=True)}")
    given = dict(datasets or {})
    unknown_roles = sorted(set(given) - set(DEFAULT_DATASETS))
    if unknown_roles:
        known = sorted(DEFAULT_DATASETS)
        pick = closest(unknown_roles[0], known) or known[0]
        raise ConfigError(f"unknown table.datasets roles {unknown_roles}; known: {known}; use "
                          f"one of them, e.g. table.datasets.{pick}=[<dataset names>]")
    roles = {role: [names] if isinstance(names, str) else list(names)
             for role, names in (given if datasets is not None else DEFAULT_DATASETS).items()}
    records = collect_runs(roots)
    out = Path(out_dir)
    summary: dict[str, Any] = {"num_runs": len(records), "files": [], "rows": {}}
    shown: dict[str, list[str]] = {}
    superseded: dict[str, str] = {}
    for name, (title, columns, figures) in TABLES.items():
        used: dict[str, str] = {}
        ours, notes = our_rows(records, columns, roles, experiments, methods, used)
        for run, where in used.items():
            if where.startswith("row "):
                shown.setdefault(run, []).append(f"{name} {where}")
            else:
                superseded.setdefault(run, where)
        rows = paper_rows(figures, columns) + ours
        texts = {"md": render_markdown(title, columns, rows, notes),
                 "tex": render_latex(title, columns, rows),
                 "csv": render_csv(columns, rows)}
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            write_text(path, texts[fmt])
            summary["files"].append(str(path))
        summary["rows"][name] = len(ours)
    records = [*records, *caption_only_runs(roots, records)]
    summary["num_runs"] = len(records)
    reasons = {rec.relpath: superseded.get(rec.relpath) or
               left_out_reason(rec, roles, experiments, methods)
               for rec in records if rec.relpath not in shown}
    runs_path = write_text(out / "runs.md", render_runs(records, shown, reasons))
    summary["files"].append(str(runs_path))
    summary["num_used"] = len(shown)
    summary["runs"] = [{"run": r.relpath, "shown_in": shown.get(r.relpath, []),
                        "left_out": reasons.get(r.relpath)} for r in records]
    return summary


# --------------------------------------------------------------------------------------------
# the pipeline's comparison table (one run, every method): table.md and table.csv

# (column title, metrics.json key), in table order; then similarity, LM NLL and objective means.
METHOD_COLUMNS = (
    ("B-1", "Bleu_1"),
    ("B-4", "Bleu_4"),
    ("METEOR", "METEOR"),
    ("ROUGE-L", "ROUGE_L"),
    ("CIDEr", "CIDEr"),
)


def method_table(rows: Sequence[Mapping[str, Any]],
                 similarity_key: str | None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison table: every method's caption metrics (x100) and
    objective means. A row is ``{method, label?, metrics (metrics.json), objective (means)}``;
    its ``label`` (e.g. "fuse (random weights)") names it when present."""
    headers = ["method"] + [c for c, _ in METHOD_COLUMNS]
    if similarity_key:
        headers.append("similarity (cos)")
    headers += ["LM NLL", "objective"]
    table = []
    for row in rows:
        metrics = row["metrics"].get("metrics", {})
        cells = [row.get("label", row["method"])]
        for _, key in METHOD_COLUMNS:
            value = metrics.get(key)
            shown = float(100 * value) if isinstance(value, (int, float)) else None
            cells.append(format_cell(shown, 2, MISSING))
        if similarity_key:
            cells.append(format_cell(row["objective"][similarity_key], 4))
        cells.append(format_cell(row["objective"]["mean_lm"], 3))
        cells.append(format_cell(row["objective"]["mean_objective"], 4))
        table.append(cells)
    return headers, table


def write_method_table(rows: Sequence[Mapping[str, Any]], similarity_key: str | None,
                       out_dir: Path, note: str | None = None) -> Path:
    """``table.md`` and ``table.csv`` of a pipeline run (``method_table``); ``note`` is a line
    above the markdown table (a random-weight run's warning). Returns the markdown's path."""
    headers, table = method_table(rows, similarity_key)
    md = [note, ""] if note else []
    md += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in table]
    buf = io.StringIO()
    writer = csv.writer(buf)  # the csv module's own "\r\n" line ends, as table.csv always had
    writer.writerow(headers)
    writer.writerows(table)
    write_text(out_dir / "table.csv", buf.getvalue())
    return write_text(out_dir / "table.md", "\n".join(md) + "\n")
