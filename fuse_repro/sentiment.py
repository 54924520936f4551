"""Sentiment accuracy of captions (SentiCap, Table 2) with a Hugging Face classifier.

The label mapping comes from the classifier's ``config.id2label`` ("positive"/"negative", any
case), never from a hard-coded index; a classifier without those labels is one clear error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fuse_repro.errors import FuseError
from fuse_repro.runtime import resolve_device

# The sentiments a caption can be asked for (datasets, objective terms, scoring).
SENTIMENTS = ("positive", "negative")
SENTIMENT_RULES = ("argmax", "pos_vs_neg")


class SentimentLabelError(FuseError, ValueError):
    """The sentiment classifier's labels do not name the wanted sentiment."""


def sentiment_label_ids(id2label: Mapping[Any, str]) -> dict[str, int]:
    """Map "positive"/"negative" to class indices by matching ``id2label`` case-insensitively."""
    found: dict[str, int] = {}
    for idx, label in id2label.items():
        key = str(label).strip().lower()
        if key in ("positive", "negative"):
            found[key] = int(idx)
    return found


def _require_label(label_ids: Mapping[str, int], wanted: str, id2label: Mapping[Any, str],
                   name: str) -> int:
    if wanted not in label_ids:
        raise SentimentLabelError(
            f"sentiment classifier {name!r} has labels {dict(id2label)} (config.id2label); none "
            f"matches {wanted!r} case-insensitively. Use a classifier whose id2label names "
            f"'positive' and 'negative' (e.g. cardiffnlp/twitter-roberta-base-sentiment-latest)"
        )
    return label_ids[wanted]


def load_sentiment_classifier(name_or_path: str, device: str = "cpu") -> tuple[Any, Any]:
    """``AutoTokenizer`` + ``AutoModelForSequenceClassification`` in eval mode on ``device``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path)
    model.to(resolve_device(device)).eval()
    return tokenizer, model


def sentiment_predictions(
    texts: Sequence[str], wanted: Sequence[str], tokenizer: Any, model: Any,
    rule: str = "argmax", batch_size: int = 32, max_length: int = 128, name: str = "classifier",
) -> list[dict[str, Any]]:
    """Classify each text and say whether it carries its wanted sentiment.

    ``argmax``: the top class over all labels (neutral included) must be the wanted one.
    ``pos_vs_neg``: only the positive and negative logits are compared.
    """
    import torch

    if rule not in SENTIMENT_RULES:
        raise SentimentLabelError(f"sentiment rule must be one of {SENTIMENT_RULES}, got {rule!r}")
    if len(texts) != len(wanted):
        raise ValueError("texts and wanted sentiments differ in length")
    id2label = dict(model.config.id2label)
    label_ids = sentiment_label_ids(id2label)
    for w in sorted(set(wanted)):
        _require_label(label_ids, w, id2label, name)
    if rule == "pos_vs_neg":
        for w in ("positive", "negative"):
            _require_label(label_ids, w, id2label, name)
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        with torch.no_grad():
            logits = model(**enc).logits.float().cpu()  # (batch, num_labels)
        probs = torch.softmax(logits, dim=-1)
        for b in range(len(batch)):
            want = wanted[start + b]
            top = int(torch.argmax(logits[b]))
            if rule == "argmax":
                correct = top == label_ids[want]
            else:
                other = "negative" if want == "positive" else "positive"
                correct = bool(logits[b, label_ids[want]] > logits[b, label_ids[other]])
            rows.append({"wanted": want, "predicted": str(id2label.get(top, top)),
                         "p_wanted": float(probs[b, label_ids[want]]), "correct": bool(correct)})
    return rows
