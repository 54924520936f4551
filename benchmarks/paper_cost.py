"""Benchmark: what the paper's Tables 1 and 2 cost, measured at the paper's search settings.

What it measures (on ``--device``, this CPU by default), with the paper's models at their true
architectures and real tokenizers, random weights (``weights=random``: costs do not depend on
the weights' values; no hub here):

1. **Fit** of the FUSE adapter at the paper's shape (L = 4, N = ``--words-per-bucket``, 16384
   by default, float64), ``refit=True``: GPT-2 medium -> CLIP ViT-B/32 (QuickGELU) and GPT-2
   medium -> RoBERTa-base (3 labels): wall seconds and peak memory (RSS growth on CPU, sampled
   every 20 ms; ``torch.cuda.max_memory_allocated`` on CUDA). Corpus: the wordfreq list (the
   WikiText stand-in of offline runs: README "fitting corpus"; WikiText fills the 4-token bucket
   fully, wordfreq caps it near 10.4k words, so a WikiText fit is slightly larger).
2. **One search step** at the paper's settings (``conf/search/paper.yaml``: top-k 512, beam 5,
   the authors' conventions; objective weights from ``conf/objective/clip*.yaml``) for the COCO
   objective (GPT-2 + CLIP) and the SentiCap one (+ RoBERTa sentiment). To measure a step of
   mid-caption length (the mean of a 16-step caption), ``--warm-steps`` (8) steps are first run
   at top-k 8, then the step is measured at top-k 512 with 5 beams. Split, each timed alone on
   the same state with public APIs:
     - ``lm``: the primary LM's forward of one token per beam (``LMState.advance``, KV cache);
     - ``retokenization``: decode the 2560 candidates and encode them for each secondary model
       (``Bridge.lookup``: text, words, target ids, embedding lookup), plus the bridge forward
       of the 5 slot sequences (``Bridge.__call__``);
     - ``bridge``: the FUSE backward of the slot sequences (the t-products; autograd from the
       bridged embeddings to the primary's);
     - ``secondary_fwd_bwd``: each secondary model's forward + backward for the slot gradient;
     - ``secondary_eval``: the secondary models' forward over the 2560 candidates
       (``evaluate_pairs`` minus its lookups);
     - ``other``: the whole ``search_step`` minus the parts (proposal ranking, the slot's
       vocabulary projection, beam selection, Python).
3. **Captions** (``--captions N``, used by ``benchmarks/gpu_check.sh``): N synthetic images
   captioned with the full paper search (``--steps``, 16), seconds per caption and per step,
   peak memory.

Projection: hours for every row of Tables 1 and 2 (COCO Karpathy test 5000 images, NoCaps val
4500, SentiCap test positive 673 / negative 503, and our two COCO ablations) = fit once per model
pair + images x steps x seconds per step, on this device (measured step), and on a GPU: from a
``gpu_check.sh`` JSON (``--gpu-json``, measured there) when one exists, else from the FLOP model
stated in the output (assumed sustained FP32 throughput; retokenization stays CPU-bound and is
carried over as measured here). Everything printed as "projected" is arithmetic on the measured
figures, never a measurement of a full table.

Run
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/paper_cost.py [--device cpu] [--json out.json]
        [--gpu-json benchmarks/gpu_check.json] [--words-per-bucket 16384] [--top-k 512]
        [--beam-width 5] [--steps 16] [--warm-steps 8] [--captions 0] [--cache-dir .cache]
    Smoke (minutes, same code path): --words-per-bucket 48 --heldout-words 8 --top-k 8
        --beam-width 2 --warm-steps 1 --steps 2 --captions 1 --corpus-max-words 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.adapter import fit_adapter  # noqa: E402
from fuse_repro.bridge import OVERFLOW_POLICIES, Bridge  # noqa: E402
from fuse_repro.config import (  # noqa: E402
    AdapterConfig,
    CorpusConfig,
    SearchConfig,
    SyntheticImagesConfig,
)
from fuse_repro.data.synthetic import read_synthetic_images  # noqa: E402
from fuse_repro.models import load_model, model_config  # noqa: E402
from fuse_repro.objectives import build_objective, common_prefix  # noqa: E402
from fuse_repro.search import (  # noqa: E402
    LMState,
    candidate_scores,
    eval_precision,
    evaluate_pairs,
    lm_context,
    pairs_of,
    propose,
    select_beams,
    search_items,
    search_step,
    start_search,
    timed_search,
)

GiB = 2**30
nan = float("nan")
MEMORY_NOTE = {True: "CPU: growth of the resident set over the phase (models excluded)",
               False: "CUDA: torch.cuda.max_memory_allocated during the phase (models included)"}
# Every row of the paper's Tables 1 and 2 we reproduce (conf/experiment/paper_*), with its test
# size (the paper, section 4.1; SentiCap test splits counted in ../shared/data/senticap).
ROWS = [
    ("Table 1", "MS-COCO Karpathy test, FUSE", "paper_coco_fuse", 5000, "clip", "fuse"),
    ("Table 1", "NoCaps val, FUSE", "paper_nocaps_fuse", 4500, "clip", "fuse"),
    ("Table 1 abl.", "MS-COCO, lm_only", "paper_coco_lm_only", 5000, "clip", "lm_only"),
    ("Table 1 abl.", "MS-COCO, random_proposal", "paper_coco_random_proposal", 5000, "clip",
     "random_proposal"),
    ("Table 2", "SentiCap positive, FUSE", "paper_senticap_positive_fuse", 673, "clip_sentiment",
     "fuse"),
    ("Table 2", "SentiCap negative, FUSE", "paper_senticap_negative_fuse", 503, "clip_sentiment",
     "fuse"),
]
PAIRS = {"clip": ("clip",), "clip_sentiment": ("clip", "roberta")}
# FLOP model: sustained throughput assumed for a GPU without a gpu_check.sh measurement:
# H200 FP32 (no TF32: torch's default for matmuls) peak ~67 TFLOP/s, at an assumed 35% for
# these small chunked batches (sequences of ~10 tokens, 256 per forward).
GPU_FP32_PEAK = 67e12
GPU_UTILIZATION = 0.35


# ------------------------------------------------------------------------------ measuring tools
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Peak memory during a block: RSS growth over the block's start (CPU, sampled every 20 ms)
    or ``torch.cuda.max_memory_allocated`` (CUDA, reset at the start)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._start = self.rss()
        self._max = self._start

        def sample() -> None:
            while not self._stop.wait(0.02):
                self._max = max(self._max, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        self._thread.join()
        self.bytes = max(self._max, self.rss()) - self._start


# The clock of every timed part: wall seconds (default; the only meaningful one on CUDA) or this
# process's CPU seconds (``--clock cpu``): on a shared, busy CPU a single-threaded process's CPU
# time is what its wall time would be on an idle core, while its wall time depends on the load.
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def timed(where: torch.device, fn: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its seconds on ``clock`` (the device synchronized around it)."""
    sync(where)
    start = clock()
    out = fn(*args, **kwargs)
    sync(where)
    return out, clock() - start


