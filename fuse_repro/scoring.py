"""Caption metrics with pycocoevalcap, as plain functions.

Why not ``COCOEvalCap.evaluate()``: it needs COCO API objects, prints instead of returning the
BLEU statistics, leaves METEOR's Java process to the garbage collector, and SPICE downloads
Stanford CoreNLP on first use (unreachable offline: it would hang or crash the whole call).
Here every metric is a function over ``{id: [texts]}`` dicts; BLEU, ROUGE-L and CIDEr use
pycocoevalcap's own scorer classes, and the Java-backed parts (PTB tokenizer, METEOR, SPICE) run
pycocoevalcap's jars with the same command lines and protocol, but with temporary files outside
site-packages and with explicit process cleanup. Values stay on pycocoevalcap's 0-1 scale.

Reproduction check (tests/test_scoring.py): the coco-caption demo results and MAGIC's Karpathy
test file reproduce their published BLEU/METEOR/ROUGE-L/CIDEr figures and BLEU statistics.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fuse_repro.data import Item, id_sort_key

log = logging.getLogger(__name__)

# Canonical metric names (pycocoevalcap's method names); config values match case-insensitively.
METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SENTIMENT_RULES = ("argmax", "pos_vs_neg")
SPICE_CORENLP = "stanford-corenlp-3.6.0"
SPICE_CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
# Characters Python (and Java's PTB lexer) treat as line breaks: a caption holding one would
# shift every following line of the tokenizer's line-per-caption output.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class ScorerError(RuntimeError):
    """A scorer could not run (no Java, a jar missing, a subprocess died)."""


class SentimentLabelError(ValueError):
    """The sentiment classifier's labels do not name the wanted sentiment."""


