"""Benchmark: one caption-search step (``fuse_repro.search.search_step``) against a naive step.

What it measures
    The paper's search shape: top-k 512 candidates per beam, beam width 5, prefix "An image of".
    Primary model: SmolLM2-135M (``conf/model/smollm2_135m.yaml``); secondary: MiniLM-L6 text
    similarity (``conf/model/minilm_l6.yaml``, ``conf/objective/text_similarity.yaml`` weights:
    lm 1.0, text_similarity 10.0) reached through a FUSE adapter fitted by ``fit_adapter`` with
    the cache at ``--cache-dir`` (a smaller N than the paper's, default 4096, printed below).

    1. Fast step: ``start_search`` + step 1 (one beam) untimed, then ``search_step`` for step 2
       is timed (5 beams x 512 candidates = 2560 evaluated pairs). The state is rebuilt the same
       way for every repeat; the median is reported.
    2. Naive step from an identical state (rebuilt the same way): the same proposals (it calls
       ``propose(state)``, and checks the candidate sets equal the fast path's), then every
       (beam, candidate) pair is evaluated by re-running every model on the full candidate, one
       candidate at a time: the primary LM forward over BOS + prefix + generated + candidate
       (mean NLL of the generated tokens, no KV cache), and MiniLM on the candidate's text
       (decoded from the primary ids, tokenized from scratch, framed with [CLS]/[SEP] and
       right-padded to ``--naive-pad`` tokens, 77 by default as the authors' code pads CLIP;
       ``--naive-pad 0`` means no padding), no batching. The best ``beam_width`` distinct texts
       are kept by the library's own ``select_beams`` (lowest total, ties in pair order).
    3. Check: the chosen (parent, token) lists of both steps must be identical. Totals may
       differ by float noise (~1e-5); a different choice counts as a tie only when the totals
       at the same rank are within ``--tie-tol`` of each other (reported as such).

    A full naive step at top-k 512 runs 2560 LM + 2560 MiniLM forwards (10+ minutes on 2
    busy cores). By default (``--naive-sample 256``) the naive evaluation is timed on a seeded
    random subset of 256 pairs and extrapolated linearly (said so in the output), and the
    chosen-token check uses a full naive step at ``--check-top-k`` (default 64) against a fast
    step at the same top-k. ``--naive-sample 0`` runs and checks the full naive step instead.

Target: the fast step at least 5x faster than the naive step. Exit status 1 if the speed-up is
below ``--target-speedup`` or the chosen tokens differ (beyond float ties).

Run
    .venv/bin/python benchmarks/caption_step.py [--cache-dir /tmp/fusecache] [--top-k 512]
        [--beam-width 5] [--logit-weight 1.0] [--words-per-bucket 4096] [--heldout-words 256] [--eval-chunk 256]
        [--repeats 3] [--naive-sample 256] [--check-top-k 64] [--naive-pad 77]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.bridge import TargetBatch  # noqa: E402
from fuse_repro.config import AdapterConfig, SearchConfig, validate  # noqa: E402
from fuse_repro.search import (  # noqa: E402
    SearchState,
    evaluate_pairs,
    lm_context,
    propose,
    search_step,
    select_beams,
    start_search,
)
from fuse_repro.captioner import Captioner, build_captioner  # noqa: E402

TARGET_TEXT = "A brown dog runs along a sandy beach next to the ocean."


@dataclass
class Item:
    id: str
    target: str


# ----------------------------------------------------------------------------------------------
# Fast path (the library)
# ----------------------------------------------------------------------------------------------
def fresh_state(cap: Captioner, item: Item, cfg: SearchConfig, seed: int) -> SearchState:
    """start_search + step 1 (from the prefix, one beam): the state every step-2 run starts from."""
    state = start_search(item, cap.primary, cap.objectives, cfg, cap.lm_weight, seed)
    search_step(state)
    return state


def timed_fast_step(state: SearchState) -> tuple[float, list[tuple[int, int]]]:
    """Time search_step on ``state``; return seconds and the chosen (parent, token) pairs
    (the ``StepChoice`` that search_step returns)."""
    start = time.perf_counter()
    choice = search_step(state)
    seconds = time.perf_counter() - start
    return seconds, list(zip(choice.parents, choice.tokens))


# ----------------------------------------------------------------------------------------------
# Naive path (re-run every model on every full candidate, one at a time)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def naive_lm_loss(primary: Any, context: list[int], generated: list[int]) -> float:
    """Mean NLL of ``generated`` after ``context`` from one full forward (no KV cache)."""
    ids = torch.tensor([context + generated], dtype=torch.long, device=primary.device)  # (1, P+n)
    logits = primary.module(input_ids=ids, use_cache=False).logits[0].float()  # (P+n, V)
    logp = torch.log_softmax(logits, dim=-1)
    start = len(context) - 1  # logits at position t predict token t+1
    targets = ids[0, len(context):]  # (n,)
    nll = -logp[start : start + len(generated)].gather(1, targets[:, None])[:, 0]
    return float(nll.mean())


@torch.no_grad()
def naive_secondary_loss(obj: Any, text: str, pad_to: int) -> float:
    """The objective's loss on ``text``: tokenized from scratch, one sequence, padded to pad_to."""
    model = obj.model
    tok = model.tokenizer
    full, _ = tok.with_specials(tok.encode(text))
    length = max(len(full), pad_to)
    pad = tok.pad_id if tok.pad_id is not None else 0
    ids = torch.full((1, length), pad, dtype=torch.long, device=model.device)  # (1, S_j)
    ids[0, : len(full)] = torch.tensor(full, dtype=torch.long)
    mask = torch.zeros((1, length), dtype=torch.long, device=model.device)
    mask[0, : len(full)] = 1
    tb = TargetBatch(model.embed(ids), mask, [full], [text])
    return float(obj.loss(tb)[0])


