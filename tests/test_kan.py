"""KAN layer: against a naive per-element evaluation, B-spline identities, gradients, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from asmamba.kan import KAN, MLP, KANLinear, build_network


def silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


def naive_rbf(x: float, k: int, num_basis: int, low: float, high: float) -> float:
    spacing = (high - low) / (num_basis - 1)
    centre = low + k * spacing
    return math.exp(-(((x - centre) / spacing) ** 2))


def naive_bspline(x: float, j: int, degree: int, knots: list[float]) -> float:
    """Cox-de Boor recursion, written out: B_{j,0} = [t_j <= x < t_{j+1}], then raise the degree."""
    if degree == 0:
        return 1.0 if knots[j] <= x < knots[j + 1] else 0.0
    left = (x - knots[j]) / (knots[j + degree] - knots[j]) * naive_bspline(x, j, degree - 1, knots)
    right = (knots[j + degree + 1] - x) / (knots[j + degree + 1] - knots[j + 1]) * naive_bspline(
        x, j + 1, degree - 1, knots
    )
    return left + right


def extended_knots(num_basis: int, order: int, low: float, high: float) -> list[float]:
    intervals = num_basis - order
    spacing = (high - low) / intervals
    return [low + (i - order) * spacing for i in range(intervals + 2 * order + 1)]


def naive_layer_output(layer: KANLinear, x: torch.Tensor) -> torch.Tensor:
    """y[n, o] = bias[o] + sum_i base[o, i] silu(x[n, i]) + sum_i sum_k spline[o, i, k] phi_k(x[n, i])."""
    low, high = layer.grid_range
    knots = extended_knots(layer.num_basis, layer.spline_order, low, high)
    base, spline, bias = layer.base_weight.tolist(), layer.spline_weight.tolist(), layer.bias.tolist()
    out = torch.zeros(x.shape[0], layer.out_features, dtype=torch.float64)
    for n, sample in enumerate(x.tolist()):
        for o in range(layer.out_features):
            total = bias[o]
            for i, value in enumerate(sample):
                total += base[o][i] * silu(value)
                for k in range(layer.num_basis):
                    if layer.basis == "rbf":
                        phi = naive_rbf(value, k, layer.num_basis, low, high)
                    else:
                        phi = naive_bspline(value, k, layer.spline_order, knots)
                    total += spline[o][i][k] * phi
            out[n, o] = total
    return out


@pytest.mark.parametrize(
    "basis,num_basis,order,grid_range",
    [("rbf", 5, 3, (-2.0, 2.0)), ("rbf", 8, 3, (-1.0, 3.0)), ("bspline", 8, 3, (-2.0, 2.0)),
     ("bspline", 6, 2, (-1.0, 1.5)), ("bspline", 4, 1, (0.0, 1.0)), ("bspline", 3, 0, (-1.0, 1.0))],
)
def test_kan_linear_matches_naive_evaluation(basis: str, num_basis: int, order: int, grid_range) -> None:
    torch.manual_seed(0)
    layer = KANLinear(3, 2, num_basis=num_basis, grid_range=grid_range, basis=basis, spline_order=order).double()
    with torch.no_grad():
        layer.spline_weight.normal_()  # make the spline part as large as the base part
    low, high = grid_range
    x = low - 0.5 + (high - low + 1.0) * torch.rand(7, 3, dtype=torch.float64)  # inside and just outside the grid
    assert torch.allclose(layer(x), naive_layer_output(layer, x), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("num_basis,order", [(8, 3), (5, 2), (4, 1), (3, 0), (12, 3)])
def test_bspline_partition_of_unity_inside_grid(num_basis: int, order: int) -> None:
    layer = KANLinear(2, 1, num_basis=num_basis, basis="bspline", spline_order=order, grid_range=(-2.0, 2.0)).double()
    x = torch.linspace(-2.0, 2.0, 401, dtype=torch.float64).view(-1, 1).expand(-1, 2)
    if order == 0:  # degree-0 splines are indicators of half-open intervals: unity on [low, high)
        x = x[:-1]
    sums = layer.basis_values(x).sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-12)


def test_cubic_bspline_values_at_a_knot() -> None:
    # uniform cubic B-splines at a knot: 1/6, 2/3, 1/6 on three consecutive splines, 0 elsewhere
    layer = KANLinear(1, 1, num_basis=8, basis="bspline", spline_order=3, grid_range=(-2.0, 2.0)).double()
    knot = -2.0 + 2 * (4.0 / 5)  # third interior knot of 5 intervals
    phi = layer.basis_values(torch.tensor([[knot]], dtype=torch.float64))[0, 0]
    nonzero = phi.abs() > 1e-12
    assert nonzero.sum() == 3
    assert torch.allclose(phi[nonzero], torch.tensor([1 / 6, 2 / 3, 1 / 6], dtype=torch.float64))


def test_bspline_vanishes_far_outside_grid() -> None:
    layer = KANLinear(1, 1, num_basis=8, basis="bspline", spline_order=3, grid_range=(-2.0, 2.0))
    far = torch.tensor([[-5.0], [5.0]])  # more than spline_order intervals (0.8 each) outside
    assert torch.count_nonzero(layer.basis_values(far)) == 0


@pytest.mark.parametrize("basis", ["rbf", "bspline"])
def test_gradients_flow(basis: str) -> None:
    net = KAN([5, 6, 4], basis=basis)
    x = torch.randn(10, 5, requires_grad=True)
    net(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("basis,order", [("rbf", 3), ("bspline", 3), ("bspline", 2)])
def test_gradients_match_finite_differences(basis: str, order: int) -> None:
    torch.manual_seed(0)
    layer = KANLinear(3, 2, num_basis=6, basis=basis, spline_order=order).double()
    x = (3 * torch.rand(4, 3, dtype=torch.float64) - 1.5).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("network", [lambda: KAN([6, 8, 4]), lambda: KAN([6, 4], basis="bspline", norm="none"),
                                     lambda: MLP([6, 8, 4]), lambda: KANLinear(6, 4)])
def test_shapes_2d_and_4d(network) -> None:
    net = network()
    x4 = torch.randn(2, 3, 5, 6)
    y4 = net(x4)
    y2 = net(x4.reshape(-1, 6))
    assert y4.shape == (2, 3, 5, 4) and y2.shape == (30, 4)
    assert torch.allclose(y4.reshape(-1, 4), y2, atol=1e-6)


def test_kan_norm_placement() -> None:
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in KAN([4, 5, 6, 2], norm="all").modules()) == 3
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in KAN([4, 5, 6, 2], norm="between").modules()) == 2
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in KAN([4, 5, 6, 2], norm="none").modules()) == 0


def test_mlp_is_aspanformer_sized_decoder() -> None:
    mlp = MLP([160, 80, 4], activation="relu", bias=False)
    assert sum(p.numel() for p in mlp.parameters()) == 160 * 80 + 80 * 4
    assert isinstance(build_network("mlp", [4, 2]), MLP) and isinstance(build_network("kan", [4, 2]), KAN)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown basis"):
        KANLinear(2, 2, basis="fourier")
    with pytest.raises(ValueError, match="num_basis"):
        KANLinear(2, 2, basis="bspline", num_basis=3, spline_order=3)
    with pytest.raises(ValueError, match="grid_range"):
        KANLinear(2, 2, grid_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="widths"):
        KAN([4])
    with pytest.raises(ValueError, match="norm"):
        KAN([4, 2], norm="batch")
    with pytest.raises(ValueError, match="activation"):
        MLP([4, 3, 2], activation="swish3")
    with pytest.raises(ValueError, match="network kind"):
        build_network("transformer", [4, 2])
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        KAN([4, 2])(torch.zeros(3, 5))
