"""Multi-head Mamba state: one Mamba-style scan whose state is split into one head per output stream.

AS-Mamba reads two streams (matching and geometry features) out of each scan. In ``"multi"`` mode every stream has
its own head: its own inner channels, its own SSM parameters (``x_proj`` giving its own dt/B/C, ``dt_proj``,
``A_log``, ``D``) and its own ``out_proj``, so the two functions keep separate states. All heads still run as
ONE selective scan: their B and C are passed as groups, ``(batch, heads, N, L)``, and channel d uses head
d // (d_inner / heads). ``in_proj`` and the depthwise ``conv1d`` are shared modules, but both act per channel, so a
head only ever sees its own rows of them. In ``"single"`` mode (the ablation) one SSM runs over all d_inner
channels and one ``out_proj`` to sum(out_dims) is split into the streams.

Parameter counts (d = d_model, E = expand * d, N = d_state, R = dt_rank, K = number of streams, S = sum(out_dims)):
both modes have ``in_proj`` 2dE, ``conv1d`` E(d_conv + 1), ``x_proj`` E(R + 2N), ``dt_proj`` E(R + 1),
``A_log`` EN and ``D`` E; they differ only in the read-out: ``out_proj`` is E*S in "single" mode and (E/K)*S in
"multi" mode (each stream reads its own E/K channels). For d = 128, expand 2, N 16, out_dims (128, 32):
124,672 ("single") vs 104,192 ("multi") parameters.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .mamba import (
    add_ssm_parameters, at_least_float32, causal_conv, check_positive_ints, check_sequence, resolve_dt_rank, ssm_inputs,
)
from .selective_scan import selective_scan

HEAD_MODES = ("multi", "single")


class ScanArgs(NamedTuple):
    """The selective scan's inputs read out of one sequence by a :class:`MultiHeadMamba` (before the scan)."""

    x: Tensor  # (B, E, L) the convolved, activated features: the scan's u
    z: Tensor  # (B, E, L) the gate
    delta: Tensor  # (B, E, L) step sizes before bias and softplus
    A: Tensor  # (E, N)
    B: Tensor  # (B, heads, N, L)
    C: Tensor  # (B, heads, N, L)
    D: Tensor  # (E,)
    delta_bias: Tensor  # (E,)


class SSMHead(nn.Module):
    """One head's SSM and read-out over ``d_inner`` channels (names as in mamba-ssm's Mamba).

    Holds ``x_proj``, ``dt_proj``, ``A_log``, ``D`` (see :func:`asmamba.mamba.mamba.add_ssm_parameters`) and
    ``out_proj`` (d_inner -> out_dim).
    """

    def __init__(self, d_inner: int, out_dim: int, d_state: int, dt_rank: int, bias: bool = False,
                 **ssm_options) -> None:
        super().__init__()
        add_ssm_parameters(self, d_inner, d_state, dt_rank, **ssm_options)
        self.out_proj = nn.Linear(d_inner, out_dim, bias=bias, device=ssm_options.get("device"),
                                  dtype=ssm_options.get("dtype"))


