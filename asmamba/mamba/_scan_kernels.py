"""numba kernels of the compiled CPU selective scan (imported lazily by :mod:`asmamba.mamba.compiled_scan`).

A task is one batch item and one block of at most ``width`` consecutive channels of one B/C group; tasks are spread
over threads with ``prange``. Inside a task the time loop carries the (N, W) states of the block's W channels, and
every inner loop runs over the W channels (vectorised by LLVM: no sums across lanes in the recurrence, and the
per-channel work of a step, bias, softplus, skip and gate, vectorises too). Arrays are NumPy views of torch
tensors, float32 or float64 throughout, the per-channel ones time-major (the layout the Mamba layers produce)::

    u, delta, z  (b, L, d)     input, raw step size (before bias and softplus), gate (z: (0, 0, 0) when absent)
    bias, D      (d,)          step-size bias and skip weight (zeros when absent)
    A_T          (N, d)        A transposed
    Bt, Ct       (b, G, L, N)  per-step B and C; channel c reads group c // (d / G)
    blocks       (P, 2) int64  [first, end) channels of each block; the blocks of group g are g*P/G .. (g+1)*P/G-1

Special functions are polynomials that LLVM vectorises (the C library's are scalar calls, each costing about as
much as a whole step of the scan here): :func:`exp` (range reduction x = k ln2 + r, Taylor polynomial of r,
2^k from its exponent bits), and the softplus through log1p(e) = 2 atanh(e / (2 + e)) for e = exp(-|x|) in (0, 1].
exp's relative error is below 1.5e-7 for |x| < 5 and 4e-7 over the whole range in float32 (NumPy's float32 exp:
2e-7), 3e-14 in float64; exponents below the smallest normal number's log are raised to it (a decay of ~1e-38 in
float32 instead of a subnormal or zero: below the precision of any state). softplus follows torch's threshold
(softplus(x) = x above 20).

The kernels are compiled on first use and cached on disk (``cache=True``: next to this file, or in numba's user
cache folder when this folder is read-only, or in ``NUMBA_CACHE_DIR``; without any writable folder they compile in
every process).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

# reassociation and contraction (FMAs) let LLVM vectorise and fuse the loops over the channels of a block
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
def _exp32(x_in):
    # np.maximum / np.minimum keep a NaN (and, unlike branches, give numba's inliner no redefined variables)
    x = np.minimum(np.maximum(x_in, np.float32(_LO32)), np.float32(_HI32))
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
def _exp64(x_in):
    x = np.minimum(np.maximum(x_in, _LO64), _HI64)
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


@_jit(fastmath=FASTMATH)
def exp_into(x, out):
    """out = exp(x) elementwise with the kernels' exp, compiled as the kernels are (for tests)."""
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


# --------------------------------------------------------------------------------------------------------------------
# softplus and sigmoid
# --------------------------------------------------------------------------------------------------------------------


def one_like(x):
    """1 in x's type (jitted code only: a float64 literal would turn float32 arithmetic into float64)."""
    return 1.0


@overload(one_like, inline="always")
def _one_like_overload(x):
    if x == types.float32:
        return lambda x: np.float32(1.0)
    return lambda x: 1.0


def zero_like(x):
    """0 in x's type (jitted code only)."""
    return 0.0


@overload(zero_like, inline="always")
def _zero_like_overload(x):
    if x == types.float32:
        return lambda x: np.float32(0.0)
    return lambda x: 0.0


@_jit(inline="always")
def _log1p_unit32(e):
    # log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3]: the series to s^15 (remainder < 1e-8)
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    p = np.float32(1.0 / 15.0)
    p = p * s2 + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + np.float32(1.0)
    return np.float32(2.0) * s * p


@_jit(inline="always")
def _log1p_unit64(e):
    # as _log1p_unit32, the series to s^35 (remainder < 2e-18)
    s = e / (2.0 + e)
    s2 = s * s
    p = 1.0 / 35.0
    for k in range(33, 0, -2):  # a constant trip count: unrolled
        p = p * s2 + 1.0 / k
    return 2.0 * s * p


