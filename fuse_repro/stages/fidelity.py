"""stage=fidelity: how faithful is the FUSE gradient at the states the fuse search visits?

For every dataset item (``fidelity.max_items`` of them), the fuse search runs and its best beam
after each step of ``fidelity.after_steps`` is one state; ``fuse_repro.fidelity`` measures every
condition there. Writes ``fidelity_states.jsonl`` (one record per state), ``fidelity.csv`` and
``fidelity.md`` (mean +- standard error over states per condition) and ``fidelity_summary.json``
(the same rows plus the adapter's L, N, fit residual and the share of the dataset's caption words
past the cap: what the ``fidelity_study`` summary reads), and logs the metrics to wandb.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fuse_repro.captioner import Captioner, build_captioner
from fuse_repro.config import ConfigError, FuseConfig
from fuse_repro.fidelity import control_bridges, measure_state, search_states, summarize
from fuse_repro.records import write_json, write_jsonl, write_text
from fuse_repro.runtime import resolve_device
from fuse_repro.stages import caption
from fuse_repro.stages.caption import dataset_items
from fuse_repro.table_render import format_cell
from fuse_repro.tracking import open_tracker
from fuse_repro.weights_label import banner

log = logging.getLogger(__name__)

# What a sweeper gets from this stage: the FUSE ranking's mean Spearman over states.
OPTIMIZED_METRIC = "spearman_fuse"

CSV_HEAD = ["condition", "subset", "spearman", "spearman_se", "spearman_spread"]


def fit_residuals(report: dict[str, Any]) -> dict[str, float | None]:
    """Held-out and fitting residuals of the fit report, averaged over buckets weighted by their
    word counts (None when no bucket reports one)."""
    out: dict[str, float | None] = {}
    rows = report.get("buckets", [])
    for key, weight in (("residual_heldout", "heldout_words"), ("residual_fit", "words"),
                        ("baseline_heldout", "heldout_words")):
        pairs = [(r[key], r[weight]) for r in rows if r.get(key) is not None and r.get(weight)]
        total = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / total if total else None
    return out


def overflow_share(objectives: list[Any], primary: Any, items: list[Any]) -> dict[str, Any]:
    """Share of the words of the dataset's texts (targets and references) whose gradient takes
    the overflow path, per objective."""
    texts = [t for it in items for t in [getattr(it, "target", None), *(getattr(it, "references", None) or [])] if t]
    ids = [primary.tokenizer.encode(t) for t in texts]
    out = {}
    for obj in objectives:
        paths = [p for seq in obj.bridge.word_paths(ids) for p in seq] if ids else []
        counted = [p for p in paths if p in ("fitted", "overflow")]
        share = sum(p == "overflow" for p in counted) / len(counted) if counted else None
        out[obj.name] = {"words": len(counted), "share_past_cap": share}
    return out


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else CSV_HEAD
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_cell(v, 4) for k, v in row.items()})
    return buf.getvalue()


def rows_to_markdown(rows: list[dict[str, Any]], recall_k: int, context: dict[str, Any]) -> str:
    def pm(row: dict[str, Any], key: str) -> str:
        se = row[f"{key}_se"]
        return f"{row[key]:.3f}" + ("" if math.isnan(se) else f" ± {se:.3f}")

    lines = [
        "# Gradient fidelity",
        "",
        (f"{context['source']} -> {context['targets']}; L={context['max_tokens']}, "
         f"N={context['words_per_bucket']}; {context['states']} states (best beam after steps "
         f"{context['after_steps']} on {context['items']} items), K={context['top_k']} candidates "
         "each. Mean ± standard error over states; higher Spearman and recall are better, lower "
         "regret is better (regret is in units of the weighted secondary loss sum_j w_j L_j that "
         "the gradient is taken of)."),
        "",
        f"| condition | Spearman | recall@{recall_k} | regret | states |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        spread = row.get("spearman_spread", float("nan"))
        extra = "" if math.isnan(spread) else f" (seed spread {spread:.3f})"
        lines.append(
            f"| {row['condition']} | {pm(row, 'spearman')}{extra} | {pm(row, f'recall_at_{recall_k}')} | "
            f"{pm(row, 'regret')} | {row['n_states']} |"
        )
    residual = context.get("fit_residual_heldout")
    lines += [
        "",
        f"Fit residual (held-out, word-weighted): {residual:.4f}" if residual is not None else "Fit residual: n/a",
        f"Share of the dataset's caption words past the cap: {json.dumps(context['overflow'], sort_keys=True)}",
        "",
        "Rows ending in @one_token compare on the candidates that add exactly one secondary token,",
        "where the secondary model's own input gradient (`exact`) is defined.",
    ]
    return "\n".join(lines) + "\n"


def check(cfg: FuseConfig) -> None:
    """Config-only validation, before any model loads: what a caption run checks, and a search
    that has a gradient to measure."""
    caption.check(cfg)
    if cfg.search.method != "fuse":
        raise ConfigError(f"stage=fidelity measures the fuse search's gradient; "
                          f"search.method={cfg.search.method!r} must be fuse")


def measure(cfg: FuseConfig, items: list[Any], captioner: Captioner,
            searching: list[Any]) -> list[dict[str, Any]]:
    """One record per (item, state): every condition measured at the fuse search's best beam
    after each step of ``fidelity.after_steps``."""
    fid = cfg.fidelity
    controls = control_bridges(searching, fid, cfg.seed)
    records = []
    for index, item in enumerate(tqdm(items, desc="fidelity", unit="item")):
        states = search_states(item, captioner.primary, captioner.objectives, cfg.search,
                               captioner.lm_weight, cfg.seed, fid.after_steps)
        for step, state in states:
            rng = np.random.default_rng([cfg.seed, index, step])
            record = measure_state(state, controls, fid, rng)
            record["step"] = step
            records.append(record)
    return records


def run_context(cfg: FuseConfig, items: list[Any], captioner: Captioner, searching: list[Any],
                states: int) -> dict[str, Any]:
    """What the summary and the markdown say about the run: models, L, N, fit residuals and the
    share of the dataset's words past the cap."""
    residuals = fit_residuals(searching[0].bridge.adapter.report)
    return {
        "source": captioner.primary.name,
        "targets": ", ".join(sorted({o.model.name for o in searching})),
        "max_tokens": cfg.adapter.max_tokens,
        "words_per_bucket": cfg.adapter.words_per_bucket,
        "overflow_policy": cfg.adapter.overflow,
        "after_steps": sorted(set(cfg.fidelity.after_steps)),
        "items": len(items),
        "states": states,
        "top_k": cfg.fidelity.top_k,
        "recall_k": cfg.fidelity.recall_k,
        "fit_residual_heldout": residuals["residual_heldout"],
        "fit_residual_fit": residuals["residual_fit"],
        "fit_baseline_heldout": residuals["baseline_heldout"],
        "overflow": overflow_share(searching, captioner.primary, items),
        "adapter_keys": captioner.adapter_keys,
    }


