"""Scoring a captions file with the ``scoring`` group (``ScoringConfig``).

The metrics themselves live in ``coco_metrics`` (pycocoevalcap) and ``sentiment`` (the
classifier); reading captions files (ours or the standard COCO results JSON) and writing the
outputs go through ``records``. ``score_captions`` is pure (captions in, metrics out);
``score_captions_file`` reads a results file and writes ``metrics.json`` + ``per_caption.jsonl``
(``records.write_metrics``, their one writer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fuse_repro import coco_metrics
from fuse_repro.coco_metrics import (
    ScorerConfigError,
    ScorerError,
    bleu,
    cider,
    meteor,
    ptb_tokenize,
    rouge_l,
)
from fuse_repro.config import ScoringConfig
from fuse_repro.data import Item
from fuse_repro.records import (
    captions_by_id,
    id_sort_key,
    read_captions,
    rows_method,
    write_metrics,
)
from fuse_repro.sentiment import (
    load_sentiment_classifier,
    sentiment_label_ids,
    sentiment_predictions,
)

log = logging.getLogger(__name__)


def strip_caption_prefix(caption: str, prefix: str | None) -> tuple[str, bool]:
    """Remove ``prefix`` (case-insensitive, surrounding whitespace ignored) from a caption."""
    if not prefix:
        return caption, False
    text = caption.lstrip()
    if text.lower().startswith(prefix.strip().lower()):
        return text[len(prefix.strip()):].strip(), True
    return caption, False


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def score_captions(
    captions: Mapping[str, str], items: Sequence[Item], opts: ScoringConfig,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``{id: caption}`` against ``items``; returns (metrics dict, per-caption rows).

    Every id must be an item; every item needs a caption unless ``allow_missing``. Items without
    references (image folders, text targets without references) get no caption metrics. A
    metric that cannot run here (SPICE without its jars, no sentiment classifier) is listed
    under ``unavailable`` with the reason while everything else is still scored.
    """
    by_id = {it.id: it for it in items}
    captions = {str(k): v for k, v in captions.items()}
    extra = sorted(set(captions) - set(by_id), key=id_sort_key)
    if extra:
        raise ScorerConfigError(f"{len(extra)} caption ids are not in the dataset (first: "
                                f"{extra[:5]}); wrong dataset or subset?")
    missing = sorted(set(by_id) - set(captions), key=id_sort_key)
    if missing and not opts.allow_missing:
        raise ScorerConfigError(f"{len(missing)} of {len(by_id)} dataset items have no caption "
                                f"(first: {missing[:5]}); set scoring.allow_missing=true to "
                                "score the rest")

    ids = sorted(captions, key=id_sort_key)
    scored_text: dict[str, str] = {}
    n_stripped = 0
    for i in ids:
        scored_text[i], stripped = strip_caption_prefix(captions[i], opts.strip_prefix)
        n_stripped += stripped
    rows: dict[str, dict[str, Any]] = {i: {"id": i, "caption": scored_text[i]} for i in ids}
    for i in ids:
        if scored_text[i] != captions[i]:
            rows[i]["caption_raw"] = captions[i]
        if by_id[i].domain is not None:
            rows[i]["domain"] = by_id[i].domain

    unavailable: dict[str, str] = {}
    summary: dict[str, Any] = {}
    with_refs = [i for i in ids if by_id[i].references]
    result: dict[str, Any] = {
        "num_items": len(by_id), "num_captions": len(ids), "num_missing": len(missing),
        "num_scored": len(with_refs), "method": opts.method, "scorer": coco_metrics.versions(),
        "strip_prefix": ({"prefix": opts.strip_prefix, "num_stripped": n_stripped}
                         if opts.strip_prefix else None),
        "metrics": summary, "unavailable": unavailable,
    }
    if with_refs:
        _caption_metrics(with_refs, by_id, scored_text, opts, rows, result)
    elif opts.metrics:
        for name in opts.metrics:
            unavailable[name] = "no item has references"

    wanted_ids = [i for i in ids if by_id[i].sentiment is not None]
    if wanted_ids:
        _sentiment(wanted_ids, by_id, scored_text, opts, rows, result)
    return result, [rows[i] for i in ids]


