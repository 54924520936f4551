"""Fast tests written to kill what mutation testing (``bin/mutation``, mutmut) left alive.

Each test says which behaviour it pins; together with the modules' own tests they kill every
non-equivalent mutant of the t-product algebra, the bridge, beam selection/proposal and the
adapter cache key (the equivalent ones are listed in /work/coord/TESTS-note.md and the README's
testing section). Everything here runs in well under a second per test, with no model weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fuse_repro.adapter import FORMAT_VERSION, cache_fields
from fuse_repro.config import AdapterConfig
from fuse_repro.config.schemas import CorpusConfig
from fuse_repro.tensor import teye, tlstsq, tpad, tpinv, tprod, ttranspose


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _with_singular_values(m: int, k: int, sv: list[float], seed: int = 0) -> torch.Tensor:
    """(m, k, 1) float64 with exactly the singular values ``sv`` (depth 1: one Fourier slice)."""
    u, _ = torch.linalg.qr(_rand(m, k, seed=seed))  # (m, k) orthonormal columns
    v, _ = torch.linalg.qr(_rand(k, k, seed=seed + 1))  # (k, k) orthogonal
    return (u @ torch.diag(torch.tensor(sv, dtype=torch.float64)) @ v.T).unsqueeze(-1)


# ---------------------------------------------------------------------------- tensor: errors


def test_tensor_errors_name_the_bad_operand():
    good, half = _rand(2, 2, 2), torch.ones(2, 2, 2, dtype=torch.float16)
    cases = [
        (lambda: tprod(half, good), r"^A must be a real"),
        (lambda: tprod(good, half), r"^B must be a real"),
        (lambda: tprod(good.float(), good), r"^A and B must have the same dtype"),
        (lambda: tpad(half, 3), r"^a must be a real"),
        (lambda: tpinv(half), r"^A must be a real"),
        (lambda: ttranspose(half), r"^A must be a real"),
        (lambda: tlstsq(half, good), r"^A must be a real"),
        (lambda: tlstsq(good, half), r"^B must be a real"),
        (lambda: tlstsq(good.float(), good), r"^A and B must have the same dtype"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    # The inner-dims message names each operand's own k.
    with pytest.raises(ValueError, match=r"\(3, 4, 2\) = \(\.\.\., m, k=4, p\).*\(5, 2, 2\) = "
                                         r"\(\.\.\., k=5, n, p\)"):
        tprod(_rand(3, 4, 2), _rand(5, 2, 2))


def test_teye_shapes_devices_and_bad_sizes():
    assert teye(0, 3).shape == (0, 0, 3)  # an empty identity is valid
    eye = teye(3, 2, dtype=torch.float64, device="meta")
    assert eye.device.type == "meta" and eye.dtype == torch.float64 and eye.shape == (3, 3, 2)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"^n must be an int >= 0, got "):
            teye(bad, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^dtype must be torch.float32 or torch.float64, got "):
        teye(2, 2, dtype=torch.float16)


# ---------------------------------------------------------------------------- tensor: tpinv


def test_tpinv_of_empty_and_single_row_tensors():
    assert tpinv(torch.zeros(0, 3, 2, dtype=torch.float64)).shape == (3, 0, 2)
    assert tpinv(torch.zeros(2, 4, 0, 3, dtype=torch.float64)).shape == (2, 0, 4, 3)
    for shape in ((1, 3, 4), (3, 1, 4)):  # min(m, k) == 1 is a real pseudoinverse, not zeros
        a = _rand(*shape, seed=3)
        x = tpinv(a)
        assert x.shape == (shape[1], shape[0], shape[2])
        torch.testing.assert_close(tprod(tprod(a, x), a), a, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(tprod(tprod(x, a), x), x, rtol=1e-9, atol=1e-9)


def test_rcond_one_drops_even_the_largest_singular_value():
    """The cut-off keeps sigma > rcond * sigma_max only: at rcond = 1 nothing is left."""
    a, b = _rand(6, 3, 2, seed=4), _rand(6, 2, 2, seed=5)
    assert torch.count_nonzero(tpinv(a, rcond=1.0)) == 0
    for solver in ("auto", "eigh"):
        assert torch.count_nonzero(tlstsq(a, b, rcond=1.0, solver=solver)) == 0


def test_batched_cutoffs_are_per_batch_element():
    """A batch of [A, 1e-4 A]: each element is cut relative to its own sigma_max, so each equals
    its own unbatched result (a cut-off shared over the batch would zero the small one)."""
    a, b = _rand(8, 3, 3, seed=6), _rand(8, 2, 3, seed=7)
    a2 = torch.stack([a, 1e-4 * a])  # (2, 8, 3, 3)
    b2 = torch.stack([b, b])
    pinv = tpinv(a2, rcond=1e-3)
    for i in range(2):
        torch.testing.assert_close(pinv[i], tpinv(a2[i], rcond=1e-3), rtol=1e-9, atol=0)
    for solver in ("auto", "eigh"):
        x = tlstsq(a2, b2, rcond=1e-3, solver=solver)
        for i in range(2):
            torch.testing.assert_close(x[i], tlstsq(a2[i], b, rcond=1e-3, solver=solver),
                                       rtol=1e-8, atol=0)
        torch.testing.assert_close(x[1], 1e4 * x[0], rtol=1e-8, atol=0)


# ---------------------------------------------------------------------------- tensor: tlstsq


def test_tlstsq_of_a_zero_matrix_is_zero():
    """No direction survives the cut-off of an all-zero A (no 0/0): the least-norm solution is 0."""
    b = _rand(5, 2, 3, seed=8)
    for solver in ("auto", "eigh"):
        x = tlstsq(torch.zeros(5, 3, 3, dtype=torch.float64), b, solver=solver)
        assert torch.isfinite(x).all() and torch.count_nonzero(x) == 0


def test_tlstsq_is_scale_invariant_at_tiny_scales():
    """tlstsq(c A, B) = tlstsq(A, B) / c: the cut-off is relative, also when lambda_max << 1."""
    a, b = _rand(20, 4, 2, seed=9), _rand(20, 3, 2, seed=10)
    for solver in ("auto", "eigh"):
        x = tlstsq(a, b, rcond=1e-3, solver=solver)
        torch.testing.assert_close(tlstsq(1e-4 * a, b, rcond=1e-3, solver=solver), 1e4 * x,
                                   rtol=1e-7, atol=0)


def test_auto_solver_truncates_like_eigh_at_large_scale():
    """A singular value below rcond * sigma_max must be dropped by the auto (Cholesky-certified)
    solver too, also when the data is large (the certificate's shift scales with lambda_max)."""
    a = 100.0 * _with_singular_values(30, 4, [1.0, 1.0, 1.0, 1e-4])
    b = _rand(30, 2, 1, seed=11)
    want = tprod(tpinv(a, rcond=1e-2), b)
    for solver in ("auto", "eigh"):
        torch.testing.assert_close(tlstsq(a, b, rcond=1e-2, solver=solver), want, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------- cache key


def _model(name: str, tokenizer: str) -> SimpleNamespace:
    return SimpleNamespace(fingerprint=lambda: f"model:{name}",
                           tokenizer=SimpleNamespace(fingerprint=lambda: f"tok:{tokenizer}"))


def test_cache_fields_are_exactly_the_documented_fields():
    """The adapter key hashes these fields, under these names: a renamed or dropped field would
    silently orphan or, worse, share every cached adapter."""
    cfg = AdapterConfig(max_tokens=3, words_per_bucket=100, heldout_words=7, seed=5, rcond=1e-6,
                        fit_dtype="float32", min_bucket_words=2, overflow="zero",
                        corpus=CorpusConfig(kind="text_file", path="/x.txt", max_words=50))
    corpus = {"words_sha256": "abc", "package_version": "1.2"}
    fields = cache_fields(_model("s", "ts"), _model("t", "tt"), cfg, corpus)
    assert fields == {
        "format_version": FORMAT_VERSION,
        "source_model": "model:s",
        "target_model": "model:t",
        "source_tokenizer": "tok:ts",
        "target_tokenizer": "tok:tt",
        "max_tokens": 3,
        "words_per_bucket": 100,
        "heldout_words": 7,
        "min_bucket_words": 2,
        "corpus": {"kind": "text_file", "lang": "en", "path": "/x.txt",
                   "name": "wikitext-103-raw-v1", "max_words": 50},
        "seed": 5,
        "rcond": 1e-6,
        "fit_dtype": "float32",
        "corpus_content": corpus,
    }
    assert "corpus_content" not in cache_fields(_model("s", "ts"), _model("t", "tt"), cfg)
