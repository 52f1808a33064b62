"""The correlation flow prior and the group spread of the local span against analytic truths."""

from __future__ import annotations

import torch

from asmamba.config import load_config
from asmamba.model.flow import CorrelationFlowPrior, FlowPredictor
from asmamba.model.local_path import LocalPath


def _identity_prior(C: int, temperature: float) -> CorrelationFlowPrior:
    prior = CorrelationFlowPrior(C, C, pool=4, radius=2, temperature=temperature)
    with torch.no_grad():
        for lin in (prior.query, prior.key):
            lin.weight.copy_(torch.eye(C))
            lin.bias.zero_()
    return prior


def test_prior_finds_an_integer_shift_exactly():
    torch.manual_seed(0)
    C, h, w, dx, dy = 32, 12, 16, 3, -2
    # spatially smooth features, as real feature maps are (neighbouring cells alike, far cells different)
    noise = torch.randn(1, C, h + 8, w + 8)
    kernel = torch.exp(-torch.arange(-3, 4).float() ** 2 / 2.0)
    kernel = (kernel[:, None] * kernel[None]) / kernel.sum() ** 2
    smooth = torch.nn.functional.conv2d(noise, kernel.expand(C, 1, 7, 7).contiguous(), padding=3, groups=C)
    big = torch.nn.functional.normalize(smooth, dim=1) * 3
    f1 = big[..., 4 : 4 + h, 4 : 4 + w]
    f0 = big[..., 4 + dy : 4 + dy + h, 4 + dx : 4 + dx + w]  # f0 cell (x, y) == f1 cell (x + dx, y + dy)
    prior = _identity_prior(C, temperature=0.02)
    with torch.no_grad():
        mean, var = prior(f0, f1)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    truth = torch.stack([xs + dx, ys + dy], -1).float()
    inside = (truth[..., 0] >= 0) & (truth[..., 0] < w) & (truth[..., 1] >= 0) & (truth[..., 1] < h)
    err = (mean[0] - truth).abs().amax(-1)
    # the global stage sees averages of 4x4 cells, so it may miss by more than the local radius near the borders;
    # away from them the local stage lands on the true cell
    interior = inside & (truth[..., 0] >= 4) & (truth[..., 0] < w - 4) & (truth[..., 1] >= 4) & (truth[..., 1] < h - 4)
    assert interior.sum() > 10
    assert (err[interior] < 1e-3).float().mean() > 0.9
    sure = var[0][interior & (err < 1e-3)]
    assert (sure >= 1 / 12 - 1e-6).all() and sure.median() < 0.5  # mostly confident where it is right


def test_prior_of_featureless_images_is_the_uniform_variance():
    C, h, w = 8, 8, 12
    prior = _identity_prior(C, temperature=0.1)
    with torch.no_grad():
        mean, var = prior(torch.zeros(1, C, h, w), torch.zeros(1, C, h, w))
    # global: uniform over the 2 x 3 pooled cells, centres x in {1.5, 5.5, 9.5}, y in {1.5, 5.5}
    xs, ys = torch.tensor([1.5, 5.5, 9.5]), torch.tensor([1.5, 5.5])
    var_global = torch.tensor([xs.var(unbiased=False), ys.var(unbiased=False)])
    # local: uniform over the 5 x 5 cells around round(mean) = (6, 4) (all inside): variance 2 per axis
    assert torch.allclose(mean[0, 3, 5], torch.tensor([6.0, 4.0]), atol=1e-5)
    assert torch.allclose(var[0, 3, 5], var_global + 2.0 + 1 / 12, atol=1e-4)


def test_predictor_with_prior_is_prior_plus_residual():
    torch.manual_seed(1)
    cfg = load_config("tiny", ["blocks.flow_prior=correlation"])
    pred = FlowPredictor(cfg).eval()
    m0, m1 = torch.randn(1, cfg.dims.c_match, 6, 8), torch.randn(1, cfg.dims.c_match, 6, 8)
    g0 = torch.randn(1, cfg.dims.c_geom, 6, 8)
    with torch.no_grad():
        phi = pred(m0, g0, m1)
        mean, var = pred.prior(m0, m1)
        res = pred.net(torch.cat([m0, g0], 1).permute(0, 2, 3, 1))
    assert torch.allclose(phi[..., :2], mean + res[..., :2], atol=1e-5)
    lo, hi = cfg.blocks.logvar_range
    assert torch.allclose(phi[..., 2:], (var.log() + res[..., 2:]).clamp(lo, hi), atol=1e-5)


def test_group_spread_is_the_mixture_standard_deviation():
    cfg = load_config("tiny", ["blocks.local_group=2", "blocks.local_group_spread=true", "blocks.local_span=2",
                               "blocks.local_radius_sigmas=1.0", "blocks.local_min_spacing=0.0"])
    lp = LocalPath(cfg)
    # one 2x2 group: means x = 0, 2, 4, 6 (var 5), sigma_x = 1 each (mean sigma^2 = 1): mixture std sqrt(6)
    flow = torch.zeros(1, 2, 2, 4)
    flow[0, :, :, 0] = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    flow[0, :, :, 1] = 1.0
    flow[..., 2:] = 0.0  # log-variance 0: sigma 1
    captured = {}
    original = lp._one_direction.__func__

    import asmamba.model.local_path as lp_mod

    def spy(offsets_sigma, k, radius, spacing):
        captured["spread"] = offsets_sigma.clone()
        return real(offsets_sigma, k, radius, spacing)

    real = lp_mod.span_offsets
    lp_mod.span_offsets = spy
    try:
        d = cfg.blocks.local_dim
        original(lp, torch.zeros(1, d, 2, 2), torch.zeros(1, d, 2, 2), flow)
    finally:
        lp_mod.span_offsets = real
    spread = captured["spread"][0, 0]
    assert abs(float(spread[0]) - 6**0.5) < 1e-4  # x: sqrt(1 + 5)
    assert abs(float(spread[1]) - 1.0) < 1e-4  # y: all means equal, sigma 1
