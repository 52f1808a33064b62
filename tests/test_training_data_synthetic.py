"""The synthetic plane scene: its depth ground truth equals the analytic plane-induced homography, occluded points
are rejected, and it is written in MegaDepth's real index format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from asmamba.io import data_root
from asmamba.training.data.megadepth import MegaDepthScene
from asmamba.training.data.synthetic import Camera, Plane, generate_scene, look_at, main as synthetic_main
from asmamba.training.geometry import warp_points_depth

W, H = 240, 176  # multiples of 8: the loader keeps the rendered resolution, so depth is sampled exactly
F = 210.0


def _explicit_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("planes")
    back = Plane(np.array([0.0, 0.0, 6.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (7.0, 5.0), "skimage/brick")
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    front = Plane(np.array([0.2, 0.1, 2.0]), np.array([c, 0, -s]), np.array([0, 1.0, 0]), (0.9, 0.8), "skimage/gravel")
    K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1.0]])
    cams = [
        Camera(K, look_at(np.array([0.0, 0.0, -4.0]), np.array([0.0, 0.0, 2.0]))),
        Camera(K, look_at(np.array([2.2, 0.4, -4.0]), np.array([0.3, 0.0, 2.0]))),
    ]
    scene = generate_scene(root, seed=0, image_size=(W, H), scene="planes", planes=[back, front], cameras=cams)
    return scene


@pytest.fixture(scope="module")
def explicit_scene(tmp_path_factory):
    return _explicit_scene(tmp_path_factory)


def _plane_in_camera(plane: Plane, T_w2c: np.ndarray) -> tuple[np.ndarray, float]:
    """Plane as n^T X + d = 0 in camera coordinates."""
    n = T_w2c[:3, :3] @ plane.normal
    return n, -float(n @ (T_w2c[:3, :3] @ plane.centre + T_w2c[:3, 3]))


def _occluded(X: np.ndarray, centre_cam: np.ndarray, plane: Plane, margin: float) -> np.ndarray:
    """Whether the segment from the camera centre to each world point X (N, 3) crosses the plane's rectangle,
    shrunk (margin > 0) or grown (margin < 0) by ``margin``."""
    n = plane.normal
    s = ((plane.centre - centre_cam) @ n) / ((X - centre_cam) @ n)
    hit = centre_cam + s[:, None] * (X - centre_cam)
    a, b = (hit - plane.centre) @ plane.axis_u, (hit - plane.centre) @ plane.axis_v
    inside = (np.abs(a) < plane.half_size[0] - margin) & (np.abs(b) < plane.half_size[1] - margin)
    return (s > 0) & (s < 1) & inside


def test_depth_warp_equals_plane_homography_and_rejects_occlusion(explicit_scene):
    scene = explicit_scene
    ds = MegaDepthScene(scene.root, scene.scene_info_path, long_side=W)
    assert len(ds) == 1
    item = ds[0]
    cam0, cam1 = scene.cameras
    T = cam1.T_world_to_cam @ np.linalg.inv(cam0.T_world_to_cam)
    np.testing.assert_allclose(item["T_0to1"].numpy(), T, atol=1e-5)
    np.testing.assert_allclose(item["K0"].numpy(), cam0.K, atol=1e-4)  # no resize: K unchanged
    depth0 = item["depth0"].numpy()[:H, :W]
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1).astype(np.float64)
    rays = pix @ np.linalg.inv(cam0.K).T
    C1 = -cam1.T_world_to_cam[:3, :3].T @ cam1.T_world_to_cam[:3, 3]
    checked = {"plane": 0, "occluded": 0, "visible": 0}
    for k, plane in enumerate(scene.planes):
        n, d = _plane_in_camera(plane, cam0.T_world_to_cam)
        z = -d / (rays @ n)  # analytic depth of the plane along every ray
        on_plane = (np.abs(depth0.ravel() - z) < 1e-4 * z).reshape(H, W)
        # keep pixels whose whole 5x5 neighbourhood lies on this plane (no boundary rounding ambiguity)
        core = on_plane.copy()
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                core &= np.roll(np.roll(on_plane, dy, 0), dx, 1)
        core[:2], core[-2:], core[:, :2], core[:, -2:] = False, False, False, False
        sel = np.nonzero(core.ravel())[0]
        Hmat = cam1.K @ (T[:3, :3] - np.outer(T[:3, 3], n) / d) @ np.linalg.inv(cam0.K)
        expected = pix[sel] @ Hmat.T
        expected = expected[:, :2] / expected[:, 2:]
        valid, warped = warp_points_depth(
            torch.from_numpy(pix[sel, :2])[None], item["depth0"][None].double(), item["depth1"][None].double(),
            item["T_0to1"][None].double(), item["K0"][None].double(), item["K1"][None].double(),
        )
        valid, warped = valid[0].numpy(), warped[0].numpy()
        assert valid.any()
        np.testing.assert_allclose(warped[valid], expected[valid], atol=2e-2)
        checked["plane"] += int(valid.sum())
        if k == 0:  # the back wall: which points does the front plane hide from camera 1?
            X_cam0 = rays[sel] * z[sel, None]
            X_world = (X_cam0 - cam0.T_world_to_cam[:3, 3]) @ cam0.T_world_to_cam[:3, :3]
            front = scene.planes[1]
            hidden = _occluded(X_world, C1, front, margin=0.05)
            clear = ~_occluded(X_world, C1, front, margin=-0.05)
            inside = (expected[:, 0] > 2) & (expected[:, 0] < W - 3) & (expected[:, 1] > 2) & (expected[:, 1] < H - 3)
            assert hidden.sum() > 100, "the scene must contain occluded back-wall points"
            assert not valid[hidden].any(), "points hidden by the front plane must be rejected"
            assert valid[clear & inside].all(), "unoccluded covisible points must be accepted"
            checked["occluded"] += int(hidden.sum())
            checked["visible"] += int((clear & inside).sum())
    assert checked["plane"] > 5000 and checked["visible"] > 1000


def test_scene_info_format_matches_real_index(explicit_scene):
    info = pickle.loads(explicit_scene.scene_info_path.read_bytes())
    loaded = np.load(explicit_scene.scene_info_path, allow_pickle=True)
    assert isinstance(loaded, dict) and set(loaded) == set(info)
    assert set(info) == {"image_paths", "depth_paths", "intrinsics", "poses", "pair_infos"}
    (i, j), score, central = info["pair_infos"][0]
    assert (int(i), int(j)) == (0, 1) and 0.0 < score <= 1.0 and central.shape == (4,)
    real = data_root() / "formats/megadepth_test_1500_scene_info/0015_0.1_0.3.npz"
    if real.is_file():  # same container types as the real MegaDepth index
        ref = np.load(real, allow_pickle=True)
        assert set(ref) == set(info)
        for key in ("image_paths", "depth_paths", "intrinsics", "poses"):
            assert type(ref[key]) is type(info[key]) and ref[key].dtype == info[key].dtype
        assert type(ref["pair_infos"]) is type(info["pair_infos"])
        assert info["poses"][0].shape == ref["poses"][np.flatnonzero(ref["image_paths"] != None)[0]].shape  # noqa: E711


def test_random_scene_cli(tmp_path, capsys):
    assert synthetic_main([str(tmp_path), "--views", "3", "--size", "96x72", "--planes", "3", "--seed", "5"]) == 0
    assert "synth0005" in capsys.readouterr().out
    info = np.load(tmp_path / "scene_info/synth0005.npz", allow_pickle=True)
    assert len(info["image_paths"]) == 3
    for rel in list(info["image_paths"]) + list(info["depth_paths"]):
        assert (tmp_path / rel).is_file()
    assert all(0 < p[1] <= 1 for p in info["pair_infos"])
    with pytest.raises(SystemExit):
        synthetic_main([str(tmp_path), "--size", "big"])
