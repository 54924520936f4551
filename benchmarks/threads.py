"""torch intra-op threads 1 vs 2: time per FUSE slot gradient and per candidate evaluation on the
offline default pair (SmolLM2-135M -> MiniLM text similarity), interleaved to share the machine's
load fairly. Run from the checkout: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threads.py [repeats]
(OMP_NUM_THREADS only sets the starting count; each timing sets torch.set_num_threads itself.)"""

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path.cwd()
sys.path.insert(0, str(REPO))
from fuse_repro.adapter import fit_adapter  # noqa: E402
from fuse_repro.bridge import Bridge  # noqa: E402
from fuse_repro.config import AdapterConfig  # noqa: E402
from fuse_repro.models import load_model, model_config  # noqa: E402
from fuse_repro.objectives import TextSimilarity  # noqa: E402
from fuse_repro.search import encode_prefix, slot_gradient  # noqa: E402

cache = REPO / ".cache"
smol = load_model(model_config("smollm2_135m"), cache_dir=cache, device="cpu")
mini = load_model(model_config("minilm_l6"), cache_dir=cache, device="cpu")
adapter = fit_adapter(smol, mini, AdapterConfig(words_per_bucket=1024, heldout_words=64), cache)
obj = TextSimilarity(mini, Bridge(smol, mini, adapter), weight=10.0)
obj.prepare(SimpleNamespace(id="x", target="a brown dog runs along a sandy beach"))
prefix = encode_prefix(smol, "An image of a dog on the")
seqs = [prefix + [t] for t in (264, 1345, 2011)]  # beam width 3, one slot each
cands = [prefix + [t] for t in range(1000, 1096)]  # top_k 32 x 3 beams = 96 candidates


def grad() -> None:
    slot_gradient(smol, [obj], seqs)


def evaluate() -> None:
    obj.evaluate(cands, chunk=256)


REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
for name, fn in (("slot gradient (B=3)", grad), ("evaluate 96 candidates", evaluate)):
    times = {1: [], 2: []}
    for threads in (1, 2):  # warm-up
        torch.set_num_threads(threads)
        fn()
    for _ in range(REPEATS):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            fn()
            times[threads].append(time.perf_counter() - start)
    for threads, ts in times.items():
        print(f"{name}: threads={threads}: median {1000 * statistics.median(ts):.1f} ms, "
              f"min {1000 * min(ts):.1f}, max {1000 * max(ts):.1f} (n={len(ts)})", flush=True)
