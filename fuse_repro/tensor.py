"""Third-order tensor algebra under the t-product (Kilmer & Martin 2011).

FUSE (Williams & Kolter, arXiv 2408.04816) maps embeddings between models with
``M = X_i^+ * X_j`` where ``*`` is the t-product and ``^+`` the t-pseudoinverse. This module is
the only place that algebra lives; everything else calls these functions.

Shape glossary (the third mode is the LAST dim, so ``A[..., :, :, s]`` is frontal slice s):

    ...   leading batch dims; they broadcast like ``torch.matmul`` batch dims
    m     rows of a frontal slice (words ``w`` when fitting)
    k     columns of the left operand == rows of the right operand (inner dim, ``d_i``)
    n     columns of the right operand (``d_j``)
    p     depth: number of frontal slices (tokens per word); always >= 1
    F     number of independent Fourier slices of a real depth-p tensor, ``p // 2 + 1``

A tensor ``A`` has shape ``(..., m, k, p)``. The t-product is a circular convolution along the
depth of slice-wise matrix products,

    (A * B)[..., t] = sum_s A[..., s] @ B[..., (t - s) mod p],

which the DFT along the depth turns into independent matrix products of the Fourier slices.
Real inputs have Hermitian-symmetric spectra, so only ``F = p // 2 + 1`` slices are computed
(``rfft`` / ``irfft``). Tensors of different depths are multiplied by zero-padding the shallower
one to the deeper depth (the paper's appendix A generalization, as fixed by the method note).

Only real float32/float64 tensors are accepted; results live on the inputs' device.
"""

from __future__ import annotations

import math

import torch

__all__ = ["teye", "tlstsq", "tpad", "tpinv", "tprod", "ttranspose"]

_REAL_DTYPES = (torch.float32, torch.float64)
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


# --------------------------------------------------------------------------------------------
# validation


def _check_tensor(x: object, name: str) -> torch.Tensor:
    """Reject anything that is not a real float32/float64 tensor of order >= 3 with p >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _REAL_DTYPES:
        raise ValueError(
            f"{name} must be a real float32 or float64 tensor, got dtype {x.dtype} "
            f"(shape {tuple(x.shape)}); cast it first, e.g. {name}.float()"
        )
    if x.ndim < 3:
        raise ValueError(
            f"{name} must have shape (..., rows, cols, p) with at least 3 dims, got "
            f"{x.ndim}-D shape {tuple(x.shape)}; add a depth dim with {name}.unsqueeze(-1)"
        )
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have depth p >= 1 (last dim), got shape {tuple(x.shape)}")
    return x


def _broadcast(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` for two shapes, without its first-call import of torch.fx and
    sympy (about a second per process). RuntimeError when they do not broadcast."""
    n = max(len(x), len(y))
    x, y = (1,) * (n - len(x)) + tuple(x), (1,) * (n - len(y)) + tuple(y)
    if any(p != q and 1 not in (p, q) for p, q in zip(x, y)):
        raise RuntimeError(f"shapes {x} and {y} do not broadcast")
    return tuple(q if p == 1 else p for p, q in zip(x, y))


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Two operands must agree in dtype and device and have broadcastable leading dims."""
    na, nb = names
    if a.dtype != b.dtype:
        raise ValueError(f"{na} and {nb} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{na} and {nb} must be on the same device, got {a.device} and {b.device}")
    try:
        _broadcast(a.shape[:-3], b.shape[:-3])
    except RuntimeError:
        raise ValueError(
            f"leading batch dims of {na} {tuple(a.shape)} and {nb} {tuple(b.shape)} do not "
            f"broadcast: {tuple(a.shape[:-3])} vs {tuple(b.shape[:-3])}"
        ) from None


def _check_depth(p: object, name: str = "p") -> int:
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"{name} must be an int >= 1, got {p!r}")
    return p


def _check_rcond(rcond: float | None) -> float | None:
    if rcond is None:
        return None
    rcond = float(rcond)
    if not (math.isfinite(rcond) and rcond >= 0.0):
        raise ValueError(f"rcond must be a finite float >= 0 or None, got {rcond!r}")
    return rcond


def _default_rcond(rows: int, cols: int, dtype: torch.dtype) -> float:
    """torch.linalg.pinv's own default: eps(dtype) * max(rows, cols), relative to sigma_max."""
    return torch.finfo(dtype).eps * max(rows, cols)