def non_embedding_params(module: torch.nn.Module) -> int:
    """Parameters a token passes through (embedding tables excluded: they are lookups)."""
    skip = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


# ------------------------------------------------------------------------------------ the parts
def paper_search(args: argparse.Namespace) -> SearchConfig:
    """conf/search/paper.yaml's values (its defaults line dropped), with the CLI overrides."""
    values = OmegaConf.to_container(OmegaConf.load(REPO / "conf/search/paper.yaml"))
    assert isinstance(values, dict)
    values.pop("defaults", None)
    values.update(steps=args.steps, top_k=args.top_k, beam_width=args.beam_width)
    return SearchConfig(**values)


def objective_weights() -> dict[str, Any]:
    """lm weight and term weights of conf/objective/clip_sentiment.yaml (clip = clip.yaml's)."""
    node = OmegaConf.load(REPO / "conf/objective/clip_sentiment.yaml")
    return {"lm": float(node.lm_weight), "clip": float(node.terms.clip.weight),
            "sentiment": float(node.terms.sentiment.weight)}


def fit(
    primary: Any, target: Any, args: argparse.Namespace, device: torch.device
) -> tuple[Any, dict]:
    cfg = AdapterConfig(words_per_bucket=args.words_per_bucket, heldout_words=args.heldout_words,
                        corpus=CorpusConfig(kind="wordfreq", max_words=args.corpus_max_words))
    if args.no_refit:  # the adapter from the cache (a previous run of this script fitted it)
        adapter = fit_adapter(primary, target, cfg, args.cache_dir, device=device)
        if not adapter.from_cache:
            raise SystemExit("error: --no-refit: the adapter was not in --cache-dir; run without it")
        return adapter, {"seconds": float("nan"), "cpu_seconds": float("nan"), "peak_bytes": 0,
                         "timings": {}, "words_per_bucket": {}, "from_cache": True}
    cpu = time.process_time()
    with Peak(device) as peak:
        adapter, seconds = timed(device, fit_adapter, primary, target, cfg, args.cache_dir,
                                 refit=True, device=device)
    cpu = time.process_time() - cpu
    buckets = {str(b["target_tokens"]): b.get("words") for b in adapter.report.get("buckets", [])}
    return adapter, {"seconds": seconds, "cpu_seconds": cpu, "peak_bytes": peak.bytes,
                     "timings": adapter.timings,
                     "words_per_bucket": buckets}


