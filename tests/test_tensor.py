"""Tests for fuse_repro.tensor against naive float64 references written here, not imported.

Two independent references for the t-product: the block-circulant matrix definition
(Kilmer & Martin 2011) and the direct circular-convolution sum. Everything else (transpose,
pseudoinverse, identity, least squares) is checked through algebraic identities that a wrong
implementation would break.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fuse_repro.tensor import teye, tlstsq, tpad, tpinv, tprod, ttranspose

# --------------------------------------------------------------------------------------------
# naive references (float64, loops, single tensors without batch dims)


def _zero_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """(r, c, q) -> (r, c, p) with zero slices appended (own code, not the module's tpad)."""
    extra = torch.zeros(*x.shape[:-1], p - x.shape[-1], dtype=x.dtype)
    return torch.cat([x, extra], dim=-1)


def _bcirc(a: torch.Tensor) -> torch.Tensor:
    """(m, k, p) -> (m*p, k*p) block-circulant matrix, block (i, j) = A[:, :, (i - j) mod p]."""
    m, k, p = a.shape
    out = torch.zeros(m * p, k * p, dtype=a.dtype)
    for i in range(p):
        for j in range(p):
            out[i * m : (i + 1) * m, j * k : (j + 1) * k] = a[:, :, (i - j) % p]
    return out


def _unfold(b: torch.Tensor) -> torch.Tensor:
    """(k, n, p) -> (k*p, n): frontal slices stacked vertically."""
    return torch.cat([b[:, :, s] for s in range(b.shape[-1])], dim=0)


def _fold(x: torch.Tensor, rows: int, p: int) -> torch.Tensor:
    """(rows*p, n) -> (rows, n, p), inverse of _unfold."""
    return torch.stack([x[s * rows : (s + 1) * rows] for s in range(p)], dim=-1)


def ref_bcirc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """t-product via the block-circulant definition, after zero-padding to the deeper depth."""
    p = max(a.shape[-1], b.shape[-1])
    a, b = _zero_pad(a.double(), p), _zero_pad(b.double(), p)
    return _fold(_bcirc(a) @ _unfold(b), a.shape[0], p)


def ref_conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """t-product via (A*B)[t] = sum_s A[s] @ B[(t - s) mod p], after zero-padding."""
    p = max(a.shape[-1], b.shape[-1])
    a, b = _zero_pad(a.double(), p), _zero_pad(b.double(), p)
    out = torch.zeros(a.shape[0], b.shape[1], p, dtype=torch.float64)
    for t in range(p):
        for s in range(p):
            out[:, :, t] += a[:, :, s] @ b[:, :, (t - s) % p]
    return out


def ref_batched(ref, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Apply a single-tensor reference over broadcast leading dims with an explicit loop."""
    batch = torch.broadcast_shapes(a.shape[:-3], b.shape[:-3])
    a = a.expand(*batch, *a.shape[-3:])
    b = b.expand(*batch, *b.shape[-3:])
    outs = [ref(a[idx], b[idx]) for idx in itertools.product(*(range(d) for d in batch))]
    return torch.stack(outs).reshape(*batch, *outs[0].shape)


def _rand(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _low_rank(m: int, k: int, p: int, r: int, seed: int) -> torch.Tensor:
    """(m, k, p) with every Fourier slice of rank <= r < min(m, k), built as U * V."""
    return ref_conv(_rand(m, r, p, seed=seed), _rand(r, k, p, seed=seed + 1))


# --------------------------------------------------------------------------------------------
# tprod


def test_references_agree():
    a, b = _rand(3, 4, 5, seed=1), _rand(4, 2, 3, seed=2)
    torch.testing.assert_close(ref_bcirc(a, b), ref_conv(a, b))


@pytest.mark.parametrize("algorithm", ["fft", "real"])
@pytest.mark.parametrize("pa,pb", [(p, p) for p in range(1, 7)] + [(2, 5), (5, 2), (1, 4), (4, 3)])
def test_tprod_matches_definition_float64(pa, pb, algorithm):
    a, b = _rand(3, 4, pa, seed=pa), _rand(4, 5, pb, seed=10 + pb)
    out = tprod(a, b, algorithm=algorithm)
    assert out.shape == (3, 5, max(pa, pb))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_bcirc(a, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref_conv(a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pa,pb", [(4, 4), (3, 6), (5, 1)])
def test_tprod_matches_definition_float32(pa, pb):
    a = _rand(6, 7, pa, dtype=torch.float32, seed=3)
    b = _rand(7, 2, pb, dtype=torch.float32, seed=4)
    out = tprod(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_conv(a, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape_a,shape_b",
    [
        ((2, 3, 4, 5, 3), (2, 3, 5, 2, 3)),  # same batch dims
        ((2, 1, 4, 5, 2), (1, 3, 5, 2, 4)),  # broadcast both ways, pa < pb
        ((4, 5, 5), (3, 5, 2, 2)),  # A has no batch dims, pa > pb
    ],
)
def test_tprod_batched_broadcast(shape_a, shape_b):
    a, b = _rand(*shape_a, seed=5), _rand(*shape_b, seed=6)
    out = tprod(a, b)
    torch.testing.assert_close(out, ref_batched(ref_bcirc, a, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tprod(a, b, algorithm="real"), out, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="algorithm"):
        tprod(a, b, algorithm="svd")


def test_tprod_associative_and_distributive():
    a, b, c = _rand(3, 4, 4, seed=7), _rand(4, 5, 2, seed=8), _rand(5, 2, 4, seed=9)
    torch.testing.assert_close(tprod(tprod(a, b), c), tprod(a, tprod(b, c)))
    b2 = _rand(4, 5, 2, seed=10)
    torch.testing.assert_close(tprod(a, b + b2), tprod(a, b) + tprod(a, b2))


def test_tprod_gradcheck():
    a = _rand(2, 3, 3, seed=11).requires_grad_()
    b = _rand(3, 2, 4, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(tprod, (a, b))
    c = _rand(2, 3, 2, 4, seed=13).requires_grad_()  # batched, even depth
    d = _rand(2, 3, 4, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(tprod, (c, d))


# --------------------------------------------------------------------------------------------
# ttranspose, teye, tpad


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_ttranspose_reverses_products(p):
    a, b = _rand(3, 4, p, seed=15), _rand(4, 2, p, seed=16)
    at = ttranspose(a)
    assert at.shape == (4, 3, p)
    torch.testing.assert_close(ttranspose(tprod(a, b)), tprod(ttranspose(b), at))
    assert torch.equal(ttranspose(at), a)
    # slice-level definition, written out
    for s in range(p):
        assert torch.equal(at[:, :, s], a[:, :, (p - s) % p].T)


@pytest.mark.parametrize("p", [3, 4, 6])
def test_ttranspose_is_not_plain_permute(p):
    a, b = _rand(3, 4, p, seed=17), _rand(4, 2, p, seed=18)
    naive = a.permute(1, 0, 2)
    assert not torch.allclose(ttranspose(a), naive)
    # the naive one breaks the adjoint identity, the real one keeps it
    lhs = ttranspose(tprod(a, b))
    assert not torch.allclose(lhs, tprod(ttranspose(b), naive))
    torch.testing.assert_close(lhs, tprod(ttranspose(b), ttranspose(a)))


def test_ttranspose_batched():
    a = _rand(2, 3, 4, 5, 4, seed=19)
    at = ttranspose(a)
    assert at.shape == (2, 3, 5, 4, 4)
    assert torch.equal(at[1, 2], ttranspose(a[1, 2]))


@pytest.mark.parametrize("p", [1, 2, 5])
def test_teye_is_two_sided_identity(p):
    a = _rand(3, 4, p, seed=20)
    torch.testing.assert_close(tprod(teye(3, p, dtype=torch.float64), a), a)
    torch.testing.assert_close(tprod(a, teye(4, p, dtype=torch.float64)), a)
    eye = teye(3, p)
    assert eye.dtype == torch.float32 and eye.shape == (3, 3, p)
    assert eye[:, :, 1:].abs().sum() == 0


def test_tpad():
    a = _rand(2, 3, 2, seed=21)
    padded = tpad(a, 5)
    assert padded.shape == (2, 3, 5)
    assert torch.equal(padded[..., :2], a) and padded[..., 2:].abs().sum() == 0
    assert tpad(a, 2) is a
    with pytest.raises(ValueError, match="shrink"):
        tpad(a, 1)


# --------------------------------------------------------------------------------------------
# tpinv


def _assert_penrose(a: torch.Tensor, x: torch.Tensor, tol: float = 1e-9) -> None:
    close = {"rtol": tol, "atol": tol}
    ax, xa = tprod(a, x), tprod(x, a)
    torch.testing.assert_close(tprod(ax, a), a, **close)
    torch.testing.assert_close(tprod(xa, x), x, **close)
    torch.testing.assert_close(ttranspose(ax), ax, **close)
    torch.testing.assert_close(ttranspose(xa), xa, **close)


_PINV_CASES = {
    "tall": lambda: _rand(9, 4, 3, seed=22),
    "wide": lambda: _rand(3, 7, 4, seed=23),
    "square_p1": lambda: _rand(5, 5, 1, seed=24),
    "rank_deficient_tall": lambda: _low_rank(8, 5, 4, r=2, seed=25),
    "rank_deficient_wide": lambda: _low_rank(4, 7, 5, r=3, seed=27),
    # equal slices: Fourier slices f >= 1 are exactly zero matrices
    "constant_depth": lambda: _rand(6, 3, 1, seed=29).expand(6, 3, 4).contiguous(),
}


@pytest.mark.parametrize("case", list(_PINV_CASES))
def test_tpinv_penrose_conditions(case):
    a = _PINV_CASES[case]()
    x = tpinv(a)
    assert x.shape == (a.shape[1], a.shape[0], a.shape[2])
    _assert_penrose(a, x)


def test_tpinv_rank_deficient_is_not_a_plain_inverse():
    # guard that the rank-deficient cases really are deficient (else the test above is weak)
    a = _low_rank(8, 5, 4, r=2, seed=25)
    torch.testing.assert_close(tprod(tpinv(a), a)[:, :, 0].trace(), torch.tensor(2.0).double())


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6])
def test_tpinv_equal_slices_ignores_rounding_noise(p):
    # all p slices equal C: Fourier slice 0 is p*C and the others vanish in exact arithmetic but
    # are ~1e-16 after an FFT; the pseudoinverse must not invert that noise. Exact answer:
    # X_0 = pinv(p*C), other Fourier slices 0, so every frontal slice of X is pinv(C) / p**2.
    c = _rand(5, 3, seed=30)
    a = c.unsqueeze(-1).expand(5, 3, p).contiguous()
    expected = (torch.linalg.pinv(c) / p**2).unsqueeze(-1).expand(3, 5, p)
    torch.testing.assert_close(tpinv(a), expected, rtol=1e-10, atol=1e-10)
    b = _rand(5, 2, p, seed=31)
    torch.testing.assert_close(tlstsq(a, b), tprod(expected, b), rtol=1e-10, atol=1e-10)


def test_tpinv_batched_and_float32():
    a = _rand(2, 6, 3, 3, dtype=torch.float32, seed=31)
    x = tpinv(a)
    assert x.shape == (2, 3, 6, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x[1], tpinv(a[1]))
    _assert_penrose(a.double(), x.double(), tol=1e-4)


def test_tpinv_rcond_truncates():
    # slice 0 only, singular values 1 and 1e-3: rcond between them drops the small one
    a = torch.zeros(2, 2, 1, dtype=torch.float64)
    a[0, 0, 0], a[1, 1, 0] = 1.0, 1e-3
    assert tpinv(a)[1, 1, 0] == pytest.approx(1e3)
    assert tpinv(a, rcond=1e-2)[1, 1, 0] == 0.0


# --------------------------------------------------------------------------------------------
# tlstsq


_LSTSQ_CASES = {
    "tall": lambda: (_rand(40, 5, 4, seed=32), _rand(40, 3, 4, seed=33)),
    "tall_odd_p": lambda: (_rand(30, 6, 3, seed=34), _rand(30, 2, 3, seed=35)),
    "wide": lambda: (_rand(4, 9, 4, seed=36), _rand(4, 3, 4, seed=37)),
    "rank_deficient_tall": lambda: (_low_rank(20, 6, 4, r=3, seed=38), _rand(20, 2, 4, seed=40)),
    "rank_deficient_wide": lambda: (_low_rank(5, 9, 3, r=2, seed=41), _rand(5, 4, 3, seed=43)),
    "constant_depth": lambda: (
        _rand(12, 3, 1, seed=44).expand(12, 3, 4).contiguous(),
        _rand(12, 2, 4, seed=45),
    ),
    "depths_pa_lt_pb": lambda: (_rand(15, 4, 2, seed=46), _rand(15, 3, 5, seed=47)),
    "depths_pa_gt_pb": lambda: (_rand(15, 4, 5, seed=48), _rand(15, 3, 2, seed=49)),
    "batched": lambda: (_rand(2, 1, 16, 4, 4, seed=50), _rand(3, 16, 2, 4, seed=51)),
}


@pytest.mark.parametrize("case", list(_LSTSQ_CASES))
def test_tlstsq_matches_pinv_and_normal_equations(case):
    a, b = _LSTSQ_CASES[case]()
    p = max(a.shape[-1], b.shape[-1])
    x = tlstsq(a, b)
    expected = tprod(tpinv(tpad(a, p)), b)
    assert x.shape == expected.shape
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-8)
    # least-squares optimality under *: A^T * (A * X - B) = 0
    a_p, b_p = tpad(a, p), tpad(b, p)
    normal = tprod(ttranspose(a_p), tprod(a_p, x) - b_p)
    assert normal.abs().max() < 1e-8 * (1 + b.abs().max() * a.abs().max())


def ref_lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Least-squares t-solution via the block-circulant matrix: X = fold(pinv(bcirc(A)) B)."""
    p = max(a.shape[-1], b.shape[-1])
    a, b = _zero_pad(a.double(), p), _zero_pad(b.double(), p)
    return _fold(torch.linalg.pinv(_bcirc(a)) @ _unfold(b), a.shape[1], p)


@pytest.mark.parametrize("solver", ["auto", "eigh"])
def test_tlstsq_two_batch_dims_match_the_block_circulant_reference(solver):
    # Two leading dims, neither 1 nor k (3 and 4 here): every per-slice Gram is (2, 3, 4, 4),
    # so code that took a Gram's size from the wrong axis would not broadcast or would be wrong.
    a, b = _rand(2, 3, 12, 4, 3, seed=90), _rand(3, 12, 2, 3, seed=91)
    x = tlstsq(a, b, solver=solver)
    assert x.shape == (2, 3, 4, 2, 3)
    torch.testing.assert_close(x, ref_batched(ref_lstsq, a, b), rtol=1e-9, atol=1e-9)


def test_tlstsq_recovers_exact_solution_and_beats_perturbations():
    a = _rand(30, 4, 4, seed=52)
    x_true = _rand(4, 3, 4, seed=53)
    noise = 0.01 * _rand(30, 3, 4, seed=54)
    b = tprod(a, x_true) + noise
    x = tlstsq(a, b)
    torch.testing.assert_close(tlstsq(a, tprod(a, x_true)), x_true, rtol=1e-9, atol=1e-9)
    best = (tprod(a, x) - b).norm()
    for seed in range(3):
        worse = x + 1e-3 * _rand(*x.shape, seed=60 + seed)
        assert (tprod(a, worse) - b).norm() > best


def test_tlstsq_float32_with_and_without_float64_accumulation():
    a64, b64 = _rand(200, 16, 4, seed=55), _rand(200, 8, 4, seed=56)
    a, b = a64.float(), b64.float()
    ref = tlstsq(a.double(), b.double())
    x_acc = tlstsq(a, b, accum_dtype=torch.float64)
    x_32 = tlstsq(a, b)
    assert x_acc.dtype == torch.float32 and x_32.dtype == torch.float32
    torch.testing.assert_close(x_acc.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_32.double(), ref, rtol=1e-3, atol=1e-3)


def test_tlstsq_rcond_threshold_on_singular_values():
    # singular values 1 and 1e-3 (slice 0 only, so every Fourier slice is the same matrix):
    # rcond 1e-2 drops the small one (eigenvalue 1e-6 < 1e-4), default keeps it
    a = torch.zeros(6, 2, 1, dtype=torch.float64)
    a[0, 0, 0], a[1, 1, 0] = 1.0, 1e-3
    b = torch.zeros(6, 1, 1, dtype=torch.float64)
    b[1, 0, 0] = 1.0
    assert tlstsq(a, b)[1, 0, 0] == pytest.approx(1e3)
    assert tlstsq(a, b, rcond=1e-2)[1, 0, 0] == 0.0
    torch.testing.assert_close(tlstsq(a, b, rcond=1e-2), tprod(tpinv(a, rcond=1e-2), b))


def _spread_spectrum(m: int = 6) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A (m, 2, 4) real tensor whose Fourier slices have the singular values f0 {1, 0.05},
    f1 {0.2, 1e-3} (complex), f2 {0.5, 0.05}: spread over slices, so only a cutoff relative to
    the largest over ALL slices is right, and with rcond = 0.1 the singular-value cutoff (keep
    0.2, drop 0.05) differs from cutting eigenvalues at rcond (would drop 0.2) and from cutting
    singular values at rcond**2 (would keep 0.05)."""
    def diag(a: float, b: float) -> torch.Tensor:
        out = torch.zeros(m, 2, dtype=torch.complex128)
        out[0, 0], out[1, 1] = a, b
        return out

    phase = torch.exp(torch.tensor(1j * torch.pi / 3))
    fourier = [diag(1.0, 0.05), diag(0.2, 1e-3) * phase, diag(0.5, 0.05)]  # (m, 2) each
    a = torch.fft.irfft(torch.stack(fourier, dim=-1), n=4, dim=-1)  # (m, 2, 4)
    return a, [torch.fft.rfft(a, dim=-1)[..., f] for f in range(3)]


@pytest.mark.parametrize("solver", ["auto", "eigh"])
def test_rcond_is_a_singular_value_cutoff_over_all_slices(solver):
    """Bug T3: cutting at rcond instead of rcond**2 (or the reverse). Reference: per Fourier
    slice, torch.linalg.pinv with atol = rcond * sigma_max over all slices (torch's rule,
    "singular values <= max(atol, rtol * sigma_1) are zero", with the global sigma_max)."""
    a, fourier = _spread_spectrum()
    b = _rand(6, 3, 4, seed=80)
    bh = torch.fft.rfft(b, dim=-1)
    sigma_max = max(float(torch.linalg.svdvals(af).max()) for af in fourier)
    assert sigma_max == pytest.approx(1.0)
    for rcond, kept in [(0.1, 4), (1e-2, 6), (1e-4, 8)]:
        ref = torch.stack([torch.linalg.pinv(af, atol=rcond * sigma_max, rtol=0.0) @ bh[..., f]
                           for f, af in enumerate(fourier)], dim=-1)  # (2, 3, F)
        expect = torch.fft.irfft(ref, n=4, dim=-1)  # (2, 3, 4)
        got = tlstsq(a, b, rcond=rcond, solver=solver)
        torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(tpinv(a, rcond=rcond), torch.fft.irfft(torch.stack(
            [torch.linalg.pinv(af, atol=rcond * sigma_max, rtol=0.0) for af in fourier], dim=-1),
            n=4, dim=-1), rtol=1e-9, atol=1e-9)
        # the number of singular values kept, counted the same way (f1 counts twice: f and p-f)
        count = sum((1 if f in (0, 2) else 2) * int((torch.linalg.svdvals(af) > rcond * sigma_max).sum())
                    for f, af in enumerate(fourier))
        assert count == kept, (rcond, count)


def test_auto_solver_uses_cholesky_only_when_certified(monkeypatch):
    import fuse_repro.tensor as tensor_mod

    well = (_rand(200, 16, 4, seed=81), _rand(200, 8, 4, seed=82))
    deficient = (_low_rank(20, 6, 4, r=3, seed=38), _rand(20, 2, 4, seed=40))
    eigh_calls = []
    real_eigh = tensor_mod._solve_eigh
    monkeypatch.setattr(tensor_mod, "_solve_eigh", lambda *a: eigh_calls.append(1) or real_eigh(*a))
    for a, b in (well, deficient):
        eigh_calls.clear()
        auto = tlstsq(a, b)
        used_eigh = bool(eigh_calls)
        torch.testing.assert_close(auto, tlstsq(a, b, solver="eigh"), rtol=1e-12, atol=1e-12)
        assert used_eigh is (a is deficient[0])  # rank-deficient: the cutoff matters, eigh runs
    # float32 data accumulated in float64: the fast path agrees with the eigh path
    a32, b32 = well[0].float(), well[1].float()
    x = tlstsq(a32, b32, accum_dtype=torch.float64)
    torch.testing.assert_close(x, tlstsq(a32, b32, accum_dtype=torch.float64, solver="eigh"),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="solver"):
        tlstsq(a32, b32, solver="qr")


def test_gram_paths_agree_and_are_symmetric():
    from fuse_repro.tensor import _gram

    x = _rand(50, 7, seed=83)
    g = _gram(x)  # CPU, one matrix: numpy's syrk
    assert torch.equal(g, g.T)
    torch.testing.assert_close(g, x.T @ x, rtol=1e-13, atol=1e-13)
    batched = _gram(x.expand(2, 50, 7))  # batched: torch
    torch.testing.assert_close(batched[1], x.T @ x, rtol=1e-13, atol=1e-13)
    assert torch.equal(batched, batched.mT)


def test_tlstsq_on_the_meta_device_keeps_the_device():
    a = torch.empty(20, 4, 3, device="meta")
    b = torch.empty(20, 2, 3, device="meta")
    x = tlstsq(a, b)
    assert x.device.type == "meta" and x.shape == (4, 2, 3)


# --------------------------------------------------------------------------------------------
# validation


def test_bad_inputs_raise_value_error():
    a, b = _rand(3, 4, 2), _rand(5, 2, 2)
    with pytest.raises(ValueError, match=r"inner dims.*\(3, 4, 2\).*\(5, 2, 2\)"):
        tprod(a, b)
    with pytest.raises(ValueError, match=r"3 dims.*\(3, 4\)"):
        tprod(_rand(3, 4), _rand(4, 2, 1))
    with pytest.raises(ValueError, match=r"float32 or float64.*int64"):
        tprod(torch.ones(2, 2, 2, dtype=torch.int64), _rand(2, 2, 2))
    with pytest.raises(ValueError, match="same dtype"):
        tprod(_rand(2, 2, 2).float(), _rand(2, 2, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        tprod(_rand(2, 3, 4, 1), _rand(3, 4, 2, 1))
    with pytest.raises(ValueError, match="depth p >= 1"):
        tprod(torch.zeros(2, 2, 0), _rand(2, 2, 1))
    with pytest.raises(ValueError, match="float32 or float64.*complex"):
        tpinv(torch.ones(2, 2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="3 dims"):
        ttranspose(_rand(4, 4))
    with pytest.raises(ValueError, match="p must be"):
        teye(3, 0)
    with pytest.raises(ValueError, match="row counts"):
        tlstsq(_rand(5, 3, 2), _rand(6, 2, 2))
    with pytest.raises(ValueError, match="accum_dtype"):
        tlstsq(_rand(5, 3, 2), _rand(5, 2, 2), accum_dtype=torch.float32)
    with pytest.raises(ValueError, match="rcond"):
        tlstsq(_rand(5, 3, 2), _rand(5, 2, 2), rcond=-1.0)


# --------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    a, b = _rand(2, 40, 6, 4, seed=70), _rand(40, 3, 3, seed=71)
    for fn, args in [
        (tprod, (a, _rand(6, 5, 3, seed=72))),
        (ttranspose, (a,)),
        (tpinv, (a,)),
        (tlstsq, (a, b)),
    ]:
        cpu = fn(*args)
        gpu = fn(*(t.to(dev) for t in args))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-8, atol=1e-8)
    eye = teye(3, 2, device=dev)
    assert eye.device.type == "cuda"
    x32 = tlstsq(a.float().to(dev), b.float().to(dev), accum_dtype=torch.float64)
    torch.testing.assert_close(x32.cpu().double(), tlstsq(a, b), rtol=1e-4, atol=1e-4)