def naive_evaluate(
    state: SearchState, pairs: list[tuple[int, int]], pad_to: int
) -> tuple[list[float], float]:
    """Total loss of every pair (naive), and the seconds it took."""
    primary, tok = state.primary, state.primary.tokenizer
    context = lm_context(primary, state.prefix_ids)
    totals = []
    start = time.perf_counter()
    for b, c in pairs:
        generated = state.beams[b] + [c]
        total = state.lm_weight * naive_lm_loss(primary, context, generated)
        text = tok.decode(state.prefix_ids + generated)
        for obj in state.searching:
            total += obj.weight * naive_secondary_loss(obj, text, pad_to)
        totals.append(total)
    return totals, time.perf_counter() - start


def select(state: SearchState, pairs: list[tuple[int, int]], totals: list[float]) -> list[int]:
    """search_step's rule, the library's own ``select_beams``: lowest total first, ties in pair
    order, distinct texts, beam_width."""
    tok = state.primary.tokenizer

    def text_of(k: int) -> str:
        b, c = pairs[k]
        return tok.decode(state.prefix_ids + state.beams[b] + [c])

    return select_beams(torch.tensor(totals), state.cfg.beam_width, text_of)


@torch.no_grad()
def library_totals(state: SearchState, cand: torch.Tensor, pairs: list[tuple[int, int]]) -> list[float]:
    """The totals search_step computes (``evaluate_pairs``: KV-cache LM term + chunked bridged
    secondary), for the float-noise report only (untimed)."""
    ev = evaluate_pairs(state, cand)
    assert ev.pairs == pairs, "evaluate_pairs orders pairs as the naive step does"
    return ev.total.tolist()


def compare_choices(
    fast: list[tuple[int, int]],
    naive: list[tuple[int, int]],
    pairs: list[tuple[int, int]],
    naive_totals: list[float],
    tol: float,
) -> tuple[bool, str]:
    """Identical lists pass. Otherwise pass only when, rank by rank, the pair each side chose
    has a (naive) total within ``tol`` of the other's: a float tie, not a different choice."""
    if fast == naive:
        return True, "identical"
    index = {p: k for k, p in enumerate(pairs)}
    gaps = [abs(naive_totals[index[a]] - naive_totals[index[b]]) for a, b in zip(fast, naive)]
    worst = max(gaps) if gaps else float("inf")
    if len(fast) == len(naive) and worst <= tol:
        return True, f"differ only among float ties (largest total gap {worst:.2e} <= {tol:.0e})"
    return False, f"DIFFERENT (largest total gap at the same rank {worst:.2e} > {tol:.0e})"


