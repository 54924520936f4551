"""Regenerate the paper's Tables 1 and 2 from saved ``metrics.json`` files.

Tables are built from files only (never from a dashboard), so anyone holding the output
folders can rebuild them. Every ``metrics.json`` under the given roots is one run; its labels
come from, in order:

1. ``run_info.json`` beside the metrics file or in a parent run folder
   (``{experiment, config_hash, method?, dataset?}``; ``run.py`` writes it);
2. the run folder's ``.hydra/config.yaml`` (``experiment_name``, ``dataset.name``,
   ``search.method``; the hash is recomputed from it);
3. ``metrics.json`` itself (``dataset.name``, ``method``).

Our rows are keyed by (experiment, method); a row takes each dataset's columns from the run of
that dataset. When several runs fill the same cell, the one whose folder path sorts last wins
(run folders are named by time, so that is the newest) and the others are listed in the notes.
Values are shown x100 (pycocoevalcap's 0-1 scores, sentiment accuracy as a percentage).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MISSING = "–"  # shown for cells without a value (LaTeX gets "--", which typesets as "–")

# Paper figures, Williams & Kolter, "FUSE" (arXiv 2408.04816), Table 1 (zero-shot rows:
# MS-COCO Karpathy test B-4, METEOR, CIDEr, SPICE; NoCaps-val overall CIDEr, SPICE) and
# Table 2 (SentiCap zero-shot rows: B-3, METEOR, accuracy % per sentiment). Copied from
# /work/shared/notes/method.md "Paper figures to compare with", which quotes the paper.
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


@dataclass(frozen=True)
class Column:
    """One table column: which dataset role and which value of its metrics.json it shows."""

    key: str
    group: str  # header of the column group (dataset)
    header: str  # metric header
    role: str  # dataset role: coco, nocaps, senticap_positive, senticap_negative
    path: tuple[str, ...]  # where the 0-1 value sits in metrics.json
    decimals: int = 2


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
TABLES = {
    "table1": ("Table 1: zero-shot captioning, MS-COCO Karpathy test and NoCaps-val",
               TABLE1_COLUMNS, PAPER_TABLE1),
    "table2": ("Table 2: zero-shot captioning with sentiment, SentiCap test",
               TABLE2_COLUMNS, PAPER_TABLE2),
}
DEFAULT_DATASETS: dict[str, list[str]] = {
    "coco": ["coco_karpathy"],
    "nocaps": ["nocaps_val"],
    "senticap_positive": ["senticap_positive"],
    "senticap_negative": ["senticap_negative"],
}
FORMATS = ("md", "tex", "csv")


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


# --------------------------------------------------------------------------------------------
# collecting runs


def read_run_info(path: str | Path) -> dict[str, Any]:
    """``run_info.json``: ``{experiment, config_hash, method?, dataset?}`` (extra keys kept)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: run_info.json must be a JSON object, got {type(data).__name__}")
    return data


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
        "dataset": OmegaConf.select(cfg, "dataset.name", default=None),
        "method": OmegaConf.select(cfg, "search.method", default=None),
    }
    try:
        from fuse_repro.config import run_config_hash

        labels["config_hash"] = run_config_hash(cfg)
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
    """Every ``metrics.json`` under ``roots`` (recursively), labelled; sorted by path."""
    records: list[RunRecord] = []
    for root_like in roots:
        root = Path(root_like)
        if not root.exists():
            raise FileNotFoundError(f"table root {str(root)!r} does not exist")
        for metrics_path in sorted(root.rglob("metrics.json")):
            if ".hydra" in metrics_path.parts:
                continue
            try:
                metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{metrics_path}: not valid JSON ({exc})") from exc
            if not isinstance(metrics, dict):
                raise ValueError(f"{metrics_path}: expected a JSON object")
            run_dir = metrics_path.parent
            info_path = _find_upwards(run_dir, root, "run_info.json")
            info = read_run_info(info_path) if info_path is not None else {}
            cfg_path = _find_upwards(run_dir, root, ".hydra/config.yaml")
            hydra = _hydra_labels(cfg_path) if cfg_path is not None else {}
            ds = metrics.get("dataset")
            ds_name = ds.get("name") if isinstance(ds, dict) else None
            rel = run_dir.relative_to(root).as_posix()
            records.append(RunRecord(
                metrics_dir=run_dir,
                relpath=root.name if rel == "." else f"{root.name}/{rel}",
                experiment=str(_first(info.get("experiment"), hydra.get("experiment"),
                                      "unknown")),
                config_hash=str(_first(info.get("config_hash"), hydra.get("config_hash"),
                                       "unknown")),
                method=_first(info.get("method"), metrics.get("method"), hydra.get("method")),
                dataset=_first(info.get("dataset"), ds_name, hydra.get("dataset")),
                metrics=metrics,
            ))
    return records


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