class MultiHeadMamba(nn.Module):
    """A Mamba block that returns several output streams, with one SSM head per stream or one shared SSM.

    Args:
        d_model: input channels.
        out_dims: channels of each output stream, e.g. ``(c_match, c_geom)``.
        heads: ``"multi"`` (one head per stream, all scanned in one grouped call) or ``"single"``.
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor, conv_bias, bias:
            as :class:`asmamba.mamba.mamba.Mamba`; in "multi" mode every head has (expand * d_model) / len(out_dims)
            inner channels and a dt_rank of its own.
    """

    def __init__(
        self, d_model: int, out_dims: Sequence[int], heads: str = "multi", d_state: int = 16, d_conv: int = 4,
        expand: int = 2, dt_rank: Union[int, str] = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
        dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True,
        bias: bool = False, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if heads not in HEAD_MODES:
            raise ValueError(f"MultiHeadMamba: heads must be one of {HEAD_MODES}, got {heads!r}")
        out_dims = tuple(out_dims)
        if not out_dims:
            raise ValueError("MultiHeadMamba: out_dims must name at least one output stream")
        check_positive_ints("MultiHeadMamba", d_model=d_model, d_state=d_state, d_conv=d_conv,
                            **{f"out_dims[{k}]": c for k, c in enumerate(out_dims)})
        self.d_model, self.d_state, self.out_dims, self.mode = d_model, d_state, out_dims, heads
        self.d_inner = int(expand * d_model)
        num_heads = len(out_dims) if heads == "multi" else 1
        if self.d_inner < num_heads or self.d_inner % num_heads:
            raise ValueError(
                f"MultiHeadMamba: expand * d_model = {self.d_inner} inner channels cannot be split evenly into "
                f"{num_heads} heads"
            )
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **factory)
        head_out = out_dims if heads == "multi" else (sum(out_dims),)
        ssm_options = dict(dt_init=dt_init, dt_scale=dt_scale, dt_min=dt_min, dt_max=dt_max,
                           dt_init_floor=dt_init_floor, **factory)
        self.heads = nn.ModuleList(
            SSMHead(self.d_inner // num_heads, c, d_state, resolve_dt_rank(dt_rank, d_model), bias=bias, **ssm_options)
            for c in head_out
        )

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, ...]:
        """hidden_states: (B, L, d_model) -> one (B, L, out_dims[k]) tensor per stream; causal in L."""
        a = self.scan_args(hidden_states)
        y = selective_scan(a.x, a.delta, a.A, a.B, a.C, a.D, z=a.z, delta_bias=a.delta_bias, delta_softplus=True)
        return self.read_out(y)

    def scan_args(self, hidden_states: Tensor) -> ScanArgs:
        """Everything before the selective scan: hidden_states (B, L, d_model) -> the scan's inputs."""
        check_sequence(hidden_states, self.d_model, "MultiHeadMamba")
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(causal_conv(self.conv1d, x))
        per_head = [ssm_inputs(head, xh) for head, xh in zip(self.heads, x.chunk(len(self.heads), dim=1))]
        deltas, As, Bs, Cs = zip(*per_head)
        delta, A = cat_channels(deltas), torch.cat(As, dim=0)  # (B, d_inner, L), (d_inner, N)
        B, C = stack_heads(Bs), stack_heads(Cs)  # (B, heads, N, L): head k drives its own channels
        D = torch.cat([at_least_float32(head.D) for head in self.heads])
        delta_bias = torch.cat([at_least_float32(head.dt_proj.bias) for head in self.heads])
        return ScanArgs(x, z, delta, A, B, C, D, delta_bias)

    def read_out(self, y: Tensor) -> tuple[Tensor, ...]:
        """Everything after the selective scan: y (B, d_inner, L) -> one (B, L, out_dims[k]) tensor per stream."""
        outs = [head.out_proj(yh.transpose(1, 2)) for head, yh in zip(self.heads, y.chunk(len(self.heads), dim=1))]
        if self.mode == "single":
            return tuple(outs[0].split(self.out_dims, dim=-1))
        return tuple(outs)


def cat_channels(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate (B, E_k, L) tensors along the channels into a (B, sum E_k, L) tensor laid out time-major in
    memory, (B, L, sum E_k), as the Mamba layers produce their tensors (the compiled scan reads that layout)."""
    return torch.cat([p.transpose(1, 2) for p in parts], dim=2).transpose(1, 2)


def stack_heads(parts: Sequence[Tensor]) -> Tensor:
    """(B, N, L) tensors (or (B, h, N, L) groups) -> (B, heads, N, L), time-major in memory (see
    :func:`cat_channels`)."""
    parts = [p.unsqueeze(1) if p.dim() == 3 else p for p in parts]
    return torch.cat([p.transpose(-1, -2) for p in parts], dim=1).transpose(-1, -2)


def grouped_forward(mambas: Sequence[MultiHeadMamba], inputs: Sequence[Tensor]) -> list[tuple[Tensor, ...]]:
    """``[m(x) for m, x in zip(mambas, inputs)]`` with ONE selective scan for all of them.

    Each module keeps its own weights; their scans are independent sequences, so their channels are stacked,
    ``(B, K * d_inner, L)``, and their B/C heads become the groups of one scan, ``(B, K * heads, N, L)`` (channel
    block k reads module k's heads only). The same numbers as the separate calls, in one larger call: the compiled
    kernel runs all K * d_inner channels in parallel, and the per-call overheads are paid once.

    Args:
        mambas: K modules of one configuration (d_inner, heads, d_state).
        inputs: K ``(B, L, d_model)`` sequences of one shape.
    Returns:
        one tuple of streams per module, as its ``forward`` gives.
    """
    if len(mambas) != len(inputs):
        raise ValueError(f"grouped_forward: {len(mambas)} modules but {len(inputs)} inputs")
    layouts = {(m.d_inner, len(m.heads), m.d_state) for m in mambas}
    if len(layouts) != 1 or len({tuple(x.shape) for x in inputs}) != 1:
        raise ValueError("grouped_forward: the modules must share d_inner, heads and d_state, and the inputs one shape")
    args = [m.scan_args(x) for m, x in zip(mambas, inputs)]
    per_field = list(zip(*args))  # one tuple of K tensors per ScanArgs field
    x, z, delta = (cat_channels(parts) for parts in per_field[:3])
    A, D, delta_bias = (torch.cat(per_field[i], dim=0) for i in (3, 6, 7))
    B, C = stack_heads(per_field[4]), stack_heads(per_field[5])  # (B, K * heads, N, L)
    y = selective_scan(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)  # (B, K * E, L)
    return [m.read_out(yk) for m, yk in zip(mambas, y.split(mambas[0].d_inner, dim=1))]
