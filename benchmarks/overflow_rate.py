"""Benchmark: how often the FUSE backward meets words past the adapter's cap on real caption text.

A word of more than ``adapter.max_tokens`` (4) target tokens takes the overflow path: a seeded
Gaussian Jacobian of l_i x l_j x d_j x d_i normals drawn on the CPU (``fuse_repro.bridge``). The
H200 check (README "Measured on an H200") found those draws to be most of the random-weight
paper step: a random-weight GPT-2 writes long unbroken "words". This counts, with the paper's
pair at its true shapes (GPT-2 medium -> CLIP ViT-B/32, real tokenizers, the fitted adapter's
depths), what real caption text costs instead: for each caption of a file, the slot sequences a
16-step search builds on it (``search.prefix`` + the caption's first t GPT-2 tokens + the slot
token, t = 1..16), their words' paths, and the normals drawn per slot sequence with the bridge's cache (a word
drawn once in a caption is reused; the bridge's cache also spans captions) and without it.

Run (the captions: ZeroCap's and MAGIC's COCO outputs and the references, ../shared/data):
    .venv/bin/python benchmarks/overflow_rate.py [--cache-dir .cache] [--captions N]
        [--file path.json ...] [--json out.json]
The adapter is fitted (or read from --cache-dir) at the paper's shape: N 16384, L 4.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.adapter import fit_adapter  # noqa: E402
from fuse_repro.bridge import Bridge  # noqa: E402
from fuse_repro.config import AdapterConfig, CorpusConfig  # noqa: E402
from fuse_repro.models import load_model, model_config  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FILES = {
    "zerocap": DATA / "magic" / "mscoco_baselines_zerocap_result.json",
    "magic": DATA / "magic" / "mscoco_magic_result.json",
}


def texts_of(name: str, path: Path, n: int) -> list[str]:
    """The first ``n`` predictions (or, for "references", first reference captions)."""
    rows = json.loads(path.read_text())
    key = "prediction" if name != "references" else "captions"
    out = [r[key] if key == "prediction" else r[key][0] for r in rows[:n]]
    return [" " + t.strip() for t in out]  # a caption continues the prefix after a space


def slot_sequences(bridge: Bridge, prefix: list[int], text: str, steps: int) -> list[list[int]]:
    """The slot sequences of a ``steps``-step search that writes ``text``: the prefix, the
    caption's first t source tokens and the slot token (id 0), t = 1..steps."""
    ids = bridge.source.tokenizer.encode(text)[:steps]
    return [prefix + ids[:t] + [0] for t in range(1, len(ids) + 1)]


def count(bridge: Bridge, captions: list[list[list[int]]]) -> dict:
    """Per caption (its slot sequences), the words past the cap and the normals drawn."""
    d_i, d_j = bridge.source.dim, bridge.target.dim
    seqs = words = over = seqs_over = normals = normals_cached = 0
    for sequences in captions:
        seen: set[tuple[str, int, int]] = set()  # the bridge's cache key: word and lengths
        for seq in sequences:
            hit = False
            for (ts, te), (ss, se), word in bridge._encode([seq])[4][0]:  # (tgt, src, word)
                l_j, l_i = te - ts, se - ss
                words += 1
                if bridge._word_path(l_i, l_j) != "overflow":
                    continue
                over += 1
                hit = True
                normals += l_i * l_j * d_j * d_i
                if (word, l_i, l_j) not in seen:
                    seen.add((word, l_i, l_j))
                    normals_cached += l_i * l_j * d_j * d_i
            seqs += 1
            seqs_over += hit
    return {"captions": len(captions), "slot_sequences": seqs, "words": words,
            "overflow_words": over, "sequences_with_overflow": seqs_over,
            "share_sequences_with_overflow": seqs_over / seqs,
            "normals_per_step": normals / seqs, "normals_per_step_cached": normals_cached / seqs}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    ap.add_argument("--captions", type=int, default=500)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    primary = load_model(model_config("gpt2_medium", weights="random"), cache_dir=args.cache_dir)
    clip = load_model(model_config("clip_vit_b32", weights="random"), cache_dir=args.cache_dir)
    cfg = AdapterConfig(words_per_bucket=16384, corpus=CorpusConfig(kind="wordfreq"))
    adapter = fit_adapter(primary, clip, cfg, args.cache_dir)
    bridge = Bridge(primary, clip, adapter, overflow="random", seed=0)
    prefix = primary.tokenizer.encode("An image of")
    result = {"prefix": "An image of", "steps": args.steps,
              "depths": {int(l): int(m.shape[-1]) for l, m in adapter.maps.items()}, "sets": {}}
    sets = {name: texts_of(name, path, args.captions) for name, path in FILES.items()}
    sets["references"] = texts_of("references", FILES["magic"], args.captions)
    g = torch.Generator().manual_seed(0)
    torch.randn(4_000_000, generator=g)  # warm-up: allocation
    start = time.perf_counter()
    torch.randn(4_000_000, generator=g)
    blocks = 4_000_000 / (time.perf_counter() - start)  # normals per second, one CPU thread
    result["randn_per_second_one_thread"] = blocks
    print(f"GPT-2 medium -> CLIP ViT-B/32, prefix 'An image of', {args.steps} steps; "
          f"torch.randn on one CPU thread: {blocks / 1e6:.0f} M normals/s")
    print("| captions | slot sequences | words | overflow words | sequences with overflow "
          "| normals drawn per slot sequence (cached) | draw s (cached) |")
    print("|---|---|---|---|---|---|---|")
    for name, caps in sets.items():
        r = count(bridge, [slot_sequences(bridge, prefix, c, args.steps) for c in caps])
        result["sets"][name] = r
        print(f"| {name} ({r['captions']}) | {r['slot_sequences']} | {r['words']} | "
              f"{r['overflow_words']} | {100 * r['share_sequences_with_overflow']:.1f}% | "
              f"{r['normals_per_step'] / 1e6:.2f} M ({r['normals_per_step_cached'] / 1e6:.2f} M) | "
              f"{r['normals_per_step'] / blocks:.3f} ({r['normals_per_step_cached'] / blocks:.3f}) |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