def step_split(state: Any, device: torch.device) -> dict[str, Any]:
    """Seconds of one search step at ``state`` split into its parts (module docstring); then
    the step itself is run (``search_step``, which advances ``state``) and timed as ``total``."""
    cfg, primary = state.cfg, state.primary
    t: dict[str, Any] = dict.fromkeys(
        ("lm", "retokenization", "bridge", "secondary_fwd_bwd", "secondary_eval"), 0.0)
    # the slot gradient's pieces, on the sequences the step uses (beams + a token-0 slot)
    seqs = [state.prefix_ids + b + [0] for b in state.beams]
    ids = torch.tensor(seqs, dtype=torch.long, device=primary.device)  # (B, S_i)
    for obj in state.searching:
        embeds = primary.embed(ids).detach().requires_grad_(True)  # (B, S_i, d_i)
        tb, dt = timed(device, obj.bridge, seqs, embeds)
        t["retokenization"] += dt
        t["retokenization_slot"] = t.get("retokenization_slot", 0.0) + dt
        loss, dt1 = timed(device, lambda obj=obj, tb=tb: obj.weight * obj.loss(tb).sum())
        (grad_tb,), dt2 = timed(device, torch.autograd.grad, loss, [tb.embeds], retain_graph=True)
        t["secondary_fwd_bwd"] += dt1 + dt2
        _, dt = timed(device, torch.autograd.grad, [tb.embeds], [embeds], [grad_tb])
        t["bridge"] += dt
    candidates = propose(state, candidate_scores(state))  # (B, k)
    pairs = [(b, int(c)) for b in range(len(state.beams)) for c in candidates[b].tolist()]
    sequences = [state.prefix_ids + state.beams[b] + [c] for b, c in pairs]
    beams = [state.prefix_ids + b for b in state.beams]
    lookups, lengths, new_tokens, paths = 0.0, {}, {}, {}
    for obj in state.searching:
        if cfg.prefix_cache and obj.can_prefix_cache():
            # what evaluate_extensions retokenizes: ids only, incremental per beam
            ext, dt = timed(device, obj.bridge.extension_ids, beams, pairs)
            lookups += dt
            lengths[obj.name] = [len(c) for c in ext.candidates]
            new_tokens[obj.name] = [
                len(c) - min(common_prefix(c, ext.beams[g][:-1]), len(c) - 1)
                for g, c in zip(ext.group, ext.candidates)]
            paths[obj.name] = "prefix_cache"
            continue
        paths[obj.name] = "full"
        for start in range(0, len(sequences), cfg.eval_chunk):
            tb, dt = timed(device, obj.bridge.lookup, sequences[start : start + cfg.eval_chunk])
            lookups += dt
            lengths.setdefault(obj.name, []).extend(int(m.sum()) for m in tb.attention_mask)
            new_tokens.setdefault(obj.name, []).extend(int(m.sum()) for m in tb.attention_mask)
    t["retokenization"] += lookups
    t["retokenization_eval"] = lookups
    beam_tokens = {o.name: sum(len(b) - 1 for b in o.bridge.extension_ids(beams, pairs[:1]).beams)
                   / len(beams) for o in state.searching if paths[o.name] == "prefix_cache"}
    _, dt = timed(device, evaluate_pairs, state, candidates)
    t["secondary_eval"] = max(0.0, dt - lookups)  # evaluate_pairs retokenizes the candidates itself
    # LM: one forward of one token per beam, on a fresh cache of the same context length
    context = lm_context(primary, state.prefix_ids + state.beams[0])
    lm = LMState(primary, context)
    tokens = candidates[:, 0].tolist()
    lm.advance([0] * len(tokens), tokens)
    _, t["lm"] = timed(device, lm.advance, list(range(len(tokens))), candidates[:, 1].tolist())
    cpu = time.process_time()
    _, t["total"] = timed(device, search_step, state)
    t["total_cpu_seconds"] = time.process_time() - cpu
    t["other"] = max(0.0, t["total"] - sum(t[k] for k in ("lm", "retokenization", "bridge",
                                                            "secondary_fwd_bwd", "secondary_eval")))
    t.update(pairs=len(pairs), beams=len(state.beams), generated_tokens=len(state.beams[0]) - 1,
             mean_target_tokens={k: sum(v) / len(v) for k, v in lengths.items()},
             mean_new_tokens={k: sum(v) / len(v) for k, v in new_tokens.items()},
             beam_target_tokens=beam_tokens, eval_paths=paths, prefix_cache=cfg.prefix_cache,
             chosen=[list(b) for b in state.beams], chosen_terms=dict(state.history[-1]))
    return t


