"""Benchmark: the FUSE adapter fit (``fuse_repro.adapter.fit_adapter``) at the paper's shapes.

What it measures
    Wall time and peak memory of an uncached ``fit_adapter`` call (``cache_root=None``), from
    corpus loading and tokenization through the word tensors, the per-bucket ``tlstsq`` solves
    and the fit/held-out residuals, for:

    * source: d_i = 1024 (GPT-2 medium's width), a seeded random float32 table behind SmolLM2's
      byte-level BPE (a GPT-2 stand-in, 49152 rows), the ``HFTokenizer`` that models.py builds
      for ``conf/model/tiny_gpt2.yaml``;
    * target: d_j = 512 (CLIP ViT-B/32's text width), a seeded random float32 table behind
      open_clip's CLIP BPE (49408 rows), the ``OpenClipTokenizer``;
    * ``AdapterConfig`` defaults: N = 16384 words per bucket, L = 4, 512 held-out words, the
      wordfreq corpus (~320k words), float64 accumulation.

    Random tables make the residuals meaningless as quality numbers (they sit near 1); the point
    is the cost, which does not depend on the values.

    Memory: ``ru_maxrss`` of the process (includes imports and table building), and the peak
    RSS above a baseline taken right after the tables are built (the kernel's high-water mark is
    reset there via /proc/self/clear_refs when allowed; otherwise a 20 ms RSS sampler is used).

    Every phase is timed through thin wrappers around the functions ``fit_adapter`` calls
    (tokenizers' ``mid_sentence_ids``, ``word_tensor``, ``tlstsq``, ``tprod`` and
    ``relative_residual``); the library is not modified. ``--profile`` additionally runs the
    timed fit under cProfile (times are then inflated) and prints the top functions.

Target (2-core CPU): under 60 s wall and under 8 GB peak. Exit status 1 if either is missed.

Run
    .venv/bin/python benchmarks/fit_adapter.py [--cache-dir /tmp/fusecache] [--repeats 3]
        [--words-per-bucket 16384] [--max-tokens 4] [--seed 0] [--fit-dtype float64]
        [--threads N] [--profile] [--target-s 60] [--target-gb 8]

    With ``--repeats N`` the fit runs N times (fresh, cold tokenizers each time) and the median
    wall time is judged; other processes on a shared 2-core machine inflate single runs.

``--cache-dir`` only locates SmolLM2's tokenizer (the converted-model cache); the adapter itself
is never read from or written to a cache.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fuse_repro.adapter as adapter_mod  # noqa: E402
from fuse_repro.adapter import fit_adapter, format_report  # noqa: E402
from fuse_repro.config import AdapterConfig  # noqa: E402
from fuse_repro.models import WordTokenizer, _tokenizer_from_cfg  # noqa: E402


# ----------------------------------------------------------------------------------------------
# A minimal model: what the adapter touches (see tests/toy.py ToyModel)
# ----------------------------------------------------------------------------------------------
@dataclass
class TableModel:
    name: str
    tokenizer: WordTokenizer
    table: torch.Tensor  # (V, d)
    kind: str = "encoder"
    _fp: str = field(default="", repr=False)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def device(self) -> torch.device:
        return self.table.device

    def embedding_table(self) -> torch.Tensor:
        return self.table

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.table)

    def fingerprint(self) -> str:
        if not self._fp:
            data = self.table.detach().cpu().contiguous().view(torch.uint8).numpy()
            digest = hashlib.sha256(data).hexdigest()[:16]
            self._fp = f"{self.name}:{self.tokenizer.fingerprint()[:16]}:{digest}"
        return self._fp


def random_table(rows: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=gen, dtype=torch.float32) * 0.02


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------
def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kb() -> int:
    value = _status_kb("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Fallback peak tracker when VmHWM cannot be reset: samples VmRSS every ``period`` s."""

    def __init__(self, period: float = 0.02) -> None:
        self.period, self.peak = period, rss_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_kb())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kb())


# ----------------------------------------------------------------------------------------------
# Phase timers (wrappers around what fit_adapter calls; the library is not edited)
# ----------------------------------------------------------------------------------------------
class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return timed