def natural_key(text: str) -> list[Any]:
    """Sort key treating digit runs as numbers, so job folder 10 sorts after job folder 9."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text) if part]


def format_value(value: float | None, decimals: int) -> str:
    """A cell's text: fixed decimals, or the missing mark."""
    return MISSING if value is None else f"{value:.{decimals}f}"


@dataclass
class Row:
    """One table row; ``values`` hold the displayed scale (x100)."""

    method: str
    source: str  # "paper" or "ours"
    values: dict[str, float | None]
    experiment: str = ""
    hashes: dict[str, str] = field(default_factory=dict)  # role -> config hash
    runs: dict[str, str] = field(default_factory=dict)  # role -> run folder (relative)

    def label(self) -> str:
        if self.source == "paper":
            return self.method
        return f"{self.experiment} [{self.method}]" if self.method else self.experiment

    def hash_label(self, short: bool = True) -> str:
        values = []
        for h in self.hashes.values():
            text = h[:8] if short else h
            if text not in values:
                values.append(text)
        return ", ".join(values)


def our_rows(
    records: Sequence[RunRecord], columns: Sequence[Column], datasets: Mapping[str, Sequence[str]],
    experiments: Sequence[str] | None = None, methods: Sequence[str] | None = None,
) -> tuple[list[Row], list[str]]:
    """Rows for our runs (one per experiment and method) and notes on superseded runs."""
    roles = {c.role for c in columns}
    role_of = {name: role for role, names in datasets.items() for name in names if role in roles}
    cells: dict[tuple[str, str], dict[str, list[RunRecord]]] = {}
    for rec in records:
        if rec.dataset not in role_of:
            continue
        if experiments is not None and rec.experiment not in experiments:
            continue
        if methods is not None and rec.method not in methods:
            continue
        key = (rec.experiment, rec.method or "")
        cells.setdefault(key, {}).setdefault(role_of[rec.dataset], []).append(rec)
    rows: list[Row] = []
    notes: list[str] = []
    for (experiment, method), by_role in sorted(cells.items()):
        row = Row(method=method, source="ours", values={}, experiment=experiment)
        chosen: dict[str, RunRecord] = {}
        for role, recs in sorted(by_role.items()):
            recs = sorted(recs, key=lambda r: natural_key(r.relpath))
            chosen[role] = recs[-1]
            for old in recs[:-1]:
                notes.append(f"{row.label()}: {role} run {old.relpath} superseded by "
                             f"{recs[-1].relpath}")
        for col in columns:
            rec = chosen.get(col.role)
            value = _lookup(rec.metrics, col.path) if rec is not None else None
            row.values[col.key] = None if value is None else 100.0 * value
        for col in columns:  # hashes and runs in column order, one per role
            if col.role in chosen and col.role not in row.hashes:
                row.hashes[col.role] = chosen[col.role].config_hash
                row.runs[col.role] = chosen[col.role].relpath
        rows.append(row)
    return rows, notes