def precision_agreement(state: Any, dtypes: list[str], device: torch.device) -> dict[str, Any]:
    """On ``state`` (not advanced): evaluate the step's candidates in float32 and in each of
    ``dtypes`` (``eval_precision``; bfloat16 autocast also runs on the CPU here, for the check
    only) and compare: are the selected beams the same, how many of the 16 lowest totals are
    shared, and the largest relative difference of a raw loss."""
    cfg, tok = state.cfg, state.primary.tokenizer
    candidates = propose(state, candidate_scores(state))  # (B, k)
    pairs = pairs_of(state, candidates)
    beams = [state.prefix_ids + b for b in state.beams]

    def evaluate(dtype: str) -> Any:
        with eval_precision(dtype, device, allow_cpu=True):
            raw = {o.name: o.evaluate_extensions(beams, pairs, cfg.eval_chunk, cfg.prefix_cache)
                   for o in state.searching}
        return raw, evaluate_pairs(state, candidates, raw)

    (ref_raw, ref), out = evaluate("float32"), {}
    chosen = select_beams(ref.total, cfg.beam_width, lambda k: tok.decode(ref.sequences[k]))
    top = set(torch.argsort(ref.total, stable=True)[:16].tolist())
    for dtype in dtypes:
        raw, ev = evaluate(dtype)
        other = select_beams(ev.total, cfg.beam_width, lambda k: tok.decode(ev.sequences[k]))
        out[dtype] = {
            "same_selected_beams": other == chosen,
            "top16_agreement": len(top & set(torch.argsort(ev.total, stable=True)[:16].tolist())) / 16,
            "max_relative_loss_difference": max(
                float(((raw[n] - ref_raw[n]).abs() / ref_raw[n].abs().clamp_min(1e-12)).max())
                for n in raw),
        }
    return out