def run(cfg: FuseConfig, out_dir: Path) -> dict[str, Any]:
    items = dataset_items(cfg)[: cfg.fidelity.max_items]
    captioner = build_captioner(cfg.source, cfg.objective, cfg.adapter, Path(cfg.paths.cache_dir),
                                resolve_device(cfg.device))
    searching = [o for o in captioner.objectives if o.weight > 0]
    if not searching:
        raise ConfigError("stage=fidelity needs an objective term with weight > 0 (there is no "
                          "gradient to measure)")
    start = time.perf_counter()
    records = measure(cfg, items, captioner, searching)
    seconds = time.perf_counter() - start
    rows = summarize(records, cfg.fidelity.recall_k)
    context = run_context(cfg, items, captioner, searching, len(records))
    markdown = rows_to_markdown(rows, cfg.fidelity.recall_k, context)
    write_jsonl(out_dir / "fidelity_states.jsonl", records)
    write_text(out_dir / "fidelity.csv", rows_to_csv(rows))
    write_text(out_dir / "fidelity.md", markdown)
    write_json(out_dir / "fidelity_summary.json", {"context": context, "rows": rows})
    print(markdown)
    log.info("fidelity: %d states in %.1f s", len(records), seconds)
    with open_tracker(cfg, out_dir, "fidelity", {"adapter_keys": captioner.adapter_keys}) as tracker:
        for row in rows:
            tracker.summary({f"fidelity/{row['condition']}/{k}": v for k, v in row.items()
                             if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))})
        tracker.summary({"fidelity/seconds": seconds, "fidelity/states": len(records)})
    if banner(cfg):
        print(banner(cfg))
    fuse = next(r for r in rows if r["condition"] == "fuse")
    return {"states": len(records), "spearman_fuse": fuse["spearman"], "seconds": seconds}