def instrument_library(phases: Phases) -> None:
    """Time the numeric phases of fit_fuse_maps (module globals of fuse_repro.adapter)."""
    adapter_mod.load_corpus_words = phases.wrap(
        "load corpus (wordfreq)", adapter_mod.load_corpus_words
    )
    adapter_mod.word_tensor = phases.wrap("word tensors", adapter_mod.word_tensor)
    adapter_mod.tlstsq = phases.wrap("tlstsq (solve)", adapter_mod.tlstsq)
    # inside fit_fuse_maps tprod only predicts X_i * M for the fit / held-out residuals
    adapter_mod.tprod = phases.wrap("residuals: tprod X_i * M", adapter_mod.tprod)
    adapter_mod.relative_residual = phases.wrap("residuals: norms", adapter_mod.relative_residual)


def instrument_tokenizers(phases: Phases, source: TableModel, target: TableModel) -> None:
    """Time each tokenizer's share of make_buckets (instance attributes only)."""
    source.tokenizer.mid_sentence_ids = phases.wrap(  # type: ignore[method-assign]
        "tokenize source (HF byte-level BPE)", source.tokenizer.mid_sentence_ids
    )
    target.tokenizer.mid_sentence_ids = phases.wrap(  # type: ignore[method-assign]
        "tokenize target (open_clip BPE)", target.tokenizer.mid_sentence_ids
    )


# ----------------------------------------------------------------------------------------------
def build_models(args: argparse.Namespace) -> tuple[TableModel, TableModel]:
    """Fresh tokenizers every time: open_clip's BPE cache (and any memo of the wrapper) must be
    cold, as in a first fit."""
    conf = REPO / "conf" / "model"
    src_tok = _tokenizer_from_cfg(OmegaConf.load(conf / "tiny_gpt2.yaml").tokenizer, args.cache_dir)
    tgt_tok = _tokenizer_from_cfg(OmegaConf.load(conf / "tiny_clip.yaml").tokenizer, args.cache_dir)
    src_table = random_table(src_tok.vocab_size, args.source_dim, args.seed)
    tgt_table = random_table(tgt_tok.vocab_size, args.target_dim, args.seed + 1)
    return (
        TableModel(f"smollm2_bpe_d{args.source_dim}", src_tok, src_table),
        TableModel(f"clip_bpe_d{args.target_dim}", tgt_tok, tgt_table),
    )


