"""Benchmark: the FUSE adapter fit (``fuse_repro.adapter.fit_adapter``) at the paper's shapes.

What it measures
    Wall time, CPU time and peak memory of ``fit_adapter`` calls that never read a fitted
    adapter from the cache (``refit=True``), from corpus loading and tokenization through the
    word tensors, the per-bucket ``tlstsq`` solves and the fit/held-out residuals, for:

    * source: d_i = 1024 (GPT-2 medium's width), a seeded random float32 table behind SmolLM2's
      byte-level BPE (a GPT-2 stand-in, 49152 rows; ``conf/model/tiny_gpt2.yaml``'s tokenizer);
    * target: d_j = 512 (CLIP ViT-B/32's text width), a seeded random float32 table behind
      open_clip's CLIP BPE (49408 rows; ``conf/model/tiny_clip.yaml``'s tokenizer);
    * ``AdapterConfig`` defaults: N = 16384 words per bucket, L = 4, 512 held-out words, the
      wordfreq corpus (~320k words).

    Random tables make the residuals meaningless as quality numbers (they sit near 1); the point
    is the cost, which does not depend on the values.

    Runs, each in a fresh process-local state (new tokenizers, new models):
      1. ``cold``: float64, empty cache folder: the corpus is tokenized (as in a first fit);
      2. ``warm`` x ``--repeats``: float64, the tokenized corpus read from the cache folder
         (``fuse_repro.corpus.tokenize_words``; any later fit sharing a tokenizer and a corpus);
      3. ``float32`` (``--float32``): fit_dtype=float32, warm.
    The phase split comes from ``FittedAdapter.timings`` (the library's own per-phase clock).

    Agreement of a float32 fit with the float64 fit (with ``--float32``): per bucket, the
    relative difference of the held-out residuals, and the relative difference of the bridge's
    gradients (``fuse_repro.bridge.Bridge``) on real sentences; both must be below 1e-3 for
    float32 to be acceptable (issue 9).

Run
    .venv/bin/python benchmarks/fit_adapter.py [--cache-dir .cache] [--repeats 3] [--threads 2]
        [--float32] [--words-per-bucket 16384] [--max-tokens 4] [--seed 0] [--target-s 20]

Exit status 1 if the median warm float64 fit misses ``--target-s`` or memory misses
``--target-gb``. ``--cache-dir`` locates SmolLM2's tokenizer (the converted-model cache); the
tokenized corpus goes to a temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.adapter import FittedAdapter, fit_adapter, format_report  # noqa: E402
from fuse_repro.bridge import Bridge  # noqa: E402
from fuse_repro.config import AdapterConfig  # noqa: E402
from fuse_repro.testing import ToyModel  # noqa: E402
from fuse_repro.tokenizers import load_tokenizer  # noqa: E402

SENTENCES = [
    "An image of a dog running across a grassy field.",
    "Two children are playing football on the beach at sunset!",
    "A red double-decker bus drives past the old cathedral in London.",
    "Someone's bicycle, leaning against a lamppost, looks abandoned.",
    "The chef carefully garnishes 3 plates of spaghetti carbonara.",
    "An extraordinarily photogenic hummingbird hovers near bougainvillea.",
]
GB = 2**30


def build_models(args: argparse.Namespace) -> tuple[ToyModel, ToyModel]:
    """Fresh tokenizers and seeded random tables (untimed): tokenizer caches start cold."""
    conf = REPO / "conf" / "model"
    src_tok = load_tokenizer(OmegaConf.load(conf / "tiny_gpt2.yaml").tokenizer, args.cache_dir)
    tgt_tok = load_tokenizer(OmegaConf.load(conf / "tiny_clip.yaml").tokenizer, args.cache_dir)
    tables = []
    for rows, dim, seed in ((src_tok.vocab_size, args.source_dim, args.seed),
                            (tgt_tok.vocab_size, args.target_dim, args.seed + 1)):
        gen = torch.Generator().manual_seed(seed)
        tables.append(torch.randn(rows, dim, generator=gen, dtype=torch.float32) * 0.02)
    source = ToyModel(f"smollm2_bpe_d{args.source_dim}", src_tok, tables[0])
    target = ToyModel(f"clip_bpe_d{args.target_dim}", tgt_tok, tables[1])
    source.fingerprint(), target.fingerprint()  # hash the tables now, not inside the timed fit
    return source, target


def one_fit(args: argparse.Namespace, cfg: AdapterConfig, token_cache: Path) -> dict[str, Any]:
    source, target = build_models(args)
    cpu0, start = time.process_time(), time.perf_counter()
    adapter = fit_adapter(source, target, cfg, cache_root=token_cache, refit=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"adapter": adapter, "source": source, "target": target, "wall": wall, "cpu": cpu,
            "load": os.getloadavg()[0], "timings": dict(adapter.timings)}


def bridge_gradients(source: Any, target: Any, adapter: FittedAdapter) -> torch.Tensor:
    """Gradient of a fixed random linear functional of the bridged target embeddings with
    respect to the source embeddings of SENTENCES (B, S_i, d_i)."""
    bridge = Bridge(source, target, adapter, overflow="zero")
    ids = [source.tokenizer.encode(s) for s in SENTENCES]
    e = torch.zeros(len(ids), max(map(len, ids)), source.dim)
    for b, row in enumerate(ids):
        e[b, : len(row)] = source.table[row]
    e.requires_grad_(True)
    tb = bridge(ids, e)
    g = torch.randn(tb.embeds.shape, generator=torch.Generator().manual_seed(0))
    (tb.embeds * g * tb.attention_mask[..., None]).sum().backward()
    return e.grad


def rel(a: float | None, b: float | None) -> float:
    return float("nan") if a is None or b is None else abs(a - b) / abs(b)


def print_run(name: str, run: dict[str, Any]) -> None:
    print(f"  {name:<9} wall {run['wall']:7.2f} s   CPU {run['cpu']:7.2f} s   "
          f"(load average {run['load']:.1f})")
    for phase, sec in run["timings"].items():
        print(f"      {phase:<18} {sec:7.2f} s  ({100 * sec / run['wall']:5.1f}%)")
    other = run["wall"] - sum(run["timings"].values())
    print(f"      {'other':<18} {other:7.2f} s  (bucketing, tqdm, Python)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache",
                        help="model cache holding SmolLM2's tokenizer (the app's paths.cache_dir)")
    parser.add_argument("--words-per-bucket", type=int, default=AdapterConfig.words_per_bucket)
    parser.add_argument("--max-tokens", type=int, default=AdapterConfig.max_tokens)
    parser.add_argument("--heldout-words", type=int, default=AdapterConfig.heldout_words)
    parser.add_argument("--source-dim", type=int, default=1024)
    parser.add_argument("--target-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="warm float64 fits; the median is judged")
    parser.add_argument("--float32", action="store_true", help="also fit with fit_dtype=float32 and "
                        "print its agreement with the float64 fit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--target-s", type=float, default=20.0)
    parser.add_argument("--target-gb", type=float, default=8.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = AdapterConfig(max_tokens=args.max_tokens, words_per_bucket=args.words_per_bucket,
                        heldout_words=args.heldout_words, seed=args.seed, fit_dtype="float64")
    with tempfile.TemporaryDirectory(prefix="fit-bench-") as tmp:
        token_cache = Path(tmp)
        cold = one_fit(args, cfg, token_cache)
        warm = [one_fit(args, cfg, token_cache) for _ in range(max(1, args.repeats))]
        f32 = one_fit(args, dataclasses.replace(cfg, fit_dtype="float32"), token_cache) \
            if args.float32 else None
    walls = [r["wall"] for r in warm]
    median = statistics.median(walls)
    median_run = min(warm, key=lambda r: abs(r["wall"] - median))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    ok_time, ok_mem = median < args.target_s, peak_gb < args.target_gb
    src, tgt = cold["source"], cold["target"]

    print("\n" + "=" * 78)
    print("FUSE adapter fit benchmark (fit_adapter, refit=True: no fitted adapter is reused)")
    print("=" * 78)
    for role, model in (("source", src), ("target", tgt)):
        tok = model.tokenizer
        print(f"{role}  : {model.name}: {tok.name} ({type(tok).__name__}), V={tok.vocab_size}, "
              f"d={model.dim}, random float32 table")
    print(f"config  : N={cfg.words_per_bucket} per bucket, L={cfg.max_tokens}, held-out="
          f"{cfg.heldout_words}, corpus={cfg.corpus.kind}, seed={cfg.seed}")
    print(f"machine : {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
          f"torch threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print()
    print(format_report(median_run["adapter"].report))
    print("\nphase split (FittedAdapter.timings, wall s):")
    print_run("cold", cold)
    for k, run in enumerate(warm):
        print_run(f"warm {k + 1}", run)
    f32_ok = False  # float32 is an accepted fast path only when it agrees with float64 (issue 9)
    if f32 is not None:
        print_run("float32", f32)
        print("\nagreement of the float32 fit with the float64 fit (relative; accepted below 1e-3):")
        ref_rows = {r["target_tokens"]: r for r in median_run["adapter"].report["buckets"]}
        worst = 0.0
        for row in f32["adapter"].report["buckets"]:
            d = rel(row["residual_heldout"], ref_rows[row["target_tokens"]]["residual_heldout"])
            worst = max(worst, d)
            print(f"  held-out residual l={row['target_tokens']}: {row['residual_heldout']:.6f} vs "
                  f"{ref_rows[row['target_tokens']]['residual_heldout']:.6f}  rel diff {d:.2e}")
        g64 = bridge_gradients(src, tgt, median_run["adapter"])
        g32 = bridge_gradients(src, tgt, f32["adapter"])
        gd = float((g32 - g64).norm() / g64.norm())
        maps_d = max(float((f32["adapter"].maps[l] - m).norm() / m.norm())
                     for l, m in median_run["adapter"].maps.items())
        print(f"  bridge gradients on {len(SENTENCES)} sentences: rel diff {gd:.2e}")
        print(f"  maps (largest over buckets): rel diff {maps_d:.2e}")
        f32_ok = max(worst, gd) < 1e-3
        print(f"  float32 agreement: {'OK' if f32_ok else 'NOT ACCEPTABLE'} "
              f"(worst {max(worst, gd):.2e})")
    print()
    print(f"cold float64 fit (tokenizes) : {cold['wall']:7.2f} s")
    print(f"warm float64 fit             : {median:7.2f} s  median of {len(walls)} "
          f"[{', '.join(f'{w:.2f}' for w in walls)}]  (target < {args.target_s:.0f} s)  "
          f"{'OK' if ok_time else 'MISSED'}")
    ok_f32 = f32 is not None and f32_ok and f32["wall"] < args.target_s
    if f32 is not None:
        print(f"warm float32 fit             : {f32['wall']:7.2f} s  (target < {args.target_s:.0f} s, "
              f"agreement {'OK' if f32_ok else 'NOT ACCEPTABLE'})  {'OK' if ok_f32 else 'MISSED'}")
    print(f"peak RSS (process lifetime)  : {peak_gb:7.2f} GB  (target < {args.target_gb:.0f} GB)  "
          f"{'OK' if ok_mem else 'MISSED'}")
    # The time target is met by the float64 fit, or by the float32 fit when it agrees with it.
    passed = (ok_time or ok_f32) and ok_mem
    how = "float64" if ok_time else ("fit_dtype=float32 (agrees with float64)" if ok_f32 else "")
    print(f"RESULT: {'PASS' if passed else 'FAIL'}" + (f" with {how}" if passed else ""))
    print("=" * 78)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
