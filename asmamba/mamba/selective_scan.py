"""Selective scan (the Mamba-1 S6 recurrence): an exact chunked PyTorch scan and mamba-ssm's CUDA kernel.

The recurrence, for every batch element b, channel d and state index n (``g(d)`` is the group of channel d)::

    delta_t = softplus(delta_t + delta_bias)                   (both optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B[g(d), n, t] * u_t
    y_t     = sum_n C[g(d), n, t] * h_t
    out_t   = (y_t + D[d] * u_t) * silu(z_t)                   (D and z optional)

This is the contract of mamba-ssm's ``selective_scan_fn`` / ``selective_scan_ref``.

Two backends, chosen at run time by :func:`selective_scan`:

- ``"mamba_ssm"``: the fused CUDA kernel, used for CUDA tensors when ``mamba_ssm`` imports with its compiled
  extension (imported lazily, once) and the inputs are within the kernel's limits.
- ``"pytorch"``: :func:`selective_scan_pytorch`, an exact scan written with PyTorch operations. The sequence is cut
  into ``n_chunks`` chunks of ``chunk_len`` steps and every chunk is scanned at the same time (a loop over the
  ``chunk_len`` positions, each step working on all chunks at once); a short sequential pass over the chunks then
  carries the state from chunk to chunk, and a second in-chunk pass finishes the outputs. Only decays
  ``exp(delta * A) <= 1`` and their products are ever formed (no ``exp`` of a cumulative sum with the wrong sign),
  so large ``delta * A`` underflows harmlessly instead of overflowing. A custom backward runs the adjoint
  recurrence the same way in reverse; it keeps one ``(batch, dim, L, N)`` buffer alive while it runs and the forward
  keeps none (it saves only the chunk-start states).

:func:`selective_scan_reference` is the plain step-by-step loop, kept for tests and benchmarks.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BACKEND_PYTORCH = "pytorch"
BACKEND_MAMBA_SSM = "mamba_ssm"

# Set to False to force the PyTorch scan even where mamba-ssm's kernel is available (e.g. to compare the two).
prefer_mamba_ssm: bool = True

# Cost model used to pick the chunk length of the PyTorch scan: a Python-level step costs about
# `step_overhead_s` plus `element_cost_s` per state element it touches (the unchunked scan touches every element
# once, the chunked one about twice). Rough values measured on a 2-core x86 machine; only the ratio matters.
scan_cost_model = {"step_overhead_s": 1e-4, "element_cost_s": 3e-9, "max_chunk_len": 1024}

ScanOutput = Union[Tensor, tuple[Tensor, Tensor]]

_mamba_ssm_fn: Optional[Callable[..., ScanOutput]] = None
_mamba_ssm_checked = False


# --------------------------------------------------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------------------------------------------------


def _load_mamba_ssm() -> Optional[Callable[..., ScanOutput]]:
    """mamba-ssm's ``selective_scan_fn`` if it imports with its compiled CUDA extension, else None (cached)."""
    global _mamba_ssm_fn, _mamba_ssm_checked
    if not _mamba_ssm_checked:
        _mamba_ssm_checked = True
        try:
            from mamba_ssm.ops import selective_scan_interface as interface
        except (ImportError, OSError):  # not installed, or its compiled libraries do not load
            interface = None
        if interface is not None:
            # newer releases import even without the extension and fail only when called
            if getattr(interface, "selective_scan_cuda", True) is not None:
                _mamba_ssm_fn = interface.selective_scan_fn
    return _mamba_ssm_fn


def mamba_ssm_available() -> bool:
    """True if mamba-ssm's CUDA selective scan can be imported here."""
    return _load_mamba_ssm() is not None


def backend_name(device: Union[torch.device, str, None] = None) -> str:
    """Name of the backend :func:`selective_scan` uses for float32/float16/bfloat16 tensors on ``device``.

    Args:
        device: a device; None means the best device of this machine (CUDA if available).
    Returns:
        ``"mamba_ssm"`` or ``"pytorch"``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and prefer_mamba_ssm and mamba_ssm_available():
        return BACKEND_MAMBA_SSM
    return BACKEND_PYTORCH


def _kernel_accepts(u: Tensor, A: Tensor, B: Tensor, C: Tensor) -> bool:
    """Whether mamba-ssm's kernel handles these inputs (it has no float64 path and at most 256 states)."""
    return (
        u.is_cuda
        and u.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and A.shape[1] <= 256
        and B.dtype != torch.float64
        and C.dtype != torch.float64
    )


