"""The FUSE adapter: fitting ``M_l = X_i^+ * X_j`` per target word length, and its cache.

The differentiable bridge that uses the maps lives in ``fuse_repro.bridge``.

Shape glossary
--------------
d_i    source embedding width; d_j target embedding width
V_i    source vocabulary size
L      cap on a word's target token count (``adapter.max_tokens``)
l      a word's target token count (its bucket), 1..L; l_i its source token count
D      depth of the bucket's map, ``max(l, longest source length among the bucket's fit words)``
w      words in a bucket
X_i    (w, d_i, D)  word tensor of source embeddings: row r, slice s = embedding of token s of word r
X_j    (w, d_j, D)  same for the target (slices >= l are zero)
M_l    (d_i, d_j, D) least-squares t-linear map with X_i * M_l ~ X_j

The exact reading of the method is ``../shared/notes/method.md`` (project notes): words are
whitespace pieces of the decoded text, tokenized mid-sentence; the backward is the true adjoint
``g_i = g_j * M_l^T`` of the per-word linear model, batched per bucket.

Device: the fit runs where the models' embedding tables live (or on ``device``), and the maps
stay there; only the cache files go through the CPU.

Guards: a bucket with 1..``min_bucket_words``-1 fitting words is refused (``AdapterError``
naming the length and the count); a bucket with fewer candidate words than the requested N is
fitted on what there is, and flagged (``capped``) in the fit report and in run.log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from fuse_repro.config import AdapterConfig, stable_hash
from fuse_repro.config.schemas import FIT_DTYPES
from fuse_repro.corpus import Bucket, fitting_corpus, make_buckets, timed
from fuse_repro.errors import FuseError
from fuse_repro.records import atomic_dir, write_json
from fuse_repro.tensor import tlstsq, tprod

if TYPE_CHECKING:
    from fuse_repro.text_model import EmbeddingModel

log = logging.getLogger(__name__)

# Bump when the on-disk layout or the fitting math changes: old caches are then refitted.
# 3: the key covers the corpus content and package version; maps files carry their key.
FORMAT_VERSION = 3
# Fitting words used to estimate the fit residual in the report.
RESIDUAL_SAMPLE = 4096
DTYPES = {name: getattr(torch, name) for name in FIT_DTYPES}  # adapter.fit_dtype's one list


class AdapterError(FuseError, ValueError):
    """Bad adapter input: a clear message instead of a stack trace from deep inside torch."""


# ----------------------------------------------------------------------------------------------
# Fitted artifact
# ----------------------------------------------------------------------------------------------
@dataclass
class FittedAdapter:
    """What a fit produces. ``kind``: "fuse" (per-length t-maps), "token" (same tokenizer,
    section 3.2: one (d_i, d_j) matrix) or "identity" (same model)."""

    kind: str
    key: str
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # l -> (d_i, d_j, D_l) or {1: (d_i, d_j)}
    meta: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False
    path: Path | None = None
    # Wall seconds per phase of this call (corpus, tokenize, word tensors, solve, residuals,
    # cache); never saved, so cached artifacts stay byte-identical. On CUDA a phase ends at its
    # last host sync, so the split is approximate there.
    timings: dict[str, float] = field(default_factory=dict)


def cache_fields(
    source: EmbeddingModel, target: EmbeddingModel, cfg: AdapterConfig,
    corpus: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Exactly what determines the maps (and their fit report). Not device, logger or paths;
    not ``overflow``, which only matters when the adapter is used. ``corpus``: the corpus's
    ``corpus_identity`` (words hash, package version) when the fit reads one."""
    fields = {
        "format_version": FORMAT_VERSION,
        "source_model": source.fingerprint(),
        "target_model": target.fingerprint(),
        "source_tokenizer": source.tokenizer.fingerprint(),
        "target_tokenizer": target.tokenizer.fingerprint(),
        "max_tokens": cfg.max_tokens,
        "words_per_bucket": cfg.words_per_bucket,
        "heldout_words": cfg.heldout_words,
        "min_bucket_words": cfg.min_bucket_words,
        "corpus": asdict(cfg.corpus),
        "seed": cfg.seed,
        "rcond": cfg.rcond,
        "fit_dtype": cfg.fit_dtype,
    }
    if corpus is not None:
        fields["corpus_content"] = dict(corpus)
    return fields