def log1p_unit(e):
    """log1p(e) for e in [0, 1], in e's precision (jitted code only)."""
    return math.log1p(e)


@overload(log1p_unit, inline="always")
def _log1p_unit_overload(e):
    if e == types.float32:
        return lambda e: _log1p_unit32(e)
    if e == types.float64:
        return lambda e: _log1p_unit64(e)
    return None


@_jit(inline="always")
def softplus(x):
    """log(1 + exp(x)), and x itself above 20 (torch's threshold); NaN stays NaN."""
    smooth = np.maximum(x, zero_like(x)) + log1p_unit(exp(-abs(x)))
    return x if x > 20.0 else smooth


@_jit(inline="always")
def sigmoid(x):
    one = one_like(x)
    return one / (one + exp(-x))


@_jit(fastmath=FASTMATH)
def exp_into(x, out):
    """out = exp(x) elementwise with the kernels' exp (for tests)."""
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


@_jit(fastmath=FASTMATH)
def softplus_into(x, out):
    """out = softplus(x) elementwise with the kernels' softplus (for tests)."""
    for i in range(x.shape[0]):
        out[i] = softplus(x[i])


# --------------------------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------------------------


@_jit(parallel=True, fastmath=FASTMATH)
def scan_forward(u, delta, bias, A_T, Bt, Ct, D, z, blocks, use_softplus, out, last, starts, segment, n_chunks):
    """out = (C . h + D u) * silu(z) (no gate without z), last = h after the last step, with the step sizes
    softplus(delta + bias) (or delta + bias without ``use_softplus``).

    out: (b, L, d); last: (b, d, N); starts: (b, P, S, N, W) with W >= every block's width, the states entering
    steps 0, segment, 2 segment, ... of every block, S = ceil(L / segment), or S = 0 when the backward pass will
    not run. The b * P tasks run in ``n_chunks`` parallel chunks of consecutive tasks, each chunk with one set of
    work buffers (allocating them per task cost ~40 % of the many short window scans). The inner loops index 1-D
    slices from 0 (known non-negative indices: no wrap-around code, so LLVM vectorises them).
    """
    batch, length, dim = u.shape
    n_state, groups = A_T.shape[0], Bt.shape[1]
    per_group = dim // groups
    n_blocks = blocks.shape[0]
    n_tasks = batch * n_blocks
    per_chunk = (n_tasks + n_chunks - 1) // n_chunks
    max_width = starts.shape[4]
    has_z = z.shape[0] > 0
    keep = starts.shape[2] > 0
    for chunk in prange(n_chunks):
        h_buffer = np.empty((n_state, max_width), dtype=u.dtype)
        step_buffer = np.empty(max_width, dtype=u.dtype)
        drive_buffer = np.empty(max_width, dtype=u.dtype)
        y_buffer = np.empty(max_width, dtype=u.dtype)
        for task in range(chunk * per_chunk, min(n_tasks, (chunk + 1) * per_chunk)):
            b = task // n_blocks
            j = task - b * n_blocks
            c0, c1 = blocks[j, 0], blocks[j, 1]
            width = c1 - c0
            g = c0 // per_group
            bias_j, D_j = bias[c0:c1], D[c0:c1]
            step, drive, y = step_buffer[:width], drive_buffer[:width], y_buffer[:width]
            for n in range(n_state):
                h_buffer[n, :width] = 0.0
            for t in range(length):
                if keep and t % segment == 0:
                    starts[b, j, t // segment, :, :width] = h_buffer[:, :width]
                u_t, delta_t = u[b, t, c0:c1], delta[b, t, c0:c1]
                B_t, C_t = Bt[b, g, t], Ct[b, g, t]
                for w in range(width):
                    x = delta_t[w] + bias_j[w]
                    if use_softplus:
                        x = softplus(x)
                    step[w] = x
                    drive[w] = x * u_t[w]
                    y[w] = D_j[w] * u_t[w]
                for n in range(n_state):
                    h_n, a_n = h_buffer[n, :width], A_T[n, c0:c1]
                    B_tn, C_tn = B_t[n], C_t[n]
                    for w in range(width):
                        state = exp(step[w] * a_n[w]) * h_n[w] + drive[w] * B_tn
                        h_n[w] = state
                        y[w] += state * C_tn
                out_t = out[b, t, c0:c1]
                if has_z:
                    z_t = z[b, t, c0:c1]
                    for w in range(width):
                        out_t[w] = y[w] * z_t[w] * sigmoid(z_t[w])
                else:
                    for w in range(width):
                        out_t[w] = y[w]
            for n in range(n_state):
                for w in range(width):
                    last[b, c0 + w, n] = h_buffer[n, w]


# --------------------------------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------------------------------


@_jit(parallel=True, fastmath=FASTMATH)
def scan_backward(u, delta, bias, A_T, Bt, Ct, D, z, blocks, use_softplus, grad_out, grad_last, starts, segment,
                  n_chunks, du, d_delta, dz, dA, dB, dC, dD, d_bias):
    """Adjoint of :func:`scan_forward`: gradients with respect to every input.

    With gy = grad_out * silu(z) (the gradient of y = C . h + D u), the state adjoint
    g_t = C_t gy_t + exp(dt_{t+1} A) g_{t+1} (started from grad_last) and q_t = g_t exp(dt_t A) h_{t-1}, per step:
    dB_t = sum_c g_t dt_t u_t, dC_t = sum_c gy_t h_t, du_t = dt_t (g_t . B_t) + D gy_t,
    d dt_t = (q_t . A) + u_t (g_t . B_t), dA += q_t dt_t, dD += gy_t u_t, and d delta_t = d dt_t softplus'(delta_t +
    bias), summed into d_bias. The states are recomputed segment by segment from ``starts``; tasks run in chunks as
    in :func:`scan_forward`.

    du, d_delta, dz: (b, L, d) (dz: (0, 0, 0) without z); dA: (b, d, N), dD, d_bias: (b, d), each task writing its
    own channels of batch item b (summed over b outside); dB, dC: (b, P, L, N), block j's share of group
    g(j)'s sums (summed over the group's blocks outside).
    """
    batch, length, dim = u.shape
    n_state, groups = A_T.shape[0], Bt.shape[1]
    per_group = dim // groups
    n_blocks = blocks.shape[0]
    n_tasks = batch * n_blocks
    per_chunk = (n_tasks + n_chunks - 1) // n_chunks
    max_width = starts.shape[4]
    has_z = z.shape[0] > 0
    n_segments = starts.shape[2]
    for chunk in prange(n_chunks):
        # states[i] = the state entering step t0 + i of a segment (states[0] from `starts`)
        states = np.empty((segment + 1, n_state, max_width), dtype=u.dtype)
        decays = np.empty((segment, n_state, max_width), dtype=u.dtype)
        steps = np.empty((segment, max_width), dtype=u.dtype)
        drives = np.empty((segment, max_width), dtype=u.dtype)
        ys = np.empty((segment, max_width), dtype=u.dtype)
        adjoint = np.empty((n_state, max_width), dtype=u.dtype)
        grad_A = np.empty((n_state, max_width), dtype=u.dtype)
        buffers = np.empty((5, max_width), dtype=u.dtype)
        for task in range(chunk * per_chunk, min(n_tasks, (chunk + 1) * per_chunk)):
            b = task // n_blocks
            j = task - b * n_blocks
            c0, c1 = blocks[j, 0], blocks[j, 1]
            width = c1 - c0
            g = c0 // per_group
            bias_j, D_j = bias[c0:c1], D[c0:c1]
            grad_y, along_B, along_A = buffers[0, :width], buffers[1, :width], buffers[2, :width]
            grad_D, grad_bias = buffers[3, :width], buffers[4, :width]
            grad_D[:] = 0.0
            grad_bias[:] = 0.0
            for n in range(n_state):
                grad_A[n, :width] = 0.0
                for w in range(width):
                    adjoint[n, w] = grad_last[b, c0 + w, n]
            for s in range(n_segments - 1, -1, -1):
                t0 = s * segment
                t1 = min(length, t0 + segment)
                states[0, :, :width] = starts[b, j, s, :, :width]
                for t in range(t0, t1):  # recompute the segment's step sizes, decays, states and read-outs
                    i = t - t0
                    u_t, delta_t = u[b, t, c0:c1], delta[b, t, c0:c1]
                    B_t, C_t = Bt[b, g, t], Ct[b, g, t]
                    step, drive, y = steps[i, :width], drives[i, :width], ys[i, :width]
                    for w in range(width):
                        x = delta_t[w] + bias_j[w]
                        if use_softplus:
                            x = softplus(x)
                        step[w] = x
                        drive[w] = x * u_t[w]
                        y[w] = D_j[w] * u_t[w]
                    for n in range(n_state):
                        a_n, decay_n = A_T[n, c0:c1], decays[i, n, :width]
                        before, after = states[i, n, :width], states[i + 1, n, :width]
                        B_tn, C_tn = B_t[n], C_t[n]
                        for w in range(width):
                            decay = exp(step[w] * a_n[w])
                            decay_n[w] = decay
                            state = decay * before[w] + drive[w] * B_tn
                            after[w] = state
                            y[w] += state * C_tn
                for t in range(t1 - 1, t0 - 1, -1):  # the adjoint, backwards through the segment
                    i = t - t0
                    u_t, delta_t, go_t = u[b, t, c0:c1], delta[b, t, c0:c1], grad_out[b, t, c0:c1]
                    B_t, C_t = Bt[b, g, t], Ct[b, g, t]
                    step, drive, y = steps[i, :width], drives[i, :width], ys[i, :width]
                    if has_z:
                        z_t, dz_t = z[b, t, c0:c1], dz[b, t, c0:c1]
                        for w in range(width):
                            sg = sigmoid(z_t[w])
                            one = one_like(sg)
                            dz_t[w] = go_t[w] * y[w] * sg * (one + z_t[w] * (one - sg))  # y holds C . h + D u
                            grad_y[w] = go_t[w] * z_t[w] * sg
                    else:
                        for w in range(width):
                            grad_y[w] = go_t[w]
                    for w in range(width):
                        grad_D[w] += grad_y[w] * u_t[w]
                        along_B[w] = 0.0
                        along_A[w] = 0.0
                    for n in range(n_state):
                        a_n, decay_n = A_T[n, c0:c1], decays[i, n, :width]
                        before, after = states[i, n, :width], states[i + 1, n, :width]
                        adjoint_n, grad_A_n = adjoint[n, :width], grad_A[n, :width]
                        B_tn, C_tn = B_t[n], C_t[n]
                        sum_B = zero_like(B_tn)
                        sum_C = zero_like(B_tn)
                        for w in range(width):
                            adj = adjoint_n[w] + grad_y[w] * C_tn
                            sum_C += grad_y[w] * after[w]
                            sum_B += adj * drive[w]
                            along_B[w] += adj * B_tn
                            q = adj * decay_n[w] * before[w]
                            along_A[w] += q * a_n[w]
                            grad_A_n[w] += q * step[w]
                            adjoint_n[w] = adj * decay_n[w]
                        dB[b, j, t, n] = sum_B
                        dC[b, j, t, n] = sum_C
                    du_t, d_delta_t = du[b, t, c0:c1], d_delta[b, t, c0:c1]
                    for w in range(width):
                        du_t[w] = step[w] * along_B[w] + D_j[w] * grad_y[w]
                        d_step = along_A[w] + u_t[w] * along_B[w]
                        if use_softplus:
                            x = delta_t[w] + bias_j[w]
                            if x <= 20.0:
                                d_step = d_step * sigmoid(x)
                        d_delta_t[w] = d_step
                        grad_bias[w] += d_step
            for w in range(width):
                for n in range(n_state):
                    dA[b, c0 + w, n] = grad_A[n, w]
                dD[b, c0 + w] = grad_D[w]
                d_bias[b, c0 + w] = grad_bias[w]