# --------------------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------------------


def _check_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
) -> None:
    """Raise a TypeError/ValueError naming the argument if any input breaks the scan's contract."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise ValueError(f"selective_scan: complex {name} is not supported (only real A, B, C)")
        if not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: the sequence length L (u.shape[2]) must be at least 1")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got shape {tuple(A.shape)}")
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4):
            raise ValueError(
                f"selective_scan: {name} must be (batch, N, L) or (batch, groups, N, L), got shape {tuple(t.shape)}"
            )
        if t.shape[0] != batch or t.shape[-2] != n_state or t.shape[-1] != length:
            raise ValueError(
                f"selective_scan: {name} must be ({batch}, [groups,] {n_state}, {length}) for u {tuple(u.shape)} "
                f"and A {tuple(A.shape)}, got {tuple(t.shape)}"
            )
        if t.dim() == 4 and (t.shape[1] == 0 or dim % t.shape[1] != 0):
            raise ValueError(f"selective_scan: {name} has {t.shape[1]} groups, which do not divide dim={dim}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got shape {tuple(t.shape)}")


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32 (half-precision inputs are scanned in float32)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _as_groups(x: Tensor, groups: int) -> Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, groups, N, L), G dividing groups (group d // (dim / G))."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.repeat_interleave(groups // x.shape[1], dim=1) if x.shape[1] != groups else x


def _prepare_delta(
    delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool, dtype: torch.dtype
) -> Tensor:
    """softplus(delta + delta_bias) in ``dtype`` (each step optional). delta: (batch, dim, L)."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _skip_and_gate(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """(y + D * u) * silu(z), each term optional. y, u, z: (batch, dim, L); D: (dim,)."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


# --------------------------------------------------------------------------------------------------------------------
# the chunked PyTorch scan
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def choose_chunk_len(length: int, state_elements_per_step: int) -> int:
    """Chunk length of the PyTorch scan that minimises :data:`scan_cost_model`'s estimate.

    Args:
        length: sequence length L.
        state_elements_per_step: batch * dim * N, the state size one time step updates.
    Returns:
        the chunk length in ``[1, length]``; ``length`` means a single chunk (a plain sequential scan).
    """
    overhead = scan_cost_model["step_overhead_s"]
    per_element = scan_cost_model["element_cost_s"] * state_elements_per_step * length

    def cost(chunk_len: int) -> float:
        n_chunks = math.ceil(length / chunk_len)
        if n_chunks == 1:
            return length * overhead + per_element
        # two in-chunk passes, one pass over the chunks; the padded tail is scanned too
        return (2 * chunk_len + n_chunks) * overhead + 2 * per_element * n_chunks * chunk_len / length

    candidates = {length} | {c for c in range(1, min(length, scan_cost_model["max_chunk_len"]) + 1)}
    return min(sorted(candidates), key=cost)


def _to_chunks(x: Tensor, groups: int, chunk_len: int, n_chunks: int) -> Tensor:
    """(batch, groups * K, L) -> (chunk_len, batch, n_chunks, groups, K), zero-padded in time, contiguous.

    Inputs with a state axis, (batch, groups, N, L), become (chunk_len, batch, n_chunks, groups, N).
    """
    length = x.shape[-1]
    x = F.pad(x, (0, n_chunks * chunk_len - length))
    x = x.reshape(x.shape[0], groups, -1, n_chunks, chunk_len)
    return x.permute(4, 0, 3, 1, 2).contiguous()


def _from_chunks(x: Tensor, length: int) -> Tensor:
    """(chunk_len, batch, n_chunks, groups, K) -> (batch, groups * K, length): the inverse of :func:`_to_chunks`."""
    chunk_len, batch, n_chunks, groups, k = x.shape
    x = x.permute(1, 3, 4, 2, 0).reshape(batch, groups * k, n_chunks * chunk_len)
    return x[..., :length]