def _caption_metrics(ids: list[str], by_id: Mapping[str, Item], text: Mapping[str, str],
                     opts: ScoringConfig, rows: dict[str, dict[str, Any]],
                     result: dict[str, Any]) -> None:
    summary, unavailable = result["metrics"], result["unavailable"]
    # Two tokenizer calls, references then candidates, as pycocoevalcap does.
    gts = ptb_tokenize({i: by_id[i].references for i in ids})
    res = {i: toks[0] for i, toks in ptb_tokenize({i: [text[i]] for i in ids}).items()}
    for i in ids:
        rows[i]["tokenized"] = res[i]
    per: dict[str, list[float]] = {}
    if "Bleu" in opts.metrics:
        b = bleu(gts, res, ids)
        for k, value in enumerate(b.scores):
            summary[f"Bleu_{k + 1}"] = value
            per[f"Bleu_{k + 1}"] = b.per_caption[k]
        result["bleu_stats"] = {"testlen": b.testlen, "reflen": b.reflen, "guess": b.guess,
                                "correct": b.correct}
    if "METEOR" in opts.metrics:
        summary["METEOR"], per["METEOR"] = meteor(gts, res, ids, opts.meteor.java_heap)
    if "ROUGE_L" in opts.metrics:
        summary["ROUGE_L"], per["ROUGE_L"] = rouge_l(gts, res, ids)
    if "CIDEr" in opts.metrics:
        summary["CIDEr"], per["CIDEr"] = cider(gts, res, ids)
    if "SPICE" in opts.metrics:
        ok, reason = coco_metrics.spice_status()
        if ok:
            try:  # a SPICE crash (memory, timeout) must not cost the metrics already computed
                score, values = coco_metrics.spice(gts, res, ids, opts.spice.cache_dir,
                                                   opts.spice.java_heap, opts.spice.timeout_s)
            except ScorerError as exc:
                ok, reason = False, f"SPICE failed: {exc}"
            else:
                summary["SPICE"] = _nan_to_none(score)
                per["SPICE"] = values
        if not ok:
            log.warning("SPICE not scored: %s", reason)
            unavailable["SPICE"] = reason
    for name, values in per.items():
        for i, v in zip(ids, values):
            rows[i][name] = _nan_to_none(float(v))

    domains = sorted({by_id[i].domain for i in ids if by_id[i].domain is not None})
    if domains:
        # NoCaps reports each domain as its own evaluation: CIDEr's document frequencies come
        # from that domain's references; SPICE is a per-image mean, so a subset mean is exact.
        out: dict[str, dict[str, Any]] = {}
        for d in domains:
            sub = [i for i in ids if by_id[i].domain == d]
            entry: dict[str, Any] = {"num_scored": len(sub)}
            if "CIDEr" in per:
                entry["CIDEr"] = cider(gts, res, sub)[0]
            if "SPICE" in per:
                spice_values = [rows[i]["SPICE"] for i in sub]
                entry["SPICE"] = _nan_to_none(float(np.mean(
                    [math.nan if v is None else v for v in spice_values])))
            out[d] = entry
        result["domains"] = out


def _sentiment(ids: list[str], by_id: Mapping[str, Item], text: Mapping[str, str],
               opts: ScoringConfig, rows: dict[str, dict[str, Any]],
               result: dict[str, Any]) -> None:
    name = opts.sentiment.classifier
    if not name:
        result["unavailable"]["sentiment_accuracy"] = (
            "no sentiment classifier configured (scoring.sentiment.classifier)")
        return
    try:
        tokenizer, model = load_sentiment_classifier(name, opts.sentiment.device)
    except (OSError, ValueError) as exc:  # not downloadable offline, not a classifier, ...
        log.warning("sentiment accuracy not scored: %s", exc)
        result["unavailable"]["sentiment_accuracy"] = (
            f"could not load sentiment classifier {name!r}: {type(exc).__name__}: {exc}")
        return
    preds = sentiment_predictions(
        [text[i] for i in ids], [str(by_id[i].sentiment) for i in ids], tokenizer, model,
        rule=opts.sentiment.rule, batch_size=opts.sentiment.batch_size,
        max_length=opts.sentiment.max_length, name=name)
    for i, p in zip(ids, preds):
        rows[i]["sentiment"] = p
    n_correct = sum(p["correct"] for p in preds)
    id2label = dict(model.config.id2label)
    result["sentiment"] = {
        "accuracy": n_correct / len(preds), "num_correct": n_correct, "num_scored": len(preds),
        "classifier": name, "rule": opts.sentiment.rule,
        "wanted": sorted({p["wanted"] for p in preds}),
        "label_ids": sentiment_label_ids(id2label),
        "text": "the scored caption (after strip_prefix)",
    }


def score_captions_file(
    captions_path: str | Path, items: Sequence[Item], opts: ScoringConfig,
    out_dir: str | Path | None = None, dataset: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a captions.jsonl or COCO results JSON file; write metrics.json + per_caption.jsonl
    into ``out_dir`` (default: beside the file) and return the metrics dict. ``dataset``
    ({name, format, ...}) is recorded; so are the file's format, ``opts.label`` and ``labels``
    (e.g. a random-weight run's ``weights`` and ``weights_note``)."""
    path = Path(captions_path)
    results = read_captions(path)
    captions = captions_by_id(results.rows, opts.method, where=str(path))
    metrics, per_caption = score_captions(captions, items, opts)
    metrics["method"] = opts.method if opts.method is not None else rows_method(results.rows)
    metrics["captions_file"] = path.name
    if results.format != "captions_jsonl":
        metrics["captions_format"] = results.format
    if opts.label is not None:
        metrics["label"] = opts.label
        metrics["source"] = "external"
    metrics["dataset"] = dict(dataset) if dataset is not None else None
    metrics.update(labels or {})
    write_metrics(out_dir if out_dir is not None else path.parent, metrics, per_caption)
    return metrics