def one_fit(args: argparse.Namespace, cfg: AdapterConfig, phases: Phases) -> dict[str, Any]:
    """Build the models (untimed), then time and measure one uncached fit_adapter call."""
    t0 = time.perf_counter()
    source, target = build_models(args)
    setup_s = time.perf_counter() - t0
    phases.seconds.clear()
    phases.calls.clear()
    instrument_tokenizers(phases, source, target)

    baseline_kb = rss_kb()
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_reset = reset_hwm()
    sampler = None if hwm_reset else RssSampler().__enter__()
    profiler = cProfile.Profile() if args.profile else None
    cpu0 = time.process_time()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    adapter = fit_adapter(source, target, cfg, cache_root=None)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    if sampler is not None:
        sampler.__exit__(None, None, None)
        peak_kb, peak_how = sampler.peak, "sampled VmRSS every 20 ms"
    else:
        peak_kb, peak_how = _status_kb("VmHWM") or rss_kb(), "VmHWM reset at the baseline"
    return {
        "source": source,
        "target": target,
        "setup_s": setup_s,
        "wall": wall,
        "cpu": cpu,
        "load": os.getloadavg()[0],
        "phases": dict(phases.seconds),
        "calls": dict(phases.calls),
        "baseline_kb": baseline_kb,
        "maxrss_before_kb": maxrss_before_kb,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_kb": peak_kb,
        "peak_how": peak_how,
        "report": adapter.report,
        "profiler": profiler,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache",
                        help="model cache holding SmolLM2's tokenizer (the app's paths.cache_dir)")
    parser.add_argument("--words-per-bucket", type=int, default=AdapterConfig.words_per_bucket)
    parser.add_argument("--max-tokens", type=int, default=AdapterConfig.max_tokens)
    parser.add_argument("--heldout-words", type=int, default=AdapterConfig.heldout_words)
    parser.add_argument("--fit-dtype", default=AdapterConfig.fit_dtype,
                        choices=("float32", "float64"))
    parser.add_argument("--source-dim", type=int, default=1024)
    parser.add_argument("--target-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="fits to run (fresh tokenizers each); the median wall time is judged")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="run the fit under cProfile")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--target-s", type=float, default=60.0)
    parser.add_argument("--target-gb", type=float, default=8.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = AdapterConfig(
        max_tokens=args.max_tokens,
        words_per_bucket=args.words_per_bucket,
        heldout_words=args.heldout_words,
        seed=args.seed,
        fit_dtype=args.fit_dtype,
    )
    phases = Phases()
    instrument_library(phases)
    runs = [one_fit(args, cfg, phases) for _ in range(max(1, args.repeats))]

    walls = [r["wall"] for r in runs]
    wall = statistics.median(walls)
    median_run = min(runs, key=lambda r: abs(r["wall"] - wall))
    peak_kb = max(max(r["peak_kb"], r["maxrss_kb"]) for r in runs)
    above_gb = max(r["peak_kb"] - r["baseline_kb"] for r in runs) / 2**20
    peak_gb = peak_kb / 2**20
    ok_time = wall < args.target_s
    ok_mem = peak_gb < args.target_gb
    src, tgt = median_run["source"], median_run["target"]
    gb = 2**20

    print()
    print("=" * 78)
    print("FUSE adapter fit benchmark (fit_adapter, cache_root=None)")
    print("=" * 78)
    for role, model in (("source", src), ("target", tgt)):
        tok = model.tokenizer
        print(f"{role}  : {model.name}: {tok.name} ({type(tok).__name__}), "
              f"V={tok.vocab_size}, d={model.dim}, random float32 table")
    print(f"config  : N={cfg.words_per_bucket} per bucket, L={cfg.max_tokens}, "
          f"held-out={cfg.heldout_words}, corpus={cfg.corpus.kind}, fit_dtype={cfg.fit_dtype}, "
          f"seed={cfg.seed}")
    print(f"machine : {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads"
          + ("  (cProfile ON: times inflated)" if args.profile else ""))
    print(f"setup (tokenizers + tables, untimed): {median_run['setup_s']:.1f} s")
    print()
    print(format_report(median_run["report"]))
    print()
    print(f"phase breakdown of the median run ({median_run['wall']:.2f} s, inclusive wall s):")
    for name, sec in median_run["phases"].items():
        share = 100 * sec / median_run["wall"]
        print(f"  {name:<38} {sec:8.2f} s  ({median_run['calls'][name]:>2} calls, {share:5.1f}%)")
    other = median_run["wall"] - sum(median_run["phases"].values())
    print(f"  {'other (bucketing, fingerprints, ...)':<38} {other:8.2f} s")
    print()
    print(f"fit wall time       : {wall:8.2f} s   median of {len(runs)} "
          f"[{', '.join(f'{w:.2f}' for w in walls)}]  (target < {args.target_s:.0f} s)  "
          f"{'OK' if ok_time else 'MISSED'}")
    for k, r in enumerate(runs):
        print(f"  run {k + 1}: CPU {r['cpu']:.1f} s (user+sys, all threads; CPU/wall "
              f"{r['cpu'] / r['wall']:.2f}), 1-min load average at the end {r['load']:.1f}")
    print(f"peak RSS (ru_maxrss): {max(r['maxrss_kb'] for r in runs) / gb:8.2f} GB  "
          f"(process lifetime; {runs[0]['maxrss_before_kb'] / gb:.2f} GB before the first fit)")
    print(f"peak RSS during fit : {max(r['peak_kb'] for r in runs) / gb:8.2f} GB  "
          f"({median_run['peak_how']})")
    print(f"  above baseline    : {above_gb:8.2f} GB  (baseline "
          f"{median_run['baseline_kb'] / gb:.2f} GB right after the tables were built)")
    print(f"peak memory         : {peak_gb:8.2f} GB   (target < {args.target_gb:.0f} GB)  "
          f"{'OK' if ok_mem else 'MISSED'}")
    print(f"RESULT: {'PASS' if ok_time and ok_mem else 'FAIL'}")
    print("=" * 78)

    if median_run["profiler"] is not None:
        out = io.StringIO()
        stats = pstats.Stats(median_run["profiler"], stream=out).strip_dirs()
        stats.sort_stats("cumulative").print_stats(args.profile_top)
        stats.sort_stats("tottime").print_stats(args.profile_top)
        print(out.getvalue())
    return 0 if ok_time and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
