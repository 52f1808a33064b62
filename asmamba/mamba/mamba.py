"""The Mamba block (Gu & Dao, 2023) with mamba-ssm's parameter names, shapes and initialisation.

A ``state_dict`` of :class:`Mamba` loads into ``mamba_ssm.Mamba`` with the same arguments and back:
``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``.

The pieces that read an SSM out of features (``x_proj -> (dt, B, C)``, ``dt_proj``, ``A_log``, ``D``) are built by
:func:`add_ssm_parameters` and used by :func:`ssm_inputs`, so :mod:`asmamba.mamba.multihead` shares them.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .selective_scan import selective_scan


def resolve_dt_rank(dt_rank: Union[int, str], d_model: int) -> int:
    """mamba-ssm's rule: ``"auto"`` means ceil(d_model / 16)."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


def init_dt_proj(
    dt_proj: nn.Linear, dt_init: str = "random", dt_scale: float = 1.0,
    dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
) -> None:
    """mamba-ssm's initialisation of the step-size projection (in place).

    The weight is uniform in +-(dt_rank^-0.5 * dt_scale) (``"random"``) or that constant (``"constant"``); the bias
    is the inverse softplus of step sizes drawn log-uniformly in [dt_min, dt_max] (floored at ``dt_init_floor``), so
    that softplus(bias) starts in that range.
    """
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    std = dt_proj.in_features ** -0.5 * dt_scale
    with torch.no_grad():
        if dt_init == "random":
            dt_proj.weight.uniform_(-std, std)
        elif dt_init == "constant":
            dt_proj.weight.fill_(std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        fraction = torch.rand(dt_proj.out_features, device=dt_proj.bias.device)
        dt = torch.exp(fraction * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
    dt_proj.bias._no_reinit = True  # mamba-ssm's marker: keep this bias when other biases are re-initialised


def add_ssm_parameters(
    module: nn.Module, d_inner: int, d_state: int, dt_rank: int, *,
    dt_init: str = "random", dt_scale: float = 1.0, dt_min: float = 0.001, dt_max: float = 0.1,
    dt_init_floor: float = 1e-4, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
) -> None:
    """Give ``module`` the SSM parameters of a Mamba block over ``d_inner`` channels (mamba-ssm's names and init).

    Adds ``x_proj`` (d_inner -> dt_rank + 2 d_state, no bias), ``dt_proj`` (dt_rank -> d_inner),
    ``A_log`` (d_inner, d_state) = log(1..d_state) per channel (S4D-real, float32) and ``D`` (d_inner,) = 1.
    """
    factory = {"device": device, "dtype": dtype}
    module.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **factory)
    module.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **factory)
    init_dt_proj(module.dt_proj, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
    states = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
    module.A_log = nn.Parameter(torch.log(states).repeat(d_inner, 1))
    module.A_log._no_weight_decay = True
    module.D = nn.Parameter(torch.ones(d_inner, device=device))
    module.D._no_weight_decay = True


def ssm_inputs(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Read the scan's inputs out of features with the parameters of :func:`add_ssm_parameters`.

    Args:
        module: holds ``x_proj``, ``dt_proj``, ``A_log``.
        x: (B, d_inner, L) the convolved, activated features.
    Returns:
        delta: (B, d_inner, L) before bias and softplus; A: (d_inner, N) = -exp(A_log), at least float32;
        B, C: (B, N, L).
    """
    d_state = module.A_log.shape[1]
    dt_rank = module.dt_proj.in_features
    x_dbl = module.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, module.dt_proj.weight).transpose(1, 2)  # the bias goes in as the scan's delta_bias
    return delta, -torch.exp(at_least_float32(module.A_log)), B.transpose(1, 2), C.transpose(1, 2)


def at_least_float32(t: Tensor) -> Tensor:
    """SSM parameters are used in float32 (mamba-ssm keeps A, D and the dt bias in float32), or float64 if they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def causal_conv(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """Depthwise causal convolution with ``conv``'s weights (as mamba-ssm's ``causal_conv1d``).

    x: (B, d, L) -> (B, d, L); output t sees inputs t - kernel_size + 1 .. t only. Computed as kernel_size shifted
    multiply-adds: ~1.4x faster on CPU than ``conv(x)[..., :L]`` (PyTorch's depthwise conv1d is a slow path there),
    and the same sums.
    """
    weight = conv.weight[:, 0]  # (d, K); output t = sum_k weight[:, k] * x[t - (K - 1 - k)]
    K, L = weight.shape[1], x.shape[-1]
    out = x * weight[:, K - 1, None]
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    for shift in range(1, min(K, L)):
        out[..., shift:].addcmul_(x[..., : L - shift], weight[:, K - 1 - shift, None])
    return out


def check_positive_ints(owner: str, **values: object) -> None:
    """Raise a ValueError naming the first argument that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def check_sequence(x: Tensor, d_model: int, name: str) -> None:
    """Raise if x is not a floating (B, L, d_model) tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} expects (batch, length, {d_model}) input, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} expects a sequence of length >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")


class Mamba(nn.Module):
    """Mamba block: gated selective SSM over a sequence, parameters as ``mamba_ssm.Mamba``.

    Args:
        d_model: input and output channels.
        d_state: SSM state size N.
        d_conv: causal depthwise convolution width.
        expand: inner channels d_inner = expand * d_model.
        dt_rank: rank of the step-size projection (``"auto"`` = ceil(d_model / 16)).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: step-size initialisation (see :func:`init_dt_proj`).
        conv_bias: bias in the convolution; bias: bias in ``in_proj`` and ``out_proj``.
    """

    def __init__(
        self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
        dt_rank: Union[int, str] = "auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
        dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
        device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_positive_ints("Mamba", d_model=d_model, d_state=d_state, d_conv=d_conv)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1:
            raise ValueError(f"Mamba: expand * d_model must be >= 1, got {expand} * {d_model}")
        self.dt_rank = resolve_dt_rank(dt_rank, d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **factory)
        add_ssm_parameters(self, self.d_inner, d_state, self.dt_rank, dt_init=dt_init, dt_scale=dt_scale,
                           dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """hidden_states: (B, L, d_model) -> (B, L, d_model); output t depends on inputs 0..t only."""
        check_sequence(hidden_states, self.d_model, "Mamba")
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(causal_conv(self.conv1d, x))
        delta, A, B, C = ssm_inputs(self, x)
        y = selective_scan(x, delta, A, B, C, at_least_float32(self.D), z=z,
                           delta_bias=at_least_float32(self.dt_proj.bias), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
