"""MegaDepth loader: the real test index (parsing, pair list, relative poses) and full items on a synthetic scene
written in the same layout."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from asmamba.io import ImageReadError, data_root
from asmamba.training.data.common import GT_DEPTH
from asmamba.training.data.megadepth import MegaDepthScene, load_megadepth, read_scene_info
from asmamba.training.data.synthetic import generate_scene
from asmamba.training.geometry import warp_points_depth

INDEX_DIR = data_root() / "formats" / "megadepth_test_1500_scene_info"
REAL_INDEX = INDEX_DIR / "0015_0.1_0.3.npz"
needs_index = pytest.mark.skipif(not REAL_INDEX.is_file(), reason=f"real MegaDepth index absent: {REAL_INDEX}")


@needs_index
@pytest.mark.data
def test_real_index_pairs_and_relative_poses(tmp_path):
    info = read_scene_info(REAL_INDEX)
    assert len(info["image_paths"]) == 2429 and len(info["pair_infos"]) == 300
    ds = MegaDepthScene(tmp_path, REAL_INDEX, load_depth=False)
    assert len(ds) == 300  # the file name says every overlap lies in (0.1, 0.3]
    assert all(0.1 <= score <= 0.3 for _, _, score in ds.pairs)
    rng = np.random.default_rng(0)
    for idx in (0, 17, 299):
        (i, j), score, _ = info["pair_infos"][idx]
        meta = ds.pair_metadata(idx)
        assert meta["name0"] == info["image_paths"][i] and meta["name1"] == info["image_paths"][j]
        np.testing.assert_array_equal(meta["K0"], info["intrinsics"][i])
        # T_0to1 moves camera-0 coordinates of any world point to its camera-1 coordinates
        X = np.append(rng.normal(size=3) * 5, 1.0)
        x0, x1 = info["poses"][i] @ X, info["poses"][j] @ X
        np.testing.assert_allclose(meta["T_0to1"] @ x0, x1, atol=1e-9)
        np.testing.assert_allclose(meta["T_0to1"][3], [0, 0, 0, 1])
    # the image of a pair is named in the error when it is missing from the root
    with pytest.raises(ImageReadError, match="549917433_99b38abc41_o.jpg|Undistorted_SfM/0015/images"):
        ds[0]


@needs_index
@pytest.mark.data
def test_real_index_without_depth_files_skips_and_counts(tmp_path):
    with pytest.warns(UserWarning, match="no depth map"):
        ds = MegaDepthScene(tmp_path, REAL_INDEX, load_depth=True)
    assert len(ds) == 0 and ds.num_skipped_pairs == 300
    assert len(ds.missing_depth) == len({k for p in read_scene_info(REAL_INDEX)["pair_infos"] for k in p[0]})


@needs_index
@pytest.mark.data
def test_scene_list_names_missing_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="0022_0.1_0.3.npz"):
        load_megadepth(tmp_path, INDEX_DIR, INDEX_DIR / "megadepth_test_1500.txt", load_depth=False)
    ds = load_megadepth(tmp_path, INDEX_DIR, ["0015_0.1_0.3"], load_depth=False)
    assert len(ds) == 300


def test_unreadable_index_is_named(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.npz"):
        read_scene_info(bad)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        read_scene_info(tmp_path / "nothere.npz")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # 200x150 is not a multiple of 8: the loader resizes to long side 128 -> 128x96 and pads to 128x128
    return generate_scene(tmp_path_factory.mktemp("md"), n_views=3, seed=3, image_size=(200, 150), n_planes=4)


def test_full_items_on_synthetic_scene(scene):
    ds = MegaDepthScene(scene.root, scene.scene_info_path, long_side=128)
    assert len(ds) == len(scene.pair_infos) >= 2
    item = ds[0]
    assert item["image0"].shape == (1, 128, 128) and item["image0"].dtype == torch.float32
    assert item["mask0"].shape == (128, 128) and item["mask0"].dtype == torch.bool
    assert item["mask0"][:96, :128].all() and not item["mask0"][96:].any()
    assert float(item["image0"][0, 96:].abs().max()) == 0.0 and float(item["depth0"][96:].abs().max()) == 0.0
    assert 0.0 <= float(item["image0"].min()) and float(item["image0"].max()) <= 1.0
    assert item["gt_type"] == GT_DEPTH
    np.testing.assert_allclose(item["scale0"].numpy(), [128 / 200, 96 / 150], rtol=1e-6)
    i, j = (int(v) for v in scene.pair_infos[0][0])
    # K at network resolution: projecting a 3D point with it equals projecting at the original resolution and
    # mapping the pixel through the resize (pixel centres at integers: x' = (x + 0.5) * s - 0.5)
    K_orig, s = scene.cameras[i].K, np.array([128 / 200, 96 / 150])
    X = np.array([0.3, -0.2, 5.0])
    p_orig = (K_orig @ X)[:2] / X[2]
    p_net = (item["K0"].double().numpy() @ X)[:2] / X[2]
    np.testing.assert_allclose(p_net, (p_orig + 0.5) * s - 0.5, atol=1e-4)
    T = scene.cameras[j].T_world_to_cam @ np.linalg.inv(scene.cameras[i].T_world_to_cam)
    np.testing.assert_allclose(item["T_0to1"].numpy(), T, atol=1e-5)
    np.testing.assert_allclose(item["T_1to0"].numpy(), np.linalg.inv(T), atol=1e-4)
    # the depth ground truth maps image content onto the same content
    batch = default_collate([item, ds[1]])
    ys, xs = torch.nonzero(batch["depth0"][0] > 0, as_tuple=True)
    pts = torch.stack([xs, ys], -1).float()[None]
    valid, pts1 = warp_points_depth(
        pts, batch["depth0"][:1], batch["depth1"][:1], batch["T_0to1"][:1], batch["K0"][:1], batch["K1"][:1]
    )
    assert valid.float().mean() > 0.2
    v0 = batch["image0"][0, 0, ys, xs][valid[0]]
    grid = torch.stack([(pts1[0, valid[0], 0] + 0.5) / 64 - 1, (pts1[0, valid[0], 1] + 0.5) / 64 - 1], -1)
    v1 = torch.nn.functional.grid_sample(batch["image1"][:1], grid[None, None], align_corners=False)[0, 0, 0]
    shuffled = v0[torch.randperm(len(v0), generator=torch.Generator().manual_seed(0))]
    assert float((v1 - v0).abs().mean()) < 0.35 * float((shuffled - v0).abs().mean())


def test_missing_depth_and_image_files(scene, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(scene.root, root)
    (root / scene.depth_paths[2]).unlink()
    with pytest.warns(UserWarning, match="1 image\\(s\\) have no depth map"):
        ds = MegaDepthScene(root, root / "scene_info" / f"{scene.scene}.npz", long_side=128)
    uses_2 = sum(1 for (a, b), _, _ in scene.pair_infos if 2 in (int(a), int(b)))
    assert ds.num_skipped_pairs == uses_2 > 0 and len(ds) == len(scene.pair_infos) - uses_2
    assert ds.missing_depth == [str(root / scene.depth_paths[2])]
    (root / scene.depth_paths[1]).write_bytes(b"not hdf5")
    broken = next(k for k, (i, j, _) in enumerate(ds.pairs) if 1 in (i, j))
    with pytest.raises(ValueError, match="0001.h5"):
        ds[broken]
    (root / scene.image_paths[0]).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = MegaDepthScene(root, root / "scene_info" / f"{scene.scene}.npz", long_side=128)
    with pytest.raises(ImageReadError, match="0000.jpg"):
        ds[0]
    with pytest.raises(TypeError, match="unknown MegaDepth options"):
        MegaDepthScene(root, root / "scene_info" / f"{scene.scene}.npz", longside=128)


def test_config_built_mixed_batch_collates_and_supervises(scene):
    from asmamba.training.data import build_dataset
    from asmamba.training.supervision import compute_supervision_coarse

    mixed = build_dataset(
        {
            "type": "concat",
            "datasets": [
                {"type": "megadepth", "root": str(scene.root), "index_dir": str(scene.root / "scene_info"),
                 "long_side": 128},
                {"type": "homography", "sources": ["skimage:brick"], "output_size": [128, 128]},
            ],
        }
    )
    assert len(mixed) == len(scene.pair_infos) + 1
    batch = default_collate([mixed[0], mixed[len(mixed) - 1]])
    assert batch["gt_type"].tolist() == [0, 1] and batch["image0"].shape == (2, 1, 128, 128)
    compute_supervision_coarse(batch)
    per_item = torch.bincount(batch["spv_b_ids"], minlength=2)
    assert (per_item > 20).all()
    with pytest.raises(ValueError, match="index_dir"):
        build_dataset("megadepth", root=str(scene.root))