def run_naive(
    cap: Captioner,
    item: Item,
    cfg: SearchConfig,
    seed: int,
    pad_to: int,
    sample: int,
    fast_cands: torch.Tensor | None,
) -> dict[str, Any]:
    """A naive step from a freshly rebuilt state. ``sample`` > 0: evaluate only that many pairs
    (seeded by ``seed``) and extrapolate the evaluation time; no selection then."""
    state = fresh_state(cap, item, cfg, seed)
    t0 = time.perf_counter()
    cand = propose(state)  # (B, k)
    propose_s = time.perf_counter() - t0
    same = fast_cands is None or torch.equal(cand, fast_cands)
    pairs = [(b, int(c)) for b in range(len(state.beams)) for c in cand[b].tolist()]
    out: dict[str, Any] = {"pairs": len(pairs), "propose_s": propose_s, "same_candidates": same}
    if sample and sample < len(pairs):
        subset = random.Random(seed).sample(range(len(pairs)), sample)
        _, eval_s = naive_evaluate(state, [pairs[k] for k in subset], pad_to)
        out.update(sampled=sample, eval_s=eval_s * len(pairs) / sample, eval_sample_s=eval_s)
        out["step_s"] = propose_s + out["eval_s"]
        return out
    totals, eval_s = naive_evaluate(state, pairs, pad_to)
    t1 = time.perf_counter()
    chosen = [pairs[k] for k in select(state, pairs, totals)]
    select_s = time.perf_counter() - t1
    lib = library_totals(state, cand, pairs)
    tok = cap.primary.tokenizer
    out.update(
        sampled=0,
        eval_s=eval_s,
        select_s=select_s,
        step_s=propose_s + eval_s + select_s,
        chosen=chosen,
        pair_list=pairs,
        totals=totals,
        max_abs_diff=max(abs(a - b) for a, b in zip(totals, lib)),
        texts=[tok.decode(state.prefix_ids + state.beams[b] + [c]) for b, c in chosen],
    )
    return out


