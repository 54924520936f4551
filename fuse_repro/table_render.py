"""Rendering the tables: one ``Row`` type, and Markdown, LaTeX and CSV writers.

Rows come from ``fuse_repro.tables`` (paper figures, external systems' results, our runs);
this module only turns them into text. Values are already on the displayed scale (x100).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MISSING = "–"  # shown for cells without a value (LaTeX gets "--", which typesets as "–")
SOURCES = ("paper", "external", "ours")
# The files a table is written as.
FORMATS = ("md", "tex", "csv")
# Dataset role (a group of table columns) -> the dataset names (``dataset.name`` in metrics.json)
# that fill it; ``table.datasets`` overrides it.
DEFAULT_DATASETS: dict[str, list[str]] = {
    "coco": ["coco_karpathy"],
    "nocaps": ["nocaps_val"],
    "senticap_positive": ["senticap_positive"],
    "senticap_negative": ["senticap_negative"],
    "coco_text": ["coco_text_targets"],
}


@dataclass(frozen=True)
class Column:
    """One table column: which dataset role and which value of its metrics.json it shows."""

    key: str
    group: str  # header of the column group (dataset)
    header: str  # metric header
    role: str  # dataset role: coco, nocaps, senticap_positive, senticap_negative, coco_text
    path: tuple[str, ...]  # where the 0-1 value sits in metrics.json
    decimals: int = 2


def format_cell(value: Any, decimals: int | None = None, missing: str = "") -> str:
    """The one cell formatter of every table and CSV: ``missing`` for None or NaN, true/false
    for a bool, a float with ``decimals`` fixed decimals (its full repr when None), anything
    else (an int, a text) as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if decimals is not None and isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)


def format_value(value: float | None, decimals: int) -> str:
    """A paper-table cell: fixed decimals, or the missing mark."""
    return format_cell(value, decimals, MISSING)


@dataclass
class Row:
    """One table row; ``values`` hold the displayed scale (x100)."""

    method: str
    source: str  # "paper", "external" (a published system's results file we scored) or "ours"
    values: dict[str, float | None]
    experiment: str = ""
    hashes: dict[str, str] = field(default_factory=dict)  # role -> config hash
    runs: dict[str, str] = field(default_factory=dict)  # role -> run folder (relative)
    # role -> "<captions scored>/<items in the dataset>", for a run that scored only part of it
    coverage: dict[str, str] = field(default_factory=dict)

    def label(self) -> str:
        if self.source in ("paper", "external"):
            return self.method
        return f"{self.experiment} [{self.method}]" if self.method else self.experiment

    def source_label(self) -> str:
        """The Source cell: paper, external, or ours with the config hashes of its runs."""
        text = f"ours ({self.hash_label()})" if self.source == "ours" else self.source
        if self.coverage:
            text += "; partial: " + ", ".join(
                f"{n} items" if len(self.coverage) == 1 else f"{role} {n} items"
                for role, n in self.coverage.items())
        return text

    def hash_label(self, short: bool = True) -> str:
        values = []
        for h in self.hashes.values():
            text = h[:8] if short else h
            if text not in values:
                values.append(text)
        return ", ".join(values)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(title: str, columns: Sequence[Column], rows: Sequence[Row],
                    notes: Sequence[str] = ()) -> str:
    header = ["Method", "Source"] + [f"{c.group} {c.header}" for c in columns]
    lines = [f"**{title}** (x100; Acc in %)", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * len(columns)) + "|"]
    for row in rows:
        cells = [_md_escape(row.label()), _md_escape(row.source_label())]
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
        cells = [_tex_escape(row.label()), _tex_escape(row.source_label())]
        cells += [format_value(row.values.get(c.key), c.decimals).replace(MISSING, "--")
                  for c in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_csv(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "source", "experiment", "config_hashes", "runs", "coverage"]
                    + [c.key for c in columns])
    for row in rows:
        writer.writerow([row.label(), row.source, row.experiment,
                         ";".join(f"{k}={v}" for k, v in row.hashes.items()),
                         ";".join(f"{k}={v}" for k, v in row.runs.items()),
                         ";".join(f"{k}={v}" for k, v in row.coverage.items())]
                        + [format_value(row.values.get(c.key), c.decimals) for c in columns])
    return buf.getvalue()
