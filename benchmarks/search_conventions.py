"""Measure each paper convention of the search against ours on the offline pair.

SmolLM2-135M -> MiniLM-L6 text similarity through FUSE (the default objective, composed from the
project's configs), every item of the bundled demo targets, the default offline search
(``conf/search/fuse.yaml``: fuse, 6 steps, top_k 32, beam 3). Each convention of the README's
"Conventions" table is switched alone (``search.slot_init``, ``search.lm_term``); for
``search.returned`` the step whose best beam had the lowest total is read off each search's
history (what ``returned=best_step`` would return). Prints, per convention, the mean cosine
similarity of the returned caption to its target (1 - the text_similarity loss) and the mean NLL
of its generated tokens under the LM (recomputed, so it is comparable across ``lm_term``).

Run
    .venv/bin/python benchmarks/search_conventions.py [--cache-dir .cache] [--words-per-bucket 4096]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.config import AdapterConfig, SearchConfig, validate  # noqa: E402
from fuse_repro.data import load_dataset  # noqa: E402
from fuse_repro.search import encode_prefix, lm_losses_full, search_caption  # noqa: E402
from fuse_repro.captioner import build_captioner  # noqa: E402

VARIANTS = {
    "ours": {},
    "slot_init=token_zero": {"slot_init": "token_zero"},
    "lm_term=prefix_and_generated": {"lm_term": "prefix_and_generated"},
}


def se(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    parser.add_argument("--words-per-bucket", type=int, default=4096, help="adapter N (run default: 16384)")
    parser.add_argument("--heldout-words", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=["logger=none", "dataset=demo_text_targets"]),
                       output_dir=str(args.cache_dir))
    items = load_dataset(cfg.dataset)
    adapter_cfg = AdapterConfig(words_per_bucket=args.words_per_bucket, heldout_words=args.heldout_words,
                                seed=args.seed)
    cap = build_captioner(cfg.source, cfg.objective, adapter_cfg, args.cache_dir, "cpu")
    base = SearchConfig()  # the offline default search
    print(f"{len(items)} items of {cfg.dataset.name}; search {base}; adapter N={args.words_per_bucket}")
    rows = {}
    for name, change in VARIANTS.items():
        search_cfg = dataclasses.replace(base, **change)
        cos, nll, best_steps, start = [], [], [], time.perf_counter()
        prefix_ids = encode_prefix(cap.primary, search_cfg.prefix)
        for item in items:
            result = search_caption(item, cap.primary, cap.objectives, search_cfg, cap.lm_weight, args.seed)
            cos.append(1.0 - result.losses["text_similarity"])
            nll.append(float(lm_losses_full(cap.primary, prefix_ids, [result.ids])[0]))
            totals = [h["total"] for h in result.history]
            best_steps.append(1 + totals.index(min(totals)))
        rows[name] = {"mean_cos": statistics.mean(cos), "mean_generated_nll": statistics.mean(nll),
                      "best_step": best_steps}
        print(f"{name:30s} mean cos {statistics.mean(cos):.4f} (se {se(cos):.4f})  mean generated-token "
              f"NLL {statistics.mean(nll):.3f} (se {se(nll):.3f})  lowest-total step per item {best_steps} "
              f"of {base.steps}  {time.perf_counter() - start:.0f} s", flush=True)
    print(json.dumps(rows, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
