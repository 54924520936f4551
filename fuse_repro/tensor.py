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

__all__ = ["tpad", "tprod", "ttranspose", "tpinv", "teye", "tlstsq"]

_REAL_DTYPES = (torch.float32, torch.float64)
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


# --------------------------------------------------------------------------------------------
# validation


def _check_tensor(x: object, name: str) -> torch.Tensor:
    """Reject anything that is not a real float32/float64 tensor of order >= 3 with p >= 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
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


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Two operands must agree in dtype and device and have broadcastable leading dims."""
    na, nb = names
    if a.dtype != b.dtype:
        raise ValueError(
            f"{na} and {nb} must have the same dtype, got {a.dtype} and {b.dtype}"
        )
    if a.device != b.device:
        raise ValueError(
            f"{na} and {nb} must be on the same device, got {a.device} and {b.device}"
        )
    try:
        torch.broadcast_shapes(a.shape[:-3], b.shape[:-3])
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
    if isinstance(rcond, torch.Tensor):
        raise ValueError("rcond must be a Python float or None, not a tensor")
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


def tprod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """t-product ``a * b``: (..., m, k, pa) x (..., k, n, pb) -> (..., m, n, max(pa, pb)).

    The shallower operand is zero-padded to the deeper depth (``rfft(..., n=p)`` pads for us).
    Leading dims broadcast. Differentiable: rfft, matmul and irfft all have autograd rules.
    """
    _check_tensor(a, "A")
    _check_tensor(b, "B")
    _check_pair(a, b, ("A", "B"))
    if a.shape[-2] != b.shape[-3]:
        raise ValueError(
            f"inner dims do not match: A has shape {tuple(a.shape)} = (..., m, k={a.shape[-2]}, p) "
            f"but B has shape {tuple(b.shape)} = (..., k={b.shape[-3]}, n, p)"
        )
    p = max(a.shape[-1], b.shape[-1])
    ah = torch.fft.rfft(a, n=p, dim=-1).movedim(-1, -3)  # (..., m, k, F) -> (..., F, m, k)
    bh = torch.fft.rfft(b, n=p, dim=-1).movedim(-1, -3)  # (..., k, n, F) -> (..., F, k, n)
    ch = (ah @ bh).movedim(-3, -1)  # (..., F, m, n) -> (..., m, n, F)
    return torch.fft.irfft(ch, n=p, dim=-1)  # (..., m, n, p)


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

    Moore-Penrose pseudoinverse of every Fourier slice, so the four Penrose conditions hold
    under ``*`` and ``ttranspose``. ``rcond`` is the relative cutoff on singular values of each
    Fourier slice (``torch.linalg.pinv``'s ``rtol``); the default ``None`` uses pinv's own
    default, ``eps(dtype) * max(m, k)``. This forms full SVDs; for a tall least-squares fit use
    :func:`tlstsq`, which never forms the pseudoinverse.
    """
    _check_tensor(a, "A")
    rcond = _check_rcond(rcond)
    m, k, p = a.shape[-3:]
    rtol = _default_rcond(m, k, a.dtype) if rcond is None else rcond
    ah = torch.fft.rfft(a, dim=-1).movedim(-1, -3)  # (..., m, k, F) -> (..., F, m, k)
    xh = torch.linalg.pinv(ah, rtol=rtol).movedim(-3, -1)  # (..., F, k, m) -> (..., k, m, F)
    return torch.fft.irfft(xh, n=p, dim=-1)  # (..., k, m, p)


# --------------------------------------------------------------------------------------------
# least squares (the adapter-fitting hot path)


def _fourier_slice(x: torch.Tensor, f: int, dtype: torch.dtype) -> torch.Tensor:
    """Fourier slice f of ``x`` (..., r, c, p) along the depth, computed in real ``dtype``.

    Returns (..., r, c): real for the DC bin (f = 0) and the Nyquist bin (2f = p), whose DFT
    weights are real, complex otherwise. Equals ``torch.fft.rfft(x, dim=-1)[..., f]`` but only
    ever holds one slice, so the big (..., r, c, F) complex spectrum is never materialized.
    """
    p = x.shape[-1]
    real_bin = f == 0 or 2 * f == p
    re = torch.zeros(x.shape[:-1], dtype=dtype, device=x.device)  # (..., r, c)
    im = None if real_bin else torch.zeros_like(re)  # (..., r, c)
    for s in range(p):
        xs = x[..., s].to(dtype)  # (..., r, c), a strided view when dtype already matches
        angle = 2.0 * math.pi * ((f * s) % p) / p  # reduce first so weights stay exact-ish
        re.add_(xs, alpha=math.cos(angle))
        if im is not None:
            im.add_(xs, alpha=-math.sin(angle))
    return re if im is None else torch.complex(re, im)


def _gram_pinv_apply(gram: torch.Tensor, rhs: torch.Tensor, tol: float) -> torch.Tensor:
    """``pinv(gram) @ rhs`` for a Hermitian PSD gram (..., r, r) and rhs (..., r, c).

    Eigenvalues at or below ``tol * lambda_max`` (per matrix) are treated as zero.
    """
    evals, evecs = torch.linalg.eigh(gram)  # (..., r) ascending, (..., r, r)
    cutoff = tol * evals[..., -1:].clamp_min(0)  # (..., 1)
    keep = evals > cutoff  # (..., r)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), 0.0)
    return evecs @ (inv.unsqueeze(-1) * (evecs.mH @ rhs))  # (..., r, c)


def tlstsq(
    a: torch.Tensor,
    b: torch.Tensor,
    rcond: float | None = None,
    *,
    accum_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Least-squares t-solution ``A^+ * B`` without forming ``A^+``.

    Shapes: A (..., m, k, pa), B (..., m, n, pb) -> X (..., k, n, p) with p = max(pa, pb); both
    are zero-padded to depth p first, so X = ``tprod(tpinv(tpad(A, p), rcond), B)``, the
    minimum-norm minimizer of ``||tpad(A, p) * X - B||``. (With pa < pb this differs from
    ``tprod(tpinv(A), B)``, whose pseudoinverse is taken at the shallower depth.)

    Per Fourier slice f (one at a time, so only one complex (m, k) slice is alive):
      * m >= k: X_f = (A_f^H A_f)^+ (A_f^H B_f)        Gram (k, k)
      * m <  k: X_f = A_f^H ((A_f A_f^H)^+ B_f)        Gram (m, m)
    with the Gram pseudoinverse from ``torch.linalg.eigh``. This is far cheaper than an SVD of
    a (16384, 1024) slice, at the price of squaring the condition number.

    Threshold: eigenvalues are squared singular values, so the singular-value cutoff ``rcond``
    (relative to sigma_max, default ``eps(A.dtype) * max(m, k)``, pinv's default) becomes the
    eigenvalue cutoff ``rcond**2 * lambda_max``. That cutoff is raised to the Gram's rounding
    floor ``eps(accum_dtype) * min(m, k) * lambda_max``, because computed eigenvalues below it
    are noise and inverting them would blow the solution up. So directions with singular values
    below ``sqrt(eps(accum_dtype) * min(m, k)) * sigma_max`` are always dropped.

    Precision trade-off (``accum_dtype``, default ``A.dtype``): the Fourier slices, Gram
    products, eigh and solve run in ``accum_dtype`` and the result is cast back to A's dtype.
    float32 accumulation is fastest and lightest but its floor is coarse: for k = 1024 it drops
    singular values below ~1.1e-2 * sigma_max, and the Gram loses about twice as many digits as
    the data has. ``accum_dtype=torch.float64`` for float32 data costs roughly 2x time on CPU
    (much more on consumer GPUs) and 2x slice memory, but its floor (~5e-7 for k = 1024) lies
    below the float32 default rcond, so it matches ``tpinv`` on the same data.

    Not meant for autograd (eigh gradients are unstable at repeated eigenvalues).
    """
    _check_tensor(a, "A")
    _check_tensor(b, "B")
    _check_pair(a, b, ("A", "B"))
    rcond = _check_rcond(rcond)
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

    m, k = a.shape[-3], a.shape[-2]
    p = max(a.shape[-1], b.shape[-1])
    a, b = tpad(a, p), tpad(b, p)  # (..., m, k, p), (..., m, n, p); views when depth matches
    rtol = _default_rcond(m, k, a.dtype) if rcond is None else rcond
    tol = max(rtol**2, torch.finfo(acc).eps * min(m, k))  # relative to lambda_max

    slices = []
    for f in range(p // 2 + 1):
        af = _fourier_slice(a, f, acc)  # (..., m, k), complex unless DC/Nyquist
        bf = _fourier_slice(b, f, acc)  # (..., m, n)
        if m >= k:  # tall: Gram (..., k, k), rhs (..., k, n)
            xf = _gram_pinv_apply(af.mH @ af, af.mH @ bf, tol)  # (..., k, n)
        else:  # wide: Gram (..., m, m), rhs (..., m, n)
            xf = af.mH @ _gram_pinv_apply(af @ af.mH, bf, tol)  # (..., k, n)
        del af, bf
        slices.append(xf.to(_COMPLEX_OF[acc]))  # (..., k, n)
    xh = torch.stack(slices, dim=-1)  # (..., k, n, F)
    return torch.fft.irfft(xh, n=p, dim=-1).to(a.dtype)  # (..., k, n, p)