def paper_rows(figures: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> list[Row]:
    return [Row(method=str(f["method"]), source="paper",
                values={c.key: f.get(c.key) for c in columns}) for f in figures]


# --------------------------------------------------------------------------------------------
# rendering


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(title: str, columns: Sequence[Column], rows: Sequence[Row],
                    notes: Sequence[str] = ()) -> str:
    header = ["Method", "Source"] + [f"{c.group} {c.header}" for c in columns]
    lines = [f"**{title}** (x100; Acc in %)", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * len(columns)) + "|"]
    for row in rows:
        source = "paper" if row.source == "paper" else f"ours ({row.hash_label()})"
        cells = [_md_escape(row.label()), _md_escape(source)]
        cells += [format_value(row.values.get(c.key), c.decimals) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(title: str, columns: Sequence[Column], rows: Sequence[Row]) -> str:
    groups: list[tuple[str, int]] = []
    for c in columns:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    lines = [f"% {title} (x100; Acc in %). Generated by fuse_repro.tables from metrics.json.",
             r"\begin{tabular}{ll" + "r" * len(columns) + "}", r"\toprule",
             "Method & Source & " + " & ".join(
                 rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(g)}}}" for g, n in groups) + r" \\",
             " & & " + " & ".join(_tex_escape(c.header) for c in columns) + r" \\",
             r"\midrule"]
    previous = None
    for row in rows:
        if previous is not None and previous != row.source:
            lines.append(r"\midrule")
        previous = row.source
        source = "paper" if row.source == "paper" else f"ours ({row.hash_label()})"
        cells = [_tex_escape(row.label()), _tex_escape(source)]
        cells += [format_value(row.values.get(c.key), c.decimals).replace(MISSING, "--")
                  for c in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_csv(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "source", "experiment", "config_hashes", "runs"]
                    + [c.key for c in columns])
    for row in rows:
        writer.writerow([row.label(), row.source, row.experiment,
                         ";".join(f"{k}={v}" for k, v in row.hashes.items()),
                         ";".join(f"{k}={v}" for k, v in row.runs.items())]
                        + [format_value(row.values.get(c.key), c.decimals) for c in columns])
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build_tables(
    roots: Sequence[str | Path], out_dir: str | Path,
    datasets: Mapping[str, Sequence[str]] | None = None,
    experiments: Sequence[str] | None = None, methods: Sequence[str] | None = None,
    formats: Sequence[str] = FORMATS,
) -> dict[str, Any]:
    """Write ``table1.{md,tex,csv}`` and ``table2.{md,tex,csv}``; return paths and row counts.

    ``datasets`` maps a role (coco, nocaps, senticap_positive, senticap_negative) to the
    dataset names (``dataset.name``) that fill it.
    """
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"unknown table formats {bad}; known: {list(FORMATS)}")
    datasets = dict(DEFAULT_DATASETS if datasets is None else datasets)
    unknown_roles = sorted(set(datasets) - set(DEFAULT_DATASETS))
    if unknown_roles:
        raise ValueError(f"unknown table.datasets roles {unknown_roles}; "
                         f"known: {sorted(DEFAULT_DATASETS)}")
    datasets = {role: [names] if isinstance(names, str) else list(names)
                for role, names in datasets.items()}
    records = collect_runs(roots)
    out = Path(out_dir)
    summary: dict[str, Any] = {"num_runs": len(records), "files": [], "rows": {}}
    for name, (title, columns, figures) in TABLES.items():
        ours, notes = our_rows(records, columns, datasets, experiments, methods)
        rows = paper_rows(figures, columns) + ours
        texts = {"md": render_markdown(title, columns, rows, notes),
                 "tex": render_latex(title, columns, rows),
                 "csv": render_csv(columns, rows)}
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            _write_atomic(path, texts[fmt])
            summary["files"].append(str(path))
        summary["rows"][name] = len(ours)
    return summary
