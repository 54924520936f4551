"""The FUSE adapter: fitting ``M_l = X_i^+ * X_j`` per target word length, caching, and the
differentiable bridge from a primary model's embeddings to a secondary model's.

Shape glossary
--------------
B      batch of sequences
S_i    source (primary) sequence length; S_j target (secondary) sequence length, specials included
d_i    source embedding width; d_j target embedding width
V_i    source vocabulary size
L      cap on a word's target token count (``adapter.max_tokens``)
l      a word's target token count (its bucket), 1..L; l_i its source token count
D      depth of the bucket's map, ``max(l, longest source length among the bucket's fit words)``
w      words in a bucket
X_i    (w, d_i, D)  word tensor of source embeddings: row r, slice s = embedding of token s of word r
X_j    (w, d_j, D)  same for the target (slices >= l are zero)
M_l    (d_i, d_j, D) least-squares t-linear map with X_i * M_l ~ X_j
n      words of one bucket inside a batch during backward

The exact reading of the method is ``../shared/notes/method.md`` (project notes): words are
whitespace pieces of the decoded text, tokenized mid-sentence; the backward is the true adjoint
``g_i = g_j * M_l^T`` of the per-word linear model, batched per bucket.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from fuse_repro.config import AdapterConfig, stable_hash, validate_adapter, write_json
from fuse_repro.corpus import load_corpus_words
from fuse_repro.tensor import tlstsq, tprod, ttranspose

log = logging.getLogger(__name__)

# Bump when the on-disk layout or the fitting math changes: old caches are then refitted.
FORMAT_VERSION = 2
# Fitting words used to estimate the fit residual in the report.
RESIDUAL_SAMPLE = 4096
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class AdapterError(ValueError):
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


def cache_fields(source: Any, target: Any, cfg: AdapterConfig) -> dict[str, Any]:
    """Exactly what determines the maps (and their fit report). Not device, logger or paths;
    not ``overflow``, which only matters when the adapter is used."""
    return {
        "format_version": FORMAT_VERSION,
        "source_model": source.fingerprint(),
        "target_model": target.fingerprint(),
        "source_tokenizer": source.tokenizer.fingerprint(),
        "target_tokenizer": target.tokenizer.fingerprint(),
        "max_tokens": cfg.max_tokens,
        "words_per_bucket": cfg.words_per_bucket,
        "heldout_words": cfg.heldout_words,
        "corpus": asdict(cfg.corpus),
        "seed": cfg.seed,
        "rcond": cfg.rcond,
        "fit_dtype": cfg.fit_dtype,
    }


def adapter_kind(source: Any, target: Any) -> str:
    """identity for the same model, token for an identical tokenizer, fuse otherwise.

    "Identical" is decided by comparing tokenizer fingerprints, never model names (method.md).
    """
    if source.fingerprint() == target.fingerprint():
        return "identity"
    if source.tokenizer.fingerprint() == target.tokenizer.fingerprint():
        return "token"
    return "fuse"


# ----------------------------------------------------------------------------------------------
# Bucketing: which words fit which map
# ----------------------------------------------------------------------------------------------
@dataclass
class Bucket:
    length: int  # l, the target token count
    fit_src: list[list[int]]  # source ids of each fit word
    fit_tgt: list[list[int]]
    held_src: list[list[int]]
    held_tgt: list[list[int]]
    fit_words: list[str]
    depth: int  # D


def make_buckets(
    words: list[str],
    source_tok: Any,
    target_tok: Any,
    max_tokens: int,
    words_per_bucket: int,
    heldout_words: int,
    seed: int,
    chunk: int = 8192,
) -> dict[int, Bucket]:
    """Split ``words`` by target token count (1..L) and draw the seeded fit / held-out samples.

    Words are tokenized in their mid-sentence form; a word qualifies for bucket ``l`` when its
    target tokenization has exactly ``l`` tokens and its source tokenization 1..L tokens, none of
    them special (unknown-token words would only teach the map noise).
    """
    src_ids: list[list[int]] = []
    tgt_ids: list[list[int]] = []
    for start in tqdm(range(0, len(words), chunk), desc="tokenize corpus", unit="chunk", leave=False):
        part = words[start : start + chunk]
        src_ids.extend(source_tok.mid_sentence_ids(part))
        tgt_ids.extend(target_tok.mid_sentence_ids(part))
    by_length: dict[int, list[int]] = {l: [] for l in range(1, max_tokens + 1)}
    src_special, tgt_special = source_tok.special_ids, target_tok.special_ids
    for index, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not (1 <= len(t) <= max_tokens and 1 <= len(s) <= max_tokens):
            continue
        if any(x in tgt_special for x in t) or any(x in src_special for x in s):
            continue
        by_length[len(t)].append(index)

    buckets: dict[int, Bucket] = {}
    for l, candidates in by_length.items():
        # One generator per bucket, seeded by (seed, l): a bucket's sample does not depend on
        # how many words the other buckets drew.
        rng = np.random.default_rng([seed, l])
        order = rng.permutation(len(candidates))
        # Held-out words are drawn first, so a bucket with fewer candidates than N + held-out
        # still reports a held-out residual (a tenth of its words at most).
        n_held = heldout_words
        if len(candidates) < words_per_bucket + heldout_words:
            n_held = min(heldout_words, len(candidates) // 10)
        held_idx = [candidates[k] for k in order[:n_held]]
        fit_idx = [candidates[k] for k in order[n_held : n_held + words_per_bucket]]
        depth = max([l] + [len(src_ids[k]) for k in fit_idx]) if fit_idx else l
        # Held-out words whose source form is deeper than the fitted map cannot be evaluated.
        held_idx = [k for k in held_idx if len(src_ids[k]) <= depth]
        buckets[l] = Bucket(
            length=l,
            fit_src=[src_ids[k] for k in fit_idx],
            fit_tgt=[tgt_ids[k] for k in fit_idx],
            held_src=[src_ids[k] for k in held_idx],
            held_tgt=[tgt_ids[k] for k in held_idx],
            fit_words=[words[k] for k in fit_idx],
            depth=depth,
        )
    return buckets


def word_tensor(
    table: torch.Tensor, ids_list: list[list[int]], depth: int, dtype: torch.dtype
) -> torch.Tensor:
    """(w, d, depth) tensor: row r, slice s = table[ids_list[r][s]], zero past the word's length."""
    w, d = len(ids_list), table.shape[1]
    assert all(len(ids) <= depth for ids in ids_list), "a word is deeper than the tensor"
    rows = torch.tensor([r for r, ids in enumerate(ids_list) for _ in ids], dtype=torch.long)
    pos = torch.tensor([s for ids in ids_list for s in range(len(ids))], dtype=torch.long)
    tok = torch.tensor([t for ids in ids_list for t in ids], dtype=torch.long)
    out = torch.zeros(w, depth, d, dtype=dtype)  # (w, D, d): fill by (row, slice) pairs
    out[rows, pos] = table[tok.to(table.device)].to("cpu", dtype)
    return out.permute(0, 2, 1).contiguous()  # (w, D, d) -> (w, d, D)


