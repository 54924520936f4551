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
from fuse_repro.bridge import Bridge  # noqa: E402
from fuse_repro.config import (  # noqa: E402
    AdapterConfig,
    CorpusConfig,
    SearchConfig,
    SyntheticImagesConfig,
)
from fuse_repro.data.synthetic import read_synthetic_images  # noqa: E402
from fuse_repro.models import load_model, model_config  # noqa: E402
from fuse_repro.objectives import build_objective  # noqa: E402
from fuse_repro.search import (  # noqa: E402
    LMState,
    candidate_scores,
    evaluate_pairs,
    lm_context,
    propose,
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
        loss, dt1 = timed(device, lambda obj=obj, tb=tb: obj.weight * obj.loss(tb).sum())
        (grad_tb,), dt2 = timed(device, torch.autograd.grad, loss, [tb.embeds], retain_graph=True)
        t["secondary_fwd_bwd"] += dt1 + dt2
        _, dt = timed(device, torch.autograd.grad, [tb.embeds], [embeds], [grad_tb])
        t["bridge"] += dt
    candidates = propose(state, candidate_scores(state))  # (B, k)
    pairs = [(b, int(c)) for b in range(len(state.beams)) for c in candidates[b].tolist()]
    sequences = [state.prefix_ids + state.beams[b] + [c] for b, c in pairs]
    lookups, lengths = 0.0, {}
    for obj in state.searching:
        for start in range(0, len(sequences), cfg.eval_chunk):
            tb, dt = timed(device, obj.bridge.lookup, sequences[start : start + cfg.eval_chunk])
            lookups += dt
            lengths.setdefault(obj.name, []).extend(int(m.sum()) for m in tb.attention_mask)
    t["retokenization"] += lookups
    _, dt = timed(device, evaluate_pairs, state, candidates)
    t["secondary_eval"] = max(0.0, dt - lookups)  # evaluate_pairs looks the candidates up itself
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
             mean_target_tokens={k: sum(v) / len(v) for k, v in lengths.items()})
    return t


def measure_step(primary: Any, objectives: list[Any], item: Any, cfg: SearchConfig, weights: dict,
                 args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Reach mid-caption length with ``--warm-steps`` cheap steps (top-k 8), then split one step
    at the paper's settings (``cfg``)."""
    state = start_search(item, primary, objectives, replace(cfg, top_k=min(8, cfg.top_k)),
                         weights["lm"], seed=0)
    for _ in range(args.warm_steps):
        search_step(state)
    state.cfg = cfg
    with Peak(device) as peak:
        split = step_split(state, device)
    split["peak_bytes"] = peak.bytes
    return split


def flop_model(step: dict[str, Any], params: dict[str, int], primary_dims: tuple[int, int]) -> dict:
    """FLOPs of one step (2 x parameters x tokens per forward, 3x that for forward + backward):
    candidate evaluation, slot gradient, LM token + its vocabulary projection."""
    k, b = step["pairs"], step["beams"]
    lengths = step["mean_target_tokens"]
    evaluation = sum(2 * params[name] * k * lengths[name] for name in lengths)
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


def print_report(result: dict[str, Any], rows: list[dict], args: argparse.Namespace) -> None:
    dev, load = result["device"], result["load_average"]
    print(f"\n== measured on {dev} ({result['threads']} torch thread(s); load average at start "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores) ==")
    print(f"clock: {result.get('clock', 'wall')} seconds"
          + (f"; fit figures from {result['fit_from']}" if result.get("fit_from") else ""))
    print(f"search: top_k {args.top_k}, beam {args.beam_width}, steps {args.steps} "
          f"(conf/search/paper.yaml); fit: N {args.words_per_bucket}, L 4, float64, wordfreq")
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
    caps = result.get("captions")
    if caps:
        print(f"\ncaptions: {caps['images']} synthetic images x {caps['steps']} steps: "
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
        bridges[name] = Bridge(primary, models[name], adapter, overflow="random", seed=0,
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
        step = measure_step(primary, sets[name], items[0], cfg, weights, args, device)
        step["flops"] = flop_model(step, params, dims)
        result["steps"][name] = step
        print(f"step {name}: {step['total']:.2f} s", flush=True)
    save(result, args, complete=False)  # kept if the captions below hit a time limit
    if args.captions:
        with Peak(device) as peak:
            secs = [timed_search(it, primary, sets["clip"], cfg, weights["lm"], 0)[1]
                    for it in items]
        result["captions"] = {"images": len(items), "steps": cfg.steps, "seconds": secs,
                              "seconds_per_caption": sum(secs) / len(secs),
                              "seconds_per_step": sum(secs) / len(secs) / cfg.steps,
                              "peak_bytes": peak.bytes}
    found = args.gpu_json is not None and args.gpu_json.is_file()
    gpu = json.loads(args.gpu_json.read_text()) if found else None
    if args.gpu_json and gpu is None:
        print(f"note: --gpu-json {args.gpu_json} not found; using the FLOP model")
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = projections(result, gpu, args)
    result["projections"] = rows
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
