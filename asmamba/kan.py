"""Kolmogorov-Arnold network (KAN) layers for the flow predictor, and the MLP they are ablated against.

A KAN layer learns a 1-D function per (input, output) pair as a weighted sum of fixed basis functions
on a uniform grid, plus a "base" branch through a fixed activation (as in efficient-kan / FastKAN):

    y = W_base @ act(x) + b + W_spline @ vec(phi(x)),   phi(x)[i, k] = phi_k(x_i)

The whole spline part is one matrix product over the ``in_features * num_basis`` basis values.

Two bases:

- ``"rbf"`` (FastKAN): Gaussian bumps ``exp(-((x - c_k) / h) ** 2)`` centred on ``num_basis`` uniform
  points ``c_k`` spanning ``grid_range``, with ``h`` the spacing of the centres.
- ``"bspline"``: B-splines of degree ``spline_order`` by the Cox-de Boor recursion on a uniform grid of
  ``num_basis - spline_order`` intervals over ``grid_range``, extended by ``spline_order`` knots on
  each side, so the ``num_basis`` splines sum to one everywhere inside ``grid_range`` (the closed
  interval for ``spline_order >= 1``; ``[low, high)`` for the piecewise-constant order 0) and vanish
  further than ``spline_order`` intervals outside it.

:class:`KAN` and :class:`MLP` share one call convention: built from a list of widths, mapping
``(..., widths[0])`` to ``(..., widths[-1])``, so a config switch ``flow_predictor: kan|mlp`` can build
either through :func:`build_network`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

BASIS_KINDS: tuple[str, ...] = ("rbf", "bspline")
NORM_PLACEMENTS: tuple[str, ...] = ("all", "between", "none")
NETWORK_KINDS: tuple[str, ...] = ("kan", "mlp")

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
ActivationSpec = Union[str, Callable[[], nn.Module]]


def make_activation(spec: ActivationSpec) -> nn.Module:
    """An activation module from a name (``"silu"``, ``"gelu"``, ``"relu"``, ``"leaky_relu"``, ``"tanh"``,
    ``"identity"``), a factory such as ``nn.SiLU``, or a module.

    Raises:
        ValueError: unknown name.
        TypeError: the factory does not build an ``nn.Module``.
    """
    if isinstance(spec, str):
        if spec not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {spec!r}; expected one of {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[spec]()
    module = spec if isinstance(spec, nn.Module) else spec() if callable(spec) else spec
    if not isinstance(module, nn.Module):
        raise TypeError(f"activation must be a name or an nn.Module factory, got {spec!r}")
    return module


def _check_widths(widths: Sequence[int]) -> list[int]:
    widths = list(widths)
    if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be a list of >= 2 positive ints (input, hidden..., output), got {widths}")
    return widths


def _check_last_dim(x: torch.Tensor, features: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != features:
        raise ValueError(f"input must be (..., {features}), got shape {tuple(x.shape)}")


class KANLinear(nn.Module):
    """One KAN layer: ``(..., in_features) -> (..., out_features)``.

    Args:
        in_features: input width.
        out_features: output width.
        num_basis: basis functions per input.
        grid_range: ``(low, high)`` interval covered by the grid; inputs should mostly fall inside it
            (:class:`KAN` puts a LayerNorm in front of its layers for this).
        basis: ``"rbf"`` or ``"bspline"``.
        spline_order: B-spline degree (3 = cubic); ignored by ``"rbf"``.
        base_activation: activation of the base branch (name or factory); ``None`` drops the branch.
        bias: add a learned bias.
        spline_init_scale: std of the spline weights at init, times ``1/sqrt(in_features)`` (small, so
            the layer starts close to its base branch).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_basis: int = 8,
        grid_range: tuple[float, float] = (-2.0, 2.0),
        basis: str = "rbf",
        spline_order: int = 3,
        base_activation: ActivationSpec | None = "silu",
        bias: bool = True,
        spline_init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        _check_widths([in_features, out_features])
        if basis not in BASIS_KINDS:
            raise ValueError(f"unknown basis {basis!r}; expected one of {BASIS_KINDS}")
        low, high = (float(v) for v in grid_range)
        if not low < high:
            raise ValueError(f"grid_range must be (low, high) with low < high, got {tuple(grid_range)}")
        if basis == "rbf" and num_basis < 2:
            raise ValueError(f"the rbf basis needs num_basis >= 2, got {num_basis}")
        if basis == "bspline":
            if spline_order < 0:
                raise ValueError(f"spline_order must be >= 0, got {spline_order}")
            if num_basis < spline_order + 1:
                raise ValueError(
                    f"a B-spline basis of order {spline_order} needs num_basis >= {spline_order + 1}, got {num_basis}"
                )
        self.in_features, self.out_features = in_features, out_features
        self.num_basis, self.basis, self.spline_order = num_basis, basis, spline_order
        self.grid_range = (low, high)

        # The grid (rbf centres, or B-spline knots extended by spline_order on each side) is rebuilt in the
        # input's dtype at each call rather than stored, so that half / double inputs get exact knots.
        if basis == "rbf":
            self.grid_spacing = (high - low) / (num_basis - 1)
            self._grid_steps = (0, num_basis)
        else:
            self.grid_spacing = (high - low) / (num_basis - spline_order)
            self._grid_steps = (-spline_order, num_basis + 1)  # num_basis + spline_order + 1 knots

        self.base_activation = None if base_activation is None else make_activation(base_activation)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features)) if base_activation is not None else None
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, num_basis))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.spline_init_scale = spline_init_scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        if self.base_weight is not None:
            nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))  # nn.Linear's default
        nn.init.normal_(self.spline_weight, std=self.spline_init_scale * bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        order = f", spline_order={self.spline_order}" if self.basis == "bspline" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, basis={self.basis!r}, "
            f"num_basis={self.num_basis}{order}, grid_range={self.grid_range}"
        )

    def grid(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """The rbf centres ``(num_basis,)`` or the B-spline knots ``(num_basis + spline_order + 1,)``."""
        steps = torch.arange(*self._grid_steps, dtype=dtype, device=device)
        return self.grid_range[0] + steps * self.grid_spacing

    def basis_values(self, x: torch.Tensor) -> torch.Tensor:
        """Every basis function at every input.

        Args:
            x: ``(..., in_features)``.

        Returns:
            phi: ``(..., in_features, num_basis)``.
        """
        if self.basis == "rbf":
            # exp(-((x - c_k) / h)^2), with x and the centres scaled by 1/h first (fewer passes over phi)
            scaled_grid = self.grid(x.dtype, x.device) / self.grid_spacing
            offsets = (x / self.grid_spacing).unsqueeze(-1) - scaled_grid
            return torch.exp(offsets.square().neg_())
        return self._bspline_values(x)

    def _bspline_values(self, x: torch.Tensor) -> torch.Tensor:
        """Cox-de Boor on the uniform extended grid, evaluated only where it is non-zero.

        On knot interval ``j`` (``t_j <= x < t_{j+1}``) only the ``p + 1`` splines ``B_{j-p} .. B_j`` are
        non-zero (``p = spline_order``). With ``f`` the position of x inside the interval in units of the
        knot spacing, the recursion on those splines from degree ``d - 1`` to ``d`` reads
        ``B'[m] = ((f + d - m) B[m - 1] + (m + 1 - f) B[m]) / d``, with ``B[-1] = B[d] = 0`` (the
        divisions are applied once at the end as ``1 / p!``). The values are then scattered into the
        ``num_basis`` slots; slots beyond the ends and inputs outside the extended grid get zeros.
        """
        order, num_basis = self.spline_order, self.num_basis
        first_knot = self.grid_range[0] - order * self.grid_spacing
        position = (x - first_knot) / self.grid_spacing  # (..., in), in knot intervals from the first knot
        interval = torch.floor(position)
        frac = position - interval
        values = [torch.ones_like(frac)]  # B[m], each (..., in)
        for degree in range(1, order + 1):
            raised = []
            for m in range(degree + 1):
                terms = []
                if m > 0:  # from B[m - 1]
                    terms.append(values[m - 1] * (frac + (degree - m)))
                if m < degree:  # from B[m]
                    terms.append(values[m] * ((m + 1) - frac))
                raised.append(terms[0] if len(terms) == 1 else terms[0] + terms[1])
            values = raised
        inside = ((interval >= 0) & (interval < num_basis + order)).to(x.dtype) / math.factorial(order)
        slots = interval.long().unsqueeze(-1) + torch.arange(-order, 1, device=x.device)  # of B_{j-p+m}
        valid = (slots >= 0) & (slots < num_basis)
        weights = torch.stack(values, dim=-1) * inside.unsqueeze(-1) * valid.to(x.dtype)
        # out-of-range slots are clamped onto a valid one with a zero value, hence scatter_add
        phi = x.new_zeros(*x.shape, num_basis)
        return phi.scatter_add(-1, slots.clamp(0, num_basis - 1), weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        _check_last_dim(x, self.in_features)
        phi = self.basis_values(x).flatten(-2)  # (..., in_features * num_basis)
        out = F.linear(phi, self.spline_weight.flatten(1), self.bias)
        if self.base_weight is not None:
            out = out + F.linear(self.base_activation(x), self.base_weight)
        return out


class KAN(nn.Module):
    """A stack of :class:`KANLinear` layers, ``(..., widths[0]) -> (..., widths[-1])``.

    Args:
        widths: ``[input, hidden..., output]``.
        norm: where a LayerNorm goes: ``"all"`` (default, FastKAN style) in front of every layer, so each
            layer's inputs land inside its grid; ``"between"`` only in front of hidden layers (the first
            layer reads raw inputs); ``"none"``.
        **kwargs: passed to every :class:`KANLinear` (num_basis, grid_range, basis, spline_order, ...).
    """

    def __init__(self, widths: Sequence[int], norm: str = "all", **kwargs) -> None:
        super().__init__()
        widths = _check_widths(widths)
        if norm not in NORM_PLACEMENTS:
            raise ValueError(f"unknown norm placement {norm!r}; expected one of {NORM_PLACEMENTS}")
        self.widths, self.norm = widths, norm
        self.norms = nn.ModuleList(
            nn.LayerNorm(w) if norm == "all" or (norm == "between" and i > 0) else nn.Identity()
            for i, w in enumerate(widths[:-1])
        )
        self.layers = nn.ModuleList(KANLinear(w_in, w_out, **kwargs) for w_in, w_out in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., widths[0]) -> (..., widths[-1])``."""
        _check_last_dim(x, self.widths[0])
        for norm, layer in zip(self.norms, self.layers):
            x = layer(norm(x))
        return x


class MLP(nn.Module):
    """Linear layers with an activation between them (none after the last), the KAN's ablation.

    ASpanFormer's flow decoder is ``MLP([d, d // 2, 4], activation="relu", bias=False)``.

    Args:
        widths: ``[input, hidden..., output]``.
        activation: name or factory of the activation between layers.
        bias: whether the linear layers have biases.
    """

    def __init__(self, widths: Sequence[int], activation: ActivationSpec = "relu", bias: bool = True) -> None:
        super().__init__()
        widths = _check_widths(widths)
        self.widths = widths
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(w_in, w_out, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., widths[0]) -> (..., widths[-1])``."""
        _check_last_dim(x, self.widths[0])
        return self.net(x)


def build_network(kind: str, widths: Sequence[int], **kwargs) -> nn.Module:
    """``KAN(widths, **kwargs)`` for ``kind="kan"``, ``MLP(widths, **kwargs)`` for ``kind="mlp"``."""
    if kind == "kan":
        return KAN(widths, **kwargs)
    if kind == "mlp":
        return MLP(widths, **kwargs)
    raise ValueError(f"unknown network kind {kind!r}; expected one of {NETWORK_KINDS}")