def relative_residual(pred: torch.Tensor, target: torch.Tensor) -> float:
    """|pred - target|_F / |target|_F (nan when the target is empty or zero)."""
    denom = torch.linalg.vector_norm(target)
    if target.numel() == 0 or float(denom) == 0.0:
        return float("nan")
    return float(torch.linalg.vector_norm(pred - target) / denom)


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------
def fit_fuse_maps(
    source: Any, target: Any, cfg: AdapterConfig, words: list[str]
) -> tuple[dict[int, torch.Tensor], dict[str, Any], dict[int, int]]:
    """Fit ``M_l`` for l = 1..L. Returns (maps, report, depths). Empty buckets get no map."""
    # Word tensors stay in the tables' precision (float32 for real models: half the memory);
    # the solve accumulates in fit_dtype (float64 by default, see tensor.tlstsq on precision).
    accum = DTYPES[cfg.fit_dtype]
    buckets = make_buckets(
        words,
        source.tokenizer,
        target.tokenizer,
        cfg.max_tokens,
        cfg.words_per_bucket,
        cfg.heldout_words,
        cfg.seed,
    )
    v_i = source.embedding_table().detach()
    v_j = target.embedding_table().detach()
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
        x_i = word_tensor(v_i, bucket.fit_src, bucket.depth, dtype)  # (w, d_i, D)
        x_j = word_tensor(v_j, bucket.fit_tgt, bucket.depth, dtype)  # (w, d_j, D)
        m = tlstsq(x_i, x_j, rcond=cfg.rcond, accum_dtype=accum)  # (d_i, d_j, D)
        mean_j = x_j.mean(dim=0, keepdim=True)  # (1, d_j, D) the mean-embedding baseline
        # The fit residual on a sample of the fitting words (they are in random order already):
        # the full product would cost as much as a third of the solve.
        k = min(len(bucket.fit_src), RESIDUAL_SAMPLE)
        row["residual_fit"] = relative_residual(tprod(x_i[:k], m), x_j[:k])
        row["baseline_fit"] = relative_residual(mean_j.expand_as(x_j), x_j)
        if bucket.held_src:
            h_i = word_tensor(v_i, bucket.held_src, bucket.depth, dtype)
            h_j = word_tensor(v_j, bucket.held_tgt, bucket.depth, dtype)
            row["residual_heldout"] = relative_residual(tprod(h_i, m), h_j)
            row["baseline_heldout"] = relative_residual(mean_j.expand_as(h_j), h_j)
            del h_i, h_j
        else:
            row["residual_heldout"] = row["baseline_heldout"] = None
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


