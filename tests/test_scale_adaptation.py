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
    c, s = zoom * math.cos(a), zoom * math.sin(a)
    H = np.array([[c, -s, 40], [s, c, -25], [0, 0, 1]])
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
    """Stands in for a detector-free matcher, with an exact answer. Pair ``b`` is a zoom ``zooms[b]`` about the
    image centres (in original pixels, image 1 = ``zoom * (x0 - c) + c``). The images carry their own original
    coordinates (channels: ``(x + 0.5) / W``, ``(y + 0.5) / H``, pair id), so whatever crop or resize it is given,
    the matcher reads where its pixels came from. It finds the true matches (at most one per 8 px cell of image 1,
    as mutual nearest neighbours) only while the zoom between the images it is given is moderate, as the real
    matcher does: all of them up to 1.6x, a third of them (1 px noise) up to 2.3x; beyond that, random points."""

    def __init__(self, zooms, size_hw=(240, 320)):
        self.zooms, self.size_hw, self.calls = list(zooms), size_hw, []
        self.rng = np.random.default_rng(0)

    def images(self):
        H, W = self.size_hw
        ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
        ramp = torch.stack([(xs + 0.5) / W, (ys + 0.5) / H])
        ids = torch.stack([torch.cat([ramp, torch.full((1, H, W), b / 10.0)]) for b in range(len(self.zooms))])
        return {"image0": ids.float(), "image1": ids.clone().float()}

    def _view_map(self, image):
        """Per axis ``(a, b)`` with original = a * view + b, read off the coordinate channels (interior pixels)."""
        h, w = image.shape[-2:]
        i, j = (h // 4, 3 * h // 4), (w // 4, 3 * w // 4)
        x = image[0, 0, h // 2].double() * self.size_hw[1] - 0.5
        y = image[0, 1, :, w // 2].double() * self.size_hw[0] - 0.5
        ax = float(x[j[1]] - x[j[0]]) / (j[1] - j[0])
        ay = float(y[i[1]] - y[i[0]]) / (i[1] - i[0])
        return np.array([ax, ay]), np.array([float(x[j[0]]) - ax * j[0], float(y[i[0]]) - ay * i[0]])

    def __call__(self, data):
        out = {"keypoints0": [], "keypoints1": [], "confidence": [], "batch_indexes": []}
        H, W = self.size_hw
        c = np.array([(W - 1) / 2, (H - 1) / 2])
        for b in range(data["image0"].shape[0]):
            im0, im1 = data["image0"][b : b + 1], data["image1"][b : b + 1]
            zoom = self.zooms[round(float(im0[0, 2].mean()) * 10)]
            (h0, w0), (h1, w1) = im0.shape[-2:], im1.shape[-2:]
            self.calls.append((h0, w0, h1, w1))
            (a0, b0), (a1, b1) = self._view_map(im0), self._view_map(im1)
            k0 = np.stack(np.meshgrid(np.arange(3.5, w0, 8), np.arange(3.5, h0, 8)), -1).reshape(-1, 2)
            k1 = (zoom * (a0 * k0 + b0 - c) + c - b1) / a1  # the true match, in the pixels of the view given
            inside = (k1[:, 0] > 0) & (k1[:, 0] < w1 - 1) & (k1[:, 1] > 0) & (k1[:, 1] < h1 - 1)
            k0, k1 = k0[inside], k1[inside]
            _, first = np.unique(np.floor(k1 / 8).astype(int), axis=0, return_index=True)
            k0, k1 = k0[np.sort(first)], k1[np.sort(first)]
            off = abs(math.log(zoom * a0[0] / a1[0]))  # the zoom between the views given (view-1 px per view-0 px)
            if off > math.log(2.3) or len(k0) < 8:
                k0 = self.rng.uniform([0, 0], [w0, h0], (200, 2))
                k1 = self.rng.uniform([0, 0], [w1, h1], (200, 2))
            elif off > math.log(1.6):
                bad = self.rng.uniform(size=len(k0)) > 1 / 3
                k1 = k1 + self.rng.normal(0, 1.0, k1.shape)
                k1[bad] = self.rng.uniform([0, 0], [w1, h1], (int(bad.sum()), 2))
            out["keypoints0"].append(torch.from_numpy(k0).float())
            out["keypoints1"].append(torch.from_numpy(k1).float())
            out["confidence"].append(torch.ones(len(k0)))
            out["batch_indexes"].append(torch.full((len(k0),), b, dtype=torch.long))
        return {k: torch.cat(v) for k, v in out.items()}


def _true_error(out, b, zoom, h=240, w=320):
    sel = out["batch_indexes"] == b
    k0, k1 = out["keypoints0"][sel].double().numpy(), out["keypoints1"][sel].double().numpy()
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    return np.linalg.norm(zoom * (k0 - c) + c - k1, axis=1)


SEARCH = {"search_ratios": [2.5, 5.0]}


def _run(zoom, first=None, **conf):
    fake = ZoomLimitedMatcher([zoom])
    data = fake.images()
    out, info = match_with_scale_adaptation(fake, data, first and fake(data), ScaleAdaptConfig(**conf))
    return fake, out, info[0]


def test_no_strong_zoom_returns_the_first_pass_unchanged():
    fake = ZoomLimitedMatcher([1.2])
    data = fake.images()
    first = fake(data)
    out, info = match_with_scale_adaptation(fake, data, first, ScaleAdaptConfig())
    assert len(fake.calls) == 1 and len(info[0].passes) == 1 and info[0].chosen_index == 0  # no extra matching
    for key in first:
        assert torch.equal(out[key], first[key])
    assert abs(info[0].ratio - 1.2) < 0.01


@pytest.mark.parametrize("zoom", [2.0, 0.5])
def test_trusted_strong_zoom_crops_and_enlarges_the_zoomed_out_image(zoom):
    fake, out, info = _run(zoom)
    assert [p.kind for p in info.passes] == ["first", "crop"]  # the first pass showed the ratio: no search
    h0, w0, h1, w1 = fake.calls[1]
    # the zoomed-out image was cropped to the other's footprint (+10 % a side) and enlarged by the ratio
    (hc, wc), kept = ((h0, w0), (h1, w1)) if zoom > 1 else ((h1, w1), (h0, w0))
    assert kept == (240, 320) and abs(wc / 320 - 1.2) < 0.05 and abs(hc / 240 - 1.2) < 0.05
    assert info.chosen.kind == "crop" and abs(info.ratio / zoom - 1) < 0.01
    err = _true_error(out, 0, zoom)
    assert len(err) > 250 and err.max() < 1e-3  # every match of the crop pass, back in original pixels
    # thinned to a plain pass's density: one match per 8 px cell of the enlarged (zoomed-out) image
    enlarged = out["keypoints0"] if zoom > 1 else out["keypoints1"]
    cells = torch.floor((enlarged + 0.5) / 8).long()
    assert len(torch.unique(cells, dim=0)) == len(cells)
    _, dense, _ = _run(zoom, crop_thin=False)
    assert len(dense["keypoints0"]) > 3 * len(err)  # the unthinned crop pass: ~zoom**2 matches per cell


@pytest.mark.parametrize("zoom", [3.0, 1 / 3.0, 4.5, 1 / 6.0])
def test_untrusted_first_pass_searches_then_crops(zoom):
    fake, out, info = _run(zoom, **SEARCH)
    kinds = [p.kind for p in info.passes]
    assert kinds[0] == "first" and kinds[-1] == "crop" and set(kinds[1:-1]) == {"shrink"}
    assert not info.passes[0].estimate.trusted(ScaleAdaptConfig())  # the zoom defeated the first pass
    assert abs(info.ratio / zoom - 1) < 0.01
    err = _true_error(out, 0, zoom)
    overlap_cells = 320 * 240 / 64 / max(zoom, 1 / zoom) ** 2  # the zoomed-in view's footprint, in 8 px cells
    assert len(err) > 0.6 * overlap_cells and err.max() < 1e-3
    assert len(info.passes) <= 1 + ScaleAdaptConfig(**SEARCH).max_extra_passes


def test_search_stops_at_the_first_trusted_shrink_pass():
    _, _, info = _run(2.5, **SEARCH)  # the first search ratio (2.5) is right: no other candidate is tried
    assert [(p.kind, round(p.ratio, 2)) for p in info.passes] == [("first", 1.0), ("shrink", 2.5), ("crop", 2.5)]


def test_search_off_and_hopeless_zoom_keep_the_first_pass():
    fake, _, info = _run(3.0)  # the default: no search
    assert len(fake.calls) == 1 and info.chosen_index == 0 and math.isnan(info.ratio)
    fake, out, info = _run(20.0, **SEARCH)  # beyond every candidate: four shrink passes, none trusted, no crop
    assert [p.kind for p in info.passes] == ["first"] + ["shrink"] * 4
    assert info.chosen_index == 0 and len(out["keypoints0"]) == 200


def test_batch_adapts_each_pair_on_its_own():
    zooms = [1.0, 2.0, 0.5]
    fake = ZoomLimitedMatcher(zooms)
    data = fake.images()
    out, info = match_with_scale_adaptation(fake, data, None, ScaleAdaptConfig())
    assert [i.chosen.kind for i in info] == ["first", "crop", "crop"]
    assert out["batch_indexes"].tolist() == sorted(out["batch_indexes"].tolist())
    for b, zoom in enumerate(zooms):
        err = _true_error(out, b, zoom)
        assert len(err) > 250 and err.max() < 1e-3


def test_masks_follow_their_image_through_crop_and_resize():
    fake = ZoomLimitedMatcher([2.0])
    data = fake.images()
    data["mask0"], data["mask1"] = torch.ones(1, 240, 320), torch.ones(1, 240, 320)
    seen = []

    def single(pair):
        seen.append((tuple(pair["image0"].shape[-2:]), tuple(pair["mask0"].shape[-2:]),
                     tuple(pair["image1"].shape[-2:]), tuple(pair["mask1"].shape[-2:])))
        return fake(pair)

    match_with_scale_adaptation(single, data, None, ScaleAdaptConfig())
    assert len(seen) == 2 and all(s[0] == s[1] and s[2] == s[3] for s in seen)


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
        config = ScaleAdaptConfig(**SEARCH)
        out, info = match_with_scale_adaptation(single, {"image0": im0, "image1": im1}, first, config)
    assert abs(info[0].ratio / 3.0 - 1) < 0.10
    err = np.linalg.norm(_project(H, out["keypoints0"].double().numpy()) - out["keypoints1"].double().numpy(), axis=1)
    assert len(err) >= 50 and np.median(err) < 3.0 and (err < 6).mean() > 0.6  # in image 1's (zoomed-in) pixels
    first_err = np.linalg.norm(_project(H, first["keypoints0"].double().numpy()) - first["keypoints1"].double().numpy(),
                               axis=1)
    assert (first_err < 6).mean() < 0.2  # the single pass fails at 3x: the adaptation is what recovers it


@pytest.mark.skipif(not PHOTO.is_file(), reason=f"shared data photo {PHOTO} not present")
def test_forward_hook_is_on_by_default_and_follows_the_switch(shipped):
    from asmamba import ASMamba

    im1, im0, H_inv = _zoom_pair(PHOTO, 2.0, 480)  # image 0 is the zoomed-in one
    H = np.linalg.inv(H_inv)
    with torch.inference_mode():
        on = shipped({"image0": im0, "image1": im1})  # the shipped config: adaptation on
        off = shipped({"image0": im0, "image1": im1}, scale_adapt=False)
        # padded into a larger canvas with masks (kornia's layout), the adapted answer is the same
        canvas = [torch.zeros(1, 1, im.shape[-2] + 24, im.shape[-1] + 40) for im in (im0, im1)]
        masks = [torch.zeros(1, c.shape[-2], c.shape[-1]) for c in canvas]
        for c, m, im in zip(canvas, masks, (im0, im1)):
            c[..., : im.shape[-2], : im.shape[-1]] = im
            m[:, : im.shape[-2], : im.shape[-1]] = 1
        padded = shipped({"image0": canvas[0], "image1": canvas[1], "mask0": masks[0], "mask1": masks[1]})
    shares = []
    for out in (on, off):
        k0, k1 = out["keypoints0"].double().numpy(), out["keypoints1"].double().numpy()
        err = np.linalg.norm(_project(H, k0) - k1, axis=1)
        shares.append((err < 3).mean())
    assert shares[0] > 0.8 and shares[0] > shares[1] + 0.2, shares
    assert len(padded["keypoints0"]) == len(on["keypoints0"])
    assert torch.allclose(padded["keypoints1"], on["keypoints1"], atol=1e-3)
    with pytest.raises(ConfigError, match="scale_adapt"):
        ASMamba(overrides=["scale_adapt.min_ratios=2"])
