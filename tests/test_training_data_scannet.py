"""ScanNet loader: the real ScanNet-1500 index (pairs, rel_pose convention, intrinsics lookup) checked against
SuperGlue's pairs file, and full items on a tiny fake scene written in the real layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from asmamba.io import data_root, read_pose_pairs
from asmamba.training.data.scannet import ScanNetPairs

FORMATS = data_root() / "formats" / "scannet_test_1500"
SAMPLES = data_root() / "pose" / "scannet_samples" / "pairs.txt"
needs_index = pytest.mark.skipif(
    not (FORMATS / "test.npz").is_file() or not SAMPLES.is_file(), reason=f"ScanNet index or samples absent: {FORMATS}"
)


def _index_position(names: np.ndarray, name0: str, name1: str) -> int:
    scene, sub = int(name0[5:9]), int(name0[10:12])
    f0, f1 = int(name0.split("frame-")[1][:6]), int(name1.split("frame-")[1][:6])
    hits = np.flatnonzero((names == [scene, sub, f0, f1]).all(1))
    return int(hits[0]) if len(hits) else -1


@needs_index
@pytest.mark.data
def test_real_index_rel_pose_and_intrinsics_match_superglue_pairs(tmp_path):
    ds = ScanNetPairs(tmp_path, FORMATS / "test.npz", FORMATS / "intrinsics.npz", load_depth=False)
    assert len(ds) == 1500
    matched = 0
    for pair in read_pose_pairs(SAMPLES):
        idx = _index_position(ds.names, pair.name0, pair.name1)
        if idx < 0:
            continue
        matched += 1
        meta = ds.pair_metadata(idx)  # no pose files under tmp_path: rel_pose of the index
        # SuperGlue's T_0to1 (camera 0 -> camera 1) is the stored rel_pose
        np.testing.assert_allclose(meta["T_0to1"], pair.T_0to1, atol=1e-5)
        # intrinsics.npz holds the 1296x968 colour K scaled to 640x480
        K_expected = np.diag([640 / 1296, 480 / 968, 1.0]) @ pair.K0
        np.testing.assert_allclose(meta["K0"], K_expected, rtol=1e-6)
        assert meta["name0"] == f"{pair.name0[:12]}/color/{int(pair.name0.split('frame-')[1][:6])}.jpg"
    assert matched >= 14


def _write_fake_scene(root, scene: str, frames, c2w, rng):
    import skimage.data

    base = cv2.resize(skimage.data.astronaut(), (640, 480))
    for folder in ("color", "depth", "pose"):
        (root / scene / folder).mkdir(parents=True, exist_ok=True)
    for frame, pose in zip(frames, c2w):
        cv2.imwrite(str(root / scene / "color" / f"{frame}.jpg"), np.roll(base, int(frame) % 50, axis=1))
        depth_mm = rng.integers(500, 4000, (480, 640)).astype(np.uint16)
        depth_mm[:10] = 0
        cv2.imwrite(str(root / scene / "depth" / f"{frame}.png"), depth_mm)
        np.savetxt(root / scene / "pose" / f"{frame}.txt", pose)


@pytest.fixture()
def fake_scannet(tmp_path):
    """Two pairs of scene0707_00 with the real rel_pose values, pose files consistent with them."""
    rng = np.random.default_rng(0)
    if (FORMATS / "test.npz").is_file():
        with np.load(FORMATS / "test.npz") as d:
            names, rel = d["name"][:2].astype(np.int64), d["rel_pose"][:2].astype(np.float64)
    else:  # a hand-made relative pose in the same format
        names = np.array([[707, 0, 15, 585], [707, 0, 45, 105]])
        R = cv2.Rodrigues(np.array([0.1, -0.2, 0.05]))[0]
        rel = np.tile(np.concatenate([R, [[0.3], [0.0], [0.1]]], 1).ravel(), (2, 1))
    K = np.array([[577.0, 0, 319.5], [0, 578.0, 239.5], [0, 0, 1]])
    np.savez(tmp_path / "intrinsics.npz", scene0707_00=K)
    np.savez(tmp_path / "pairs.npz", name=names.astype(np.uint16), rel_pose=rel.astype(np.float32))
    c2w = {}
    for (_, _, f0, f1), r in zip(names, rel):
        T_rel = np.eye(4)
        T_rel[:3] = r.reshape(3, 4)
        if f0 not in c2w:
            A = np.eye(4)
            A[:3, :3] = cv2.Rodrigues(rng.normal(size=3))[0]
            A[:3, 3] = rng.normal(size=3)
            c2w[f0] = A
        c2w[f1] = c2w[f0] @ np.linalg.inv(T_rel)  # camera-1-to-world consistent with T_0to1 = T_rel
    frames = sorted(c2w)
    _write_fake_scene(tmp_path / "scans", "scene0707_00", frames, [c2w[f] for f in frames], rng)
    return tmp_path, names, rel, K


def test_pose_files_reproduce_rel_pose_and_items(fake_scannet):
    root, names, rel, K = fake_scannet
    ds = ScanNetPairs(root / "scans", root / "pairs.npz", root / "intrinsics.npz", pose_source="files")
    assert len(ds) == 2
    for idx in range(2):
        T = ds.relative_pose(idx)
        np.testing.assert_allclose(T[:3], rel[idx].reshape(3, 4), atol=1e-5)
    item = ds[0]
    assert item["image0"].shape == (1, 480, 640) and item["depth0"].shape == (480, 640)
    assert item["mask0"].all() and item["K0"].shape == (3, 3)
    np.testing.assert_allclose(item["K0"].numpy(), K, rtol=1e-6)
    stored = cv2.imread(str(root / "scans/scene0707_00/depth" / f"{names[0][2]}.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(item["depth0"].numpy(), stored / 1000.0, rtol=1e-6)
    assert float(item["depth0"][:10].abs().max()) == 0.0
    np.testing.assert_allclose(item["T_1to0"].numpy() @ item["T_0to1"].numpy(), np.eye(4), atol=1e-4)
    # a smaller network size rescales K (pixel centres at integers) and resamples depth
    small = ScanNetPairs(root / "scans", root / "pairs.npz", root / "intrinsics.npz", image_size=(320, 240))[0]
    assert small["image0"].shape == (1, 240, 320) and small["depth0"].shape == (240, 320)
    np.testing.assert_allclose(small["K0"][0, 0].item(), K[0, 0] / 2, rtol=1e-6)
    np.testing.assert_allclose(small["K0"][0, 2].item(), (K[0, 2] + 0.5) / 2 - 0.5, rtol=1e-6)
    full = item["depth0"]
    assert torch.equal(small["depth0"], full[::2, ::2]) or torch.equal(small["depth0"], full[1::2, 1::2])


def test_missing_files_are_named_or_skipped(fake_scannet):
    root, names, _, _ = fake_scannet
    scene = root / "scans" / "scene0707_00"
    (scene / "depth" / f"{names[1][3]}.png").unlink()
    with pytest.warns(UserWarning, match="no depth map"):
        ds = ScanNetPairs(root / "scans", root / "pairs.npz", root / "intrinsics.npz")
    assert len(ds) == 1 and ds.num_skipped_pairs == 1
    assert ds.missing_depth == [str(scene / "depth" / f"{names[1][3]}.png")]
    (scene / "pose" / f"{names[0][3]}.txt").unlink()
    files = ScanNetPairs(root / "scans", root / "pairs.npz", root / "intrinsics.npz", load_depth=False,
                         pose_source="files")
    with pytest.raises(FileNotFoundError, match=f"pose/{names[0][3]}.txt"):
        files.relative_pose(0)
    np.savetxt(scene / "pose" / f"{names[0][3]}.txt", np.full((4, 4), -np.inf))
    with pytest.raises(ValueError, match="not a finite 4x4"):
        files.relative_pose(0)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        ScanNetPairs(root / "scans", root / "nothere.npz", root / "intrinsics.npz")
    np.savez(root / "other_intrinsics.npz", scene0001_00=np.eye(3))
    with pytest.raises(ValueError, match="scene0707_00"):
        ScanNetPairs(root / "scans", root / "pairs.npz", root / "other_intrinsics.npz", load_depth=False)