def adapter_kind(source: EmbeddingModel, target: EmbeddingModel) -> str:
    """identity for the same model, token for an identical tokenizer, fuse otherwise.

    "Identical" is decided by comparing tokenizer fingerprints, never model names (method.md).
    """
    if source.fingerprint() == target.fingerprint():
        return "identity"
    if source.tokenizer.fingerprint() == target.tokenizer.fingerprint():
        return "token"
    return "fuse"


# ----------------------------------------------------------------------------------------------
# Word tensors
# ----------------------------------------------------------------------------------------------
def word_tensor(
    table: torch.Tensor, ids_list: list[list[int]], depth: int, dtype: torch.dtype,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(w, d, depth) tensor: row r, slice s = table[ids_list[r][s]], zero past the word's length.

    Built on ``device`` (default: the table's). Memory layout (w, depth, d): the result is a
    permuted view, so each frontal slice ``x[..., s]`` has contiguous rows (what the Fourier
    slices of ``tlstsq`` read).
    """
    w = len(ids_list)
    device = table.device if device is None else torch.device(device)
    lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=w)
    assert (lengths <= depth).all(), "a word is deeper than the tensor"
    flat = np.fromiter((t for ids in ids_list for t in ids), dtype=np.int64, count=int(lengths.sum()))
    pos = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.zeros((w, depth), dtype=np.int64)  # (w, D) token ids, 0 past a word's length
    padded[np.repeat(np.arange(w), lengths), pos] = flat
    mask = torch.from_numpy(np.arange(depth)[None, :] < lengths[:, None]).to(device)  # (w, D)
    out = table[torch.from_numpy(padded).to(table.device)].to(device, dtype)  # (w, D, d)
    out.masked_fill_(~mask.unsqueeze(-1), 0.0)  # zero past each word's length
    return out.permute(0, 2, 1)  # (w, D, d) -> (w, d, D), a view


def _mean_rows(x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean over dim 0, keepdim, in x's dtype: float32 sums of ``chunk`` rows added in float64
    (a plain float32 mean over 16384 words drifts in the 4th digit for real embeddings)."""
    total = sum(x[i : i + chunk].sum(0, keepdim=True).double() for i in range(0, len(x), chunk))
    return (total / len(x)).to(x.dtype)


def relative_residual(pred: torch.Tensor, target: torch.Tensor) -> float:
    """|pred - target|_F / |target|_F (nan when the target is empty or zero). The norms
    accumulate in float64: a float32 sum over 25M entries drifts in the 4th digit."""
    denom = torch.linalg.vector_norm(target, dtype=torch.float64)
    if target.numel() == 0 or float(denom) == 0.0:
        return float("nan")
    return float(torch.linalg.vector_norm(pred - target, dtype=torch.float64) / denom)


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------
def _check_bucket(l: int, bucket: Bucket, cfg: AdapterConfig, row: dict[str, Any]) -> None:
    """The adapter guards of one bucket: refuse too few words, flag a capped N (report + log)."""
    n = len(bucket.fit_src)
    if 0 < n < cfg.min_bucket_words:
        raise AdapterError(
            f"adapter bucket of words with {l} target tokens has only {n} fitting words "
            f"(fewer than adapter.min_bucket_words={cfg.min_bucket_words}; {bucket.candidates} "
            f"corpus words of that length): use a larger corpus (adapter.corpus), a smaller "
            f"adapter.max_tokens, or set adapter.min_bucket_words lower (0 accepts any count)"
        )
    row["requested_words"] = cfg.words_per_bucket
    row["capped"] = 0 < n < cfg.words_per_bucket
    if row["capped"]:
        log.warning(
            "adapter bucket l=%d is capped: %d fitting words of the requested N=%d (the corpus has "
            "%d words of %d target tokens, %d held out)",
            l, n, cfg.words_per_bucket, bucket.candidates, l, len(bucket.held_src),
        )


def fit_fuse_maps(
    source: EmbeddingModel, target: EmbeddingModel, cfg: AdapterConfig, words: list[str], *,
    cache_root: Path | None = None, digest: str | None = None, device: str | torch.device | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[str, Any], dict[int, int]]:
    """Fit ``M_l`` for l = 1..L. Returns (maps, report, depths). Empty buckets get no map.

    ``cache_root``: tokenized-corpus cache (None: none). ``device``: where the word tensors,
    the solve and the maps live (default: the source table's device). ``timings``: phase ->
    seconds, added to.
    """
    # Word tensors stay in the tables' precision (float32 for real models: half the memory);
    # the solve accumulates in fit_dtype (float64 by default, see tensor.tlstsq on precision).
    accum = DTYPES[cfg.fit_dtype]
    buckets = make_buckets(
        words, source.tokenizer, target.tokenizer, cfg.max_tokens, cfg.words_per_bucket,
        cfg.heldout_words, cfg.seed, cache_root=cache_root, digest=digest, timings=timings,
    )
    v_i = source.embedding_table().detach()
    v_j = target.embedding_table().detach()
    device = v_i.device if device is None else torch.device(device)
    dtype = torch.float64 if torch.float64 in (v_i.dtype, v_j.dtype) else torch.float32
    accum = torch.float64 if dtype == torch.float64 else accum  # never below the data's precision
    maps: dict[int, torch.Tensor] = {}
    depths: dict[int, int] = {}
    rows = []
    for l, bucket in tqdm(buckets.items(), desc="fit buckets", unit="bucket", leave=False):
        row: dict[str, Any] = {
            "target_tokens": l,
            "words": len(bucket.fit_src),
            "heldout_words": len(bucket.held_src),
            "depth": bucket.depth,
        }
        _check_bucket(l, bucket, cfg, row)
        if not bucket.fit_src:
            log.warning(
                "no corpus word has exactly %d target tokens (and <= %d source tokens): words of "
                "that length will follow the overflow policy",
                l,
                cfg.max_tokens,
            )
            row.update(dict.fromkeys(
                ("residual_fit", "residual_heldout", "baseline_fit", "baseline_heldout"), None
            ))
            rows.append(row)
            continue
        with timed(timings, "word tensors"):
            x_i = word_tensor(v_i, bucket.fit_src, bucket.depth, dtype, device)  # (w, d_i, D)
            x_j = word_tensor(v_j, bucket.fit_tgt, bucket.depth, dtype, device)  # (w, d_j, D)
        with timed(timings, "solve (tlstsq)"):
            m = tlstsq(x_i, x_j, rcond=cfg.rcond, accum_dtype=accum)  # (d_i, d_j, D)
        with timed(timings, "residuals"):
            mean_j = _mean_rows(x_j)  # (1, d_j, D) the mean-embedding baseline
            # The fit residual on a sample of the fitting words (they are in random order
            # already): the full product would cost as much as a third of the solve.
            k = min(len(bucket.fit_src), RESIDUAL_SAMPLE)
            row["residual_fit"] = relative_residual(tprod(x_i[:k], m, algorithm="real"), x_j[:k])
            row["baseline_fit"] = relative_residual(mean_j.expand_as(x_j), x_j)
            row["residual_heldout"] = row["baseline_heldout"] = None
            if bucket.held_src:
                h_i = word_tensor(v_i, bucket.held_src, bucket.depth, dtype, device)
                h_j = word_tensor(v_j, bucket.held_tgt, bucket.depth, dtype, device)
                row["residual_heldout"] = relative_residual(tprod(h_i, m, algorithm="real"), h_j)
                row["baseline_heldout"] = relative_residual(mean_j.expand_as(h_j), h_j)
                del h_i, h_j
        maps[l] = m.to(torch.float32).contiguous()
        depths[l] = bucket.depth
        rows.append(row)
        del x_i, x_j
    if not maps:
        raise AdapterError(
            f"no corpus word has 1..{cfg.max_tokens} target tokens and 1..{cfg.max_tokens} source "
            f"tokens ({len(words)} corpus words); nothing to fit"
        )
    return maps, {"buckets": rows}, depths


def fit_token_map(
    source: EmbeddingModel, target: EmbeddingModel, cfg: AdapterConfig,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Section 3.2: ``M = pinv(V_i) @ V_j`` (d_i, d_j) for models sharing one tokenizer."""
    accum = DTYPES[cfg.fit_dtype]
    v_i = source.embedding_table().detach()
    device = v_i.device if device is None else torch.device(device)
    v_i = v_i.to(device)
    v_j = target.embedding_table().detach().to(device, v_i.dtype)
    n = min(v_i.shape[0], v_j.shape[0])  # rows past the smaller vocab (padding) have no partner
    # (V, d, 1): a depth-1 t-product is the plain matrix product, so tlstsq is pinv(V_i) @ V_j
    if v_i.dtype == torch.float64:
        accum = torch.float64
    m = tlstsq(v_i[:n, :, None], v_j[:n, :, None], rcond=cfg.rcond, accum_dtype=accum)[:, :, 0]
    residual = relative_residual(v_i[:n] @ m, v_j[:n])
    baseline = relative_residual(v_j[:n].mean(0, keepdim=True).expand(n, -1), v_j[:n])
    return m.to(torch.float32), {"token_rows": n, "residual_fit": residual, "baseline_fit": baseline}


def format_report(report: dict[str, Any]) -> str:
    """A fixed-width table of the fit report, for the terminal."""
    if "buckets" not in report:
        return json.dumps(report, indent=2, sort_keys=True)
    head = f"{'l':>3} {'words':>7} {'held':>6} {'D':>3} {'resid fit':>10} {'resid held':>11} {'mean fit':>9} {'mean held':>10}"
    lines = [head]

    def fmt(value: Any, width: int) -> str:
        return f"{value:>{width}.4f}" if isinstance(value, float) else f"{'-':>{width}}"

    for row in report["buckets"]:
        lines.append(
            f"{row['target_tokens']:>3} {row['words']:>7} {row['heldout_words']:>6} {row['depth']:>3} "
            f"{fmt(row['residual_fit'], 10)} {fmt(row['residual_heldout'], 11)} "
            f"{fmt(row['baseline_fit'], 9)} {fmt(row['baseline_heldout'], 10)}"
            + (f"  capped: N={row['requested_words']} requested" if row.get("capped") else "")
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------
def _cache_dir(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / "adapters" / key


def load_cached(cache_root: Path, key: str, fields: dict[str, Any]) -> FittedAdapter | None:
    """The cached adapter for ``key``, or None when absent. A corrupt or mismatched entry is
    reported in the log (run.log) and treated as absent (it is refitted and overwritten).

    An entry matches only when meta.json's key and fields, the key stored inside the maps
    file and the key in report.json all equal ``key``: a file copied from another entry is a
    mismatch."""
    folder = _cache_dir(cache_root, key)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("fields") != json.loads(json.dumps(fields, default=str)):
            raise ValueError("meta.json describes a different configuration")
        with safe_open(str(folder / "maps.safetensors"), framework="pt") as fh:
            stored = (fh.metadata() or {}).get("adapter_key")
            if stored != key:
                raise ValueError(f"maps.safetensors belongs to adapter {stored}, not {key}")
            maps = {int(name.split("_")[1]): fh.get_tensor(name) for name in fh.keys()}
        if sorted(maps) != sorted(int(k) for k in meta["depths"]):
            raise ValueError("maps.safetensors does not hold the lengths meta.json lists")
        for l, m in maps.items():
            if meta["kind"] == "fuse" and m.shape[-1] != meta["depths"][str(l)]:
                raise ValueError(f"map {l} has depth {m.shape[-1]}, meta says {meta['depths'][str(l)]}")
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        if report.get("key") != key:
            raise ValueError(f"report.json belongs to adapter {report.get('key')}, not {key}")
    except Exception as err:  # noqa: BLE001 - any damage means "refit", loudly
        log.warning("adapter cache %s is unreadable or mismatched (%s); refitting", folder, err)
        return None
    return FittedAdapter(
        kind=meta["kind"], key=key, maps=maps, meta=meta, report=report, from_cache=True, path=folder
    )


def save_cached(cache_root: Path, adapter: FittedAdapter) -> Path:
    """Write maps, report and meta into a temp folder, then rename it into place (atomic). The
    maps file and the report carry the key, so a file copied between entries is detected."""

    def write(tmp: Path) -> None:
        tensors = {f"M_{l}": m.detach().to("cpu").contiguous() for l, m in adapter.maps.items()}
        save_file(tensors, str(tmp / "maps.safetensors"), metadata={"adapter_key": adapter.key})
        write_json(tmp / "report.json", adapter.report)
        write_json(tmp / "meta.json", adapter.meta)  # written last: its presence marks completion

    return atomic_dir(_cache_dir(cache_root, adapter.key), write, replace=True)


def fit_adapter(
    source: EmbeddingModel, target: EmbeddingModel, cfg: AdapterConfig, cache_root: Path | None,
    refit: bool = False, device: str | torch.device | None = None,
) -> FittedAdapter:
    """Load the adapter from the cache, or fit it (and cache it). ``cache_root=None``: no cache
    at all; ``refit``: do not read the adapter cache (the tokenized corpus may still be read).
    ``device``: where the fit runs and the maps live (default: the source model's table's)."""
    timings: dict[str, float] = {}
    kind = adapter_kind(source, target)
    device = torch.device(device) if device is not None else source.embedding_table().device
    words = corpus = None
    if kind == "fuse":  # the corpus is part of what determines the maps
        with timed(timings, "corpus"):
            random_weights = all(getattr(m, "weights", None) == "random" for m in (source, target))
            words, corpus = fitting_corpus(cfg.corpus, random_weights=random_weights)
    fields = cache_fields(source, target, cfg, corpus)
    fields["kind"] = kind
    key = stable_hash(fields)
    if kind == "identity":
        log.info("source and target are the same model: the adapter is the identity (nothing to fit)")
        return FittedAdapter(kind="identity", key=key, meta={"kind": "identity", "fields": fields})
    if cache_root is not None and not refit:
        with timed(timings, "cache"):
            cached = load_cached(cache_root, key, fields)
        if cached is not None:
            log.info("adapter cache hit: %s", cached.path)
            cached.maps = {l: m.to(device) for l, m in cached.maps.items()}
            cached.timings = timings
            return cached
    if kind == "token":
        log.info("%s and %s share a tokenizer: fitting the token-level matrix (section 3.2)",
                 source.name, target.name)
        with timed(timings, "solve (tlstsq)"):
            m, report = fit_token_map(source, target, cfg, device)
        maps, depths = {1: m}, {1: 1}
    else:
        assert words is not None and corpus is not None
        maps, report, depths = fit_fuse_maps(
            source, target, cfg, words, cache_root=cache_root, digest=corpus["words_sha256"],
            device=device, timings=timings,
        )
    meta = {
        "kind": kind,
        "key": key,
        "fields": json.loads(json.dumps(fields, default=str)),
        "max_tokens": cfg.max_tokens,
        "depths": {str(l): d for l, d in depths.items()},
        "source_name": source.name,
        "target_name": target.name,
        "source_dim": int(source.dim),
        "target_dim": int(target.dim),
    }
    report = {"kind": kind, "key": key, "source": source.name, "target": target.name, **report}
    adapter = FittedAdapter(kind=kind, key=key, maps=maps, meta=meta, report=report, timings=timings)
    if cache_root is not None:
        with timed(timings, "cache"):
            adapter.path = save_cached(cache_root, adapter)
        log.info("adapter cached at %s", adapter.path)
    return adapter
