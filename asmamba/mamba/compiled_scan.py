"""The compiled CPU selective scan: mamba-ssm's ``selective_scan_fn`` contract, forward and backward, in numba.

:func:`selective_scan_compiled` runs the recurrence of :mod:`asmamba.mamba.selective_scan` with the kernels of
:mod:`asmamba.mamba._scan_kernels`: one task per batch item and block of ``WIDTH`` channels of one B/C group, tasks
spread over ``torch.get_num_threads()`` threads, each step vectorised over the block's channels (and looping over
the N states). Bias, softplus, skip and gate are computed inside the kernels, forward and backward. The tensors
are read time-major, (batch, L, dim), the layout in which the Mamba layers produce them (a channel-major input is
copied once). The forward keeps the state entering every ``SEGMENT`` steps when a gradient is needed; the backward
recomputes each segment's states from it (L / SEGMENT states per channel, never the (batch, dim, L, N) tensor of
all states).

numba is imported, and the kernels compiled or loaded from numba's on-disk cache, on the first CPU scan
(:func:`available`); the first process after an install or an upgrade pays the compilation (tens of seconds for
float32 and float64, forward and backward), later ones load the cache. Without numba (or if it fails to import)
:func:`available` is False and :func:`asmamba.mamba.selective_scan.selective_scan` uses the PyTorch scan.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from types import ModuleType
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .selective_scan import ScanOutput, _as_groups, _check_inputs, _compute_dtype

#: channels of one task, the width of the kernels' vector loops (16 float32 values: one AVX-512 register)
WIDTH = 16
#: steps between the states the forward keeps for the backward (its recompute buffers are SEGMENT x N x WIDTH)
SEGMENT = 32
#: the kernels' tasks run in this many parallel chunks per thread, each with one set of work buffers
CHUNKS_PER_THREAD = 4

_kernels: Optional[ModuleType] = None
_checked = False
_load_error: Optional[str] = None
# one kernel launch at a time: numba's fallback thread pool ("workqueue", used when neither TBB nor OpenMP loads)
# aborts on concurrent launches, and concurrent scans would only compete for the same cores
_launch = threading.Lock()


def _load() -> Optional[ModuleType]:
    """The kernel module if numba imports, else None (checked once per process)."""
    global _kernels, _checked, _load_error
    if not _checked:
        _checked = True
        try:
            from . import _scan_kernels
        except Exception as error:  # numba missing, or built for another NumPy: fall back to the PyTorch scan
            _load_error = f"{type(error).__name__}: {error}"
            warnings.warn(f"asmamba: the compiled CPU selective scan is unavailable ({_load_error}); using the "
                          "slower PyTorch scan", RuntimeWarning, stacklevel=3)
        else:
            _kernels = _scan_kernels
    return _kernels


def available() -> bool:
    """True if the compiled CPU scan can run here (numba imports)."""
    return _load() is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False (None if it is True or was not checked yet)."""
    return _load_error


def _threads() -> None:
    """Launch the kernels on as many threads as torch uses (numba's pool holds at most NUMBA_NUM_THREADS).

    Starting numba's OpenMP pool (its first parallel launch in a process) sets the OpenMP thread count that torch
    shares back to NUMBA_NUM_THREADS: torch's own count is restored, or a user's ``torch.set_num_threads(1)`` would
    silently become 2 threads (and the results of torch's reductions would change with it)."""
    import numba

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _chunks(tasks: int) -> int:
    """Parallel chunks of consecutive tasks for the kernels: CHUNKS_PER_THREAD per thread (at most one per task)."""
    return max(1, min(tasks, CHUNKS_PER_THREAD * torch.get_num_threads()))


def _np(t: Tensor):
    """NumPy view of a CPU tensor (shares memory)."""
    return t.detach().numpy()