# --------------------------------------------------------------------------------------------
# basic operations


def tpad(a: torch.Tensor, p: int) -> torch.Tensor:
    """Zero-pad the depth (last dim) of ``a`` (..., m, k, pa) to ``p`` >= pa slices.

    This is how tensors of different depths meet in a t-product (paper appendix A). Truncation
    is refused: it would silently drop data.
    """
    _check_tensor(a, "a")
    _check_depth(p)
    pa = a.shape[-1]
    if p < pa:
        raise ValueError(f"tpad cannot shrink depth {pa} of shape {tuple(a.shape)} to p={p}")
    if p == pa:
        return a
    return torch.nn.functional.pad(a, (0, p - pa))  # (..., m, k, p)


def tprod(a: torch.Tensor, b: torch.Tensor, *, algorithm: str = "fft") -> torch.Tensor:
    """t-product ``a * b``: (..., m, k, pa) x (..., k, n, pb) -> (..., m, n, max(pa, pb)).

    The shallower operand is zero-padded to the deeper depth (``rfft(..., n=p)`` pads for us).
    Leading dims broadcast. Differentiable: rfft, matmul and irfft all have autograd rules.

    ``algorithm``: "fft" (default) multiplies complex Fourier slices; "real" forms the F real
    Fourier slices as explicit DFT sums (as :func:`tlstsq` does) and multiplies them in real
    arithmetic, 3 real products per complex slice (Gauss's trick) instead of a complex matmul:
    about 2x faster for big operands (the fit report's residuals), equal up to rounding.
    """
    if algorithm not in ("fft", "real"):
        raise ValueError(f"algorithm must be 'fft' or 'real', got {algorithm!r}")
    _check_tensor(a, "A")
    _check_tensor(b, "B")
    _check_pair(a, b, ("A", "B"))
    if a.shape[-2] != b.shape[-3]:
        raise ValueError(
            f"inner dims do not match: A has shape {tuple(a.shape)} = (..., m, k={a.shape[-2]}, p) "
            f"but B has shape {tuple(b.shape)} = (..., k={b.shape[-3]}, n, p)"
        )
    p = max(a.shape[-1], b.shape[-1])
    if algorithm == "real":
        return _tprod_real(tpad(a, p), tpad(b, p))
    ah = torch.fft.rfft(a, n=p, dim=-1).movedim(-1, -3)  # (..., m, k, F) -> (..., F, m, k)
    bh = torch.fft.rfft(b, n=p, dim=-1).movedim(-1, -3)  # (..., k, n, F) -> (..., F, k, n)
    ch = (ah @ bh).movedim(-3, -1)  # (..., F, m, n) -> (..., m, n, F)
    return torch.fft.irfft(ch, n=p, dim=-1)  # (..., m, n, p)


