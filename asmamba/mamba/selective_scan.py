"""Selective scan (the Mamba-1 S6 recurrence): mamba-ssm's CUDA kernel, a compiled CPU kernel, an exact blocked
PyTorch scan.

The recurrence, for every batch element b, channel d and state index n (``g(d)`` is the group of channel d)::

    delta_t = softplus(delta_t + delta_bias)                   (both optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B[g(d), n, t] * u_t
    y_t     = sum_n C[g(d), n, t] * h_t
    out_t   = (y_t + D[d] * u_t) * silu(z_t)                   (D and z optional)

This is the contract of mamba-ssm's ``selective_scan_fn`` / ``selective_scan_ref``.

Three backends, chosen at run time by :func:`selective_scan`:

- ``"mamba_ssm"``: the fused CUDA kernel, used for CUDA tensors when ``mamba_ssm`` imports with its compiled
  extension (imported lazily, once) and the inputs are within the kernel's limits.
- ``"numba"``: :func:`asmamba.mamba.compiled_scan.selective_scan_compiled`, the compiled CPU kernel (forward and
  backward, parallel over batch and channels, vectorised over the state), used for CPU tensors when numba imports
  (checked lazily, once). ``ASMAMBA_CPU_SCAN=pytorch`` in the environment, or :data:`prefer_compiled` = False,
  selects the PyTorch scan instead.
- ``"pytorch"``: :func:`selective_scan_pytorch`, the fallback on any device and the reference the compiled kernel
  is tested against: an exact scan written with PyTorch operations. The sequence is walked block by block; a block
  of ``chunk_len * chunks_per_block`` steps is cut into chunks that are scanned side by side (a Python loop over the
  ``chunk_len`` in-chunk steps, each operating on all chunks of the block), first from zero to get every chunk's
  end state, then, after a short pass that carries the state from chunk to chunk, again from the true chunk-start
  states to read the outputs. A block's decays and states are sized to stay in cache. Only decays
  ``exp(delta * A)`` (<= 1 for A <= 0) and products of them are formed (never ``exp`` of a cumulative sum with the
  wrong sign), so large ``delta * A`` underflows harmlessly instead of overflowing. A custom backward runs the
  adjoint recurrence the same way, block by block in reverse, recomputing the states from the chunk-start states
  that the forward keeps (L / chunk_len states; nothing of size (batch, dim, L, N) is kept or built).

:func:`selective_scan_reference` is the plain step-by-step loop, kept for tests and benchmarks.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BACKEND_PYTORCH = "pytorch"
BACKEND_MAMBA_SSM = "mamba_ssm"
BACKEND_NUMBA = "numba"

# Set to False to force the PyTorch scan even where mamba-ssm's kernel is available (e.g. to compare the two).
prefer_mamba_ssm: bool = True
# Set to False (or ASMAMBA_CPU_SCAN=pytorch) to use the PyTorch scan on CPU even where the compiled kernel runs.
prefer_compiled: bool = os.environ.get("ASMAMBA_CPU_SCAN", "").strip().lower() != "pytorch"

# Blocking of the PyTorch scan: a block holds about `block_elements` state values (time steps x batch x dim x N), so
# that its decays, states and adjoints stay in cache while the Python loops walk over it (see choose_blocking).
# Short sequences over a large batch (the fine stage's windows, the local spans) run instead as slices of the batch,
# each slice one chunk of the whole sequence with about `slice_elements` state values per time step (above
# PyTorch's parallel grain of 32768 elements, so both threads of an element-wise op work).
scan_blocking = {"block_elements": 2**19, "short_length": 128, "slice_elements": 2**16}

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


def compiled_available() -> bool:
    """True if the compiled CPU scan (numba) runs here; imports numba on the first call."""
    from . import compiled_scan

    return compiled_scan.available()


def backend_name(device: Union[torch.device, str, None] = None) -> str:
    """Name of the backend :func:`selective_scan` uses for float32/float16/bfloat16 tensors on ``device``.

    Args:
        device: a device; None means the best device of this machine (CUDA if available).
    Returns:
        ``"mamba_ssm"``, ``"numba"`` or ``"pytorch"``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda" and prefer_mamba_ssm and mamba_ssm_available():
        return BACKEND_MAMBA_SSM
    if kind == "cpu" and prefer_compiled and compiled_available():
        return BACKEND_NUMBA
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
# the blocked PyTorch scan
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def choose_blocking(length: int, state_elements_per_step: int) -> tuple[int, int]:
    """Chunk length T and chunks per block m of the PyTorch scan (see :data:`scan_blocking`).

    A block of T * m steps keeps its decays and states, ``T * m * state_elements_per_step`` values each, in cache
    while the Python loops walk over it; T ~ sqrt(T * m) keeps both loops short.

    Args:
        length: sequence length L.
        state_elements_per_step: batch * dim * N, the state one time step updates.
    Returns:
        (chunk_len, chunks_per_block), both >= 1.
    """
    block = max(1, min(length, scan_blocking["block_elements"] // max(1, state_elements_per_step)))
    chunk_len = max(1, min(block, round(math.sqrt(block))))
    return chunk_len, math.ceil(block / chunk_len)


def choose_slicing(batch: int, state_elements_per_item: int, length: int) -> tuple[int, Optional[int], Optional[int]]:
    """Batch slice and blocking for the PyTorch scan: ``(batch_slice, chunk_len, chunks_per_block)``.

    A short sequence (at most ``scan_blocking["short_length"]`` steps) over a batch whose per-step state exceeds
    ``scan_blocking["slice_elements"]`` runs slice by slice, each slice as one chunk of the whole sequence: its states
    stay in cache and no chunk carries are needed (about 2x faster for the fine windows, 3571 x 64 x 4 x 50).
    Otherwise the whole batch at once with :func:`choose_blocking` (``None`` chunking).
    """
    per_step = batch * state_elements_per_item
    if length > scan_blocking["short_length"] or per_step <= scan_blocking["slice_elements"]:
        return batch, None, None
    return max(1, scan_blocking["slice_elements"] // max(1, state_elements_per_item)), length, 1


def _exp_decay_(log_decay: Tensor) -> Tensor:
    """exp in place, with exponents below log(smallest normal float) raised to it first.

    exp's underflow path (subnormal or zero results) was ~10x slower than its normal path on the x86 CPU measured, and
    trained Mamba layers produce many such exponents (delta * A of -100 and below). The raised value differs from
    the true decay by less than the smallest normal number (1e-38 in float32), far below the precision of the state.
    """
    return log_decay.clamp_(min=_LOG_TINY[log_decay.dtype]).exp_()


_LOG_TINY = {dtype: math.log(torch.finfo(dtype).tiny) + 1e-3 for dtype in (torch.float32, torch.float64)}


class _Blocks:
    """The scan's inputs read block by block in time-major layout, and the buffers of one block.

    The sequence is cut into blocks of m chunks of T steps: block j covers steps [j*T*m, (j+1)*T*m) and its chunk c
    the T steps from j*T*m + c*T. A block's per-step values are laid out (T, b, m, g, K): step t of every chunk
    together. g is the number of B/C groups, k = dim / g the channels of a group; states are (T, b, m, g, N, k).
    The last block is zero-padded (delta = 0 there: decay 1, drive 0, so the state passes through unchanged).
    """

    def __init__(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 chunk_len: int, chunks_per_block: int) -> None:
        self.batch, self.dim, self.length = u.shape
        self.groups, self.n_state = B.shape[1], A.shape[1]
        self.k = self.dim // self.groups
        self.chunk_len, self.chunks_per_block = chunk_len, chunks_per_block
        self.block_len = chunk_len * chunks_per_block
        self.n_blocks = math.ceil(self.length / self.block_len)
        self.u, self.delta = self.grouped(u), self.grouped(delta)  # (b, g, k, L)
        self.B, self.C = B, C  # (b, g, N, L)
        self.A = A.reshape(self.groups, self.k, self.n_state).transpose(1, 2).contiguous()  # (g, N, k)
        self._buffers: dict[str, Tensor] = {}

    def grouped(self, x: Tensor) -> Tensor:
        """(b, dim, L) -> (b, g, k, L) view."""
        return x.reshape(self.batch, self.groups, self.k, x.shape[-1])

    def buffer(self, name: str, *shape: Union[str, int]) -> Tensor:
        """A work tensor kept across blocks (fresh large allocations cost page faults on every block).

        ``shape`` entries are ints or the letters ``T b m g N k``.
        """
        if name not in self._buffers:
            sizes = {"T": self.chunk_len, "b": self.batch, "m": self.chunks_per_block, "g": self.groups,
                     "N": self.n_state, "k": self.k}
            self._buffers[name] = self.u.new_empty([sizes.get(s, s) for s in shape])
        return self._buffers[name]

    def _pieces(self, j: int, layout: Tensor, full: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Matching views (block layout (T, b, m, g, K), full tensor (b, g, K, L)) covering block j's real steps."""
        start = j * self.block_len
        steps = min(self.block_len, self.length - start)
        whole, rest = divmod(steps, self.chunk_len)
        by_time = layout.permute(1, 3, 4, 2, 0)  # (b, g, K, m, T)
        part = full[..., start: start + steps]
        pieces = []
        if whole:
            pieces.append((by_time[..., :whole, :], part[..., : whole * self.chunk_len].unflatten(-1, (whole, -1))))
        if rest:
            pieces.append((by_time[..., whole, :rest], part[..., whole * self.chunk_len:]))
        return pieces

    def read(self, name: str, j: int, full: Tensor) -> Tensor:
        """Block j of ``full`` (b, g, K, L) in block layout (T, b, m, g, K), zero past the end (a reused buffer)."""
        layout = self.buffer(name, "T", "b", "m", "g", full.shape[2])
        if (j + 1) * self.block_len > self.length:
            layout.zero_()
        for dst, src in self._pieces(j, layout, full):
            dst.copy_(src)
        return layout

    def write(self, layout: Tensor, j: int, full: Tensor) -> None:
        """Store block j's values (T, b, m, g, K) into ``full`` (b, g, K, L); the padding is dropped."""
        for src, dst in self._pieces(j, layout, full):
            dst.copy_(src)

    def block(self, j: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Block j's delta, u, delta * u: (T, b, m, g, k) and B, C: (T, b, m, g, N) (reused buffers)."""
        delta, u = self.read("delta", j, self.delta), self.read("u", j, self.u)
        delta_u = torch.mul(delta, u, out=self.buffer("delta_u", "T", "b", "m", "g", "k"))
        return delta, u, delta_u, self.read("B", j, self.B), self.read("C", j, self.C)

    def state_buffer(self, name: str) -> Tensor:
        """A (T, b, m, g, N, k) work tensor for one block's per-step states."""
        return self.buffer(name, "T", "b", "m", "g", "N", "k")

    def decay_and_drive(self, delta: Tensor, delta_u: Tensor, B: Tensor, j: int) -> tuple[Tensor, Tensor]:
        """exp(delta * A) and delta * u * B of block j: (T, b, m, g, N, k) each (reused buffers).

        The drive buffer alternates between two tensors, so views of block j's states survive block j + 1.
        """
        decay = _exp_decay_(torch.mul(delta.unsqueeze(-2), self.A, out=self.state_buffer("decay")))
        drive = torch.mul(delta_u.unsqueeze(-2), B.unsqueeze(-1), out=self.state_buffer(f"drive{j % 2}"))
        return decay, drive

    def chunk_decay(self, delta: Tensor) -> Optional[Tensor]:
        """exp(A * sum of delta over each chunk) of one block: (b, m, g, N, k) (a reused buffer); None if m = 1."""
        if self.chunks_per_block == 1:
            return None
        out = self.buffer("chunk_decay", "b", "m", "g", "N", "k")
        return _exp_decay_(torch.mul(delta.sum(0).unsqueeze(-2), self.A, out=out))


def _chunk_start_states(
    decay: Tensor, drive: Tensor, whole_decay: Optional[Tensor], h_in: Tensor, starts: Tensor, local: Tensor
) -> Tensor:
    """States entering every chunk of a block, given the state ``h_in`` (b, g, N, k) entering the block.

    decay, drive: (T, b, m, g, N, k); whole_decay: (b, m, g, N, k) (None if m = 1). Written into ``starts``, with
    ``local`` (b, m - 1, g, N, k) as work space. Returns ``starts``.
    """
    starts[:, 0] = h_in
    if decay.shape[2] == 1:
        return starts
    # end states of chunks 0..m-2, each started from zero, all side by side
    local.copy_(drive[0, :, :-1])
    for t in range(1, decay.shape[0]):
        torch.addcmul(drive[t, :, :-1], decay[t, :, :-1], local, out=local)
    for c in range(1, decay.shape[2]):
        torch.addcmul(local[:, c - 1], whole_decay[:, c - 1], starts[:, c - 1], out=starts[:, c])
    return starts


def _chunk_end_inflows(
    decay: Tensor, adjoint: Tensor, whole_decay: Optional[Tensor], inflow_in: Tensor, inflow: Tensor, local: Tensor
) -> Tensor:
    """Adjoint flowing into the last step of every chunk of a block from later steps (the backward carry).

    decay, adjoint: (T, b, m, g, N, k), adjoint holding only the direct terms C_t grad_y_t; whole_decay:
    (b, m, g, N, k) (None if m = 1); inflow_in: (b, g, N, k) flowing into the block's last step. Written into ``inflow``
    (b, m, g, N, k), with ``local`` (b, m - 1, g, N, k) as work space. Returns ``inflow``.
    """
    m = decay.shape[2]
    inflow[:, m - 1] = inflow_in
    if m == 1:
        return inflow
    # adjoint at the first step of chunks 1..m-1 when nothing flows in from their successors
    local.copy_(adjoint[-1, :, 1:])
    for t in range(decay.shape[0] - 2, -1, -1):
        torch.addcmul(adjoint[t, :, 1:], decay[t + 1, :, 1:], local, out=local)
    for c in range(m - 2, -1, -1):
        # what flows into chunk c = the decay at the first step of chunk c+1 times the adjoint there
        torch.mul(decay[0, :, c + 1], local[:, c], out=inflow[:, c])
        inflow[:, c].addcmul_(whole_decay[:, c + 1], inflow[:, c + 1])
    return inflow


def _scan_forward(x: _Blocks, keep_chunk_starts: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Run the recurrence from a zero state.

    Returns:
        y: (b, dim, L) read-outs C . h_t; last_state: (b, g, N, k); chunk_start: (n_blocks, b, m, g, N, k) the
        state entering every chunk (where the backward pass restarts the recurrence), if ``keep_chunk_starts``.
    """
    y = x.u.new_empty(x.u.shape)
    chunk_start = None
    if keep_chunk_starts:
        chunk_start = x.u.new_empty((x.n_blocks, x.batch, x.chunks_per_block, x.groups, x.n_state, x.k))
    h = x.u.new_zeros((x.batch, x.groups, x.n_state, x.k))
    local = x.buffer("local", "b", x.chunks_per_block - 1, "g", "N", "k")
    y_block = x.buffer("y", "T", "b", "m", "g", "k")
    for j in range(x.n_blocks):
        delta, _, delta_u, B, C = x.block(j)
        decay, state = x.decay_and_drive(delta, delta_u, B, j)
        if keep_chunk_starts or x.chunks_per_block > 1:
            starts = chunk_start[j] if keep_chunk_starts else x.buffer("starts", "b", "m", "g", "N", "k")
            _chunk_start_states(decay, state, x.chunk_decay(delta), h, starts, local)
        else:
            starts = h.unsqueeze(1)  # one chunk: it starts from the block's incoming state
        # in place: state[t] = decay[t] * state[t-1] + drive[t], all chunks side by side
        state[0].addcmul_(decay[0], starts)
        for t in range(1, x.chunk_len):
            state[t].addcmul_(decay[t], state[t - 1])
        torch.matmul(C.unsqueeze(-2), state, out=y_block.unsqueeze(-2))
        x.write(y_block, j, y)
        h = state[-1, :, -1]  # a view that stays valid through the next block (alternating buffers)
    return y.reshape(x.batch, x.dim, x.length), h.clone(), chunk_start


def _scan_backward(
    x: _Blocks, chunk_start: Tensor, grad_y: Tensor, grad_last: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adjoint of :func:`_scan_forward`, block by block from the last.

    With g_t = dLoss/dh_t, the adjoint runs backwards: g_t = C_t grad_y_t + exp(delta_{t+1} A) g_{t+1}, started by
    ``grad_last`` after the last step. Then dB_t = sum_k g_t delta_t u_t, d(delta u)_t = sum_n g_t B_t,
    dC_t = sum_k grad_y_t h_t and, with q_t = g_t exp(delta_t A) h_{t-1}: dA = sum_t q_t delta_t,
    d(delta)_t += sum_n q_t A.

    Args:
        x: the forward inputs; chunk_start: from :func:`_scan_forward`; grad_y: (b, dim, L);
        grad_last: (b, g, N, k) or None.
    Returns:
        du, d_delta: (b, dim, L); dA: (dim, N); dB, dC: (b, g, N, L).
    """
    grad_y = x.grouped(grad_y)
    du, d_delta = torch.empty_like(x.u), torch.empty_like(x.u)
    dB, dC = torch.empty_like(x.B), torch.empty_like(x.C)
    dA = x.A.new_zeros(x.A.shape)
    inflow = grad_last if grad_last is not None else x.u.new_zeros((x.batch, x.groups, x.n_state, x.k))
    adjoint, work = x.state_buffer("adjoint"), x.state_buffer("work")
    ends = x.buffer("ends", "b", "m", "g", "N", "k")
    local = x.buffer("local", "b", x.chunks_per_block - 1, "g", "N", "k")
    d_step, d_drive = x.buffer("d_delta", "T", "b", "m", "g", "k"), x.buffer("d_drive", "T", "b", "m", "g", "k")
    for j in range(x.n_blocks - 1, -1, -1):
        delta, u, delta_u, B, C = x.block(j)
        gy = x.read("grad_y", j, grad_y)  # (T, b, m, g, k)
        decay, state = x.decay_and_drive(delta, delta_u, B, j)
        torch.mul(gy.unsqueeze(-2), C.unsqueeze(-1), out=adjoint)  # direct terms, completed in place below
        adjoint[-1].add_(_chunk_end_inflows(decay, adjoint, x.chunk_decay(delta), inflow, ends, local))
        for t in range(x.chunk_len - 2, -1, -1):
            adjoint[t].addcmul_(decay[t + 1], adjoint[t + 1])
        inflow = decay[0, :, 0] * adjoint[0, :, 0]  # into the previous block's last step
        torch.matmul(B.unsqueeze(-2), adjoint, out=d_drive.unsqueeze(-2))  # d(delta u)
        # einsum is much faster than matmul's batched matrix-vector path here
        x.write(torch.einsum("tbmgnk,tbmgk->tbmgn", adjoint, delta_u), j, dB)
        # recompute the states in place: decay[t] <- decay[t] * h_{t-1}, state[t] <- h_t
        h_prev = chunk_start[j]
        for t in range(x.chunk_len):
            decay[t].mul_(h_prev)
            h_prev = state[t].add_(decay[t])
        x.write(torch.einsum("tbmgnk,tbmgk->tbmgn", state, gy), j, dC)
        q = adjoint.mul_(decay)  # g_t * exp(delta_t A) * h_{t-1}
        dA += torch.mul(q, delta.unsqueeze(-2), out=work).sum((0, 1, 2))
        torch.sum(torch.mul(q, x.A, out=work), dim=-2, out=d_step)
        x.write(d_step.addcmul_(d_drive, u), j, d_delta)
        x.write(d_drive.mul_(delta), j, du)
    shape = (x.batch, x.dim, x.length)
    return du.reshape(shape), d_delta.reshape(shape), dA.transpose(1, 2).reshape(x.dim, x.n_state), dB, dC


class _BlockedSelectiveScan(torch.autograd.Function):
    """y = scan(u, delta, A, B, C) with grouped B, C; no bias/softplus/D/z (those are plain autograd ops)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_len: int,
                chunks_per_block: int):
        # u, delta: (b, d, L); A: (d, N); B, C: (b, g, N, L); all one dtype
        x = _Blocks(u, delta, A, B, C, chunk_len, chunks_per_block)
        y, last_state, chunk_start = _scan_forward(x, keep_chunk_starts=any(ctx.needs_input_grad))
        ctx.set_materialize_grads(False)
        ctx.blocking = (chunk_len, chunks_per_block)
        ctx.save_for_backward(u, delta, A, B, C, chunk_start)
        return y, last_state.transpose(-1, -2).reshape(u.shape[0], u.shape[1], A.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Optional[Tensor], grad_last: Optional[Tensor]):
        u, delta, A, B, C, chunk_start = ctx.saved_tensors
        x = _Blocks(u, delta, A, B, C, *ctx.blocking)
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.to(u.dtype)
        if grad_last is not None:
            grad_last = grad_last.to(u.dtype).reshape(x.batch, x.groups, x.k, x.n_state).transpose(-1, -2)
        return (*_scan_backward(x, chunk_start, grad_y, grad_last), None, None)


def selective_scan_pytorch(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False,
    chunk_len: Optional[int] = None, chunks_per_block: Optional[int] = None,
) -> ScanOutput:
    """The exact blocked PyTorch selective scan, on any device; arguments as :func:`selective_scan`.

    Args:
        chunk_len, chunks_per_block: the blocking (None: :func:`choose_blocking`). Results do not depend on it
            beyond rounding.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    for name, value in (("chunk_len", chunk_len), ("chunks_per_block", chunks_per_block)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"selective_scan: {name} must be a positive int or None, got {value!r}")
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    groups = math.lcm(*(t.shape[1] if t.dim() == 4 else 1 for t in (B, C)))
    batch_slice = batch
    if chunk_len is None and chunks_per_block is None:
        batch_slice, chunk_len, chunks_per_block = choose_slicing(batch, dim * A.shape[1], length)
    auto_chunk_len, auto_chunks = choose_blocking(length, batch_slice * dim * A.shape[1])
    chunk_len = min(chunk_len or auto_chunk_len, length)
    chunks_per_block = min(chunks_per_block or auto_chunks, math.ceil(length / chunk_len))
    step = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    u_, A_ = u.to(dtype), A.to(dtype)
    B_, C_ = _as_groups(B.to(dtype), groups), _as_groups(C.to(dtype), groups)
    # (batch slices are independent sequences: the scan of each is exact on its own)
    pieces = [
        _BlockedSelectiveScan.apply(u_[i: i + batch_slice], step[i: i + batch_slice], A_, B_[i: i + batch_slice],
                                    C_[i: i + batch_slice], chunk_len, chunks_per_block)
        for i in range(0, batch, batch_slice)
    ]
    if len(pieces) == 1:
        y, last_state = pieces[0]
    else:
        y, last_state = (torch.cat(parts) for parts in zip(*pieces))
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
    """Selective scan with mamba-ssm's ``selective_scan_fn`` contract: mamba-ssm's CUDA kernel for CUDA tensors when
    it imports, the compiled kernel for CPU tensors when numba imports, else the exact PyTorch scan.

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
        scan's float32/float64 precision. The compiled and PyTorch backends back-propagate through last_state as
        well; mamba-ssm's kernel ignores its gradient.
    Raises:
        TypeError/ValueError naming the argument for wrong types, shapes, complex A or mixed devices.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if prefer_mamba_ssm and _kernel_accepts(u, A, B, C):
        kernel = _load_mamba_ssm()
        if kernel is not None:
            groups = [t.shape[1] if t.dim() == 4 else 1 for t in (B, C)]
            if groups[0] != groups[1]:  # the kernel reads B and C with one group count
                B, C = _as_groups(B, math.lcm(*groups)), _as_groups(C, math.lcm(*groups))
            # the kernel wants delta, B, C, z in u's dtype and A, D, delta_bias in float32
            return kernel(
                u, delta.to(u.dtype), A.float(), B.to(u.dtype), C.to(u.dtype),
                None if D is None else D.float(),
                None if z is None else z.to(u.dtype),
                None if delta_bias is None else delta_bias.float(),
                delta_softplus, return_last_state,
            )
    if u.device.type == "cpu" and prefer_compiled and compiled_available():
        from .compiled_scan import selective_scan_compiled

        return selective_scan_compiled(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
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
    groups = math.lcm(*(t.shape[1] if t.dim() == 4 else 1 for t in (B, C)))
    A = A.to(dtype).reshape(groups, dim // groups, -1)  # (g, k, N)
    # one (batch, g, k) or (batch, g, 1, N) slice per step, taken once up front
    steps = zip(
        step.reshape(batch, groups, -1, length).unbind(-1),
        (step * u.to(dtype)).reshape(batch, groups, -1, length).unbind(-1),
        _as_groups(B.to(dtype), groups).unsqueeze(2).unbind(-1),
        _as_groups(C.to(dtype), groups).unsqueeze(2).unbind(-1),
    )
    h = A.new_zeros(batch, *A.shape)
    ys = []
    for delta_t, delta_u_t, B_t, C_t in steps:
        h = torch.exp(delta_t.unsqueeze(-1) * A) * h + delta_u_t.unsqueeze(-1) * B_t
        ys.append((h * C_t).sum(-1))
    h = h.reshape(batch, dim, -1)
    out = _skip_and_gate(torch.stack(ys, dim=-1).reshape(batch, dim, length), u, D, z).to(u.dtype)
    return (out, h) if return_last_state else out