class _Chunks:
    """The scan's inputs in chunked, time-major layout (see :func:`_to_chunks`).

    Attributes:
        delta: (T, b, c, g, k) step sizes; delta_u: (T, b, c, g, k) delta * u;
        B, C: (T, b, c, g, N); A: (g, k, N) with k = dim / g channels per group; T = chunk_len, c = n_chunks.
    """

    def __init__(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_len: int) -> None:
        self.length = u.shape[-1]
        self.groups = B.shape[1]
        n_chunks = math.ceil(self.length / chunk_len)
        self.delta = _to_chunks(delta, self.groups, chunk_len, n_chunks)
        self.delta_u = _to_chunks(delta * u, self.groups, chunk_len, n_chunks)
        self.B = _to_chunks(B, self.groups, chunk_len, n_chunks)
        self.C = _to_chunks(C, self.groups, chunk_len, n_chunks)
        self.A = A.reshape(self.groups, -1, A.shape[-1])
        self.state_shape = (*self.delta.shape[1:], A.shape[-1])  # (b, c, g, k, N)

    @property
    def chunk_len(self) -> int:
        return self.delta.shape[0]

    @property
    def n_chunks(self) -> int:
        return self.delta.shape[2]

    def decay(self, t: int, out: Tensor) -> Tensor:
        """exp(delta * A) at in-chunk step t for every chunk: (b, c, g, k, N), written into ``out``."""
        torch.mul(self.delta[t].unsqueeze(-1), self.A, out=out)
        return out.exp_()

    def drive(self, t: int, out: Tensor) -> Tensor:
        """delta * u * B at in-chunk step t for every chunk: (b, c, g, k, N), written into ``out``."""
        return torch.mul(self.delta_u[t].unsqueeze(-1), self.B[t].unsqueeze(-2), out=out)

    def chunk_decay(self, first: int = 0) -> Tensor:
        """exp(A * sum of delta over in-chunk steps ``first..T-1``): (b, c, g, k, N)."""
        return torch.exp(self.delta[first:].sum(0).unsqueeze(-1) * self.A)


def _scan_forward(chunks: _Chunks) -> tuple[Tensor, Tensor, Tensor]:
    """Run the recurrence from a zero state.

    Returns:
        y: (T, b, c, g, k) outputs C . h_t; last_state: (b, g, k, N) state after the last step;
        chunk_start: (b, c, g, k, N) the state entering every chunk (what the backward pass restarts from).
    """
    shape = chunks.state_shape
    a = chunks.delta.new_empty(shape)
    x = torch.empty_like(a)
    n_chunks = chunks.n_chunks
    # pass 1: every chunk but the last scanned from a zero state, giving its local end state
    local_end = a.new_zeros((shape[0], n_chunks - 1, *shape[2:]))
    if n_chunks > 1:
        a1, x1 = a[:, : n_chunks - 1], x[:, : n_chunks - 1]
        for t in range(chunks.chunk_len):
            torch.mul(chunks.delta[t, :, : n_chunks - 1].unsqueeze(-1), chunks.A, out=a1)
            torch.mul(chunks.delta_u[t, :, : n_chunks - 1].unsqueeze(-1), chunks.B[t, :, : n_chunks - 1].unsqueeze(-2),
                      out=x1)
            local_end.mul_(a1.exp_()).add_(x1)
    # carry the state across chunks: start_{k+1} = decay_k * start_k + local_end_k
    whole_decay = chunks.chunk_decay()
    chunk_start = a.new_zeros(shape)
    for k in range(1, n_chunks):
        torch.addcmul(local_end[:, k - 1], whole_decay[:, k - 1], chunk_start[:, k - 1], out=chunk_start[:, k])
    # pass 2: rescan every chunk from its true start state, reading the outputs out
    h = chunk_start.clone()
    y = chunks.delta.new_empty(chunks.delta.shape)
    for t in range(chunks.chunk_len):
        h.mul_(chunks.decay(t, a)).add_(chunks.drive(t, x))
        torch.matmul(h, chunks.C[t].unsqueeze(-1), out=y[t].unsqueeze(-1))
    return y, h[:, -1], chunk_start


