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
    # the core (narrow) distribution; large zooms and rotations: the test further down
    ds = HomographyPairs(_smooth_pattern(), seed=7, pairs_per_image=4, photometric=False, output_size=(320, 240),
                         scale_wide_prob=0.0, rotation_wide_prob=0.0)
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


# --- the wide distribution: zoom up to 4x both ways, rotations to +-60 degrees, crops that keep overlap ---------


def _similarity_parts(H: np.ndarray) -> tuple[float, float]:
    """Zoom and rotation (degrees) of a similarity homography, read off its linear part analytically."""
    A = H[:2, :2] / H[2, 2]
    assert abs(A[0, 0] - A[1, 1]) < 1e-9 and abs(A[0, 1] + A[1, 0]) < 1e-9  # sR: no shear, no anisotropy
    return float(np.sqrt(np.linalg.det(A))), float(np.degrees(np.arctan2(A[1, 0], A[0, 0])))


def _geometry_only(n: int, **conf):
    """``n`` items of a similarity-only (perspective 0) dataset, small views so the test is fast."""
    ds = HomographyPairs(_smooth_pattern(240, 180), seed=5, pairs_per_image=n, photometric=False,
                         output_size=(96, 72), perspective=0.0, **conf)
    return ds, [ds[i]["H_0to1"].double().numpy() for i in range(n)]


def test_wide_zoom_and_rotation_span_the_configured_ranges():
    ds, Hs = _geometry_only(500, scale_wide=(0.25, 4.0), scale_wide_prob=0.5, rotation_wide_deg=60.0,
                            rotation_wide_prob=0.5, scale=(0.75, 1.33), rotation_deg=25.0)
    zoom, angle = np.array([_similarity_parts(H) for H in Hs]).T
    assert zoom.min() >= 0.25 - 1e-9 and zoom.max() <= 4.0 + 1e-9
    assert zoom.min() < 0.3 and zoom.max() > 3.4  # both ends of the 4x range are reached
    assert np.abs(angle).max() <= 60.0 + 1e-9 and angle.min() < -55 and angle.max() > 55
    # the mixture: half the pairs log-uniform over [1/4, 4], so P(zoom beyond 2x either way) = 0.5 * 0.5;
    # the other half stays in the core (0.75-1.33): most pairs are moderate, large zooms are common
    far = np.abs(np.log(zoom)) > np.log(2)
    assert 0.18 < far.mean() < 0.32
    assert 0.5 < ((zoom >= 0.75 - 1e-9) & (zoom <= 1.33 + 1e-9)).mean() < 0.75
    # rotation: P(|angle| > 25) = 0.5 * 35 / 60
    assert 0.21 < (np.abs(angle) > 25).mean() < 0.37
    # both directions of zoom alike (a zoom-in of view 1 is a zoom-out of view 0)
    assert 0.4 < (zoom > 1).mean() < 0.6


def test_narrow_config_keeps_the_old_ranges():
    _, Hs = _geometry_only(200, scale_wide_prob=0.0, rotation_wide_prob=0.0, scale=(0.75, 1.33), rotation_deg=25.0)
    zoom, angle = np.array([_similarity_parts(H) for H in Hs]).T
    assert zoom.min() >= 0.75 - 1e-9 and zoom.max() <= 1.33 + 1e-9 and np.abs(angle).max() <= 25.0 + 1e-9
    assert zoom.min() < 0.8 and zoom.max() > 1.25 and angle.min() < -22 and angle.max() > 22
    # the shipped narrow preset really is that distribution
    from asmamba.config import as_dictconfig

    narrow = as_dictconfig("homography_photos_narrow", "data")
    assert float(narrow.scale_wide_prob) == 0.0 and float(narrow.rotation_wide_prob) == 0.0
    assert list(narrow.scale) == [0.75, 1.33]


def _cells(w: int, h: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(3.5, w, 8), np.arange(3.5, h, 8))
    return np.stack([xs.ravel(), ys.ravel()], -1)


def _inside_share(H: np.ndarray, w: int, h: int) -> float:
    """Independent count: cells of one view warped by H (OpenCV) landing inside the other view."""
    pts = cv2.perspectiveTransform(_cells(w, h)[:, None].astype(np.float64), H)[:, 0]
    return float(((pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)).mean())


@pytest.mark.parametrize("min_overlap", [0.25, 0.6])
def test_overlap_constraint_holds_on_the_finer_view(min_overlap):
    ds = HomographyPairs(_smooth_pattern(320, 240), seed=2, pairs_per_image=150, photometric=False,
                         output_size=(128, 96), min_overlap=min_overlap)
    shares = []
    for i in range(len(ds)):
        item = ds[i]
        H = item["H_0to1"].double().numpy()
        s0, s1 = _inside_share(H, 128, 96), _inside_share(np.linalg.inv(H), 128, 96)
        # the finer (zoomed-in) view's cells: a zoom s caps the other view's share at 1/s^2
        assert max(s0, s1) >= min_overlap, (i, s0, s1)
        # crops keep both views on the source: (almost) no invalid pixels
        assert float(item["mask1"].float().mean()) > 0.97 and float(item["mask0"].float().mean()) > 0.97
        shares.append(max(s0, s1))
    assert min(shares) < 0.95  # partial overlaps do occur (the constraint is not vacuous)


