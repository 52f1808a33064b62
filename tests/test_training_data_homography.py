"""Homography pairs: the returned H maps image-0 content exactly onto image-1 content, items are deterministic
under the seed, and sources are resolved (folders, skimage, arrays) with clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from asmamba.training.data.common import GT_HOMOGRAPHY
from asmamba.training.data.homography import HomographyPairs


def _smooth_pattern(w: int = 480, h: int = 360) -> np.ndarray:
    """A smooth analytic image (periods of 40-70 px), so bilinear resampling is nearly exact."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    f = 0.5 + 0.2 * np.sin(u / 9.0 + 0.3) + 0.2 * np.cos(v / 11.0) * np.sin((u + v) / 17.0)
    return np.clip(np.round(f * 255), 0, 255).astype(np.uint8)


def _bilinear(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Independent bilinear lookup (pixel centres at integers)."""
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = x - x0, y - y0
    return (
        image[y0, x0] * (1 - ax) * (1 - ay) + image[y0, x0 + 1] * ax * (1 - ay)
        + image[y0 + 1, x0] * (1 - ax) * ay + image[y0 + 1, x0 + 1] * ax * ay
    )


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0


def test_gt_homography_maps_content_exactly():
    ds = HomographyPairs(_smooth_pattern(), seed=7, pairs_per_image=4, photometric=False, output_size=(320, 240))
    for idx in range(len(ds)):
        item = ds[idx]
        assert item["gt_type"] == GT_HOMOGRAPHY
        im0, im1 = item["image0"][0].double().numpy(), item["image1"][0].double().numpy()
        m0, m1 = _erode(item["mask0"].numpy(), 2), _erode(item["mask1"].numpy(), 2)
        H = item["H_0to1"].double().numpy()
        rng = np.random.default_rng(idx)
        pts0 = rng.uniform([2, 2], [317, 237], (4000, 2))
        q = np.concatenate([pts0, np.ones((len(pts0), 1))], 1) @ H.T
        pts1 = q[:, :2] / q[:, 2:]
        inside = (pts1[:, 0] > 2) & (pts1[:, 0] < 317) & (pts1[:, 1] > 2) & (pts1[:, 1] < 237)
        ok = inside & m0[pts0[:, 1].round().astype(int), pts0[:, 0].round().astype(int)]
        ok[inside] &= m1[pts1[inside, 1].round().astype(int), pts1[inside, 0].round().astype(int)]
        assert ok.sum() > 500
        diff = np.abs(_bilinear(im1, pts1[ok]) - _bilinear(im0, pts0[ok]))
        assert diff.mean() < 1.2 / 255 and np.percentile(diff, 99) < 4 / 255
        # independently: OpenCV's warp of image 0 by H reproduces image 1 where both are valid
        warped = cv2.warpPerspective(im0, H, (320, 240), flags=cv2.INTER_LINEAR)
        both = m1 & (cv2.warpPerspective(m0.astype(np.uint8), H, (320, 240), flags=cv2.INTER_NEAREST) > 0)
        both = _erode(both, 2)
        err = np.abs(warped - im1)[both].mean()
        shifted = np.array([[1, 0, 3.0], [0, 1, 0], [0, 0, 1]]) @ H  # a 3 px wrong homography
        wrong = np.abs(cv2.warpPerspective(im0, shifted, (320, 240)) - im1)[both].mean()
        assert err < 1.2 / 255 and wrong > 10 * err


def test_deterministic_under_seed_and_distinct_across_items():
    a = HomographyPairs("skimage:camera,brick", seed=11, pairs_per_image=2)
    b = HomographyPairs("skimage:camera,brick", seed=11, pairs_per_image=2)
    assert len(a) == 4
    for idx in (0, 3):
        x, y = a[idx], b[idx]
        for key in ("image0", "image1", "mask1", "H_0to1"):
            assert torch.equal(x[key], y[key]), key
    assert torch.equal(a[1]["image0"], a[1]["image0"])
    assert not torch.equal(a[0]["H_0to1"], a[2]["H_0to1"])  # same source image, other item seed
    c = HomographyPairs("skimage:camera,brick", seed=12, pairs_per_image=2)
    assert not torch.equal(a[0]["H_0to1"], c[0]["H_0to1"])


def test_item_layout_and_photometric_changes():
    ds = HomographyPairs("skimage:astronaut", seed=0, output_size=(160, 128))
    item = ds[0]
    assert item["image0"].shape == (1, 128, 160) and item["mask0"].shape == (128, 160)
    assert item["depth0"].shape == (128, 160) and float(item["depth0"].abs().max()) == 0.0
    assert torch.equal(item["K0"], torch.eye(3)) and torch.equal(item["T_0to1"], torch.eye(4))
    assert float(item["image1"].min()) >= 0.0 and float(item["image1"].max()) <= 1.0
    assert float(item["image1"][0][~item["mask1"]].abs().sum()) == 0.0
    plain = HomographyPairs("skimage:astronaut", seed=0, output_size=(160, 128), photometric=False)[0]
    assert torch.equal(plain["H_0to1"], item["H_0to1"])  # photometry draws after the geometry
    assert not torch.equal(plain["image0"], item["image0"])


def test_sources_and_errors(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _smooth_pattern(200, 150))
    cv2.imwrite(str(folder / "b.jpg"), _smooth_pattern(300, 200))
    ds = HomographyPairs(folder, pairs_per_image=3, output_size=(96, 64))
    assert len(ds) == 6 and ds[5]["pair_name"].startswith("b.jpg#5")
    assert len(HomographyPairs([folder / "a.png", _smooth_pattern()], output_size=(96, 64))) == 2
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        HomographyPairs(tmp_path / "missing_dir")
    with pytest.raises(ValueError, match="unknown scikit-image source 'lena'"):
        HomographyPairs("skimage:lena")
    with pytest.raises(TypeError, match="unknown homography options"):
        HomographyPairs("skimage:camera", output=(3, 3))
    with pytest.raises(IndexError):
        ds[6]


def test_dataset_pickles_for_dataloader_workers(tmp_path):
    import pickle

    cv2.imwrite(str(tmp_path / "a.png"), _smooth_pattern(200, 150))
    ds = HomographyPairs(["skimage:camera", tmp_path / "a.png", _smooth_pattern(120, 90)], seed=3, output_size=(96, 64))
    first = ds[1]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == 3 and torch.equal(clone[1]["image1"], first["image1"])
