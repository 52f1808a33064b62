"""Mamba and MultiHeadMamba: mamba-ssm's parameter layout, a hand-written forward, causality, head independence."""

from __future__ import annotations

import math

import pytest
import torch

from asmamba.mamba.mamba import Mamba
from asmamba.mamba.multihead import MultiHeadMamba



def manual_mamba(x, in_w, in_b, conv_w, conv_b, xproj_w, dt_w, dt_b, A_log, D, out_w, out_b):
    """Mamba-1 forward written out step by step (mamba-ssm's Mamba.forward without fused kernels).

    x: (B, L, d_model); in_w: (2E, d_model); conv_w: (E, 1, K); xproj_w: (R + 2N, E); dt_w: (E, R);
    A_log: (E, N); out_w: (out, E). Returns (B, L, out).
    """
    batch, length, _ = x.shape
    E, N = A_log.shape
    R = dt_w.shape[1]
    xz = x @ in_w.T + (0 if in_b is None else in_b)
    xs, z = xz[..., :E], xz[..., E:]
    K = conv_w.shape[-1]
    conv = torch.zeros_like(xs)
    for t in range(length):  # causal depthwise conv: taps on steps t-K+1..t, zeros before the start
        for tap in range(K):
            src = t - (K - 1) + tap
            if src >= 0:
                conv[:, t] += conv_w[:, 0, tap] * xs[:, src]
    conv = conv + (0 if conv_b is None else conv_b)
    xc = conv * torch.sigmoid(conv)
    proj = xc @ xproj_w.T
    dt, Bm, Cm = proj[..., :R], proj[..., R:R + N], proj[..., R + N:]
    delta = torch.nn.functional.softplus(dt @ dt_w.T + dt_b)  # (B, L, E)
    A = -torch.exp(A_log)
    h = torch.zeros(batch, E, N, dtype=x.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * xc[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + D * xc[:, t])
    y = torch.stack(ys, dim=1) * z * torch.sigmoid(z)
    return y @ out_w.T + (0 if out_b is None else out_b)


def mamba_ssm_state_dict_shapes(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False):
    """Names and shapes of mamba_ssm.Mamba's state_dict (mamba_ssm/modules/mamba_simple.py, Mamba.__init__)."""
    E = expand * d_model
    R = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    shapes = {
        "A_log": (E, d_state), "D": (E,),
        "in_proj.weight": (2 * E, d_model),
        "conv1d.weight": (E, 1, d_conv),
        "x_proj.weight": (R + 2 * d_state, E),
        "dt_proj.weight": (E, R), "dt_proj.bias": (E,),
        "out_proj.weight": (d_model, E),
    }
    if conv_bias:
        shapes["conv1d.bias"] = (E,)
    if bias:
        shapes["in_proj.bias"], shapes["out_proj.bias"] = (2 * E,), (d_model,)
    return shapes


@pytest.mark.parametrize(
    "kwargs", [{}, {"bias": True}, {"conv_bias": False, "d_state": 8, "d_conv": 3}, {"dt_rank": 5, "expand": 1}]
)
def test_mamba_state_dict_matches_mamba_ssm(kwargs):
    model = Mamba(40, **kwargs)
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert got == mamba_ssm_state_dict_shapes(40, **kwargs)


def test_mamba_initialisation_recipe():
    model = Mamba(32, d_state=16, dt_min=0.002, dt_max=0.05, dt_scale=2.0)
    R = math.ceil(32 / 16)
    torch.testing.assert_close(model.A_log.data, torch.log(torch.arange(1.0, 17.0)).expand(64, 16))
    torch.testing.assert_close(model.D.data, torch.ones(64))
    dt = torch.nn.functional.softplus(model.dt_proj.bias.detach())
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert model.dt_proj.weight.abs().max() <= 2.0 * R ** -0.5
    assert model.A_log._no_weight_decay and model.D._no_weight_decay and model.dt_proj.bias._no_reinit
    constant = Mamba(32, dt_init="constant")
    assert torch.all(constant.dt_proj.weight == R ** -0.5)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_mamba_forward_matches_manual_computation():
    model = Mamba(8, d_state=4, d_conv=3, bias=True).double()
    _randomise(model)
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    expected = manual_mamba(x, model.in_proj.weight, model.in_proj.bias, model.conv1d.weight, model.conv1d.bias,
                            model.x_proj.weight, model.dt_proj.weight, model.dt_proj.bias, model.A_log, model.D,
                            model.out_proj.weight, model.out_proj.bias)
    torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)


def test_mamba_is_causal_and_differentiable():
    model = Mamba(16, d_state=8)
    x = torch.randn(2, 30, 16)
    out = model(x)
    assert out.shape == (2, 30, 16)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 18, 16)
    out2 = model(x2)
    torch.testing.assert_close(out2[:, :12], out[:, :12], atol=0, rtol=0)
    assert (out2[:, 12:] - out[:, 12:]).abs().max() > 1e-3
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("bad", [torch.randn(2, 5), torch.randn(2, 5, 7), torch.randn(2, 0, 16),
                                 torch.ones(2, 5, 16, dtype=torch.long)])
def test_mamba_rejects_bad_input(bad):
    with pytest.raises((ValueError, TypeError)):
        Mamba(16)(bad)


