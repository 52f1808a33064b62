"""Test-time scale adaptation: the scale estimate against analytic homographies, the pass logic against a matcher
whose answers follow a known zoom, and the shipped model on real photos zoomed synthetically (exact GT)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from asmamba.config import ConfigError
from asmamba.scale_adaptation import ScaleAdaptConfig, estimate_scale_ratio, match_with_scale_adaptation

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ H.T
    return q[:, :2] / q[:, 2:]


# --- the scale estimate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("zoom", [3.0, 1 / 3.0, 1.0])
def test_scale_ratio_of_a_similarity_with_outliers(zoom):
    rng = np.random.default_rng(0)
    a = math.radians(25)
    H = np.array([[zoom * math.cos(a), -zoom * math.sin(a), 40], [zoom * math.sin(a), zoom * math.cos(a), -25], [0, 0, 1]])
    k0 = rng.uniform(0, 400, (300, 2))
    k1 = _project(H, k0) + rng.normal(0, 0.3, (300, 2))
    k1[:90] = rng.uniform(-200, 600, (90, 2))  # 30 % outliers
    est = estimate_scale_ratio(k0, k1, threshold=3.0)
    assert abs(est.ratio / zoom - 1) < 0.01  # a similarity's local scale is its zoom everywhere
    assert est.matches == 300 and 195 <= est.inliers <= 215
    assert est.trusted(ScaleAdaptConfig())


def test_scale_ratio_of_a_perspective_homography_is_the_local_scale_at_the_inliers():
    rng = np.random.default_rng(1)
    H = np.array([[2.0, 0.1, 5.0], [-0.05, 1.8, 3.0], [4e-4, 2e-4, 1.0]])
    k0 = rng.uniform(100, 200, (200, 2))  # a patch around (150, 150)
    est = estimate_scale_ratio(k0, _project(H, k0), threshold=2.0)
    # finite differences of the analytic map at the centroid (independent of the Jacobian formula)
    c, d = k0.mean(0), 1e-3
    J = np.stack([(_project(H, [c + [d, 0]]) - _project(H, [c - [d, 0]]))[0],
                  (_project(H, [c + [0, d]]) - _project(H, [c - [0, d]]))[0]], axis=1) / (2 * d)
    assert abs(est.ratio - math.sqrt(abs(np.linalg.det(J)))) < 1e-4


def test_scale_ratio_degenerate_inputs():
    est = estimate_scale_ratio(np.zeros((3, 2)), np.zeros((3, 2)))
    assert math.isnan(est.ratio) and est.inliers == 0 and not est.trusted(ScaleAdaptConfig())
    rng = np.random.default_rng(2)
    garbage = estimate_scale_ratio(rng.uniform(0, 640, (300, 2)), rng.uniform(0, 640, (300, 2)))
    assert not garbage.trusted(ScaleAdaptConfig())  # random matches: no consensus
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        estimate_scale_ratio(np.zeros((5, 2)), np.zeros((4, 2)))


# --- the pass logic, with a matcher whose answers follow a known zoom -------------------------------------------


class ZoomLimitedMatcher:
    """Stands in for a detector-free matcher: pair ``b`` of the original batch is a zoom ``zooms[b]`` about the
    image centres (image 1 = ``zoom * (x0 - c0) + c1``, in original pixels). Given images of any size, it finds the
    true matches (at most one per 8 px cell of either image, as mutual nearest neighbours) only while the zoom between
    them is moderate, as the real matcher does: all of them up to 1.6x,
    a third of them (1 px noise) up to 2.3x; beyond that, random pairs of points."""

    def __init__(self, zooms, size_hw=(240, 320)):
        self.zooms, self.size_hw, self.calls = list(zooms), size_hw, []
        self.rng = np.random.default_rng(0)

    def __call__(self, data):
        B = data["image0"].shape[0]
        out = {"keypoints0": [], "keypoints1": [], "confidence": [], "batch_indexes": []}
        for b in range(B):
            zoom = self.zooms[b] if B == len(self.zooms) else self.zooms[self.pair]
            (h0, w0), (h1, w1) = data["image0"].shape[-2:], data["image1"].shape[-2:]
            H, W = self.size_hw
            s0, s1 = np.array([w0 / W, h0 / H]), np.array([w1 / W, h1 / H])  # resizes of the images given
            effective = zoom * s1 / s0  # per axis: the zoom between the images as given
            self.calls.append((h0, w0, h1, w1))
            k0 = np.stack(np.meshgrid(np.arange(3.5, w0, 8), np.arange(3.5, h0, 8)), -1).reshape(-1, 2)
            k1 = effective * (k0 - [(w0 - 1) / 2, (h0 - 1) / 2]) + [(w1 - 1) / 2, (h1 - 1) / 2]
            inside = (k1[:, 0] > 0) & (k1[:, 0] < w1 - 1) & (k1[:, 1] > 0) & (k1[:, 1] < h1 - 1)
            k0, k1 = k0[inside], k1[inside]
            _, first = np.unique(np.floor(k1 / 8).astype(int), axis=0, return_index=True)  # one-to-one, as mutual NN
            k0, k1 = k0[np.sort(first)], k1[np.sort(first)]
            good = abs(math.log(effective[0]))
            if good > math.log(2.3) or len(k0) < 8:
                k0 = self.rng.uniform([0, 0], [w0, h0], (200, 2))
                k1 = self.rng.uniform([0, 0], [w1, h1], (200, 2))
            elif good > math.log(1.6):
                bad = self.rng.uniform(size=len(k0)) > 1 / 3
                k1 = k1 + self.rng.normal(0, 1.0, k1.shape)
                k1[bad] = self.rng.uniform([0, 0], [w1, h1], (int(bad.sum()), 2))
            out["keypoints0"].append(torch.from_numpy(k0).float())
            out["keypoints1"].append(torch.from_numpy(k1).float())
            out["confidence"].append(torch.ones(len(k0)))
            out["batch_indexes"].append(torch.full((len(k0),), b, dtype=torch.long))
        return {k: torch.cat(v) for k, v in out.items()}


def _pairs(B, h=240, w=320):
    return {"image0": torch.rand(B, 1, h, w), "image1": torch.rand(B, 1, h, w)}


def _true_error(out, b, zoom, h=240, w=320):
    sel = out["batch_indexes"] == b
    k0, k1 = out["keypoints0"][sel].double().numpy(), out["keypoints1"][sel].double().numpy()
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    return np.linalg.norm(zoom * (k0 - c) + c - k1, axis=1)


def _run(zoom, **conf):
    fake = ZoomLimitedMatcher([zoom])
    fake.pair = 0
    out, info = match_with_scale_adaptation(fake, _pairs(1), None, ScaleAdaptConfig(**conf))
    return fake, out, info[0]


def test_no_strong_zoom_returns_the_first_pass_unchanged():
    fake = ZoomLimitedMatcher([1.2])
    fake.pair = 0
    data = _pairs(1)
    first = fake(data)
    out, info = match_with_scale_adaptation(fake, data, first, ScaleAdaptConfig())
    assert len(fake.calls) == 1 and len(info[0].passes) == 1 and info[0].chosen == 1.0  # no extra matching
    for key in first:
        assert torch.equal(out[key], first[key])
    assert abs(info[0].ratio - 1.2) < 0.01


@pytest.mark.parametrize("zoom", [2.0, 0.5])
def test_trusted_strong_zoom_matches_again_at_that_ratio_and_maps_back(zoom):
    fake, out, info = _run(zoom)
    assert len(fake.calls) == 2  # the first pass showed the ratio: one extra pass, no search
    h0, w0, h1, w1 = fake.calls[1]
    # the zoomed-in image was shrunk by the ratio, the other kept
    shrunk, kept = ((h1, w1), (h0, w0)) if zoom > 1 else ((h0, w0), (h1, w1))
    assert kept == (240, 320) and abs(320 / shrunk[1] - max(zoom, 1 / zoom)) < 0.05
    assert abs(info.chosen / zoom - 1) < 0.05 and abs(info.ratio / zoom - 1) < 0.02
    err = _true_error(out, 0, zoom)
    assert len(err) > 100 and err.max() < 1e-3  # every match of the second pass, back in original pixels


@pytest.mark.parametrize("zoom", [3.0, 1 / 3.0, 4.5])
def test_untrusted_first_pass_searches_and_refines(zoom):
    fake, out, info = _run(zoom)
    # the ratio is found to 2 %, the returned matches are the true ones in the original pixels
    assert abs(info.ratio / zoom - 1) < 0.02
    err = _true_error(out, 0, zoom)
    assert len(err) > 20 and np.median(err) < 1e-3
    assert len(info.passes) <= 1 + ScaleAdaptConfig().max_extra_passes


def test_search_stops_at_the_first_pass_that_matches_at_one_scale():
    fake, _, info = _run(2.5)  # the first search ratio (2.5) is right: no other candidate is tried
    assert [round(p.ratio, 2) for p in info.passes] == [1.0, 2.5]


def test_search_off_and_hopeless_zoom_keep_the_first_pass():
    fake, _, info = _run(3.0, search_ratios=[])
    assert len(fake.calls) == 1 and info.chosen == 1.0 and math.isnan(info.ratio)
    fake, out, info = _run(20.0)  # beyond every candidate: extra passes run, none is trusted
    assert info.chosen == 1.0 and len(out["keypoints0"]) == 200


def test_batch_adapts_each_pair_on_its_own():
    fake = ZoomLimitedMatcher([1.0, 2.0, 0.5])
    data = _pairs(3)
    first = fake(data)
    calls = []

    def single(pair):  # extra passes are single pairs: which one is told by its content
        b = next(i for i in range(3) if torch.equal(pair["image0"][0, :, :4, :4], data["image0"][i, :, :4, :4])
                 or torch.equal(pair["image1"][0, :, :4, :4], data["image1"][i, :, :4, :4]))
        calls.append(b)
        fake.pair = b
        return fake(pair)

    out, info = match_with_scale_adaptation(single, data, first, ScaleAdaptConfig())
    assert calls == [1, 2] and [i.chosen for i in info][0] == 1.0
    assert out["batch_indexes"].tolist() == sorted(out["batch_indexes"].tolist())
    for b, zoom in enumerate([1.0, 2.0, 0.5]):
        err = _true_error(out, b, zoom)
        assert len(err) > 100 and err.max() < 1e-3


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="min_ratio must be > 1"):
        ScaleAdaptConfig(min_ratio=0.8)
    with pytest.raises(ValueError, match="search_ratios must all be > 1"):
        ScaleAdaptConfig(search_ratios=[0.5])
    with pytest.raises(ValueError, match="unknown scale_adapt keys"):
        ScaleAdaptConfig.from_mapping({"min_ratios": 2})
    with pytest.raises(ValueError, match="needs 'image1'"):
        match_with_scale_adaptation(lambda d: d, {"image0": torch.rand(1, 1, 64, 64)})


# --- the shipped model on real photos, zoomed synthetically ------------------------------------------------------


def _zoom_pair(path: Path, zoom: float, width: int, centre=(0.45, 0.55)):
    """Image 0: the whole photo, ``width`` px wide; image 1: the crop of 1/zoom of its sides at ``centre`` resized to
    the same size, rendered from the full-resolution photo. ``H`` (image 0 -> image 1) is analytic."""
    src = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    h, w = src.shape
    height = round(width * h / w)
    s0 = width / w  # image 0 pixel centres: x0 = (x + 0.5) * s0 - 0.5
    cw, ch = w / zoom, h / zoom
    left, top = centre[0] * (w - cw), centre[1] * (h - ch)  # crop edges in source pixel-edge coordinates
    s1 = width / cw
    T0 = np.array([[s0, 0, 0.5 * s0 - 0.5], [0, s0, 0.5 * s0 - 0.5], [0, 0, 1]])
    T1 = np.array([[s1, 0, (0.5 - left) * s1 - 0.5], [0, s1, (0.5 - top) * s1 - 0.5], [0, 0, 1]])
    im0 = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA)
    im1 = cv2.warpAffine(src, T1[:2], (width, height), flags=cv2.INTER_LINEAR)
    t = lambda a: torch.from_numpy(a)[None, None].float() / 255  # noqa: E731
    return t(im0), t(im1), T1 @ np.linalg.inv(T0)


@pytest.fixture(scope="module")
def shipped():
    from asmamba import ASMamba

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return ASMamba()


PHOTO = DATA / "pose" / "strecha_castle-P19" / "images" / "0003.jpg"


@pytest.mark.skipif(not PHOTO.is_file(), reason=f"shared data photo {PHOTO} not present")
def test_shipped_model_recovers_a_3x_zoom_of_a_real_photo(shipped):
    im0, im1, H = _zoom_pair(PHOTO, 3.0, 480)
    single = lambda d: shipped(d, scale_adapt=False)  # noqa: E731
    with torch.inference_mode():
        first = single({"image0": im0, "image1": im1})
        out, info = match_with_scale_adaptation(single, {"image0": im0, "image1": im1}, first, ScaleAdaptConfig())
    assert abs(info[0].ratio / 3.0 - 1) < 0.10
    err = np.linalg.norm(_project(H, out["keypoints0"].double().numpy()) - out["keypoints1"].double().numpy(), axis=1)
    assert len(err) >= 50 and np.median(err) < 3.0 and (err < 6).mean() > 0.6  # in image 1's (zoomed-in) pixels
    first_err = np.linalg.norm(_project(H, first["keypoints0"].double().numpy()) - first["keypoints1"].double().numpy(),
                               axis=1)
    assert (first_err < 6).mean() < 0.2  # the single pass fails at 3x: the adaptation is what recovers it


@pytest.mark.skipif(not PHOTO.is_file(), reason=f"shared data photo {PHOTO} not present")
def test_forward_hook_follows_the_config_switch(shipped):
    from asmamba import ASMamba

    im1, im0, H_inv = _zoom_pair(PHOTO, 2.0, 480)  # image 0 is the zoomed-in one
    H = np.linalg.inv(H_inv)
    adapted = ASMamba(overrides=["scale_adapt.enabled=true", "scale_adapt.search_ratios=[]"])
    with torch.inference_mode():
        on = adapted({"image0": im0, "image1": im1})
        off = adapted({"image0": im0, "image1": im1}, scale_adapt=False)
    shares = []
    for out in (on, off):
        err = np.linalg.norm(_project(H, out["keypoints0"].double().numpy()) - out["keypoints1"].double().numpy(), axis=1)
        shares.append((err < 3).mean())
    assert shares[0] > 0.8 and shares[0] > shares[1] + 0.2, shares
    with pytest.raises(ConfigError, match="scale_adapt"):
        ASMamba(overrides=["scale_adapt.min_ratios=2"])
