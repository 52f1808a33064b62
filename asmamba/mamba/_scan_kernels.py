"""numba kernels of the compiled CPU selective scan (imported lazily by :mod:`asmamba.mamba.compiled_scan`).

Every kernel runs the Mamba-1 recurrence of one (batch, channel) sequence per task, tasks spread over threads with
``prange``, the inner loops running over the N state values (vectorised by LLVM). Arrays are NumPy views of
contiguous torch tensors, float32 or float64 throughout::

    u, dt        (b, d, L)     inputs and step sizes (softplus and bias already applied)
    A            (d, N)
    Bt, Ct       (b, G, L, N)  per-step B and C, time-major; channel c reads group c // (d / G)
    D            (d,)          skip weight (zeros when there is none)

The decays ``exp(dt * A)`` go through :func:`exp`, a range-reduced polynomial exp in the input's precision that
LLVM vectorises (the C library's exp is a scalar call: about 2x the time of the whole forward here). Its relative
error is below 1.5e-7 for |x| < 5 and 4e-7 over the whole range in float32 (NumPy's float32 exp: 2e-7), 3e-14 in
float64; exponents below the smallest normal number's log are raised to
it (a decay of ~1e-38 in float32 instead of a subnormal or zero: below the precision of any state).

The kernels are compiled on first use and cached on disk (``cache=True``: next to this file, or in numba's user
cache folder when this folder is read-only, or in ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

# reassociation lets LLVM vectorise the sums over the state (y = C . h and the gradient sums), contraction gives FMAs
FASTMATH = {"reassoc", "contract", "nsz"}


def _jit(**options):
    """numba.njit with the on-disk cache, or without it if no cache folder is writable (numba raises then)."""

    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)

    return wrap


# --------------------------------------------------------------------------------------------------------------------
# exp: 2^k * p(r) with x = k ln2 + r, |r| <= ln2 / 2; the bits of 2^k are built as an integer and reinterpreted
# --------------------------------------------------------------------------------------------------------------------


@intrinsic
def _float32_from_bits(typingctx, bits):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _float64_from_bits(typingctx, bits):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2
# exponents kept to [log(smallest normal), log(largest float)]; NaN passes both comparisons and stays NaN
_LO32, _HI32 = -87.33, 88.72
_LO64, _HI64 = -708.39, 709.78


@_jit(inline="always")
def _exp32(x):
    if x < np.float32(_LO32):
        x = np.float32(_LO32)
    if x > np.float32(_HI32):
        x = np.float32(_HI32)
    k = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))  # np.floor keeps float32 (math.floor gives an int)
    # one rounding with the kernels' FMA contraction (inlined into fast-math code, a two-constant Cody-Waite split
    # would be re-associated into this anyway); ln2's own float32 rounding gives the error growing with |k|
    r = x - k * np.float32(_LN2)
    # Taylor polynomial to r^7 (remainder < 5e-9 relative for |r| <= 0.35)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    # 2^k from its exponent bits (k = 128 only for x within 0.35 of the overflow: gives inf)
    return p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@_jit(inline="always")
def _exp64(x):
    if x < _LO64:
        x = _LO64
    if x > _HI64:
        x = _HI64
    k = np.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2  # (see _exp32): relative error of exp below 3e-14 over the whole range
    # Taylor polynomial to r^12 (remainder < 2e-16 relative for |r| <= 0.35)
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _float64_from_bits((np.int64(k) + np.int64(1023)) << np.int64(52))


def exp(x):
    """exp in x's precision (float32 or float64), vectorisable; see the module docstring. Callable from jitted code
    only (the Python function is a stand-in)."""
    return math.exp(x)


@overload(exp, inline="always")
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


@_jit(inline="always")
def _decays(out, dt, a):
    """out[n] = exp(dt * a[n]) for the N states."""
    for n in range(a.shape[0]):
        out[n] = exp(dt * a[n])


@_jit(fastmath=FASTMATH)
def exp_into(x, out):
    """out = exp(x) elementwise with the kernels' exp, compiled as the kernels are (for tests)."""
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


# --------------------------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------------------------


