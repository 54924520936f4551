"""Benchmark: the FUSE adapter fit (``fuse_repro.adapter.fit_adapter``) at the paper's shapes.

What it measures
    Wall time and peak memory of one uncached ``fit_adapter`` call (``cache_root=None``), from
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
    .venv/bin/python benchmarks/fit_adapter.py [--cache-dir /tmp/fusecache] [--words-per-bucket 16384]
        [--max-tokens 4] [--seed 0] [--fit-dtype float64] [--profile] [--target-s 60] [--target-gb 8]

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
            digest = hashlib.sha256(self.table.detach().cpu().contiguous().view(torch.uint8).numpy())
            self._fp = f"{self.name}:{self.tokenizer.fingerprint()[:16]}:{digest.hexdigest()[:16]}"
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


def instrument(phases: Phases, source: TableModel, target: TableModel) -> None:
    """Time tokenization per tokenizer and the numeric phases of fit_fuse_maps."""
    source.tokenizer.mid_sentence_ids = phases.wrap(  # type: ignore[method-assign]
        "tokenize source (HF byte-level BPE)", source.tokenizer.mid_sentence_ids
    )
    target.tokenizer.mid_sentence_ids = phases.wrap(  # type: ignore[method-assign]
        "tokenize target (open_clip BPE)", target.tokenizer.mid_sentence_ids
    )
    adapter_mod.load_corpus_words = phases.wrap("load corpus (wordfreq)", adapter_mod.load_corpus_words)
    adapter_mod.word_tensor = phases.wrap("word tensors", adapter_mod.word_tensor)
    adapter_mod.tlstsq = phases.wrap("tlstsq (solve)", adapter_mod.tlstsq)
    # tprod is only used for the residual predictions inside fit_fuse_maps
    adapter_mod.tprod = phases.wrap("residuals: tprod X_i * M", adapter_mod.tprod)
    adapter_mod.relative_residual = phases.wrap("residuals: norms", adapter_mod.relative_residual)


# ----------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache",
                        help="model cache holding SmolLM2's tokenizer (the app's paths.cache_dir)")
    parser.add_argument("--words-per-bucket", type=int, default=AdapterConfig.words_per_bucket)
    parser.add_argument("--max-tokens", type=int, default=AdapterConfig.max_tokens)
    parser.add_argument("--heldout-words", type=int, default=AdapterConfig.heldout_words)
    parser.add_argument("--fit-dtype", default=AdapterConfig.fit_dtype, choices=("float32", "float64"))
    parser.add_argument("--source-dim", type=int, default=1024)
    parser.add_argument("--target-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="run the fit under cProfile")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--target-s", type=float, default=60.0)
    parser.add_argument("--target-gb", type=float, default=8.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    tiny_gpt2 = OmegaConf.load(REPO / "conf" / "model" / "tiny_gpt2.yaml")
    tiny_clip = OmegaConf.load(REPO / "conf" / "model" / "tiny_clip.yaml")
    src_tok = _tokenizer_from_cfg(tiny_gpt2.tokenizer, args.cache_dir)
    tgt_tok = _tokenizer_from_cfg(tiny_clip.tokenizer, args.cache_dir)
    source = TableModel("smollm2_bpe_d1024", src_tok, random_table(src_tok.vocab_size, args.source_dim, args.seed))
    target = TableModel("clip_bpe_d512", tgt_tok, random_table(tgt_tok.vocab_size, args.target_dim, args.seed + 1))
    setup_s = time.perf_counter() - t0

    cfg = AdapterConfig(
        max_tokens=args.max_tokens,
        words_per_bucket=args.words_per_bucket,
        heldout_words=args.heldout_words,
        seed=args.seed,
        fit_dtype=args.fit_dtype,
    )
    phases = Phases()
    instrument(phases, source, target)

    baseline_kb = rss_kb()
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_reset = reset_hwm()
    profiler = cProfile.Profile() if args.profile else None
    sampler = RssSampler() if not hwm_reset else None
    if sampler is not None:
        sampler.__enter__()
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
        peak_kb = sampler.peak
        peak_how = "sampled VmRSS every 20 ms"
    else:
        peak_kb = _status_kb("VmHWM") or rss_kb()
        peak_how = "VmHWM after reset"
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    above_gb = (peak_kb - baseline_kb) / 2**20
    maxrss_gb = maxrss_kb / 2**20
    peak_gb = max(peak_kb, maxrss_kb) / 2**20

    ok_time = wall < args.target_s
    ok_mem = peak_gb < args.target_gb
    print()
    print("=" * 78)
    print("FUSE adapter fit benchmark (fit_adapter, cache_root=None)")
    print("=" * 78)
    print(f"source  : {source.name}: {src_tok.name} ({type(src_tok).__name__}), V={src_tok.vocab_size}, d={source.dim}")
    print(f"target  : {target.name}: {tgt_tok.name} ({type(tgt_tok).__name__}), V={tgt_tok.vocab_size}, d={target.dim}")
    print(f"config  : N={cfg.words_per_bucket} per bucket, L={cfg.max_tokens}, held-out={cfg.heldout_words}, "
          f"corpus={cfg.corpus.kind}, fit_dtype={cfg.fit_dtype}, seed={cfg.seed}")
    print(f"machine : {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (" (cProfile ON: times inflated)" if args.profile else ""))
    print(f"setup (tokenizers + tables, not timed): {setup_s:.1f} s")
    print()
    print(format_report(adapter.report))
    print()
    print("phase breakdown (inclusive wall seconds):")
    for name, sec in phases.seconds.items():
        print(f"  {name:<40} {sec:8.2f} s  ({phases.calls[name]} calls, {100 * sec / wall:5.1f}%)")
    accounted = sum(v for k, v in phases.seconds.items())
    print(f"  {'other (bucketing, fingerprints, ...)':<40} {wall - accounted:8.2f} s")
    print()
    print(f"fit wall time       : {wall:8.2f} s   (target < {args.target_s:.0f} s)  {'OK' if ok_time else 'MISSED'}")
    print(f"fit CPU time        : {cpu:8.2f} s   (user+sys, all threads; CPU/wall = {cpu / wall:.2f}, "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"peak RSS (ru_maxrss): {maxrss_gb:8.2f} GB  (process lifetime; {maxrss_before_kb / 2**20:.2f} GB before the fit)")
    print(f"peak RSS during fit : {peak_kb / 2**20:8.2f} GB  ({peak_how})")
    print(f"  above baseline    : {above_gb:8.2f} GB  (baseline {baseline_kb / 2**20:.2f} GB right after the tables)")
    print(f"peak memory         : {peak_gb:8.2f} GB   (target < {args.target_gb:.0f} GB)  {'OK' if ok_mem else 'MISSED'}")
    print(f"RESULT: {'PASS' if ok_time and ok_mem else 'FAIL'}")
    print("=" * 78)

    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("cumulative").print_stats(args.profile_top)
        stats.sort_stats("tottime").print_stats(args.profile_top)
        print(out.getvalue())
    return 0 if ok_time and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