def fit_token_map(source: Any, target: Any, cfg: AdapterConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """Section 3.2: ``M = pinv(V_i) @ V_j`` (d_i, d_j) for models sharing one tokenizer."""
    accum = DTYPES[cfg.fit_dtype]
    v_i = source.embedding_table().detach().to("cpu")
    v_j = target.embedding_table().detach().to("cpu", v_i.dtype)
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
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------
def _cache_dir(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / "adapters" / key


def load_cached(cache_root: Path, key: str, fields: dict[str, Any]) -> FittedAdapter | None:
    """The cached adapter for ``key``, or None when absent. A corrupt or mismatched entry is
    reported with a warning and treated as absent (it is refitted and overwritten)."""
    folder = _cache_dir(cache_root, key)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("fields") != json.loads(json.dumps(fields, default=str)):
            raise ValueError("meta.json describes a different configuration")
        tensors = load_file(str(folder / "maps.safetensors"))
        maps = {int(name.split("_")[1]): t for name, t in tensors.items()}
        if sorted(maps) != sorted(int(k) for k in meta["depths"]):
            raise ValueError("maps.safetensors does not hold the lengths meta.json lists")
        for l, m in maps.items():
            if meta["kind"] == "fuse" and m.shape[-1] != meta["depths"][str(l)]:
                raise ValueError(f"map {l} has depth {m.shape[-1]}, meta says {meta['depths'][str(l)]}")
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 - any damage means "refit", loudly
        warnings.warn(f"adapter cache {folder} is unreadable ({err}); refitting", stacklevel=2)
        return None
    return FittedAdapter(
        kind=meta["kind"], key=key, maps=maps, meta=meta, report=report, from_cache=True, path=folder
    )


def save_cached(cache_root: Path, adapter: FittedAdapter) -> Path:
    """Write maps, report and meta into a temp folder, then rename it into place (atomic)."""
    final = _cache_dir(cache_root, adapter.key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{adapter.key}.", dir=final.parent))
    try:
        save_file({f"M_{l}": m.contiguous() for l, m in adapter.maps.items()}, str(tmp / "maps.safetensors"))
        write_json(tmp / "report.json", adapter.report)
        write_json(tmp / "meta.json", adapter.meta)  # written last: its presence marks completion
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def fit_adapter(
    source: Any, target: Any, cfg: AdapterConfig, cache_root: Path | None, refit: bool = False
) -> FittedAdapter:
    """Load the adapter from the cache, or fit it (and cache it). ``cache_root=None``: no cache."""
    validate_adapter(cfg)
    kind = adapter_kind(source, target)
    fields = cache_fields(source, target, cfg)
    fields["kind"] = kind
    key = stable_hash(fields)
    if kind == "identity":
        log.info("source and target are the same model: the adapter is the identity (nothing to fit)")
        return FittedAdapter(kind="identity", key=key, meta={"kind": "identity", "fields": fields})
    if cache_root is not None and not refit:
        cached = load_cached(cache_root, key, fields)
        if cached is not None:
            log.info("adapter cache hit: %s", cached.path)
            return cached
    if kind == "token":
        log.info("%s and %s share a tokenizer: fitting the token-level matrix (section 3.2)",
                 source.name, target.name)
        m, report = fit_token_map(source, target, cfg)
        maps, depths = {1: m}, {1: 1}
    else:
        words = load_corpus_words(cfg.corpus)
        maps, report, depths = fit_fuse_maps(source, target, cfg, words)
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
    report = {"kind": kind, "source": source.name, "target": target.name, **report}
    adapter = FittedAdapter(kind=kind, key=key, maps=maps, meta=meta, report=report)
    if cache_root is not None:
        adapter.path = save_cached(cache_root, adapter)
        log.info("adapter cached at %s", adapter.path)
    return adapter


# ----------------------------------------------------------------------------------------------
# The differentiable bridge
# ----------------------------------------------------------------------------------------------
@dataclass
class TargetBatch:
    """Secondary-model inputs for a batch of primary sequences."""

    embeds: torch.Tensor  # (B, S_j, d_j), differentiable w.r.t. the primary embeddings
    attention_mask: torch.Tensor  # (B, S_j) 1 for real tokens, 0 for right padding
    ids: list[list[int]]  # full target ids (specials included), unpadded
    texts: list[str]


class _BridgeFn(torch.autograd.Function):
    """Forward: pass the looked-up target embeddings through. Backward: the bridge's adjoint."""

    @staticmethod
    def forward(ctx: Any, src_embeds: torch.Tensor, tgt_values: torch.Tensor, backward: Any) -> torch.Tensor:
        ctx.backward = backward
        return tgt_values.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        return ctx.backward(grad_out), None, None


@dataclass
class _Plan:
    """Per-batch bookkeeping of which target rows feed which source rows (CPU index tensors)."""

    batch: int
    src_len: int
    tgt_len: int
    # bucket l -> (tgt_index (n, l), src_index (n, D_l) with -1 where no source row, )
    buckets: dict[int, tuple[torch.Tensor, torch.Tensor]]
    # words past the cap: (tgt rows, src rows, seed) each
    overflow: list[tuple[list[int], list[int], int]]
    # token bridge: flat target rows and their source rows
    token_pairs: tuple[torch.Tensor, torch.Tensor] | None = None


class Bridge:
    """Maps primary-model embeddings to a secondary model's input embeddings.

    ``kind``: identity (the secondary is the primary), token (shared tokenizer, section 3.2) or
    fuse (different tokenizers, section 3.3). Forward is exact (decode, retokenize, look up);
    backward is the adjoint of the fitted per-word linear model.
    """

    def __init__(self, source: Any, target: Any, adapter: FittedAdapter, overflow: str = "random", seed: int = 0) -> None:
        if overflow not in ("random", "zero"):
            raise AdapterError(f"overflow={overflow!r} is not one of ['random', 'zero']")
        self.source, self.target, self.adapter = source, target, adapter
        self.kind = adapter.kind
        self.overflow, self.seed = overflow, seed
        # M^T per bucket, computed once: the backward is g_i = g_j * M^T.
        self._maps_t: dict[int, torch.Tensor] = {}
        for l, m in adapter.maps.items():
            if adapter.kind == "fuse":
                assert m.ndim == 3 and m.shape[:2] == (source.dim, target.dim), f"map {l}: {tuple(m.shape)}"
                self._maps_t[l] = ttranspose(m).contiguous()  # (d_j, d_i, D)
            else:
                assert m.shape == (source.dim, target.dim), f"token map: {tuple(m.shape)}"
                self._maps_t[l] = m.t().contiguous()  # (d_j, d_i)

    # -- forward ------------------------------------------------------------------------------
    def _encode(self, src_ids: list[list[int]]) -> tuple[list[str], list[list[int]], torch.Tensor, torch.Tensor, list, list]:
        """Decode each source sequence, retokenize it for the target, pair up the words.

        Returns texts, full target ids, padded ids (B, S_j), mask (B, S_j), per-sequence word
        pairs ((target span), (source span), word) and, for the token bridge, row pairs.
        """
        tok_t = self.target.tokenizer
        texts, full_ids, words, token_rows = [], [], [], []
        for ids in src_ids:
            ids = [int(t) for t in ids]
            text = self.source.tokenizer.decode(ids)
            texts.append(text)
            if self.kind in ("token", "identity"):
                # Same tokenizer: the target sees the very same content ids (no retokenization).
                full, offset = tok_t.with_specials(ids) if self.kind == "token" else (ids, 0)
                full_ids.append(full)
                token_rows.append([(offset + s, s) for s in range(len(ids))])
                continue
            tgt_content, tgt_spans = tok_t.encode_words(text)
            src_spans = self.source.tokenizer.spans_of_ids(ids)
            if len(tgt_spans) != len(src_spans):
                raise AdapterError(
                    f"word split mismatch for {text!r}: source has {len(src_spans)} words, "
                    f"target {len(tgt_spans)}"
                )
            full, offset = tok_t.with_specials(tgt_content)
            full_ids.append(full)
            words.append(
                [((ts + offset, te + offset), (ss, se), word)
                 for (ts, te), (ss, se), word in zip(tgt_spans, src_spans, text.split())]
            )
        max_len = max(len(f) for f in full_ids)
        pad_id = tok_t.pad_id if tok_t.pad_id is not None else 0
        ids_pad = torch.full((len(src_ids), max_len), pad_id, dtype=torch.long)  # (B, S_j)
        mask = torch.zeros((len(src_ids), max_len), dtype=torch.long)  # (B, S_j)
        for b, full in enumerate(full_ids):
            ids_pad[b, : len(full)] = torch.tensor(full, dtype=torch.long)
            mask[b, : len(full)] = 1
        return texts, full_ids, ids_pad, mask, words, token_rows

    @torch.no_grad()
    def lookup(self, src_ids: list[list[int]]) -> TargetBatch:
        """The exact target inputs of ``src_ids`` with no gradient path (candidate evaluation)."""
        if not src_ids:
            raise AdapterError("lookup needs at least one source sequence")
        texts, full_ids, ids_pad, mask, _, _ = self._encode(src_ids)
        model = self.source if self.kind == "identity" else self.target
        embeds = model.embed(ids_pad.to(model.device))  # (B, S_j, d_j)
        return TargetBatch(embeds, mask.to(model.device), full_ids, texts)

    def __call__(self, src_ids: list[list[int]], src_embeds: torch.Tensor) -> TargetBatch:
        """src_ids: B unpadded id lists; src_embeds (B, S_i, d_i) with S_i >= max length.

        The returned embeddings equal ``lookup(src_ids)``; their gradient flows back into
        ``src_embeds`` through the adjoint of the fitted map.
        """
        if src_embeds.ndim != 3 or src_embeds.shape[0] != len(src_ids):
            raise AdapterError(
                f"src_embeds must be (B, S_i, d_i) with B={len(src_ids)}, got {tuple(src_embeds.shape)}"
            )
        if any(len(ids) > src_embeds.shape[1] for ids in src_ids):
            raise AdapterError("a source sequence is longer than src_embeds' sequence dimension")
        texts, full_ids, ids_pad, mask, words, token_rows = self._encode(src_ids)
        device = src_embeds.device
        if self.kind == "identity":
            return TargetBatch(src_embeds[:, : ids_pad.shape[1]], mask.to(device), full_ids, texts)
        table = self.target.embedding_table()
        values = table[ids_pad.to(table.device)].detach().to(device=device, dtype=src_embeds.dtype)
        plan = self._plan(len(src_ids), src_embeds.shape[1], ids_pad.shape[1], words, token_rows)
        embeds = _BridgeFn.apply(src_embeds, values, lambda g: self._backward(g, plan))
        return TargetBatch(embeds, mask.to(device), full_ids, texts)

    def _plan(self, batch: int, src_len: int, tgt_len: int, words: list, token_rows: list) -> _Plan:
        if self.kind == "token":
            tgt = [b * tgt_len + t for b, rows in enumerate(token_rows) for t, _ in rows]
            src = [b * src_len + s for b, rows in enumerate(token_rows) for _, s in rows]
            return _Plan(batch, src_len, tgt_len, {}, [], (torch.tensor(tgt, dtype=torch.long), torch.tensor(src, dtype=torch.long)))
        per_bucket: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
        overflow = []
        for b, seq_words in enumerate(words):
            for (ts, te), (ss, se), word in seq_words:
                l_j, l_i = te - ts, se - ss
                if l_j == 0 or l_i == 0:
                    continue  # a word one side does not tokenize at all carries no gradient
                tgt_rows = [b * tgt_len + t for t in range(ts, te)]
                src_rows = [b * src_len + s for s in range(ss, se)]
                depth = self.adapter.maps[l_j].shape[-1] if l_j in self.adapter.maps else 0
                if l_j in self.adapter.maps and l_i <= depth:
                    tgt_list, src_list = per_bucket.setdefault(l_j, ([], []))
                    tgt_list.append(tgt_rows)
                    src_list.append(src_rows + [-1] * (depth - l_i))
                elif self.overflow == "random":
                    digest = hashlib.sha256(f"{self.seed}|{word}|{l_i}|{l_j}".encode()).digest()
                    overflow.append((tgt_rows, src_rows, int.from_bytes(digest[:8], "little") & (2**63 - 1)))
        buckets = {
            l: (torch.tensor(t, dtype=torch.long), torch.tensor(s, dtype=torch.long))
            for l, (t, s) in per_bucket.items()
        }
        return _Plan(batch, src_len, tgt_len, buckets, overflow)

    # -- backward -----------------------------------------------------------------------------
    def _backward(self, grad_tgt: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """grad_tgt (B, S_j, d_j) -> grad_src (B, S_i, d_i). Special/padding rows send nothing."""
        device, dtype = grad_tgt.device, grad_tgt.dtype
        d_i, d_j = self.source.dim, self.target.dim
        assert grad_tgt.shape == (plan.batch, plan.tgt_len, d_j), tuple(grad_tgt.shape)
        g_flat = grad_tgt.reshape(plan.batch * plan.tgt_len, d_j)  # (B*S_j, d_j)
        out = torch.zeros(plan.batch * plan.src_len, d_i, device=device, dtype=dtype)  # (B*S_i, d_i)
        if plan.token_pairs is not None:
            tgt, src = (t.to(device) for t in plan.token_pairs)
            out.index_add_(0, src, g_flat[tgt] @ self._maps_t[1].to(device, dtype))
        for l, (tgt_idx, src_idx) in plan.buckets.items():
            tgt_idx, src_idx = tgt_idx.to(device), src_idx.to(device)
            n, depth = src_idx.shape
            g_j = g_flat[tgt_idx]  # (n, l, d_j)
            g_j = g_j.permute(0, 2, 1)  # (n, l, d_j) -> (n, d_j, l); tprod zero-pads to D
            g_i = tprod(g_j, self._maps_t[l].to(device, dtype))  # (n, d_i, D)
            g_i = g_i.permute(0, 2, 1).reshape(n * depth, d_i)  # (n, D, d_i) -> (n*D, d_i)
            keep = src_idx.reshape(-1) >= 0  # slices past the word's source length are dropped
            out.index_add_(0, src_idx.reshape(-1)[keep], g_i[keep])
        for tgt_rows, src_rows, word_seed in plan.overflow:
            out[src_rows] += self._random_jacobian_t(g_flat[tgt_rows], len(src_rows), word_seed)
        return out.reshape(plan.batch, plan.src_len, d_i)

    def _random_jacobian_t(self, g_j: torch.Tensor, l_i: int, word_seed: int) -> torch.Tensor:
        """(l_j, d_j) -> (l_i, d_i) through a Gaussian Jacobian seeded by (seed, word, lengths):
        the same word always gets the same matrix, whatever the batch (the paper's policy for
        words past the cap, made reproducible)."""
        l_j, d_j = g_j.shape
        gen = torch.Generator(device="cpu").manual_seed(word_seed)
        out = torch.zeros(l_i, self.source.dim, dtype=g_j.dtype, device=g_j.device)
        scale = (l_j * d_j) ** -0.5
        for t in range(l_i):  # one (l_j*d_j, d_i) block at a time keeps memory at a few MB
            block = torch.randn(l_j * d_j, self.source.dim, generator=gen) * scale
            out[t] = g_j.reshape(-1) @ block.to(g_j.device, g_j.dtype)
        return out
