"""Photometric jitter of training views (asmamba/training/data/photometric.py) and its use on SfM-layout pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asmamba.training.data import build_dataset
from asmamba.training.data.megadepth import MegaDepthScene
from asmamba.training.data.photometric import (
    default_conf,
    photometric_conf,
    photometric_jitter,
    shading_field,
)
from asmamba.training.data.synthetic import generate_scene

OFF = {"brightness": 0.0, "contrast": (1.0, 1.0), "gamma": (1.0, 1.0), "noise_std": 0.0, "blur_prob": 0.0,
       "blur_sigma": (0.5, 0.5)}


def test_conf_from_option_and_clear_errors():
    assert photometric_conf(None, "x") is None and photometric_conf(False, "x") is None
    assert photometric_conf(True, "x") == default_conf
    conf = photometric_conf({"gamma": [0.5, 2.0], "shading": 0.3}, "x")
    assert conf["gamma"] == (0.5, 2.0) and conf["shading"] == 0.3 and conf["contrast"] == default_conf["contrast"]
    with pytest.raises(TypeError, match=r"scene X.*unknown photometric options \['gama'\]"):
        photometric_conf({"gama": [0.5, 2.0]}, "scene X")
    with pytest.raises(ValueError, match="photometric.contrast must be a range"):
        photometric_conf({"contrast": [1.5, 0.5]}, "x")
    with pytest.raises(ValueError, match="shading must be >= 0"):
        photometric_conf({"shading": -0.1}, "x")
    with pytest.raises(ValueError, match="positive"):
        photometric_conf({"gamma": [0.0, 1.0]}, "x")
    with pytest.raises(TypeError, match="photometric must be"):
        photometric_conf("strong", "x")


def test_shading_field_is_bounded_smooth_and_varied():
    rng = np.random.default_rng(0)
    s = 0.4
    field = shading_field((96, 128), s, rng)
    assert field.shape == (96, 128) and field.dtype == np.float32
    assert np.exp(-s) - 1e-6 <= field.min() and field.max() <= np.exp(s) + 1e-6
    # a lighting change, not texture: neighbouring pixels differ by a small part of the field's range
    log = np.log(field)
    assert np.abs(np.diff(log, axis=1)).max() < 0.1 * (2 * s) and np.abs(np.diff(log, axis=0)).max() < 0.1 * (2 * s)
    assert log.max() - log.min() > 0.2 * s


def test_jitter_with_everything_off_is_identity_and_shading_multiplies():
    rng = np.random.default_rng(1)
    image = rng.uniform(0.2, 0.6, (48, 64)).astype(np.float32)
    mask = np.ones_like(image, dtype=bool)
    mask[40:] = False
    out = photometric_jitter(image, mask, np.random.default_rng(5), OFF)
    np.testing.assert_allclose(out[:40], image[:40], atol=1e-6)
    assert (out[40:] == 0).all()
    # shading alone: the image times the field drawn by the same generator after the same earlier draws
    shaded = photometric_jitter(image, mask, np.random.default_rng(5), {**OFF, "shading": 0.3})
    ref_rng = np.random.default_rng(5)
    for _ in range(4):  # the blur test and brightness, contrast and gamma draws come first
        ref_rng.uniform()
    expected = np.clip(image * shading_field(image.shape, 0.3, ref_rng), 0, 1)
    np.testing.assert_allclose(shaded[:40], expected[:40], atol=1e-5)


def test_no_shading_draws_nothing_extra():
    # recipes written before shading existed (the homography pairs) keep their exact random stream
    image = np.random.default_rng(2).uniform(0, 1, (32, 32)).astype(np.float32)
    mask = np.ones_like(image, dtype=bool)
    legacy = {k: v for k, v in default_conf.items() if k != "shading"}
    a = photometric_jitter(image, mask, np.random.default_rng(9), legacy)
    b = photometric_jitter(image, mask, np.random.default_rng(9), default_conf)
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("md_photo"), n_views=3, seed=4, image_size=(200, 150), n_planes=4)


def test_sfm_pairs_change_appearance_only(scene):
    plain = MegaDepthScene(scene.root, scene.scene_info_path, long_side=128)
    conf = {"brightness": 0.2, "contrast": [0.6, 1.5], "gamma": [0.6, 1.7], "shading": 0.4}
    jittered = MegaDepthScene(scene.root, scene.scene_info_path, long_side=128, photometric=conf)
    a, b = plain[0], jittered[0]
    for key in ("mask0", "mask1", "depth0", "depth1", "K0", "K1", "T_0to1", "scale0", "scale1"):
        assert torch.equal(a[key], b[key]), key
    for key, mask in (("image0", "mask0"), ("image1", "mask1")):
        valid = a[mask]
        diff = (a[key][0][valid] - b[key][0][valid]).abs().mean()
        assert diff > 0.02, key
        assert float(b[key][0][~valid].abs().max()) == 0.0  # padding stays zero
        assert 0.0 <= float(b[key].min()) and float(b[key].max()) <= 1.0
        # the content survives: the jittered view still correlates with the photo
        corr = np.corrcoef(a[key][0][valid].numpy(), b[key][0][valid].numpy())[0, 1]
        assert corr > 0.5, key
    # the two views are jittered independently, and a pair reads the same every time
    gain0 = (b["image0"][0][a["mask0"]].mean() / a["image0"][0][a["mask0"]].mean()).item()
    gain1 = (b["image1"][0][a["mask1"]].mean() / a["image1"][0][a["mask1"]].mean()).item()
    assert abs(gain0 - gain1) > 1e-3
    assert torch.equal(jittered[0]["image0"], b["image0"])
    with pytest.raises(TypeError, match="unknown photometric options"):
        MegaDepthScene(scene.root, scene.scene_info_path, long_side=128, photometric={"exposure": 1})


def test_repeated_listing_gets_new_jitter(scene):
    conf = {"type": "megadepth", "root": str(scene.root), "index_dir": str(scene.root / "scene_info"),
            "long_side": 128, "repeat": 2}
    n = len(MegaDepthScene(scene.root, scene.scene_info_path, long_side=128))
    plain = build_dataset(conf)
    assert torch.equal(plain[0]["image0"], plain[n]["image0"])  # without jitter the copies are the same pair
    jittered = build_dataset({**conf, "photometric": True})
    assert len(jittered) == 2 * n
    assert torch.equal(jittered[0]["T_0to1"], jittered[n]["T_0to1"])
    assert not torch.equal(jittered[0]["image0"], jittered[n]["image0"])


def test_shipped_photo_config_jitters_only_the_sfm_part():
    from asmamba.config import as_dictconfig

    cfg = as_dictconfig("corpus_512_tilt_photo", "data")
    parts = {d.source: d for d in cfg.datasets}
    assert parts["sfm"].photometric.shading > 0
    assert "photometric" not in parts["synthetic"]
    base = as_dictconfig("corpus_512_tilt", "data")
    for d_new, d_old in zip(cfg.datasets, base.datasets):
        assert {k: v for k, v in d_new.items() if k != "photometric"} == dict(d_old.items())