def fast_runs(
    cap: Captioner, item: Item, cfg: SearchConfig, seed: int, repeats: int
) -> dict[str, Any]:
    """``repeats`` timed step-2 runs, each from a freshly rebuilt state."""
    times: list[float] = []
    chosen, cands, texts = None, None, None
    for _ in range(repeats):
        state = fresh_state(cap, item, cfg, seed)
        if cands is None:
            cands = propose(state)  # untimed: the candidate sets the naive step must match
        prefix, beams = state.prefix_ids, [list(b) for b in state.beams]
        seconds, picked = timed_fast_step(state)
        times.append(seconds)
        if chosen is None:
            chosen = picked
            tok = cap.primary.tokenizer
            texts = [tok.decode(prefix + beams[p] + [t]) for p, t in picked]
        elif picked != chosen:
            raise SystemExit(f"search_step is not deterministic: {picked} vs {chosen}")
    return {
        "times": times,
        "median": statistics.median(times),
        "chosen": chosen,
        "cands": cands,
        "texts": texts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache",
                        help="converted models and fitted adapters (the app's paths.cache_dir)")
    parser.add_argument("--top-k", type=int, default=512)
    parser.add_argument("--beam-width", type=int, default=5)
    parser.add_argument("--eval-chunk", type=int, default=256,
                        help="pairs per secondary forward (conf/search/fuse.yaml's value)")
    parser.add_argument("--prefix", default="An image of")
    parser.add_argument("--target", default=TARGET_TEXT)
    parser.add_argument("--words-per-bucket", type=int, default=4096)
    parser.add_argument("--heldout-words", type=int, default=256)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--logit-weight", type=float, default=1.0,
                        help="w in score = -grad + w * log p_LM (the paper's search: 1.0)")
    parser.add_argument("--sim-weight", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="fast-step repeats (median reported)")
    parser.add_argument("--naive-pad", type=int, default=77,
                        help="pad each naive MiniLM input to this many tokens (0: no padding)")
    parser.add_argument("--naive-sample", type=int, default=256,
                        help="time the naive evaluation on this many seeded random pairs and "
                             "extrapolate (0: all pairs, a full naive step: 2560 x 2 forwards)")
    parser.add_argument("--check-top-k", type=int, default=64,
                        help="top-k of the full naive run for the chosen-token check when sampling")
    parser.add_argument("--tie-tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--target-speedup", type=float, default=5.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # The project's own configs, composed as run.py would (default source and objective).
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        run_cfg = compose("config", overrides=[
            "model@source=smollm2_135m", "objective=text_similarity", "logger=none",
            f"objective.lm_weight={args.lm_weight}",
            f"objective.terms.text_similarity.weight={args.sim_weight}",
        ])
    root = validate(run_cfg, output_dir=str(args.cache_dir))
    source_cfg, objective_cfg = root.source, root.objective
    adapter_cfg = AdapterConfig(
        words_per_bucket=args.words_per_bucket, heldout_words=args.heldout_words, seed=args.seed
    )
    t0 = time.perf_counter()
    cap = build_captioner(source_cfg, objective_cfg, adapter_cfg, args.cache_dir, "cpu")
    setup_s = time.perf_counter() - t0
    bridge = cap.objectives[0].bridge
    cfg = SearchConfig(method="fuse", prefix=args.prefix, top_k=args.top_k,
                       beam_width=args.beam_width, eval_chunk=args.eval_chunk,
                       logit_weight=args.logit_weight)
    item = Item(id="bench-0", target=args.target)

    fast = fast_runs(cap, item, cfg, args.seed, args.repeats)
    naive = run_naive(cap, item, cfg, args.seed, args.naive_pad, args.naive_sample, fast["cands"])
    check_cfg, check_fast, check_naive = cfg, fast, naive
    if naive["sampled"]:
        check_cfg = replace(cfg, top_k=args.check_top_k)
        check_fast = fast_runs(cap, item, check_cfg, args.seed, 1)
        check_naive = run_naive(cap, item, check_cfg, args.seed, args.naive_pad, 0,
                                check_fast["cands"])
    same, verdict = compare_choices(check_fast["chosen"], check_naive["chosen"],
                                    check_naive["pair_list"], check_naive["totals"], args.tie_tol)
    same_cands = naive["same_candidates"] and check_naive["same_candidates"]
    same = same and same_cands
    speedup = naive["step_s"] / fast["median"]
    ok_speed = speedup >= args.target_speedup

    primary, secondary = cap.primary, cap.objectives[0]
    adapter = bridge.adapter
    print()
    print("=" * 78)
    print("Caption search step benchmark: search_step vs a naive step")
    print("=" * 78)
    print(f"primary   : {primary.name} (d={primary.dim}, V={primary.embedding_table().shape[0]})")
    print(f"secondary : {secondary.model.name} text similarity through {bridge.kind} "
          f"(adapter {adapter.key}: N={args.words_per_bucket}, held-out={args.heldout_words}, "
          f"{'loaded from the cache' if adapter.from_cache else 'fitted now'} at {args.cache_dir})")
    print(f"weights   : lm {cap.lm_weight}, text_similarity {secondary.weight}; "
          f"target {item.target!r}")
    print(f"search    : prefix {cfg.prefix!r}, top_k={cfg.top_k}, beam_width={cfg.beam_width}, "
          f"eval_chunk={cfg.eval_chunk}; step 2 evaluates {naive['pairs']} pairs")
    print(f"machine   : {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; setup {setup_s:.1f} s (untimed); "
          f"1-min load average now {os.getloadavg()[0]:.1f}")
    print()
    times = ", ".join(f"{t:.2f}" for t in fast["times"])
    print(f"fast step (search_step)  : median {fast['median']:.2f} s over {len(fast['times'])} "
          f"runs ({times})")
    if naive["sampled"]:
        per_pair = 1000 * naive["eval_sample_s"] / naive["sampled"]
        print(f"naive step (EXTRAPOLATED): {naive['step_s']:.2f} s = propose "
              f"{naive['propose_s']:.2f} s + evaluation {naive['eval_s']:.2f} s, extrapolated "
              f"linearly from {naive['sampled']} seeded random pairs of {naive['pairs']} "
              f"({naive['eval_sample_s']:.2f} s, {per_pair:.1f} ms/pair)")
    else:
        per_pair = 1000 * naive["eval_s"] / naive["pairs"]
        print(f"naive step (full)        : {naive['step_s']:.2f} s = propose "
              f"{naive['propose_s']:.2f} s + evaluation {naive['eval_s']:.2f} s "
              f"({per_pair:.1f} ms/pair) + select {naive['select_s']:.2f} s")
    pad = f"to {args.naive_pad} tokens" if args.naive_pad else "none"
    print(f"naive evaluation         : LM full forward per candidate (no KV cache); MiniLM one "
          f"candidate per forward, padding {pad}")
    print(f"speed-up                 : {speedup:.1f}x   (target >= {args.target_speedup:.0f}x)  "
          f"{'OK' if ok_speed else 'MISSED'}")
    print()
    what = f"top_k={check_cfg.top_k}, full naive run"
    if naive["sampled"]:
        what += f"; the top_k={cfg.top_k} naive step above was sampled"
    print(f"chosen-token check ({what}):")
    print(f"  candidate sets identical : {same_cands}")
    print(f"  max |fast - naive| total : {check_naive['max_abs_diff']:.2e} over "
          f"{len(check_naive['totals'])} pairs")
    print(f"  fast  (parent, token)    : {check_fast['chosen']}")
    print(f"  naive (parent, token)    : {check_naive['chosen']}")
    for p, text in zip(check_fast["chosen"], check_fast["texts"]):
        print(f"    fast  {p}: {text!r}")
    for p, text in zip(check_naive["chosen"], check_naive["texts"]):
        print(f"    naive {p}: {text!r}")
    print(f"  verdict                  : {verdict}")
    ok = ok_speed and same
    print(f"RESULT: {'PASS' if ok else 'FAIL'}")
    print("=" * 78)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