@pytest.mark.parametrize(
    "zoom,angle", [((3.6, 4.0), 60.0), ((0.25, 0.28), 60.0), ((1.0, 1.0), 60.0)], ids=["in4x", "out4x", "rot60"]
)
def test_gt_homography_maps_content_exactly_at_large_zoom_and_rotation(zoom, angle):
    """Pixels of view 0 at GT points equal view 1's (bilinear), and OpenCV's warp of view 0 by H reproduces
    view 1, at 4x zoom either way and at 60 degrees."""
    src = _smooth_pattern(1200, 900)  # smooth at every scale the views see
    ds = HomographyPairs(src, seed=3, pairs_per_image=3, photometric=False, output_size=(320, 240),
                         scale=zoom, scale_wide_prob=0.0, rotation_deg=angle, rotation_wide_prob=0.0)
    for idx in range(len(ds)):
        item = ds[idx]
        im0, im1 = item["image0"][0].double().numpy(), item["image1"][0].double().numpy()
        H = item["H_0to1"].double().numpy()
        m0, m1 = _erode(item["mask0"].numpy(), 2), _erode(item["mask1"].numpy(), 2)
        rng = np.random.default_rng(idx)
        pts0 = rng.uniform([2, 2], [317, 237], (20000, 2))
        pts1 = cv2.perspectiveTransform(pts0[:, None], H)[:, 0]
        ok = (pts1[:, 0] > 2) & (pts1[:, 0] < 317) & (pts1[:, 1] > 2) & (pts1[:, 1] < 237)
        ok &= m0[pts0[:, 1].round().astype(int), pts0[:, 0].round().astype(int)]
        ok[ok] &= m1[pts1[ok, 1].round().astype(int), pts1[ok, 0].round().astype(int)]
        assert ok.sum() > 300
        diff = np.abs(_bilinear(im1, pts1[ok]) - _bilinear(im0, pts0[ok]))
        shifted = cv2.perspectiveTransform(pts0[ok][:, None] + [[2.0, 0.0]], H)[:, 0]  # 2 px off in view 0
        inb = (shifted[:, 0] > 2) & (shifted[:, 0] < 317) & (shifted[:, 1] > 2) & (shifted[:, 1] < 237)
        wrong = np.abs(_bilinear(im1, shifted[inb]) - _bilinear(im0, pts0[ok][inb]))
        assert diff.mean() < 2.0 / 255 and wrong.mean() > 3 * diff.mean(), (diff.mean() * 255, wrong.mean() * 255)
        warped = cv2.warpPerspective(im0, H, (320, 240), flags=cv2.INTER_LINEAR)
        both = m1 & (cv2.warpPerspective(m0.astype(np.uint8), H, (320, 240), flags=cv2.INTER_NEAREST) > 0)
        both = _erode(both, 2)
        assert both.sum() > 1000
        assert np.abs(warped - im1)[both].mean() < 2.0 / 255


def test_bad_geometry_options_fail_clearly():
    with pytest.raises(ValueError, match="scale_wide must be a range"):
        HomographyPairs("skimage:camera", scale_wide=(4.0, 0.25))
    with pytest.raises(ValueError, match="rotation_wide_prob must lie in"):
        HomographyPairs("skimage:camera", rotation_wide_prob=1.5)
    with pytest.raises(ValueError, match="min_overlap must lie in"):
        HomographyPairs("skimage:camera", min_overlap=-0.1)


@pytest.mark.parametrize("tilt,axis,focal", [(40.0, 0.0, 400.0), (60.0, 125.0, 300.0), (25.0, 250.0, 700.0)])
def test_tilt_homography_is_the_plane_seen_by_an_orbiting_camera(tilt, axis, focal):
    """Independent truth: points of the plane z = d projected by camera 0 (at the origin) and by camera 1, which
    orbits the plane point under the image centre by ``tilt`` about an in-plane axis (OpenCV's Rodrigues)."""
    from asmamba.training.data.homography import tilt_homography

    centre = np.array([159.5, 119.5])
    H = tilt_homography(tilt, axis, focal, centre)
    K = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]])
    a = np.radians(axis)
    R = cv2.Rodrigues(np.radians(tilt) * np.array([np.cos(a), np.sin(a), 0.0]))[0]
    d = 3.7
    c1 = d * (np.array([0, 0, 1.0]) - R.T @ np.array([0, 0, 1.0]))  # camera 1's centre, same distance to the point
    assert abs(np.linalg.norm(c1 - [0, 0, d]) - d) < 1e-9
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.uniform(-1.5, 1.5, (200, 2)), np.full((200, 1), d)], 1)  # on the plane
    p0 = X @ K.T
    p0 = p0[:, :2] / p0[:, 2:]
    X1 = (X - c1) @ R.T
    assert (X1[:, 2] > 0).all()
    p1 = X1 @ K.T
    p1 = p1[:, :2] / p1[:, 2:]
    mapped = cv2.perspectiveTransform(p0[:, None], H)[:, 0]
    np.testing.assert_allclose(mapped, p1, atol=1e-6)
    # the point under the centre stays; across the axis the plane is foreshortened by cos(tilt)
    np.testing.assert_allclose(cv2.perspectiveTransform(centre[None, None], H)[0, 0], centre, atol=1e-9)


