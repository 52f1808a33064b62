"""Sparse (SfM) ground truth: the low-resolution depth splat, epipolar geometry from a pose, the supervised-pair
mask checked against a dense-depth scene's full ground truth, the loss ignoring undecided pairs, padded batches and
repeated datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from asmamba.training.data import MegaDepthScene, build_dataset
from asmamba.training.data.common import make_pair_item, resize_depth_nearest
from asmamba.training.data.sfm_scene import covisible_pairs, SparseView, sparse_depth_map
from asmamba.training.data.synthetic import generate_scene
from asmamba.training.losses import ASMambaLoss
from asmamba.training.supervision import (
    compute_supervision_coarse,
    epipolar_distance_to_lines,
    fundamental_from_pose,
)
from asmamba.training.trainer import add_valid_sizes, collate


def _rotation(rng: np.random.Generator, angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# ---------------------------------------------------------------------------------------------- depth splat
def test_sparse_depth_map_inverts_the_network_resize():
    rng = np.random.default_rng(0)
    w, h, stride = 200, 120, 8
    w_lr, h_lr = 25, 15
    # one point per low-resolution cell, away from the cell borders, so no two share a cell
    cells = rng.permutation(w_lr * h_lr)[:60]
    u, v = cells % w_lr, cells // w_lr
    xy = np.stack([(u + rng.uniform(0.2, 0.8, 60)) * w / w_lr - 0.5, (v + rng.uniform(0.2, 0.8, 60)) * h / h_lr - 0.5], 1)
    z = rng.uniform(2.0, 9.0, 60)
    lr = sparse_depth_map(xy, z, (w, h), stride, splat=0)
    assert lr.shape == (h_lr, w_lr) and (lr > 0).sum() == 60
    # the loaders resample depth by nearest pixel: every point's own pixel must read its depth back
    full = resize_depth_nearest(lr, (w, h))
    px = np.round(xy).astype(int)
    np.testing.assert_allclose(full[px[:, 1], px[:, 0]], z, rtol=1e-6)


def test_sparse_depth_map_splat_keeps_the_nearest_depth():
    xy = np.array([[20.0, 20.0], [27.0, 20.0], [-5.0, 3.0]])  # neighbouring cells 2 and 3; one point outside
    lr = sparse_depth_map(xy, np.array([5.0, 3.0, 1.0]), (80, 80), 8, splat=1)
    # cell 2 (x 16..23) and its neighbours get 5, cell 3 (24..31) and its neighbours get 3; where both reach: 3
    assert lr[2, 1] == 5.0 and lr[2, 2] == 3.0 and lr[2, 3] == 3.0 and lr[2, 4] == 3.0 and lr[2, 5] == 0.0
    assert lr[1, 1] == 5.0 and lr[3, 4] == 3.0 and lr[0, 0] == 0.0 and lr[4, 2] == 0.0


def test_covisible_pairs_count_shared_points():
    def view(ids: list[int]) -> SparseView:
        n = len(ids)
        return SparseView("x", 10, 10, np.eye(3), np.eye(4), np.zeros((n, 2)), np.ones(n), np.array(ids))

    pairs = covisible_pairs([view([1, 2, 3, 4]), view([3, 4, 5]), view([9])], min_shared=2)
    assert len(pairs) == 1
    (i, j), overlap, shared = pairs[0]
    assert (i, j) == (0, 1) and shared == 2 and overlap == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------- epipolar geometry
def test_fundamental_from_pose_against_projected_points():
    rng = np.random.default_rng(1)
    K0 = np.array([[300.0, 0, 160], [0, 310, 120], [0, 0, 1]])
    K1 = np.array([[280.0, 0, 150], [0, 280, 110], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _rotation(rng, 0.2), [0.8, -0.1, 0.2]
    X = rng.uniform([-3, -2, 6], [3, 2, 12], size=(50, 3))  # camera-0 coordinates
    x0 = X @ K0.T
    x0 = x0[:, :2] / x0[:, 2:]
    X1 = X @ T[:3, :3].T + T[:3, 3]
    x1 = X1 @ K1.T
    x1 = x1[:, :2] / x1[:, 2:]
    F = fundamental_from_pose(*(torch.tensor(a)[None] for a in (K0, K1, T)))
    d = epipolar_distance_to_lines(torch.tensor(x0)[None], torch.tensor(x1)[None], F)[0]
    assert torch.diagonal(d).abs().max() < 1e-3  # every projection pair lies on its epipolar line
    # moving image-1 points along the line's normal by 7 px gives a distance of 7 px
    lines = np.concatenate([x0, np.ones((50, 1))], 1) @ F[0].numpy().T
    normal = lines[:, :2] / np.linalg.norm(lines[:, :2], axis=1, keepdims=True)
    moved = epipolar_distance_to_lines(torch.tensor(x0)[None], torch.tensor(x1 + 7 * normal)[None], F)[0]
    torch.testing.assert_close(torch.diagonal(moved), torch.full((50,), 7.0), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------- supervised pairs
@pytest.fixture(scope="module")
def dense_scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("sparse"), n_views=3, seed=5, image_size=(160, 120), n_planes=4)


def _sparsified(item: dict, keep: float, seed: int) -> dict:
    """The same pair with depth known only in a random subset of 8x8 blocks (as splatted SfM points)."""
    rng = np.random.default_rng(seed)
    sparse = dict(item)
    for k in ("depth0", "depth1"):
        H, W = item[k].shape
        blocks = torch.from_numpy(rng.random((H // 8, W // 8)) < keep)
        block_mask = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)
        sparse[k] = item[k] * block_mask
    sparse["sparse_gt"] = True
    return sparse


def test_sparse_supervision_never_contradicts_the_dense_ground_truth(dense_scene):
    ds = MegaDepthScene(dense_scene.root, dense_scene.scene_info_path, long_side=None, pad_square=False)
    checked = 0
    for idx in range(len(ds)):
        item = ds[idx]
        dense = compute_supervision_coarse(default_collate([item]), epipolar_margin=12.0)
        sparse = compute_supervision_coarse(default_collate([_sparsified(item, 0.3, idx)]), epipolar_margin=12.0)
        assert bool(sparse["spv_sparse"][0]) and not bool(dense["spv_sparse"][0])
        assert dense["spv_supervised"].all()  # dense items: every pair is decided
        gt_dense = dense["conf_matrix_gt"][0] > 0.5
        gt_sparse = sparse["conf_matrix_gt"][0] > 0.5
        supervised = sparse["spv_supervised"][0]
        # positives of the sparse item are positives of the full ground truth
        assert (gt_sparse & ~gt_dense).sum() == 0
        # no true match is supervised as a negative
        assert (supervised & gt_dense & ~gt_sparse).sum() == 0
        # sparse depth leaves pairs undecided, but the epipolar negatives still decide most of them
        assert 0.3 < supervised.float().mean() < 1.0
        checked += int(gt_dense.sum())
    assert checked > 50


def test_loss_ignores_undecided_pairs():
    torch.manual_seed(0)
    B, h, w = 1, 4, 4
    L = h * w
    conf = torch.rand(B, L, L).clamp(0.01, 0.99)
    gt = torch.zeros(B, L, L)
    gt[0, 0, 1] = 1.0
    supervised = torch.zeros(B, L, L, dtype=torch.bool)
    supervised[0, 0] = True
    supervised[0, :, 1] = True
    data = {
        "hw_c": (h, w), "valid_hw0_c": torch.tensor([[h, w]]), "valid_hw1_c": torch.tensor([[h, w]]),
        "conf_matrix": conf, "conf_matrix_gt": gt, "spv_supervised": supervised, "spv_sparse": torch.tensor([True]),
        "spv_valid0": torch.zeros(B, L, dtype=torch.bool), "spv_valid1": torch.zeros(B, L, dtype=torch.bool),
        "spv_flow0": torch.zeros(B, L, 2), "spv_flow1": torch.zeros(B, L, 2), "flows": [],
        "geom0": torch.zeros(B, h, w, 3), "geom1": torch.zeros(B, h, w, 3), "expec_f": torch.zeros(0, 3),
    }
    loss = ASMambaLoss({"coarse": 1.0})
    base = loss(data)[1]["coarse"]
    undecided = dict(data, conf_matrix=conf.clone())
    undecided["conf_matrix"][0, 5, 7] = 0.99  # neither row 0 nor column 1
    assert loss(undecided)[1]["coarse"] == pytest.approx(base, abs=1e-7)
    decided = dict(data, conf_matrix=conf.clone())
    decided["conf_matrix"][0, 5, 1] = 0.99  # column 1 holds a GT match: a negative
    assert loss(decided)[1]["coarse"] > base + 1e-4
    # the covisibility classifier gets no target from a sparse item
    geom = loss.__class__({"geom": 1.0})
    assert geom(data)[1]["geom"] == 0.0


# ---------------------------------------------------------------------------------------------- batches, datasets
def test_collate_pads_items_of_different_sizes():
    a = make_pair_item(np.full((16, 24), 255, np.uint8), np.full((16, 24), 255, np.uint8), np.ones((16, 24), bool),
                       np.ones((16, 24), bool), "a", H_0to1=np.eye(3))
    b = make_pair_item(np.full((24, 16), 255, np.uint8), np.full((8, 8), 255, np.uint8), np.ones((24, 16), bool),
                       np.ones((8, 8), bool), "b", H_0to1=np.eye(3))
    batch = add_valid_sizes(collate([a, b]))
    # one canvas for both views: the model takes image0 and image1 of one size
    assert batch["image0"].shape == (2, 1, 24, 24) and batch["image1"].shape == (2, 1, 24, 24)
    assert batch["depth1"].shape == (2, 24, 24) and not batch["mask1"][:, 16:].any()
    assert batch["mask0"][0].sum() == 16 * 24 and not batch["mask0"][0, 16:].any()
    assert batch["image0"][1, 0, :, 16:].abs().sum() == 0 and batch["image0"][1, 0, :24, :16].min() == 1.0
    assert batch["valid_hw1"].tolist() == [[16, 24], [8, 8]]
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_repeat_lists_a_dataset_n_times_and_rejects_bad_values():
    conf = {"type": "homography", "sources": ["skimage"], "output_size": [64, 48], "pairs_per_image": 2}
    once = build_dataset(conf)
    thrice = build_dataset(dict(conf, repeat=3))
    assert len(thrice) == 3 * len(once)
    torch.testing.assert_close(thrice[len(once) + 1]["image0"], once[1]["image0"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="repeat"):
            build_dataset(dict(conf, repeat=bad))


# ---------------------------------------------------------------------------------------------- COLMAP model -> scene
def test_colmap_model_to_sparse_scene_warps_like_the_analytic_cameras(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    import cv2

    from asmamba.training.data.sfm_scene import write_sparse_scene

    W, H, f = 160, 128, 120.0
    K = np.array([[f, 0, 80.0], [0, f, 64.0], [0, 0, 1]])  # COLMAP frame (pixel centres at +0.5)
    rng = np.random.default_rng(0)
    R1, t1 = _rotation(rng, 0.1), np.array([0.8, 0.05, 0.1])
    poses = [(np.eye(3), np.zeros(3)), (R1, t1)]
    # 3D points on the plane Z = 10 of camera 0: image 0's depth is exactly 10 everywhere
    uv = rng.uniform([4, 4], [W - 4, H - 4], (400, 2))
    X = np.concatenate([(uv - K[:2, 2]) / f * 10.0, np.full((400, 1), 10.0)], 1)
    (tmp_path / "images").mkdir()
    texture = (rng.random((H, W)) * 255).astype(np.uint8)
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_name(1, "PINHOLE", f, W, H)
    camera.params = [f, f, 80.0, 64.0]
    rec.add_camera_with_trivial_rig(camera)
    for k, (R, t) in enumerate(poses):
        cv2.imwrite(str(tmp_path / "images" / f"{k}.jpg"), texture)
        x = (X @ R.T + t) @ K.T
        points = [pycolmap.Point2D(p) for p in x[:, :2] / x[:, 2:]]
        image = pycolmap.Image(name=f"{k}.jpg", camera_id=1, image_id=k + 1, points2D=points)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
    for n in range(len(X)):
        track = pycolmap.Track()
        track.add_element(1, n)
        track.add_element(2, n)
        rec.add_point3D(X[n], track)
    (tmp_path / "model").mkdir()
    rec.write(str(tmp_path / "model"))

    index = write_sparse_scene(tmp_path / "model", tmp_path / "images", tmp_path / "out", "plane", min_shared=10)
    ds = MegaDepthScene(tmp_path / "out", index, long_side=None, pad_square=False, sparse_depth=True)
    assert len(ds) == 1
    item = ds[0]
    assert item["sparse_gt"] and tuple(item["image0"].shape[-2:]) == (H, W)
    batch = compute_supervision_coarse(default_collate([item]))
    valid = batch["spv_valid0"][0]
    assert valid.sum() > 30
    # where image 0's cell centres land in image 1, from the cameras alone (our frame: centres at integers)
    c0 = batch["spv_pt0_i"][0][valid].double().numpy()
    rays = np.concatenate([c0 + 0.5, np.ones((len(c0), 1))], 1) @ np.linalg.inv(K).T
    x1 = (rays * 10.0) @ R1.T + t1
    x1 = x1 @ K.T
    expected = x1[:, :2] / x1[:, 2:] - 0.5
    np.testing.assert_allclose(batch["spv_w_pt0_i"][0][valid].double().numpy(), expected, atol=0.02)


def test_sparse_scene_errors_name_the_problem(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    from asmamba.training.data.sfm_scene import read_views, write_sparse_scene

    with pytest.raises(FileNotFoundError, match="COLMAP model folder"):
        write_sparse_scene(tmp_path / "nope", tmp_path, tmp_path / "out", "s")
    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="image folder"):
        write_sparse_scene(tmp_path / "model", tmp_path / "no_images", tmp_path / "out", "s")
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 100.0, 64, 48))
    image = pycolmap.Image(name="a.jpg", camera_id=1, image_id=1, points2D=[])
    rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    with pytest.raises(ValueError, match="undistort"):
        read_views(rec)