def _scan_backward(
    chunks: _Chunks, chunk_start: Tensor, grad_y: Tensor, grad_last: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adjoint of :func:`_scan_forward`.

    With g_t = dLoss/dh_t (total), the adjoint runs backwards: g_t = C_t * grad_y_t + exp(delta_{t+1} A) g_{t+1},
    started by ``grad_last`` after the last step; then
    dB_t = sum_k g_t delta_u_t, d(delta_u)_t = sum_n g_t B_t, and with q_t = g_t * exp(delta_t A) * h_{t-1}:
    dA = sum_t q_t delta_t, d(delta)_t += sum_n q_t A, dC_t = sum_k grad_y_t h_t.

    Args:
        chunks: the forward inputs; chunk_start: (b, c, g, k, N) from the forward;
        grad_y: (T, b, c, g, k); grad_last: (b, g, k, N) or None.
    Returns:
        d_delta, d_delta_u: (T, b, c, g, k) (d_delta without the delta_u path); dA: (g, k, N);
        dB, dC: (T, b, c, g, N).
    """
    shape = chunks.state_shape
    T, n_chunks = chunks.chunk_len, chunks.n_chunks
    a = chunk_start.new_empty(shape)
    x = torch.empty_like(a)
    # pass 1 (reverse): the adjoint at every chunk's first step when nothing flows in from later chunks
    local_first = a.new_zeros(shape)
    for t in range(T - 1, -1, -1):
        local_first.addcmul_(grad_y[t].unsqueeze(-1), chunks.C[t].unsqueeze(-2))
        if t > 0:
            local_first.mul_(chunks.decay(t, a))
    # carry backwards: what flows into the last step of chunk k from chunk k+1 (grad_last into the last chunk)
    first_decay = chunks.decay(0, torch.empty_like(a))
    whole_decay = chunks.chunk_decay()
    inflow = a.new_zeros(shape)
    if grad_last is not None:
        inflow[:, -1] = grad_last
    for k in range(n_chunks - 2, -1, -1):
        torch.mul(first_decay[:, k + 1], local_first[:, k + 1], out=inflow[:, k])
        inflow[:, k].addcmul_(whole_decay[:, k + 1], inflow[:, k + 1])
    del local_first, first_decay, whole_decay
    # pass 2 (reverse): the true adjoint g_t, kept for pass 3, and the terms that need only g_t
    adjoint = a.new_empty((T, *shape))
    d_delta_u = grad_y.new_empty(grad_y.shape)
    dB = chunks.B.new_empty(chunks.B.shape)
    g = inflow
    for t in range(T - 1, -1, -1):
        g.addcmul_(grad_y[t].unsqueeze(-1), chunks.C[t].unsqueeze(-2))
        adjoint[t] = g
        torch.matmul(g, chunks.B[t].unsqueeze(-1), out=d_delta_u[t].unsqueeze(-1))
        torch.matmul(chunks.delta_u[t].unsqueeze(-2), g, out=dB[t].unsqueeze(-2))
        if t > 0:
            g.mul_(chunks.decay(t, a))
    del inflow, g
    # pass 3 (forward): recompute h_t from the chunk starts and collect the decay and read-out gradients
    h = chunk_start.clone()
    q = torch.empty_like(a)
    dA = a.new_zeros(shape)
    d_delta = grad_y.new_empty(grad_y.shape)
    dC = chunks.C.new_empty(chunks.C.shape)
    for t in range(T):
        torch.mul(h, chunks.decay(t, a), out=q)
        torch.add(q, chunks.drive(t, x), out=h)
        q.mul_(adjoint[t])
        dA.addcmul_(q, chunks.delta[t].unsqueeze(-1))
        torch.sum(q.mul_(chunks.A), dim=-1, out=d_delta[t])
        torch.matmul(grad_y[t].unsqueeze(-2), h, out=dC[t].unsqueeze(-2))
    return d_delta, d_delta_u, dA.sum((0, 1)), dB, dC


class _ChunkedSelectiveScan(torch.autograd.Function):
    """y = scan(u, delta, A, B, C) with grouped B, C; no bias/softplus/D/z (those are plain autograd ops)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_len: int):
        # u, delta: (b, d, L); A: (d, N); B, C: (b, g, N, L); all one dtype
        chunks = _Chunks(u, delta, A, B, C, chunk_len)
        y, last_state, chunk_start = _scan_forward(chunks)
        ctx.set_materialize_grads(False)
        ctx.chunk_len = chunk_len
        ctx.save_for_backward(u, delta, A, B, C, chunk_start)
        return _from_chunks(y, chunks.length), last_state.reshape(u.shape[0], u.shape[1], A.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Optional[Tensor], grad_last: Optional[Tensor]):
        u, delta, A, B, C, chunk_start = ctx.saved_tensors
        chunks = _Chunks(u, delta, A, B, C, ctx.chunk_len)
        batch, groups = u.shape[0], B.shape[1]
        if grad_y is None:
            grad_y = torch.zeros_like(u)
        grad_y = _to_chunks(grad_y.to(u.dtype), groups, chunks.chunk_len, chunks.n_chunks)
        if grad_last is not None:
            grad_last = grad_last.to(u.dtype).reshape(batch, groups, -1, A.shape[1])
        d_delta, d_delta_u, dA, dB, dC = _scan_backward(chunks, chunk_start, grad_y, grad_last)
        length = u.shape[-1]
        d_delta_u = _from_chunks(d_delta_u, length)
        d_delta = _from_chunks(d_delta, length) + d_delta_u * u
        return (d_delta_u * delta, d_delta, dA.reshape(A.shape), _from_chunks(dB, length).reshape(B.shape),
                _from_chunks(dC, length).reshape(C.shape), None)