def _jacobian(H: np.ndarray, x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Central finite differences of the homography at point x (independent of the generator's own formula)."""
    cols = []
    for e in np.eye(2):
        plus = cv2.perspectiveTransform((x + eps * e)[None, None], H)[0, 0]
        minus = cv2.perspectiveTransform((x - eps * e)[None, None], H)[0, 0]
        cols.append((plus - minus) / (2 * eps))
    return np.stack(cols, 1)


def test_tilted_pairs_are_foreshortened_by_the_tilt():
    """With no corner jitter, a tilt of 50 degrees leaves singular values (s, s cos 50) at the view centre, whatever
    the zoom and rotation after it; without tilt the pairs are similarities (ratio 1)."""
    ds, Hs = _geometry_only(40, tilt_prob=1.0, tilt_deg=(50.0, 50.0), translation=0.0)
    centre = np.array([47.5, 35.5])
    for H in Hs:
        sv = np.linalg.svd(_jacobian(H, centre), compute_uv=False)
        assert abs(sv[1] / sv[0] - np.cos(np.radians(50))) < 1e-4, sv
    _, plain = _geometry_only(10, tilt_prob=0.0, translation=0.0)
    for H in plain:
        sv = np.linalg.svd(_jacobian(H, centre), compute_uv=False)
        assert abs(sv[1] / sv[0] - 1) < 1e-6


def test_tilt_share_and_untilted_configs_unchanged():
    """``tilt_prob`` of the pairs are tilted (anisotropic); with tilt_prob 0 the items are the ones a config
    without the option gives (the validation split's pairs stay what they were), whatever tilt_deg says."""
    _, Hs = _geometry_only(300, tilt_prob=0.3, tilt_deg=(30.0, 60.0), translation=0.0)
    centre = np.array([47.5, 35.5])
    ratios = np.array([np.divide(*np.linalg.svd(_jacobian(H, centre), compute_uv=False)[::-1]) for H in Hs])
    tilted = ratios < 0.999
    assert 0.2 < tilted.mean() < 0.4
    assert ratios[tilted].min() >= np.cos(np.radians(60)) - 1e-3 and ratios[tilted].max() <= np.cos(np.radians(30)) + 1e-3
    _, off = _geometry_only(20, tilt_prob=0.0, tilt_deg=(10.0, 80.0))
    _, before = _geometry_only(20)
    for a, b in zip(off, before):
        np.testing.assert_array_equal(a, b)


def test_gt_homography_maps_content_exactly_under_tilt():
    """The content check of the large-zoom test for tilted views (strong perspective)."""
    src = _smooth_pattern(1200, 900)
    ds = HomographyPairs(src, seed=4, pairs_per_image=3, photometric=False, output_size=(320, 240),
                         tilt_prob=1.0, tilt_deg=(50.0, 60.0))
    for idx in range(len(ds)):
        item = ds[idx]
        im0, im1 = item["image0"][0].double().numpy(), item["image1"][0].double().numpy()
        H = item["H_0to1"].double().numpy()
        m0, m1 = _erode(item["mask0"].numpy(), 2), _erode(item["mask1"].numpy(), 2)
        warped = cv2.warpPerspective(im0, H, (320, 240), flags=cv2.INTER_LINEAR)
        both = m1 & (cv2.warpPerspective(m0.astype(np.uint8), H, (320, 240), flags=cv2.INTER_NEAREST) > 0)
        both = _erode(both, 2)
        assert both.sum() > 1000
        err = np.abs(warped - im1)[both].mean()
        wrong = np.abs(cv2.warpPerspective(im0, np.array([[1, 0, 2.0], [0, 1, 0], [0, 0, 1]]) @ H, (320, 240))
                       - im1)[both].mean()
        assert err < 2.0 / 255 and wrong > 3 * err, (err * 255, wrong * 255)


def test_bad_tilt_options_fail_clearly():
    with pytest.raises(ValueError, match="tilt_deg must be a range"):
        HomographyPairs("skimage:camera", tilt_deg=(10.0, 95.0))
    with pytest.raises(ValueError, match="tilt_prob must lie in"):
        HomographyPairs("skimage:camera", tilt_prob=2.0)
    with pytest.raises(ValueError, match="tilt_focal must be a range"):
        HomographyPairs("skimage:camera", tilt_focal=(0.0, 1.0))
