"""The shipped default weights against real ground truth they were never trained on.

- Middlebury Motorcycle (scikit-image): matches scored against the GT disparity of a rectified pair.
- Oxford graf 1-2 (shared data): the homography estimated from the matches against the GT homography.
"""

import numpy as np
import pytest
import torch

from asmamba.checkpoint import shipped_weights

pytestmark = pytest.mark.skipif(not shipped_weights(), reason="no trained weights ship in asmamba/weights/")


@pytest.fixture(scope="module")
def matcher():
    from asmamba import ASMamba

    torch.set_num_threads(2)
    return ASMamba()  # pretrained="default"


def test_default_weights_load_in_eval_mode(matcher):
    assert not matcher.training
    assert matcher.config.encoder.name == "xfeat"


def test_stereo_matches_agree_with_gt_disparity(matcher, tmp_path):
    from asmamba.demo import run_stereo

    result = run_stereo("asmamba", 640, tmp_path / "m.png", "cpu")
    assert result["matches_with_gt"] >= 1000
    # rectified pair, full-resolution GT: most matches land within 3 px (XFeat's sparse matches: ~70 %)
    assert result["precision@3px"] >= 0.7
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_homography_from_matches_recovers_gt(matcher):
    import cv2

    from asmamba.io import data_root, load_image, scale_points

    folder = data_root() / "homography" / "oxford_graf"
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder}")
    H_gt = np.loadtxt(folder / "H1to2p")
    t0, s0 = load_image(folder / "img1.ppm", max_side=640)
    t1, s1 = load_image(folder / "img2.ppm", max_side=640)
    with torch.inference_mode():
        out = matcher({"image0": t0, "image1": t1})
    k0 = scale_points(out["keypoints0"].numpy(), 1 / s0)
    k1 = scale_points(out["keypoints1"].numpy(), 1 / s1)
    assert len(k0) >= 200
    H, _ = cv2.findHomography(k0, k1, cv2.RANSAC, 3.0)
    h, w = cv2.imread(str(folder / "img1.ppm")).shape[:2]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)[:, None]
    err = np.linalg.norm(cv2.perspectiveTransform(corners, H) - cv2.perspectiveTransform(corners, H_gt), axis=-1)
    assert err.mean() < 5.0