def selective_scan_pytorch(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False, chunk_len: Optional[int] = None,
) -> ScanOutput:
    """The exact chunked PyTorch selective scan, on any device; arguments as :func:`selective_scan`.

    Args:
        chunk_len: in-chunk steps (None: chosen by :func:`choose_chunk_len`). Results do not depend on it beyond
            rounding.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_len is not None and (not isinstance(chunk_len, int) or chunk_len < 1):
        raise ValueError(f"selective_scan: chunk_len must be a positive int or None, got {chunk_len!r}")
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    groups = math.lcm(*(t.shape[1] if t.dim() == 4 else 1 for t in (B, C)))
    if chunk_len is None:
        chunk_len = choose_chunk_len(length, batch * dim * A.shape[1])
    chunk_len = min(chunk_len, length)
    step = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    y, last_state = _ChunkedSelectiveScan.apply(
        u.to(dtype), step, A.to(dtype), _as_groups(B.to(dtype), groups), _as_groups(C.to(dtype), groups), chunk_len
    )
    out = _skip_and_gate(y, u, D, z).to(u.dtype)
    return (out, last_state) if return_last_state else out


# --------------------------------------------------------------------------------------------------------------------
# public entry point and the step-by-step reference
# --------------------------------------------------------------------------------------------------------------------


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False,
) -> ScanOutput:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` contract; CUDA kernel when available, else exact PyTorch.

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) step sizes (before ``delta_bias`` and softplus).
        A: (dim, N) real state matrix (diagonal per channel), usually negative.
        B: (batch, N, L) or (batch, groups, N, L) input matrix; channel d uses group d // (dim // groups).
        C: (batch, N, L) or (batch, groups, N, L) output matrix, grouped like B.
        D: (dim,) skip weight, optional.
        z: (batch, dim, L) gate, optional: the output is multiplied by silu(z).
        delta_bias: (dim,) added to delta before the softplus, optional.
        delta_softplus: apply softplus to delta (+ bias).
        return_last_state: also return the state after the last step.
    Returns:
        out: (batch, dim, L) in u's dtype; with ``return_last_state`` also last_state (batch, dim, N) in the
        scan's float32/float64 precision. The PyTorch backend back-propagates through last_state as well;
        mamba-ssm's kernel ignores its gradient.
    Raises:
        TypeError/ValueError naming the argument for wrong types, shapes, complex A or mixed devices.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.is_cuda and prefer_mamba_ssm and _kernel_accepts(u, A, B, C):
        kernel = _load_mamba_ssm()
        if kernel is not None:
            # the kernel wants delta, B, C, z in u's dtype and A, D, delta_bias in float32
            return kernel(
                u, delta.to(u.dtype), A.float(), B.to(u.dtype), C.to(u.dtype),
                None if D is None else D.float(),
                None if z is None else z.to(u.dtype),
                None if delta_bias is None else delta_bias.float(),
                delta_softplus, return_last_state,
            )
    return selective_scan_pytorch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False,
) -> ScanOutput:
    """The naive scan: one Python step per time step (slow; for tests and benchmarks). Same contract as
    :func:`selective_scan`, differentiable through plain autograd."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    step = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    # per-channel B and C: (batch, dim, N, L)
    B_d = _as_groups(B.to(dtype), dim)
    C_d = _as_groups(C.to(dtype), dim)
    A = A.to(dtype)
    u_c = u.to(dtype)
    h = u_c.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(step[:, :, t, None] * A) * h + (step[:, :, t] * u_c[:, :, t])[:, :, None] * B_d[..., t]
        ys.append((h * C_d[..., t]).sum(-1))
    out = _skip_and_gate(torch.stack(ys, dim=-1), u, D, z).to(u.dtype)
    return (out, h) if return_last_state else out