def _tprod_real(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tprod(a, b, algorithm="real") for checked operands of equal depth p: per Fourier slice,
    (R + iI)(S + iT) = (RS - IT) + i((R + I)(S + T) - RS - IT) in real products."""
    p, slices = a.shape[-1], []
    for f in range(p // 2 + 1):
        ar, ai = _fourier_parts(a, f, a.dtype)  # (..., m, k) each
        br, bi = _fourier_parts(b, f, b.dtype)  # (..., k, n) each
        p1 = ar @ br  # (..., m, n)
        if ai is None or bi is None:
            slices.append(torch.complex(p1, torch.zeros_like(p1)))
            continue
        p2 = ai @ bi
        slices.append(torch.complex(p1 - p2, (ar + ai) @ (br + bi) - p1 - p2))
    return torch.fft.irfft(torch.stack(slices, dim=-1), n=p, dim=-1)  # (..., m, n, p)


def ttranspose(a: torch.Tensor) -> torch.Tensor:
    """t-transpose: (..., m, k, p) -> (..., k, m, p), slice 0 -> A_0^T, slice s -> A_{p-s}^T.

    This is the adjoint of the t-product, so ``(A * B)^T = B^T * A^T``; in the Fourier domain it
    is the conjugate transpose of every slice. A plain permute is wrong for p >= 3.
    """
    _check_tensor(a, "A")
    at = a.transpose(-3, -2)  # (..., k, m, p)
    # flip: slice order p-1, ..., 1, 0; roll by 1: 0, p-1, ..., 1, i.e. slice s <- (-s) mod p
    return at.flip(-1).roll(1, dims=-1)  # (..., k, m, p)


def teye(
    n: int, p: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Identity for the t-product, shape (n, n, p): slice 0 is I_n, all other slices are 0."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    _check_depth(p)
    if dtype not in _REAL_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    eye = torch.zeros(n, n, p, dtype=dtype, device=device)  # (n, n, p)
    eye[:, :, 0] = torch.eye(n, dtype=dtype, device=device)
    return eye


def tpinv(a: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """t-pseudoinverse: (..., m, k, p) -> (..., k, m, p).

    Moore-Penrose pseudoinverse of every Fourier slice (via SVD), so the four Penrose conditions
    hold under ``*`` and ``ttranspose``. Singular values at or below ``rcond * sigma_max`` are
    treated as zero, where sigma_max is the largest singular value over ALL Fourier slices of
    that batch element (= the largest singular value of the block-circulant matrix bcirc(A)),
    so this is exactly ``pinv(bcirc(A), rtol=rcond)`` in block-diagonalized form. A per-slice
    relative cutoff would instead invert pure rounding noise in a Fourier slice that is zero in
    exact arithmetic (e.g. when all frontal slices are equal) and return garbage of size 1e16.
    Default ``rcond=None`` means ``eps(dtype) * max(m, k)``, torch.linalg.pinv's default rule.

    This forms SVDs of every slice; for a tall least-squares fit use :func:`tlstsq`.
    """
    _check_tensor(a, "A")
    rcond = _check_rcond(rcond)
    m, k, p = a.shape[-3:]
    if min(m, k) == 0:
        return a.new_zeros(*a.shape[:-3], k, m, p)
    rtol = _default_rcond(m, k, a.dtype) if rcond is None else rcond
    ah = torch.fft.rfft(a, dim=-1).movedim(-1, -3)  # (..., m, k, F) -> (..., F, m, k)
    # u (..., F, m, r), sv (..., F, r), vh (..., F, r, k) with r = min(m, k)
    u, sv, vh = torch.linalg.svd(ah, full_matrices=False)
    smax = sv[..., 0].amax(dim=-1)  # (...,), singular values come sorted descending
    keep = sv > (rtol * smax)[..., None, None]  # (..., F, r)
    sinv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), 0.0)  # (..., F, r)
    xh = vh.mH @ (sinv.unsqueeze(-1).to(u.dtype) * u.mH)  # (..., F, k, r) @ (..., F, r, m)
    return torch.fft.irfft(xh.movedim(-3, -1), n=p, dim=-1)  # (..., k, m, F) -> (..., k, m, p)


# --------------------------------------------------------------------------------------------
# least squares (the adapter-fitting hot path)


def _dft_weight(f: int, s: int, p: int) -> tuple[float, float]:
    """(cos, sin) of the DFT angle 2 pi f s / p, exact at quarter turns (0, 1, -1), so zero
    weights are skipped rather than multiplied by cos(pi / 2) = 6e-17."""
    r = (f * s) % p  # reduce first so weights stay exact-ish
    if (4 * r) % p == 0:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[4 * r // p]
    angle = 2.0 * math.pi * r / p
    return math.cos(angle), math.sin(angle)


def _depth_slices(x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """The p frontal slices of ``x`` (..., r, c, p), each (..., r, c) in ``dtype``: converted
    once (copies) when the dtype differs, strided views otherwise."""
    return [x[..., s].to(dtype) for s in range(x.shape[-1])]


def _fourier_parts(
    x: torch.Tensor | list[torch.Tensor], f: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Real and imaginary parts of Fourier slice f of ``x`` (..., r, c, p) along the depth (or
    of its ``_depth_slices``), computed in real ``dtype``: (re, im) each (..., r, c), ``im``
    None for the DC bin (f = 0) and the Nyquist bin (2f = p), whose DFT weights are real.
    ``re + 1j * im`` equals ``torch.fft.rfft(x, dim=-1)[..., f]`` but only one slice is ever
    held, so the big (..., r, c, F) complex spectrum is never materialized.
    """
    slices = _depth_slices(x, dtype) if isinstance(x, torch.Tensor) else x
    p = len(slices)
    real_bin = f == 0 or 2 * f == p
    re = torch.zeros(slices[0].shape, dtype=dtype, device=slices[0].device)  # (..., r, c)
    im = None if real_bin else torch.zeros_like(re)  # (..., r, c)
    for s, xs in enumerate(slices):
        c, sn = _dft_weight(f, s, p)
        if c != 0.0:
            re.add_(xs, alpha=c)
        if im is not None and sn != 0.0:
            im.add_(xs, alpha=-sn)
    return re, im


def _complex(re: torch.Tensor, im: torch.Tensor | None) -> torch.Tensor:
    return re if im is None else torch.complex(re, im)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x^T x`` for real x (..., m, k) -> (..., k, k), exactly symmetric.

    On the CPU a single matrix goes through numpy, whose ``a.T @ a`` calls BLAS ``syrk``: half
    the multiply-adds of the general product (measured 0.54x of torch's GEMM time at
    8192 x 1024 float64).
    """
    if x.device.type == "cpu" and x.ndim == 2:
        xn = x.contiguous().numpy()
        return torch.from_numpy(xn.T @ xn)  # (k, k)
    g = x.mT @ x  # (..., k, k)
    return (g + g.mT) / 2


def _normal_equations(
    re: torch.Tensor, im: torch.Tensor | None, bre: torch.Tensor, bim: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram ``A_f^H A_f`` (..., k, k) and right-hand side ``A_f^H B_f`` (..., k, n) of one
    Fourier slice ``A_f = re + i im`` (B_f likewise), in real arithmetic: complex products cost
    4 real ones, while the real and imaginary parts of the Hermitian Gram need 2 symmetric
    rank-k updates and 1 product, and the right-hand side 3 products (Gauss's trick).
    Real bins return real tensors, the others complex ones."""
    if im is None:
        return _gram(re), re.mT @ bre
    p = re.mT @ im  # (..., k, k)
    g = torch.complex(_gram(re) + _gram(im), p - p.mT)  # Re: R'R + I'I, Im: R'I - I'R
    p1, p2 = re.mT @ bre, im.mT @ bim  # (..., k, n)
    p3 = (re - im).mT @ (bre + bim)  # = (R'Br - I'Bi) + (R'Bi - I'Br)
    return g, torch.complex(p1 + p2, p3 - p1 + p2)


def tlstsq(
    a: torch.Tensor,
    b: torch.Tensor,
    rcond: float | None = None,
    *,
    accum_dtype: torch.dtype | None = None,
    solver: str = "auto",
) -> torch.Tensor:
    """Least-squares t-solution ``A^+ * B`` without forming ``A^+``.

    Shapes: A (..., m, k, pa), B (..., m, n, pb) -> X (..., k, n, p) with p = max(pa, pb); both
    are zero-padded to depth p first, so X = ``tprod(tpinv(tpad(A, p), rcond), B)``, the
    minimum-norm minimizer of ``||tpad(A, p) * X - B||``. (With pa < pb this differs from
    ``tprod(tpinv(A), B)``, whose pseudoinverse is taken at the shallower depth.)

    Per Fourier slice f (one at a time, so only one (m, k) slice is alive; only the
    F = p // 2 + 1 slices of the real FFT, the others are their conjugates):
      * m >= k: X_f = (A_f^H A_f)^+ (A_f^H B_f)        Gram (k, k)
      * m <  k: X_f = A_f^H ((A_f A_f^H)^+ B_f)        Gram (m, m)
    This is far cheaper than an SVD of a (16384, 1024) slice, at the price of squaring the
    condition number. A first pass keeps only the small per-slice Grams and right-hand sides,
    so the cutoff can be relative to the largest eigenvalue over all slices, as in
    :func:`tpinv`.

    Cut-off (the definition): a direction is dropped when its singular value sigma satisfies
    ``sigma <= rcond * sigma_max``, sigma_max being the largest singular value over ALL Fourier
    slices (of the block-circulant matrix). That is the singular-value convention of
    ``numpy.linalg.lstsq(rcond)`` / ``numpy.linalg.pinv(rcond)`` ("singular values <= rcond *
    largest are zero") and ``torch.linalg.pinv(rtol=rcond)`` / ``torch.linalg.lstsq(rcond)``,
    applied globally rather than per slice; default ``eps(A.dtype) * max(m, k)``, torch's
    default rtol. The Gram's eigenvalues are squared singular values, so here the eigenvalue
    cutoff is ``rcond**2 * lambda_max`` (cutting eigenvalues at ``rcond`` would silently drop
    every singular value between ``rcond * sigma_max`` and ``sqrt(rcond) * sigma_max``). That
    cutoff is raised to the Gram's rounding floor ``eps(accum_dtype) * min(m, k) * lambda_max``,
    because computed eigenvalues below it are noise and inverting them would blow the solution
    up. So directions with singular values below ``sqrt(eps(accum_dtype) * min(m, k)) *
    sigma_max`` are always dropped, whatever ``rcond`` says; above that floor the result equals
    ``tprod(tpinv(tpad(A, p), rcond), B)``.

    Solver (tall case): ``solver="eigh"`` applies the cutoff through an eigendecomposition of
    each Gram. ``"auto"`` (default) first checks that the cutoff cannot drop anything: the
    Cholesky factorization of ``G_f - c I`` succeeds for every slice, with ``c`` the cutoff
    computed from an upper bound of lambda_max (the largest absolute row sum of the Grams), so
    every eigenvalue of every slice lies above the true cutoff. Then the pseudoinverse is the
    inverse and each slice is solved by Cholesky (a few times cheaper than eigh, equal up to
    rounding); otherwise it falls back to eigh. Wide problems always use eigh.

    Precision (``accum_dtype``, default ``A.dtype``): the Fourier slices, Grams and solves run
    in ``accum_dtype``; the result is cast back to A's dtype. float32 is fastest but its floor
    is coarse (for min(m, k) = 1024 it drops singular values below ~1.1e-2 * sigma_max);
    float64 for float32 data costs ~2.5x on CPU (far more on GPUs with weak float64) and 2x
    slice memory, but its floor (~4.8e-7) lies below the float32 default rcond (~2e-3 for
    m = 16384), so it gives what ``tpinv`` gives on the same data.

    Not meant for autograd (eigh gradients are unstable at repeated eigenvalues).
    """
    _check_tensor(a, "A")
    _check_tensor(b, "B")
    _check_pair(a, b, ("A", "B"))
    rcond = _check_rcond(rcond)
    if solver not in ("auto", "eigh"):
        raise ValueError(f"solver must be 'auto' or 'eigh', got {solver!r}")
    if a.shape[-3] != b.shape[-3]:
        raise ValueError(
            f"row counts do not match: A has shape {tuple(a.shape)} = (..., m={a.shape[-3]}, k, p) "
            f"but B has shape {tuple(b.shape)} = (..., m={b.shape[-3]}, n, p)"
        )
    acc = a.dtype if accum_dtype is None else accum_dtype
    if acc not in _REAL_DTYPES:
        raise ValueError(f"accum_dtype must be torch.float32 or torch.float64, got {acc}")
    if torch.finfo(acc).eps > torch.finfo(a.dtype).eps:
        raise ValueError(f"accum_dtype {acc} is less precise than the inputs' dtype {a.dtype}")

    m, k, n = a.shape[-3], a.shape[-2], b.shape[-2]
    p = max(a.shape[-1], b.shape[-1])
    a, b = tpad(a, p), tpad(b, p)  # (..., m, k, p), (..., m, n, p); views when depth matches
    batch = _broadcast(a.shape[:-3], b.shape[:-3])
    if min(m, k) == 0:
        return a.new_zeros(*batch, k, n, p)
    rtol = _default_rcond(m, k, a.dtype) if rcond is None else rcond
    tol = max(rtol**2, torch.finfo(acc).eps * min(m, k))  # relative to lambda_max
    tall = m >= k
    nfreq = p // 2 + 1

    # pass 1: per Fourier slice, the small Gram and the small right-hand side
    grams, rhss = [], []  # per f: (..., r, r), (..., r, n) with r = min(m, k)
    a_s, b_s = _depth_slices(a, acc), _depth_slices(b, acc)  # p x (..., m, k), p x (..., m, n)
    for f in range(nfreq):
        are, aim = _fourier_parts(a_s, f, acc)  # (..., m, k) each
        bre, bim = _fourier_parts(b_s, f, acc)  # (..., m, n) each
        if tall:
            gram, rhs = _normal_equations(are, aim, bre, bim)  # (..., k, k), (..., k, n)
        else:
            af = _complex(are, aim)
            gram, rhs = af @ af.mH, _complex(bre, bim)  # (..., m, m), (..., m, n)
        del are, aim, bre, bim
        grams.append(gram)
        rhss.append(rhs)

    del a_s, b_s
    slices = None
    if tall and solver == "auto":
        slices = _solve_certified(grams, rhss, tol)
    if slices is None:
        slices = _solve_eigh(grams, rhss, tol, None if tall else a, acc)
    slices = [xf.to(_COMPLEX_OF[acc]).expand(*batch, k, n) for xf in slices]  # (..., k, n) each
    xh = torch.stack(slices, dim=-1)  # (..., k, n, F)
    return torch.fft.irfft(xh, n=p, dim=-1).to(a.dtype)  # (..., k, n, p)


def _solve_certified(grams: list[torch.Tensor], rhss: list[torch.Tensor], tol: float) -> list | None:
    """Cholesky solves of every slice when no eigenvalue can fall below the cutoff, else None.

    ``tol * max_f ||G_f||_inf`` bounds the cutoff ``tol * lambda_max`` from above (any induced
    norm bounds the spectral radius), so a successful Cholesky of ``G_f - c I`` proves
    ``lambda_min(G_f) > c >= cutoff`` for every slice and batch element: eigh would keep every
    eigenvalue, and its pseudoinverse solution is the plain inverse solution.
    """
    if grams[0].device.type == "meta":
        return None  # no values to certify (device plumbing checks): eigh
    bound = torch.stack([g.abs().sum(-1).amax(-1) for g in grams], dim=-1).amax(-1)  # (...,)
    shift = (tol * bound)[..., None, None]  # (..., 1, 1)
    factors = []
    for g in grams:
        eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
        _, info = torch.linalg.cholesky_ex(g - shift * eye)
        if bool((info != 0).any()):
            return None
        chol, info = torch.linalg.cholesky_ex(g)
        if bool((info != 0).any()):
            return None
        factors.append(chol)
    return [torch.cholesky_solve(rhs.to(c.dtype), c) for rhs, c in zip(rhss, factors)]


def _solve_eigh(
    grams: list[torch.Tensor], rhss: list[torch.Tensor], tol: float, a_wide: torch.Tensor | None,
    acc: torch.dtype,
) -> list[torch.Tensor]:
    """Pseudoinverse solves through eigh with the global cutoff ``tol * lambda_max``:
    X_f = V diag(1/lambda) V^H rhs (tall), A_f^H V diag(1/lambda) V^H B_f (wide, ``a_wide``)."""
    eigs = []
    for f in range(len(grams)):
        eigs.append(torch.linalg.eigh(grams[f]))  # (..., r) ascending, (..., r, r)
        grams[f] = None  # free the Gram as we go
    # one cutoff per batch element, relative to the largest eigenvalue over all slices
    lam_max = torch.stack([ev[..., -1] for ev, _ in eigs], dim=-1).amax(-1)  # (...,)
    cutoff = (tol * lam_max.clamp_min(0)).unsqueeze(-1)  # (..., 1)
    slices = []
    for f, (evals, evecs) in enumerate(eigs):
        keep = evals > cutoff  # (..., r)
        inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), 0.0)
        rhs = rhss[f].to(evecs.dtype)
        xf = evecs @ (inv.unsqueeze(-1) * (evecs.mH @ rhs))  # (..., r, n)
        if a_wide is not None:
            xf = _complex(*_fourier_parts(a_wide, f, acc)).mH @ xf  # (..., k, m) @ (..., m, n)
        eigs[f] = None  # free the slice's eigenvectors as we go
        slices.append(xf)
    return slices