# ----------------------------------------------------------------------------------------------------------------
# MultiHeadMamba
# ----------------------------------------------------------------------------------------------------------------


def manual_head(model: MultiHeadMamba, x: torch.Tensor, head: int) -> torch.Tensor:
    """Output of one head computed from its own slices: in_proj rows and conv channels of its inner channels."""
    E, H = model.d_inner, len(model.heads)
    rows = torch.arange(head * E // H, (head + 1) * E // H)
    piece = model.heads[head]
    return manual_mamba(
        x, model.in_proj.weight[torch.cat([rows, rows + E])], None, model.conv1d.weight[rows], model.conv1d.bias[rows],
        piece.x_proj.weight, piece.dt_proj.weight, piece.dt_proj.bias, piece.A_log, piece.D, piece.out_proj.weight,
        None,
    )


def test_multihead_heads_are_separate_mambas():
    model = MultiHeadMamba(8, (6, 3), heads="multi", d_state=4, d_conv=3).double()
    _randomise(model, seed=1)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    match, geom = model(x)
    assert match.shape == (2, 9, 6) and geom.shape == (2, 9, 3)
    torch.testing.assert_close(match, manual_head(model, x, 0), atol=1e-10, rtol=0)
    torch.testing.assert_close(geom, manual_head(model, x, 1), atol=1e-10, rtol=0)


def test_multihead_perturbing_one_head_leaves_the_other_stream():
    model = MultiHeadMamba(8, (6, 3), heads="multi", d_state=4)
    x = torch.randn(2, 9, 8)
    match, geom = model(x)
    E = model.d_inner
    with torch.no_grad():
        for p in model.heads[1].parameters():
            p.add_(torch.randn_like(p))
        rows = torch.arange(E // 2, E)
        model.in_proj.weight[rows] += 1.0  # head 1's x rows
        model.in_proj.weight[rows + E] += 1.0  # and its gate rows
        model.conv1d.weight[rows] += 1.0
    match2, geom2 = model(x)
    torch.testing.assert_close(match2, match, atol=0, rtol=0)
    assert (geom2 - geom).abs().max() > 1e-3


def test_multihead_single_mode_reads_both_streams_from_one_ssm():
    model = MultiHeadMamba(8, (6, 3), heads="single", d_state=4, d_conv=3).double()
    _randomise(model, seed=2)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    match, geom = model(x)
    full = manual_head(model, x, 0)  # one head over all inner channels, read out to 6 + 3
    torch.testing.assert_close(match, full[..., :6], atol=1e-10, rtol=0)
    torch.testing.assert_close(geom, full[..., 6:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("heads", ["multi", "single"])
def test_multihead_gradients_reach_every_parameter(heads):
    model = MultiHeadMamba(16, (16, 8), heads=heads, d_state=8)
    outs = model(torch.randn(2, 13, 16))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_multihead_parameter_counts():
    d, E, N, R, K = 128, 256, 16, 8, 4
    shared = 2 * d * E + E * (K + 1) + E * (R + 2 * N) + E * (R + 1) + E * N + E
    single = MultiHeadMamba(d, (128, 32), heads="single")
    multi = MultiHeadMamba(d, (128, 32), heads="multi")
    assert sum(p.numel() for p in single.parameters()) == shared + E * 160 == 124_672
    assert sum(p.numel() for p in multi.parameters()) == shared + (E // 2) * 160 == 104_192


@pytest.mark.parametrize(
    "kwargs,match",
    [({"heads": "double"}, "heads must"), ({"out_dims": ()}, "out_dims"), ({"out_dims": (4, 0)}, "out_dims"),
     ({"out_dims": (4, 4, 4), "expand": 1, "d_model": 8}, "split evenly")],
)
def test_multihead_rejects_bad_arguments(kwargs, match):
    args = {"d_model": 16, "out_dims": (8, 4), "heads": "multi"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MultiHeadMamba(**args)


def test_multihead_rejects_bad_input():
    with pytest.raises(ValueError, match="MultiHeadMamba"):
        MultiHeadMamba(16, (8, 4))(torch.randn(2, 5, 12))


@pytest.mark.parametrize("layout", ["channel_major", "time_major_view"])
@pytest.mark.parametrize("kernel,length,bias", [(4, 50, True), (4, 2, False), (1, 5, True), (3, 3, True)])
def test_causal_conv_equals_torch_conv1d(kernel, length, bias, layout):
    """The shifted multiply-add convolution against PyTorch's padded depthwise conv1d: values and gradients, for a
    contiguous (B, d, L) input and for the strided time-major view ``in_proj`` gives (half of (B, L, 2d))."""
    from asmamba.mamba.mamba import causal_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel, groups=6, padding=kernel - 1, bias=bias).double()
    if layout == "channel_major":
        x = torch.randn(3, 6, length, dtype=torch.float64, requires_grad=True)
        leaf = x
    else:
        leaf = torch.randn(3, length, 12, dtype=torch.float64, requires_grad=True)
        x = leaf.transpose(1, 2)[:, :6]
    out = causal_conv(conv, x)
    assert out.shape == x.shape
    ref = conv(x)[..., :length]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), [leaf, *conv.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [leaf, *conv.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)