def _time_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(b, d, L) -> contiguous (b, L, d) in ``dtype``: a view when x is time-major in memory already."""
    return x.to(dtype).transpose(1, 2).contiguous()


@functools.lru_cache(maxsize=64)
def channel_blocks(dim: int, groups: int, width: int) -> np.ndarray:
    """(P, 2) [first, end) channels of the kernels' blocks: every group cut into the same number of near-equal
    blocks of at most ``width`` channels, in channel order (block j belongs to group j // (P / groups))."""
    per_group = dim // groups
    pieces = math.ceil(per_group / width)
    size = math.ceil(per_group / pieces)
    rows = [(g * per_group + i * size, min(g * per_group + (i + 1) * size, (g + 1) * per_group))
            for g in range(groups) for i in range(pieces)]
    blocks = np.array(rows, dtype=np.int64)
    blocks.setflags(write=False)
    return blocks


def _ungroup(grad: Tensor, groups_of: int, dims: int, dtype: torch.dtype) -> Tensor:
    """(b, G, L, N) gradient of the grouped, time-major B or C -> (b, N, L) or (b, groups_of, N, L) in ``dtype``."""
    batch, groups, length, n_state = grad.shape
    grad = grad.reshape(batch, groups_of, groups // groups_of, length, n_state).sum(2).transpose(-1, -2)
    return (grad if dims == 4 else grad[:, 0]).to(dtype)


class _CompiledSelectiveScan(torch.autograd.Function):
    """(out, last_state) = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus) on CPU tensors."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool):
        kernels = _load()
        dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        batch, dim, length = u.shape
        n_state = A.shape[1]
        groups = math.lcm(*(t.shape[1] if t.dim() == 4 else 1 for t in (B, C)))
        blocks = channel_blocks(dim, groups, WIDTH)
        u_t, delta_t = _time_major(u, dtype), _time_major(delta, dtype)  # (b, L, d)
        z_t = _time_major(z, dtype) if z is not None else u_t.new_empty((0, 0, 0))
        bias = delta_bias.to(dtype).contiguous() if delta_bias is not None else u_t.new_zeros(dim)
        D_ = D.to(dtype).contiguous() if D is not None else u_t.new_zeros(dim)
        A_T = A.to(dtype).t().contiguous()  # (N, d)
        Bt = _as_groups(B.to(dtype), groups).transpose(-1, -2).contiguous()  # (b, G, L, N)
        Ct = _as_groups(C.to(dtype), groups).transpose(-1, -2).contiguous()
        keep = any(ctx.needs_input_grad[:8])
        n_kept = math.ceil(length / SEGMENT) if keep else 0
        starts = u_t.new_empty((batch, len(blocks), n_kept, n_state, WIDTH))
        out_t = u_t.new_empty((batch, length, dim))
        last = u_t.new_empty((batch, dim, n_state))
        with _launch:
            _threads()
            kernels.scan_forward(_np(u_t), _np(delta_t), _np(bias), _np(A_T), _np(Bt), _np(Ct), _np(D_), _np(z_t),
                                 blocks, bool(delta_softplus), _np(out_t), _np(last), _np(starts), SEGMENT,
                                 _chunks(batch * len(blocks)))
        if keep:
            ctx.save_for_backward(u_t, delta_t, bias, A_T, Bt, Ct, D_, z_t, starts)
            ctx.delta_softplus = bool(delta_softplus)
            ctx.layout = {name: (t.dim(), t.shape[1] if t.dim() == 4 else 1) for name, t in (("B", B), ("C", C))}
            ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.set_materialize_grads(False)
        return out_t.transpose(1, 2).to(u.dtype), last  # (b, d, L), time-major in memory

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Optional[Tensor], grad_last: Optional[Tensor]):
        u_t, delta_t, bias, A_T, Bt, Ct, D_, z_t, starts = ctx.saved_tensors
        kernels = _load()
        dtype = u_t.dtype
        batch, length, dim = u_t.shape
        groups, n_state = Bt.shape[1], A_T.shape[0]
        blocks = channel_blocks(dim, groups, WIDTH)
        go_t = _time_major(grad_out, dtype) if grad_out is not None else torch.zeros_like(u_t)
        grad_last = (u_t.new_zeros((batch, dim, n_state)) if grad_last is None
                     else grad_last.to(dtype).contiguous())
        du_t, d_delta_t = torch.empty_like(u_t), torch.empty_like(u_t)
        dz_t = torch.empty_like(z_t)
        dA = u_t.new_empty((batch, dim, n_state))
        dB = u_t.new_empty((batch, len(blocks), length, n_state))
        dC = u_t.new_empty((batch, len(blocks), length, n_state))
        dD, d_bias = u_t.new_empty((batch, dim)), u_t.new_empty((batch, dim))
        with _launch:
            _threads()
            kernels.scan_backward(_np(u_t), _np(delta_t), _np(bias), _np(A_T), _np(Bt), _np(Ct), _np(D_), _np(z_t),
                                  blocks, ctx.delta_softplus, _np(go_t), _np(grad_last), _np(starts), SEGMENT,
                                  _chunks(batch * len(blocks)), _np(du_t), _np(d_delta_t), _np(dz_t), _np(dA),
                                  _np(dB), _np(dC), _np(dD), _np(d_bias))
        t_u, t_delta, t_A, t_B, t_C, t_D, t_z, t_bias = ctx.dtypes
        per_group = len(blocks) // groups

        def group_sum(partial: Tensor, name: str, dtype_out: torch.dtype) -> Tensor:
            dims, own = ctx.layout[name]
            return _ungroup(partial.reshape(batch, groups, per_group, length, n_state).sum(2), own, dims, dtype_out)

        return (du_t.transpose(1, 2).to(t_u), d_delta_t.transpose(1, 2).to(t_delta), dA.sum(0).to(t_A),
                group_sum(dB, "B", t_B), group_sum(dC, "C", t_C),
                dD.sum(0).to(t_D) if t_D is not None else None,
                dz_t.transpose(1, 2).to(t_z) if t_z is not None else None,
                d_bias.sum(0).to(t_bias) if t_bias is not None else None, None)


def selective_scan_compiled(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False,
) -> ScanOutput:
    """The compiled CPU selective scan; arguments and results as :func:`asmamba.mamba.selective_scan.selective_scan`
    (float16/bfloat16 inputs are scanned in float32; gradients flow through ``last_state`` too).

    Raises:
        RuntimeError: if numba is not importable here or the tensors are not on the CPU.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise RuntimeError(f"selective_scan_compiled: runs on CPU tensors only, got {u.device}")
    if not available():
        raise RuntimeError(f"selective_scan_compiled: numba is not importable here ({_load_error})")
    out, last = _CompiledSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out