def measure_step(primary: Any, objectives: list[Any], item: Any, cfg: SearchConfig, weights: dict,
                 args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Reach mid-caption length with ``--warm-steps`` cheap steps (top-k 8), then split one step
    at the paper's settings (``cfg``)."""
    # warm steps on the plain path, so the measured state is the same whatever cfg.prefix_cache
    warm = replace(cfg, top_k=min(8, cfg.top_k), prefix_cache=False)
    state = start_search(item, primary, objectives, warm, weights["lm"], seed=0)
    for _ in range(args.warm_steps):
        search_step(state)
    state.cfg = cfg
    checks = []
    check_precision = bool(args.precision_check) and cfg.prefix_cache  # the production path
    if check_precision:
        checks.append(precision_agreement(state, args.precision_check.split(","), device))
    with Peak(device) as peak:
        split = step_split(state, device)
    split["peak_bytes"] = peak.bytes
    if check_precision:  # more states: the following steps of the same search
        for _ in range(args.precision_states - 1):
            checks.append(precision_agreement(state, args.precision_check.split(","), device))
            search_step(state)
        split["precision"] = {
            d: {"states": len(checks),
                "same_selected_beams": sum(c[d]["same_selected_beams"] for c in checks) / len(checks),
                "top16_agreement": sum(c[d]["top16_agreement"] for c in checks) / len(checks),
                "max_relative_loss_difference": max(c[d]["max_relative_loss_difference"]
                                                    for c in checks)}
            for d in checks[0]}
    return split


def flop_model(step: dict[str, Any], params: dict[str, int], primary_dims: tuple[int, int]) -> dict:
    """FLOPs of one step (2 x parameters x tokens per forward, 3x that for forward + backward):
    candidate evaluation, slot gradient, LM token + its vocabulary projection."""
    k, b = step["pairs"], step["beams"]
    lengths = step["mean_target_tokens"]
    # each candidate runs its new tokens (all of them on the full path) + each beam's prefix once
    evaluation = sum(2 * params[name] * (k * step["mean_new_tokens"][name]
                                         + b * step["beam_target_tokens"].get(name, 0.0))
                     for name in lengths)
    gradient = sum(6 * params[name] * b * lengths[name] for name in lengths)
    d, vocab = primary_dims
    lm = 2 * params["primary"] * b + 2 * d * vocab * b * 2  # LM token + logits, slot projection
    return {"evaluation": evaluation, "gradient": gradient, "lm": lm,
            "total": evaluation + gradient + lm}


def projections(
    result: dict[str, Any], gpu: dict[str, Any] | None, args: argparse.Namespace
) -> list[dict]:
    """Hours per table row on this device (measured step) and on a GPU (gpu_check or FLOPs)."""
    out = []
    fits = {name: f["seconds"] for name, f in result["fit"].items()}
    for table, row, experiment, images, objective, method in ROWS:
        if objective not in result["steps"]:  # not measured (--objectives)
            continue
        step = result["steps"][objective]
        per_step = {"fuse": step["total"],
                    "random_proposal": step["total"] - step["bridge"] - step["secondary_fwd_bwd"],
                    "lm_only": step["lm"] + step["other"]}[method]
        fit_s = sum(fits[p] for p in PAIRS[objective])
        here = (fit_s + images * args.steps * per_step) / 3600
        gpu_h, gpu_basis = None, None
        if gpu is not None and objective in gpu.get("steps", {}):
            g = gpu["steps"][objective]
            g_step = {"fuse": g["total"],
                      "random_proposal": g["total"] - g["bridge"] - g["secondary_fwd_bwd"],
                      "lm_only": g["lm"] + g["other"]}[method]
            caps = gpu.get("captions") or {}
            if objective == "clip" and method == "fuse" and caps.get("seconds_per_step"):
                g_step = caps["seconds_per_step"]
            g_fit = sum(gpu["fit"][p]["seconds"] for p in PAIRS[objective])
            gpu_h, gpu_basis = (g_fit + images * args.steps * g_step) / 3600, "gpu_check"
        else:
            flops = step["flops"]
            share = {"fuse": 1.0,
                     "random_proposal": (flops["evaluation"] + flops["lm"]) / flops["total"],
                     "lm_only": flops["lm"] / flops["total"]}[method]
            compute = share * flops["total"] / (GPU_FP32_PEAK * GPU_UTILIZATION)
            cpu_bound = step["retokenization"] if method != "lm_only" else 0.0
            gpu_h = images * args.steps * (compute + cpu_bound) / 3600
            gpu_basis = "FLOP model"
        out.append({"table": table, "row": row, "experiment": experiment, "images": images,
                    "method": method, "seconds_per_step": per_step, "fit_seconds": fit_s,
                    "hours_here": here, "hours_gpu": gpu_h, "gpu_basis": gpu_basis})
    return out


def h200_projection(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """PROJECTED hours for Table 1 + NoCaps (COCO 5000 + NoCaps 4500 captions) on one H200 from
    the prefix-cached COCO step measured here, split into host retokenization, GPU compute and
    the fixed per-step cost. Counts the candidates a caption really evaluates: ``top_k`` at the
    first step (one beam), ``beam_width * top_k`` at each later one. Assumptions (stated, not
    measured): FP32 at GPU_UTILIZATION of its peak; ``--fixed-step-seconds`` of launch and
    Python latency per step, shared by ``--items-per-step`` items; ``--processes`` processes
    sharing the GPU, so host work runs in parallel while GPU work is serialized."""
    step = result["steps"].get("clip")
    if step is None or "mean_new_tokens" not in step:
        return None
    captions = 5000 + 4500
    steps, k, beams = args.steps, args.top_k, args.beam_width
    per_caption = k + (steps - 1) * beams * k  # candidates evaluated for one caption
    flops = step["flops"]
    per_candidate = flops["evaluation"] / step["pairs"]  # includes the beams' prefix share
    per_step = flops["gradient"] + flops["lm"]
    gpu = (per_caption * per_candidate + steps * per_step) / (GPU_FP32_PEAK * GPU_UTILIZATION)
    # host: the candidates' retokenization + the slot sequences' bridge forward, as measured here
    host = per_caption * step["retokenization_eval"] / step["pairs"] + steps * step["retokenization_slot"]
    fixed = steps * args.fixed_step_seconds / args.items_per_step
    n = args.processes

    def hours(processes: int) -> float:  # N processes sharing the GPU: host parallel, GPU serial
        return captions * max(gpu, (host + fixed + gpu) / processes) / 3600

    wall = max(gpu, (host + fixed + gpu) / n)  # per caption
    return {"captions": captions, "candidates_per_caption": per_caption,
            "hours_by_processes": {str(p): hours(p) for p in sorted({1, 8, 16, n})},
            "gpu_compute_s": gpu, "host_retokenization_s": host, "fixed_s": fixed,
            "items_per_step": args.items_per_step, "processes": n,
            "seconds_per_caption": wall, "hours": captions * wall / 3600,
            "hours_one_process_one_item": captions * (gpu + host + steps * args.fixed_step_seconds)
            / 3600,
            "split_hours": {"gpu_compute": captions * gpu / 3600,
                            "host_retokenization": captions * host / 3600,
                            "fixed_per_step": captions * fixed / 3600}}


def print_report(result: dict[str, Any], rows: list[dict], args: argparse.Namespace) -> None:
    dev, load = result["device"], result["load_average"]
    print(f"\n== measured on {dev} ({result['threads']} torch thread(s); load average at start "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores) ==")
    print(f"clock: {result.get('clock', 'wall')} seconds"
          + (f"; fit figures from {result['fit_from']}" if result.get("fit_from") else ""))
    print(f"search: top_k {args.top_k}, beam {args.beam_width}, steps {args.steps} "
          f"(conf/search/paper.yaml); fit: N {args.words_per_bucket}, L 4, float64, wordfreq; "
          f"overflow {getattr(args, 'overflow', 'random')}")
    print(f"peak memory: {MEMORY_NOTE[result['device'].startswith('cpu')]}; whole process peak "
          f"RSS {result['max_rss_bytes'] / GiB:.2f} GiB")
    print("\n| fit (refit) | seconds | CPU seconds | peak memory (GiB) | words per bucket 1..4 |")
    print("|---|---|---|---|---|")
    for name, f in result["fit"].items():
        words = ", ".join(str(v) for _, v in sorted(f["words_per_bucket"].items()))
        print(f"| gpt2_medium -> {name} | {f['seconds']:.1f} | {f.get('cpu_seconds', nan):.1f} | "
              f"{f['peak_bytes'] / GiB:.2f} | {words} |")
    parts = ("lm", "retokenization", "bridge", "secondary_fwd_bwd", "secondary_eval", "other")
    print("\n| step (s) | pairs | " + " | ".join(parts)
          + " | total | total CPU s | peak memory (GiB) |")
    print("|---" * (len(parts) + 5) + "|")
    for name, s in result["steps"].items():
        cells = " | ".join(f"{s[p]:.2f}" for p in parts)
        print(f"| {name} (step {s['generated_tokens'] + 1}) | {s['pairs']} | {cells} | "
              f"{s['total']:.2f} | {s['total_cpu_seconds']:.2f} | {s['peak_bytes'] / GiB:.2f} |")
    check = result.get("prefix_cache_check")
    if check:
        print(f"\nprefix cache: same chosen tokens as prefix_cache=false: "
              f"{check['same_chosen_tokens']}; best total differs by "
              f"{check['best_total_difference']:.2e}; step speed-up {check['speedup']:.1f}x")
    for name, s in result["steps"].items():
        print(f"  {name}: evaluation {s['eval_paths']}, mean target tokens "
              f"{ {k: round(v, 2) for k, v in s['mean_target_tokens'].items()} }, mean tokens run "
              f"per candidate { {k: round(v, 2) for k, v in s['mean_new_tokens'].items()} }")
    for name, s in result["steps"].items():
        for dtype, a in (s.get("precision") or {}).items():
            print(f"  precision {name} {dtype} vs float32 ({a['states']} states): same selected "
                  f"beams {a['same_selected_beams']:.0%}, top-16 agreement "
                  f"{a['top16_agreement']:.0%}, largest relative loss difference "
                  f"{a['max_relative_loss_difference']:.1e}")
    for caps in (result.get("captions_by_items_per_step") or {}).values():
        print(f"\ncaptions: {caps['images']} synthetic images x {caps['steps']} steps, "
              f"{caps['items_per_step']} item(s) per step: "
              f"{caps['seconds_per_caption']:.2f} s per caption, "
              f"{caps['seconds_per_step']:.3f} s per step, "
              f"peak memory {caps['peak_bytes'] / GiB:.2f} GiB")
    print("\nPROJECTED (arithmetic on the figures above, not measured): fit once per model pair "
          f"+ images x {args.steps} steps x seconds per step")
    print("| table | row | images | s/step here | hours here | hours on GPU | GPU basis |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gpu = f"{r['hours_gpu']:.3g}" if r["hours_gpu"] is not None else "–"
        print(f"| {r['table']} | {r['row']} | {r['images']} | {r['seconds_per_step']:.2f} | "
              f"{r['hours_here']:.3g} | {gpu} | {r['gpu_basis']} |")
    h = result.get("h200")
    if h:
        print(f"\nPROJECTED, not measured (no GPU measurement): Table 1 + NoCaps ({h['captions']} "
              f"captions, {h['candidates_per_caption']} candidates each) on one H200: "
              f"{h['hours']:.2f} h with {h['processes']} processes x {h['items_per_step']} items "
              f"per step ({h['hours_one_process_one_item']:.1f} h as one process, one item; by "
              f"processes: " + ", ".join(f"{p}: {v:.2f} h" for p, v in h["hours_by_processes"].items())
              + ").")
        print(f"  per caption: GPU compute {h['gpu_compute_s']:.3f} s (FP32 FLOP model), host "
              f"retokenization {h['host_retokenization_s']:.3f} s (candidates + slot sequences, "
              f"measured here), fixed "
              f"per-step {h['fixed_s']:.3f} s (assumed {args.fixed_step_seconds} s/step shared "
              f"by {h['items_per_step']} items); hours if run alone: "
              + ", ".join(f"{k} {v:.2f}" for k, v in h["split_hours"].items()))
    if any(r["gpu_basis"] == "FLOP model" for r in rows):
        print(f"FLOP model: {GPU_FP32_PEAK / 1e12:.0f} TFLOP/s FP32 peak x {GPU_UTILIZATION:.0%} "
              "assumed utilization (H200, no TF32), plus this machine's measured retokenization "
              "seconds (CPU-bound Python on any machine); run benchmarks/gpu_check.sh on a GPU and "
              "pass --gpu-json to replace it.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    ap.add_argument("--words-per-bucket", type=int, default=16384)
    ap.add_argument("--heldout-words", type=int, default=512)
    ap.add_argument("--corpus-max-words", type=int, default=None)
    ap.add_argument("--top-k", type=int, default=512)
    ap.add_argument("--beam-width", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warm-steps", type=int, default=8)
    ap.add_argument("--objectives", default="clip,clip_sentiment")
    ap.add_argument("--captions", type=int, default=0, help="caption N synthetic images (GPU)")
    ap.add_argument("--prefix-cache", choices=("both", "true", "false"), default="both",
                    help="both: the COCO step with search.prefix_cache false and true, side by side")
    ap.add_argument("--caption-items-per-step", default="1",
                    help="comma list of search.items_per_step values to time --captions with")
    ap.add_argument("--precision-check", default="",
                    help="comma list of search.eval_dtype values (float32, tf32, bfloat16) to "
                         "compare with float32 on the same states (bfloat16 also on the CPU)")
    ap.add_argument("--precision-states", type=int, default=1,
                    help="states (consecutive steps) the precision check compares on")
    ap.add_argument("--items-per-step", type=int, default=8,
                    help="items searched together per step in the H200 projection")
    ap.add_argument("--processes", type=int, default=16,
                    help="processes sharing the GPU in the H200 projection")
    ap.add_argument("--fixed-step-seconds", type=float, default=0.075,
                    help="assumed per-step launch + Python latency on a GPU (projection)")
    ap.add_argument("--eval-chunks", default="",
                    help="comma list of search.eval_chunk values to time the COCO step "
                    "(prefix cache) at as well (the paper config's is %d)" % SearchConfig().eval_chunk)
    ap.add_argument("--overflow", choices=OVERFLOW_POLICIES, default="random",
                    help="the bridge's policy for words past the cap (random: the paper's; zero: "
                    "no draws, to see the step without the overflow Jacobians that a "
                    "random-weight LM's long unbroken words cost: benchmarks/overflow_rate.py)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="cpu: this process's CPU seconds (a busy shared CPU, one thread)")
    ap.add_argument("--no-refit", action="store_true",
                    help="read the adapters from --cache-dir (no fit figures; see --fit-from)")
    ap.add_argument("--fit-from", type=Path, default=None,
                    help="take the fit figures from this earlier --json output")
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here")
    ap.add_argument("--gpu-json", type=Path, default=None,
                    help="a gpu_check.sh JSON to project from")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global clock
    args = parse_args(argv)
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: no CUDA device here")
    objectives_wanted = args.objectives.split(",")
    load = os.getloadavg()
    cfg, weights = paper_search(args), objective_weights()
    names = {"primary": "gpt2_medium", "clip": "clip_vit_b32", "roberta": "roberta_sentiment"}
    needed = {"primary", "clip"} | ({"roberta"} if "clip_sentiment" in objectives_wanted else set())
    models = {k: load_model(model_config(names[k], weights="random"), cache_dir=args.cache_dir,
                            device=device) for k in sorted(needed)}
    primary = models["primary"]
    result: dict[str, Any] = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({os.cpu_count()} cores)"),
        "load_average": load, "threads": torch.get_num_threads(), "search": asdict(cfg),
        "clock": args.clock,
        "weights": "random", "fit": {}, "steps": {},
        "settings": {k: v for k, v in vars(args).items()
                     if k not in ("json", "gpu_json", "cache_dir")},
    }
    bridges = {}
    for name in sorted(needed - {"primary"}):
        adapter, result["fit"][name] = fit(primary, models[name], args, device)
        bridges[name] = Bridge(primary, models[name], adapter, overflow=args.overflow, seed=0,
                               device=device)
        print(f"fit gpt2_medium -> {name}: {result['fit'][name]['seconds']:.1f} s", flush=True)
    if args.fit_from is not None:
        result["fit"] = json.loads(args.fit_from.read_text())["fit"]
        result["fit_from"] = str(args.fit_from)
    clip = build_objective("clip", models["clip"], bridges["clip"], weights["clip"])
    clip.name = "clip"
    sets = {"clip": [clip]}
    if "roberta" in models:
        senti = build_objective("sentiment", models["roberta"], bridges["roberta"],
                                weights["sentiment"], sentiment="positive")
        senti.name = "sentiment"
        sets["clip_sentiment"] = [clip, senti]
    items = read_synthetic_images(SyntheticImagesConfig(num_images=max(args.captions, 1)))
    params = {"primary": non_embedding_params(primary.module),
              "clip": non_embedding_params(models["clip"].module.transformer)}
    if "roberta" in models:
        params["sentiment"] = non_embedding_params(models["roberta"].module)
    dims = tuple(primary.embedding_table().shape[::-1])  # (d_i, V)
    for name in objectives_wanted:
        # COCO: the plain path (prefix_cache false) and the prefix cache side by side, same state
        modes = [False, True] if args.prefix_cache == "both" and name == "clip" else [
            args.prefix_cache != "false"]
        for cached in modes:
            key = name if cached or len(modes) == 1 else f"{name}_no_prefix_cache"
            step = measure_step(primary, sets[name], items[0], replace(cfg, prefix_cache=cached),
                                weights, args, device)
            step["flops"] = flop_model(step, params, dims)
            result["steps"][key] = step
            print(f"step {key}: {step['total']:.2f} s", flush=True)
        if len(modes) == 2:
            full, fast = result["steps"][f"{name}_no_prefix_cache"], result["steps"][name]
            result["prefix_cache_check"] = {
                "same_chosen_tokens": full["chosen"] == fast["chosen"],
                "speedup": full["total"] / fast["total"],
                "best_total_difference": abs(full["chosen_terms"]["total"]
                                             - fast["chosen_terms"]["total"]),
            }
    # the COCO step (prefix cache) again at other search.eval_chunk values, each on a fresh
    # search reaching the same state: on a GPU, fewer and larger chunks mean fewer launches
    for n in [int(x) for x in args.eval_chunks.split(",") if x]:
        once = argparse.Namespace(**{**vars(args), "precision_check": ""})  # checked above
        step = measure_step(primary, sets["clip"], items[0],
                            replace(cfg, prefix_cache=True, eval_chunk=n), weights, once, device)
        step["flops"] = flop_model(step, params, dims)
        result["steps"][f"clip_eval_chunk_{n}"] = step
        print(f"step clip_eval_chunk_{n}: {step['total']:.2f} s", flush=True)
    save(result, args, complete=False)  # kept if the captions below hit a time limit
    if args.captions:
        result["captions_by_items_per_step"] = {}
        for n in [int(x) for x in args.caption_items_per_step.split(",")]:
            with Peak(device) as peak:
                if n == 1:
                    secs = [timed_search(it, primary, sets["clip"], cfg, weights["lm"], 0)[1]
                            for it in items]
                else:  # the group's wall time, shared (search_items)
                    _, whole = timed(device, lambda n=n: list(search_items(
                        items, primary, sets["clip"], replace(cfg, items_per_step=n),
                        weights["lm"], 0)))
                    secs = [whole / len(items)] * len(items)
            caps = {"images": len(items), "steps": cfg.steps, "items_per_step": n,
                    "seconds": secs, "seconds_per_caption": sum(secs) / len(secs),
                    "seconds_per_step": sum(secs) / len(secs) / cfg.steps,
                    "peak_bytes": peak.bytes}
            result["captions_by_items_per_step"][str(n)] = caps
            if n == 1 or "captions" not in result:
                result["captions"] = caps
            save(result, args, complete=False)
    found = args.gpu_json is not None and args.gpu_json.is_file()
    gpu = json.loads(args.gpu_json.read_text()) if found else None
    if args.gpu_json and gpu is None:
        print(f"note: --gpu-json {args.gpu_json} not found; using the FLOP model")
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = projections(result, gpu, args)
    result["projections"] = rows
    result["h200"] = h200_projection(result, args)
    save(result, args, complete=True)
    print_report(result, rows, args)
    return result


def save(result: dict[str, Any], args: argparse.Namespace, complete: bool) -> None:
    """Write ``result`` to ``--json`` (``complete`` false: the captions were not timed yet)."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "complete": complete}, indent=2, default=str)
                             + "\n")
        if complete:
            print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