@_jit(parallel=True, fastmath=FASTMATH)
def scan_forward(u, dt, A, Bt, Ct, D, out, last, starts, segment):
    """out = C . h + D u, last = h after the last step; starts[.., s, :] = the state entering step s * segment.

    starts is (b, d, S, N) with S = ceil(L / segment), or S = 0 when the backward pass will not run.
    """
    batch, dim, length = u.shape
    groups, n_state = Bt.shape[1], A.shape[1]
    per_group = dim // groups
    keep = starts.shape[2] > 0
    for task in prange(batch * dim):
        b = task // dim
        c = task - b * dim
        g = c // per_group
        a = A[c]
        h = np.zeros(n_state, dtype=u.dtype)
        decay = np.empty(n_state, dtype=u.dtype)
        zero = h[0]  # a zero of the arrays' dtype
        for t in range(length):
            if keep and t % segment == 0:
                starts[b, c, t // segment, :] = h
            step = dt[b, c, t]
            drive = step * u[b, c, t]
            _decays(decay, step, a)
            y = zero
            for n in range(n_state):
                h[n] = decay[n] * h[n] + drive * Bt[b, g, t, n]
                y += h[n] * Ct[b, g, t, n]
            out[b, c, t] = y + D[c] * u[b, c, t]
        last[b, c, :] = h


# --------------------------------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------------------------------


@_jit(parallel=True, fastmath=FASTMATH)
def scan_backward(u, dt, A, Bt, Ct, D, grad_out, grad_last, starts, segment, block,
                  du, d_dt, dA, dB, dC):
    """Adjoint of :func:`scan_forward` with respect to u, dt, A, B, C (D's gradient is a plain sum outside).

    With g_t = dLoss/dh_t = C_t grad_out_t + exp(dt_{t+1} A) g_{t+1} (started from grad_last), per step:
    dB_t += g_t dt_t u_t, dC_t += grad_out_t h_t, du_t = dt_t (g_t . B_t) + D grad_out_t,
    d_dt_t = (g_t * A) . (exp(dt_t A) h_{t-1}) + u_t (g_t . B_t), dA += g_t exp(dt_t A) h_{t-1} dt_t.

    The states are recomputed segment by segment from ``starts``. A task is ``block`` channels of one group of one
    batch item, so that each task owns its partial sums of dB and dC, (b, G, P, L, N) with P = ceil((d / G) / block),
    summed over P outside; dA is (b, d, N), summed over b outside.
    """
    batch, dim, length = u.shape
    groups, n_state = Bt.shape[1], A.shape[1]
    per_group = dim // groups
    parts = dB.shape[2]
    n_segments = starts.shape[2]
    for task in prange(batch * groups * parts):
        b = task // (groups * parts)
        g = (task // parts) % groups
        p = task % parts
        states = np.empty((segment, n_state), dtype=u.dtype)
        decays = np.empty((segment, n_state), dtype=u.dtype)
        adjoint = np.empty(n_state, dtype=u.dtype)
        grad_A = np.empty(n_state, dtype=u.dtype)
        zero = np.zeros(1, dtype=u.dtype)[0]  # a zero of the arrays' dtype
        first = g * per_group + p * block
        for c in range(first, min(first + block, (g + 1) * per_group)):
            a = A[c]
            adjoint[:] = grad_last[b, c, :]
            grad_A[:] = 0.0
            for s in range(n_segments - 1, -1, -1):
                t0 = s * segment
                t1 = min(length, t0 + segment)
                # recompute the segment's decays and states from the state entering it
                for t in range(t0, t1):
                    j = t - t0
                    step = dt[b, c, t]
                    drive = step * u[b, c, t]
                    _decays(decays[j], step, a)
                    prev = starts[b, c, s] if j == 0 else states[j - 1]
                    for n in range(n_state):
                        states[j, n] = decays[j, n] * prev[n] + drive * Bt[b, g, t, n]
                # the adjoint, backwards through the segment
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    step = dt[b, c, t]
                    u_t = u[b, c, t]
                    gy = grad_out[b, c, t]
                    along_B = zero
                    along_A = zero
                    prev = starts[b, c, s] if j == 0 else states[j - 1]
                    for n in range(n_state):
                        g_n = adjoint[n] + gy * Ct[b, g, t, n]
                        dC[b, g, p, t, n] += gy * states[j, n]
                        dB[b, g, p, t, n] += g_n * step * u_t
                        along_B += g_n * Bt[b, g, t, n]
                        q = g_n * decays[j, n] * prev[n]
                        along_A += q * a[n]
                        grad_A[n] += q * step
                        adjoint[n] = g_n * decays[j, n]
                    du[b, c, t] = step * along_B + D[c] * gy
                    d_dt[b, c, t] = along_A + u_t * along_B
            dA[b, c, :] = grad_A