def _pkg_dir() -> Path:
    """pycocoevalcap's install folder (a namespace package: no top-level ``__file__``)."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).resolve().parents[1]


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ScorerError(
            "java not found on PATH: pycocoevalcap's PTB tokenizer, METEOR and SPICE need a "
            "Java runtime (8 or later), e.g. `apt-get install default-jre-headless`"
        )
    return java


# --------------------------------------------------------------------------------------------
# tokenization


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """PTB-tokenize, lowercase and drop punctuation, exactly as pycocoevalcap's PTBTokenizer.

    One Java call for the whole dict; captions are written one per line (line breaks inside a
    caption become spaces) and the output is checked to have one line per caption.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    keys = [k for k, texts in captions.items() for _ in texts]
    lines = []
    for texts in captions.values():
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"captions must be strings, got {text!r}")
            for ch in _LINE_BREAKS:
                text = text.replace(ch, " ")
            lines.append(text)
    out: dict[str, list[str]] = {k: [] for k in captions}
    if not lines:
        return out
    jar = _pkg_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    if not jar.is_file():
        raise ScorerError(f"PTB tokenizer jar missing: {jar} (reinstall pycocoevalcap==1.2)")
    with tempfile.TemporaryDirectory(prefix="fuse_ptb_") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_bytes("\n".join(lines).encode("utf-8"))
        cmd = [_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(src)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ScorerError(f"PTB tokenizer failed ({proc.returncode}): "
                          f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    tokenized = proc.stdout.decode("utf-8").split("\n")
    if len(tokenized) == len(lines) + 1 and tokenized[-1] == "":
        tokenized = tokenized[:-1]
    if len(tokenized) != len(lines):
        raise ScorerError(f"PTB tokenizer returned {len(tokenized)} lines for {len(lines)} "
                          "captions; a caption holds a character it treats as a line break")
    for key, line in zip(keys, tokenized):
        words = [w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS]
        out[key].append(" ".join(words))
    return out


# --------------------------------------------------------------------------------------------
# metrics over tokenized {id: [refs]} / {id: candidate}


@dataclass
class BleuResult:
    """Corpus BLEU-1..n, sentence-level BLEU per caption, and the corpus statistics."""

    scores: list[float]
    per_caption: list[list[float]]  # per_caption[k][i]: BLEU-(k+1) of caption i
    testlen: int
    reflen: int
    guess: list[int]
    correct: list[int]


def _check_inputs(gts: Mapping[str, Sequence[str]], res: Mapping[str, str],
                  ids: Sequence[str]) -> None:
    for i in ids:
        if i not in res or i not in gts:
            raise KeyError(f"id {i!r} lacks a candidate or references")
        if not gts[i]:
            raise ValueError(f"id {i!r} has no references")


def bleu(gts: Mapping[str, Sequence[str]], res: Mapping[str, str], ids: Sequence[str],
         n: int = 4) -> BleuResult:
    """pycocoevalcap BLEU ("closest" reference length) plus its corpus statistics."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    _check_inputs(gts, res, ids)
    scorer = BleuScorer(n=n)
    for i in ids:
        scorer += (res[i], list(gts[i]))
    scores, per_caption = scorer.compute_score(option="closest", verbose=0)
    guess = [0] * n
    correct = [0] * n
    for comps in scorer.ctest:  # the same sums compute_score prints as totalcomps
        for k in range(n):
            guess[k] += comps["guess"][k]
            correct[k] += comps["correct"][k]
    return BleuResult(scores=[float(s) for s in scores],
                      per_caption=[[float(v) for v in row] for row in per_caption],
                      testlen=int(scorer._testlen), reflen=int(scorer._reflen),
                      guess=guess, correct=correct)


def rouge_l(gts: Mapping[str, Sequence[str]], res: Mapping[str, str],
            ids: Sequence[str]) -> tuple[float, list[float]]:
    """pycocoevalcap ROUGE-L (beta 1.2): mean over captions and per caption."""
    from pycocoevalcap.rouge.rouge import Rouge

    _check_inputs(gts, res, ids)
    scorer = Rouge()
    per = [float(scorer.calc_score([res[i]], list(gts[i]))) for i in ids]
    return float(np.mean(np.array(per))), per


def cider(gts: Mapping[str, Sequence[str]], res: Mapping[str, str],
          ids: Sequence[str]) -> tuple[float, list[float]]:
    """pycocoevalcap CIDEr-D; document frequencies come from the references of ``ids`` only."""
    from pycocoevalcap.cider.cider import Cider

    _check_inputs(gts, res, ids)
    score, per = Cider().compute_score({i: list(gts[i]) for i in ids}, {i: [res[i]] for i in ids})
    return float(score), [float(v) for v in per]


class MeteorScorer:
    """One METEOR 1.5 Java process (pycocoevalcap's jar and flags), closed on exit.

    Starting METEOR loads its paraphrase table (about 10 s), so one process serves a whole
    scoring call; use it as a context manager so the process never outlives the call.
    """

    def __init__(self, java_heap: str = "2G") -> None:
        self._dir = _pkg_dir() / "meteor"
        jar = self._dir / "meteor-1.5.jar"
        if not jar.is_file():
            raise ScorerError(f"METEOR jar missing: {jar} (reinstall pycocoevalcap==1.2)")
        self._stderr = tempfile.TemporaryFile()
        cmd = [_java(), "-jar", f"-Xmx{java_heap}", jar.name, "-", "-", "-stdio", "-l", "en",
               "-norm"]
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, cwd=self._dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr)

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()

    def _receive(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        raw = self._proc.stdout.readline()
        if not raw:
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")[-2000:]
            raise ScorerError(f"METEOR process ended unexpectedly: {err}")
        return raw.decode("utf-8").strip()

    def score(self, gts: Mapping[str, Sequence[str]], res: Mapping[str, str],
              ids: Sequence[str]) -> tuple[float, list[float]]:
        """Corpus METEOR (from the pooled statistics, as pycocoevalcap) and per caption."""
        if self._proc is None:
            raise ScorerError("METEOR scorer already closed")
        _check_inputs(gts, res, ids)
        stats = []
        for i in ids:
            hypothesis = res[i].replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(("SCORE", " ||| ".join(gts[i]), hypothesis)))
            stats.append(self._receive())
        self._send("EVAL ||| " + " ||| ".join(stats))
        per = [float(self._receive()) for _ in ids]
        total = float(self._receive())
        return total, per

    def close(self) -> None:
        """End the Java process (stdin EOF, then kill if it lingers) and free its pipes."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self._stderr.close()

    def __del__(self) -> None:  # a safety net only; callers close explicitly
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def meteor(gts: Mapping[str, Sequence[str]], res: Mapping[str, str], ids: Sequence[str],
           java_heap: str = "2G") -> tuple[float, list[float]]:
    """METEOR 1.5 with one Java process for the call, closed before returning."""
    with MeteorScorer(java_heap=java_heap) as scorer:
        return scorer.score(gts, res, ids)


def spice_status(spice_dir: str | Path | None = None) -> tuple[bool, str | None]:
    """Whether SPICE can run here, and if not, why and how to install what it lacks.

    pycocoevalcap's ``Spice()`` downloads Stanford CoreNLP 3.6.0 into ``spice/lib`` on first
    use; offline that download hangs or fails, so we look for the jars first and never fetch.
    ``spice_dir`` defaults to pycocoevalcap's ``spice`` folder (the jar's classpath is relative
    to it, so the jars must sit in its ``lib``).
    """
    spice_dir = Path(spice_dir) if spice_dir is not None else _pkg_dir() / "spice"
    lib = spice_dir / "lib"
    needed = [spice_dir / "spice-1.0.jar", lib / f"{SPICE_CORENLP}.jar",
              lib / f"{SPICE_CORENLP}-models.jar"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        return False, (
            f"SPICE needs {', '.join(missing)} in {lib} (Stanford CoreNLP 3.6.0, which "
            f"pycocoevalcap downloads on first use and this machine cannot reach). To install: "
            f"download {SPICE_CORENLP_URL}, copy {SPICE_CORENLP}.jar and "
            f"{SPICE_CORENLP}-models.jar from it into {lib}, or run "
            f"`python -c 'from pycocoevalcap.spice.get_stanford_models import "
            f"get_stanford_models as g; g()'` on a machine with network access."
        )
    if shutil.which("java") is None:
        return False, "SPICE needs a Java runtime (8 or later) on PATH; none found"
    return True, None


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def spice(gts: Mapping[str, Sequence[str]], res: Mapping[str, str], ids: Sequence[str],
          cache_dir: str | Path | None = None, java_heap: str = "8G",
          timeout_s: float = 3600.0) -> tuple[float, list[float]]:
    """SPICE 1.0 F-score: mean over captions (NaN if any is NaN, as pycocoevalcap) and per caption.

    Raises ScorerError when the CoreNLP jars are missing (see :func:`spice_status`).
    """
    ok, reason = spice_status()
    if not ok:
        raise ScorerError(reason)
    _check_inputs(gts, res, ids)
    spice_dir = _pkg_dir() / "spice"
    with tempfile.TemporaryDirectory(prefix="fuse_spice_") as tmp:
        in_file = Path(tmp) / "input.json"
        out_file = Path(tmp) / "output.json"
        payload = [{"image_id": i, "test": res[i], "refs": list(gts[i])} for i in ids]
        in_file.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        cmd = [_java(), "-jar", f"-Xmx{java_heap}", "spice-1.0.jar", str(in_file),
               "-out", str(out_file), "-subset", "-silent"]
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            cmd[5:5] = ["-cache", str(cache_dir)]
        try:
            proc = subprocess.run(cmd, cwd=spice_dir, capture_output=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise ScorerError(f"SPICE did not finish within {timeout_s} s") from exc
        if proc.returncode != 0:
            raise ScorerError(f"SPICE failed ({proc.returncode}): "
                              f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
        results = json.loads(out_file.read_text(encoding="utf-8"))
    by_id = {str(r["image_id"]): _float_or_nan(r["scores"]["All"]["f"]) for r in results}
    per = [by_id[i] for i in ids]
    return float(np.mean(np.array(per))), per


# --------------------------------------------------------------------------------------------
# sentiment


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
    model.to(_torch_device(device)).eval()
    return tokenizer, model


def _torch_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        raise ValueError(f"sentiment rule must be one of {SENTIMENT_RULES}, got {rule!r}")
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


# --------------------------------------------------------------------------------------------
# options, captions files, the whole scoring call


@dataclass
class ScoringOptions:
    """What to score and how; built from the ``scoring`` config node by :meth:`from_config`."""

    metrics: tuple[str, ...] = METRICS
    strip_prefix: str | None = None
    allow_missing: bool = False
    method: str | None = None
    meteor_java_heap: str = "2G"
    spice_java_heap: str = "8G"
    spice_cache_dir: str | None = None
    spice_timeout_s: float = 3600.0
    sentiment_classifier: str | None = None
    sentiment_rule: str = "argmax"
    sentiment_batch_size: int = 32
    sentiment_max_length: int = 128
    sentiment_device: str = "cpu"

    def __post_init__(self) -> None:
        self.metrics = tuple(canonical_metric(m) for m in self.metrics)
        if self.sentiment_rule not in SENTIMENT_RULES:
            raise ValueError(f"scoring.sentiment.rule must be one of {SENTIMENT_RULES}, "
                             f"got {self.sentiment_rule!r}")
        if self.strip_prefix is not None and not str(self.strip_prefix).strip():
            self.strip_prefix = None

    @classmethod
    def from_config(cls, node: Any) -> ScoringOptions:
        """Flatten ``{metrics, ..., meteor: {...}, spice: {...}, sentiment: {...}}``, rejecting
        unknown keys (a misspelled option would otherwise be silently ignored)."""
        cfg = _plain(node)
        nested = {"meteor": ("java_heap",), "spice": ("java_heap", "cache_dir", "timeout_s"),
                  "sentiment": ("classifier", "rule", "batch_size", "max_length", "device")}
        flat: dict[str, Any] = {}
        top = {"metrics", "strip_prefix", "allow_missing", "method", "captions", "out_dir"}
        for key, value in cfg.items():
            if key in nested:
                if value is None:
                    continue
                for sub, v in dict(value).items():
                    if sub not in nested[key]:
                        raise ValueError(f"unknown key scoring.{key}.{sub}; known: "
                                         f"{list(nested[key])}")
                    flat[f"{key}_{sub}"] = v
            elif key in top:
                if key not in ("captions", "out_dir"):  # read by the score stage, not here
                    flat[key] = value
            else:
                raise ValueError(f"unknown key scoring.{key}; known: "
                                 f"{sorted(top | set(nested))}")
        if "metrics" in flat:
            flat["metrics"] = tuple(flat["metrics"] or ())
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in names})


def canonical_metric(name: str) -> str:
    """"bleu" -> "Bleu", "rouge_l"/"rouge" -> "ROUGE_L", ...; a clear error for unknown names."""
    aliases = {m.lower(): m for m in METRICS}
    aliases.update({"rouge": "ROUGE_L", "rougel": "ROUGE_L", "bleu4": "Bleu"})
    key = str(name).lower()
    if key not in aliases:
        raise ValueError(f"unknown metric {name!r}; known: {list(METRICS)}")
    return aliases[key]


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, Mapping):
        return dict(node)
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    raise TypeError(f"expected a mapping, got {type(node).__name__}")


def strip_caption_prefix(caption: str, prefix: str | None) -> tuple[str, bool]:
    """Remove ``prefix`` (case-insensitive, surrounding whitespace ignored) from a caption."""
    if not prefix:
        return caption, False
    text = caption.lstrip()
    if text.lower().startswith(prefix.strip().lower()):
        return text[len(prefix.strip()):].strip(), True
    return caption, False


def read_captions_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a captions.jsonl file (blank lines skipped), checked for id + caption."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"captions file {str(p)!r} not found")
    rows: list[dict[str, Any]] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}:{lineno}: not JSON ({exc})") from exc
            if not isinstance(obj, dict) or "id" not in obj or not isinstance(
                    obj.get("caption"), str):
                raise ValueError(f"{p}:{lineno}: expected an object with 'id' and a string "
                                 f"'caption', got {line.strip()[:200]!r}")
            rows.append(obj)
    return rows


def read_captions_jsonl(path: str | Path, method: str | None = None) -> dict[str, str]:
    """``{id: caption}`` from a captions.jsonl file (one JSON object per line).

    With ``method`` only rows of that method are kept; a file holding several methods needs
    one. Duplicate ids are an error: which caption to score would be a guess.
    """
    rows = read_captions_rows(path)
    methods = sorted({str(r["method"]) for r in rows if r.get("method") is not None})
    if method is not None:
        rows = [r for r in rows if str(r.get("method")) == str(method)]
        if not rows:
            raise ValueError(f"{path}: no captions of method {method!r} (methods: {methods})")
    elif len(methods) > 1:
        raise ValueError(f"{path} holds captions of several methods {methods}; "
                         "set scoring.method")
    out: dict[str, str] = {}
    for r in rows:
        key = str(r["id"])
        if key in out:
            raise ValueError(f"{path}: id {key!r} appears more than once")
        out[key] = r["caption"]
    return out


def captions_method(path: str | Path) -> str | None:
    """The one ``method`` named by a captions file's rows (None when absent or mixed)."""
    methods = {str(r["method"]) for r in read_captions_rows(path) if r.get("method") is not None}
    return methods.pop() if len(methods) == 1 else None


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def _versions() -> dict[str, str]:
    try:
        version = importlib.metadata.version("pycocoevalcap")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {"pycocoevalcap": version,
            "tokenizer": "PTBTokenizer (stanford-corenlp-3.4.1, -preserveLines -lowerCase, "
                         "punctuation removed)"}


def score_captions(
    captions: Mapping[str, str], items: Sequence[Item], options: ScoringOptions | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``{id: caption}`` against ``items``; returns (metrics dict, per-caption rows).

    Every id must be an item; every item needs a caption unless ``allow_missing``. Items without
    references (image folders, text targets without references) get no caption metrics. A
    metric that cannot run here (SPICE without its jars, no sentiment classifier) is listed
    under ``unavailable`` with the reason while everything else is still scored.
    """
    opts = options or ScoringOptions()
    by_id = {it.id: it for it in items}
    captions = {str(k): v for k, v in captions.items()}
    extra = sorted(set(captions) - set(by_id), key=id_sort_key)
    if extra:
        raise ValueError(f"{len(extra)} caption ids are not in the dataset (first: {extra[:5]}); "
                         "wrong dataset or subset?")
    missing = sorted(set(by_id) - set(captions), key=id_sort_key)
    if missing and not opts.allow_missing:
        raise ValueError(f"{len(missing)} of {len(by_id)} dataset items have no caption (first: "
                         f"{missing[:5]}); set scoring.allow_missing=true to score the rest")

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
        "num_scored": len(with_refs), "method": opts.method, "scorer": _versions(),
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
                     opts: ScoringOptions, rows: dict[str, dict[str, Any]],
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
        summary["METEOR"], per["METEOR"] = meteor(gts, res, ids, opts.meteor_java_heap)
    if "ROUGE_L" in opts.metrics:
        summary["ROUGE_L"], per["ROUGE_L"] = rouge_l(gts, res, ids)
    if "CIDEr" in opts.metrics:
        summary["CIDEr"], per["CIDEr"] = cider(gts, res, ids)
    if "SPICE" in opts.metrics:
        ok, reason = spice_status()
        if ok:
            try:  # a SPICE crash (memory, timeout) must not cost the metrics already computed
                score, values = spice(gts, res, ids, opts.spice_cache_dir,
                                      opts.spice_java_heap, opts.spice_timeout_s)
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
               opts: ScoringOptions, rows: dict[str, dict[str, Any]],
               result: dict[str, Any]) -> None:
    name = opts.sentiment_classifier
    if not name:
        result["unavailable"]["sentiment_accuracy"] = (
            "no sentiment classifier configured (scoring.sentiment.classifier)")
        return
    try:
        tokenizer, model = load_sentiment_classifier(name, opts.sentiment_device)
    except (OSError, ValueError) as exc:  # not downloadable offline, not a classifier, ...
        log.warning("sentiment accuracy not scored: %s", exc)
        result["unavailable"]["sentiment_accuracy"] = (
            f"could not load sentiment classifier {name!r}: {type(exc).__name__}: {exc}")
        return
    preds = sentiment_predictions(
        [text[i] for i in ids], [str(by_id[i].sentiment) for i in ids], tokenizer, model,
        rule=opts.sentiment_rule, batch_size=opts.sentiment_batch_size,
        max_length=opts.sentiment_max_length, name=name)
    for i, p in zip(ids, preds):
        rows[i]["sentiment"] = p
    n_correct = sum(p["correct"] for p in preds)
    id2label = dict(model.config.id2label)
    result["sentiment"] = {
        "accuracy": n_correct / len(preds), "num_correct": n_correct, "num_scored": len(preds),
        "classifier": name, "rule": opts.sentiment_rule,
        "wanted": sorted({p["wanted"] for p in preds}),
        "label_ids": sentiment_label_ids(id2label),
        "text": "the scored caption (after strip_prefix)",
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any],
                  per_caption: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """Write ``metrics.json`` (sorted keys, indent 2) and ``per_caption.jsonl`` atomically."""
    out = Path(out_dir)
    metrics_path = out / "metrics.json"
    per_path = out / "per_caption.jsonl"
    _write_atomic(metrics_path, json.dumps(metrics, sort_keys=True, indent=2, allow_nan=False)
                  + "\n")
    _write_atomic(per_path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False,
                                               allow_nan=False) + "\n" for r in per_caption))
    return metrics_path, per_path


def score_captions_file(
    captions_path: str | Path, items: Sequence[Item], options: ScoringOptions | None = None,
    out_dir: str | Path | None = None, dataset: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a captions.jsonl file; write metrics.json + per_caption.jsonl beside it (or in
    ``out_dir``) and return the metrics dict. ``dataset`` ({name, format, ...}) is recorded."""
    opts = options or ScoringOptions()
    path = Path(captions_path)
    captions = read_captions_jsonl(path, opts.method)
    metrics, per_caption = score_captions(captions, items, opts)
    metrics["method"] = opts.method if opts.method is not None else captions_method(path)
    metrics["captions_file"] = path.name
    metrics["dataset"] = dict(dataset) if dataset is not None else None
    write_metrics(out_dir if out_dir is not None else path.parent, metrics, per_caption)
    return metrics
