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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_repro.errors import FuseError, use_one_of

log = logging.getLogger(__name__)

# Canonical metric names (pycocoevalcap's method names); config values match case-insensitively.
METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SPICE_CORENLP = "stanford-corenlp-3.6.0"
SPICE_CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
# Characters Python (and Java's PTB lexer) treat as line breaks: a caption holding one would
# shift every following line of the tokenizer's line-per-caption output.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class ScorerError(FuseError, RuntimeError):
    """A scorer could not run (no Java, a jar missing, a subprocess died)."""


class ScorerConfigError(FuseError, ValueError):
    """A scoring option that cannot work (unknown metric, rule or key)."""


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


def canonical_metric(name: str) -> str:
    """"bleu" -> "Bleu", "rouge_l"/"rouge" -> "ROUGE_L", ...; a clear error for unknown names."""
    aliases = {m.lower(): m for m in METRICS}
    aliases.update({"rouge": "ROUGE_L", "rougel": "ROUGE_L", "bleu4": "Bleu"})
    key = str(name).lower()
    if key not in aliases:
        raise ScorerConfigError(
            f"unknown metric {name!r} in scoring.metrics; known: {list(METRICS)}; "
            f"{use_one_of('scoring.metrics', METRICS, name, in_list=True)}")
    return aliases[key]


def versions() -> dict[str, str]:
    try:
        version = importlib.metadata.version("pycocoevalcap")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {"pycocoevalcap": version,
            "tokenizer": "PTBTokenizer (stanford-corenlp-3.4.1, -preserveLines -lowerCase, "
                         "punctuation removed)"}

