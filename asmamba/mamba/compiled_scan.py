"""The compiled CPU selective scan: mamba-ssm's ``selective_scan_fn`` contract, forward and backward, in numba.

:func:`selective_scan_compiled` runs the recurrence of :mod:`asmamba.mamba.selective_scan` with the kernels of
:mod:`asmamba.mamba._scan_kernels`: one task per (batch, channel) sequence in the forward (per batch item and block
of channels of one B/C group in the backward), spread over ``torch.get_num_threads()`` threads, each step
vectorised over the N states. The step sizes (bias, softplus) and the gate ``silu(z)`` are element-wise torch
operations around the kernels; the forward keeps the state entering every ``SEGMENT`` steps when a gradient is
needed, and the backward recomputes each segment's states from it (L / SEGMENT states per channel, never the
(batch, dim, L, N) tensor of all states).

numba is imported, and the kernels compiled or loaded from numba's on-disk cache, on the first CPU scan
(:func:`available`); the first process after an install or an upgrade pays the compilation (tens of seconds for
float32 and float64, forward and backward), later ones load the cache. Without numba (or if it fails to import)
:func:`available` is False and :func:`asmamba.mamba.selective_scan.selective_scan` uses the PyTorch scan.
"""

from __future__ import annotations

import math
import threading
import warnings
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .selective_scan import ScanOutput, _as_groups, _check_inputs, _compute_dtype

#: steps between the states the forward keeps for the backward (its recompute buffers are SEGMENT x N per task)
SEGMENT = 64
#: the backward aims at this many tasks per thread (more: better balance, more partial sums of dB and dC)
TASKS_PER_THREAD = 8

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
    """Launch the kernels on as many threads as torch uses (numba's pool holds at most NUMBA_NUM_THREADS)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _np(t: Tensor):
    """NumPy view of a CPU tensor (shares memory)."""
    return t.detach().numpy()


def _softplus_grad(raw: Tensor) -> Tensor:
    """d softplus(x) / dx with torch's threshold (softplus(x) = x above 20)."""
    return torch.where(raw > 20, torch.ones_like(raw), torch.sigmoid(raw))


def _ungroup(grad: Tensor, like: Tensor) -> Tensor:
    """(b, G, L, N) gradient of the grouped, time-major B or C -> the layout and groups of ``like``."""
    batch, groups, length, n_state = grad.shape
    own = like.shape[1] if like.dim() == 4 else 1
    grad = grad.reshape(batch, own, groups // own, length, n_state).sum(2).transpose(-1, -2)
    return (grad if like.dim() == 4 else grad[:, 0]).to(like.dtype)


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
        raw = delta.to(dtype)
        if delta_bias is not None:
            raw = raw + delta_bias.to(dtype)[:, None]
        dt = F.softplus(raw) if delta_softplus else raw  # (b, d, L)
        u_, A_ = u.to(dtype).contiguous(), A.to(dtype).contiguous()
        dt = dt.contiguous()
        D_ = D.to(dtype).contiguous() if D is not None else u_.new_zeros(dim)
        Bt = _as_groups(B.to(dtype), groups).transpose(-1, -2).contiguous()  # (b, G, L, N)
        Ct = _as_groups(C.to(dtype), groups).transpose(-1, -2).contiguous()
        keep = any(ctx.needs_input_grad[:8])
        starts = u_.new_empty((batch, dim, math.ceil(length / SEGMENT) if keep else 0, n_state))
        y = u_.new_empty((batch, dim, length))  # y + D u
        last = u_.new_empty((batch, dim, n_state))
        with _launch:
            _threads()
            kernels.scan_forward(_np(u_), _np(dt), _np(A_), _np(Bt), _np(Ct), _np(D_), _np(y), _np(last),
                                 _np(starts), SEGMENT)
        out = y * F.silu(z.to(dtype)) if z is not None else y
        if keep:
            ctx.save_for_backward(u_, raw, A_, Bt, Ct, D_, z, y if z is not None else None, starts, B, C,
                                  D, delta_bias, delta, A, u)
            ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Optional[Tensor], grad_last: Optional[Tensor]):
        (u_, raw, A_, Bt, Ct, D_, z, y, starts, B, C, D, delta_bias, delta, A, u) = ctx.saved_tensors
        kernels = _load()
        dtype = u_.dtype
        batch, dim, length = u_.shape
        groups, n_state = Bt.shape[1], A_.shape[1]
        per_group = dim // groups
        grad_out = torch.zeros_like(u_) if grad_out is None else grad_out.to(dtype)
        grad_z = None
        if z is not None:
            z_ = z.to(dtype)
            gate = torch.sigmoid(z_)
            grad_z = (grad_out * y * gate * (1 + z_ * (1 - gate))).to(z.dtype)
            grad_out = grad_out * z_ * gate  # gradient of y + D u
        grad_out = grad_out.contiguous()
        grad_last = (u_.new_zeros((batch, dim, n_state)) if grad_last is None
                     else grad_last.to(dtype).contiguous())
        dt = F.softplus(raw) if ctx.delta_softplus else raw
        parts = min(per_group, max(1, math.ceil(TASKS_PER_THREAD * torch.get_num_threads() / (batch * groups))))
        block = math.ceil(per_group / parts)
        parts = math.ceil(per_group / block)
        du, d_dt = torch.empty_like(u_), torch.empty_like(u_)
        dA = u_.new_empty((batch, dim, n_state))
        dB = u_.new_zeros((batch, groups, parts, length, n_state))
        dC = u_.new_zeros((batch, groups, parts, length, n_state))
        with _launch:
            _threads()
            kernels.scan_backward(_np(u_), _np(dt.contiguous()), _np(A_), _np(Bt), _np(Ct), _np(D_),
                                  _np(grad_out), _np(grad_last), _np(starts), SEGMENT, block,
                                  _np(du), _np(d_dt), _np(dA), _np(dB), _np(dC))
        grad_delta = d_dt * _softplus_grad(raw) if ctx.delta_softplus else d_dt
        grad_bias = grad_delta.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        grad_D = (grad_out * u_).sum((0, 2)).to(D.dtype) if D is not None else None
        return (du.to(u.dtype), grad_delta.to(delta.dtype), dA.sum(0).to(A.dtype), _ungroup(dB.sum(2), B),
                _ungroup(dC.sum(2), C), grad_D, grad_z, grad_bias, None)


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
