"""Evaluation runners and CLI with oracle matchers (ground-truth correspondences): errors must vanish on real
homography pairs of all three layouts and on a synthetic pose scene, through pairs files and datasets."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from asmamba.io import data_root, load_image
from asmamba.training.data.megadepth import MegaDepthScene
from asmamba.training.data.synthetic import generate_scene
from asmamba.training.evaluation import cli
from asmamba.training.evaluation.homography import evaluate_homography, find_homography_pairs, homography_markdown
from asmamba.training.evaluation.pose import evaluate_pose, pose_markdown
from asmamba.training.geometry import warp_points_depth

HOMOGRAPHY = data_root() / "homography"
needs_homography = pytest.mark.skipif(not HOMOGRAPHY.is_dir(), reason=f"homography data absent: {HOMOGRAPHY}")


def _key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.detach().cpu().float().numpy().tobytes()).hexdigest()


class LookupMatcher(nn.Module):
    """Kornia-contract oracle: returns the correspondences registered for a pair of image tensors."""

    def __init__(self):
        super().__init__()
        self.table: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, image0: torch.Tensor, image1: torch.Tensor, k0: np.ndarray, k1: np.ndarray) -> None:
        self.table[(_key(image0), _key(image1))] = (k0, k1)

    def forward(self, data: dict) -> dict:
        k0, k1 = self.table[(_key(data["image0"]), _key(data["image1"]))]
        n = len(k0)
        return {
            "keypoints0": torch.as_tensor(k0, dtype=torch.float32),
            "keypoints1": torch.as_tensor(k1, dtype=torch.float32),
            "confidence": torch.ones(n),
            "batch_indexes": torch.zeros(n, dtype=torch.long),
        }


def _resize_matrix(scale) -> np.ndarray:
    sx, sy = scale
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def _homography_oracle(folders, resize_max) -> LookupMatcher:
    oracle = LookupMatcher()
    for folder in folders:
        for pair in find_homography_pairs(folder):
            im0, s0 = load_image(pair.path0, grayscale=True, max_side=resize_max)
            im1, s1 = load_image(pair.path1, grayscale=True, max_side=resize_max)
            H = _resize_matrix(s1) @ pair.H @ np.linalg.inv(_resize_matrix(s0))
            h0, w0 = im0.shape[-2:]
            h1, w1 = im1.shape[-2:]
            ys, xs = np.mgrid[4:h0 - 4:11, 4:w0 - 4:11]
            k0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
            q = np.concatenate([k0, np.ones((len(k0), 1))], 1) @ H.T
            k1 = q[:, :2] / q[:, 2:]
            keep = (q[:, 2] > 0) & (k1[:, 0] >= 0) & (k1[:, 0] <= w1 - 1) & (k1[:, 1] >= 0) & (k1[:, 1] <= h1 - 1)
            oracle.add(im0, im1, k0[keep], k1[keep])
    return oracle


@needs_homography
@pytest.mark.data
@pytest.mark.parametrize("resize_max", [None, 400])
def test_homography_oracle_gives_zero_error(resize_max):
    folders = [HOMOGRAPHY / "hpatches_v_dogman", HOMOGRAPHY / "oxford_graf", HOMOGRAPHY / "cmp_homogr"]
    oracle = _homography_oracle(folders, resize_max)
    results = evaluate_homography(oracle, folders, resize_max=resize_max, progress=False)
    names = [d["name"] for d in results["datasets"]]
    assert names == ["hpatches_v_dogman", "oxford_graf", "cmp_homogr"]
    assert [d["pairs"] for d in results["datasets"]] == [5, 1, 8]
    for d in results["datasets"]:
        for record in d["per_pair"]:
            assert record["err_opencv"] < 0.05 and record["err_poselib"] < 0.05, record
        assert d["auc_opencv"]["3"] > 98.0 and d["auc_poselib"]["10"] > 99.0
    assert "| hpatches_v_dogman | 5 |" in homography_markdown(results)


def test_homography_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="no homography sequence"):
        find_homography_pairs(tmp_path)
    (tmp_path / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(FileNotFoundError, match="no image 1"):
        find_homography_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_homography_pairs(tmp_path / "nope")


@pytest.fixture(scope="module")
def pose_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("pose")
    scene = generate_scene(root, n_views=3, seed=4, image_size=(200, 152), n_planes=4)
    lines = []
    for (i, j), _, _ in scene.pair_infos:
        ci, cj = scene.cameras[int(i)], scene.cameras[int(j)]
        T = cj.T_world_to_cam @ np.linalg.inv(ci.T_world_to_cam)
        numbers = np.concatenate([ci.K.ravel(), cj.K.ravel(), T.ravel()])
        lines.append(f"{int(i):04d}.jpg {int(j):04d}.jpg 0 0 " + " ".join(f"{v:.12g}" for v in numbers))
    pairs_file = root / "pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    return scene, pairs_file, root / "Undistorted_SfM" / scene.scene / "images"


def _depth_matches(depth0, depth1, T, K0, K1, step=6):
    ys, xs = np.nonzero(depth0[::step, ::step] > 0)
    pts = torch.from_numpy(np.stack([xs, ys], 1) * float(step))[None]
    valid, warped = warp_points_depth(
        pts, torch.as_tensor(depth0)[None].double(), torch.as_tensor(depth1)[None].double(),
        torch.as_tensor(T)[None].double(), torch.as_tensor(K0)[None].double(), torch.as_tensor(K1)[None].double(),
    )
    return pts[0][valid[0]].numpy(), warped[0][valid[0]].numpy()


def _pairs_file_oracle(scene, image_dir, resize_max) -> LookupMatcher:
    """Oracle for the pairs file: depth-warped grid points at the original resolution, mapped through the resize
    the runner applies (pixel centres at integers: x' = (x + 0.5) * s - 0.5)."""
    from asmamba.training.data.megadepth import read_depth_h5

    oracle = LookupMatcher()
    for (i, j), _, _ in scene.pair_infos:
        i, j = int(i), int(j)
        ci, cj = scene.cameras[i], scene.cameras[j]
        d0, d1 = read_depth_h5(scene.root / scene.depth_paths[i]), read_depth_h5(scene.root / scene.depth_paths[j])
        k0, k1 = _depth_matches(d0, d1, cj.T_world_to_cam @ np.linalg.inv(ci.T_world_to_cam), ci.K, cj.K)
        im0, s0 = load_image(image_dir / f"{i:04d}.jpg", grayscale=True, max_side=resize_max)
        im1, s1 = load_image(image_dir / f"{j:04d}.jpg", grayscale=True, max_side=resize_max)
        oracle.add(im0, im1, (k0 + 0.5) * s0 - 0.5, (k1 + 0.5) * s1 - 0.5)
    return oracle


def test_pose_runner_on_pairs_file_with_resize(pose_scene):
    scene, pairs_file, image_dir = pose_scene
    resize_max = 160
    oracle = _pairs_file_oracle(scene, image_dir, resize_max)
    results = evaluate_pose(oracle, pairs_file, resize_max=resize_max, image_dir=image_dir, progress=False)
    summary = results["datasets"][0]
    assert summary["pairs"] == len(scene.pair_infos) >= 2
    for record in summary["per_pair"]:
        assert record["opencv"]["err"] < 0.1 and record["poselib"]["err"] < 0.1, record
        assert record["precision"] > 0.99
    assert summary["auc_opencv"]["5"] > 97 and summary["auc_poselib"]["5"] > 97
    assert summary["precision"] > 99 and summary["mean_matches"] > 100
    assert "AUC@5 OpenCV" in pose_markdown(results)


def test_pose_runner_on_megadepth_dataset(pose_scene):
    scene = pose_scene[0]
    with_depth = MegaDepthScene(scene.root, scene.scene_info_path, long_side=160)
    without_depth = MegaDepthScene(scene.root, scene.scene_info_path, long_side=160, load_depth=False)
    oracle = LookupMatcher()
    for idx in range(len(with_depth)):
        item = with_depth[idx]
        k0, k1 = _depth_matches(
            item["depth0"].numpy(), item["depth1"].numpy(), item["T_0to1"].double().numpy(),
            item["K0"].double().numpy(), item["K1"].double().numpy(), step=4,
        )
        oracle.add(item["image0"][None], item["image1"][None], k0, k1)
    results = evaluate_pose(oracle, [without_depth], progress=False, names=["synthetic"])
    summary = results["datasets"][0]
    assert summary["name"] == "synthetic" and summary["epipolar_threshold"] == 1e-4
    assert summary["auc_opencv"]["10"] > 97 and summary["auc_poselib"]["10"] > 97
    assert summary["precision"] > 97


def test_cli_with_oracle_and_errors(pose_scene, tmp_path, monkeypatch, capsys):
    scene, pairs_file, image_dir = pose_scene
    oracle = _pairs_file_oracle(scene, image_dir, None)
    built = []
    monkeypatch.setattr(cli, "MATCHER_FACTORY", lambda name, device: built.append((name, device)) or oracle)
    out = tmp_path / "res" / "pose.json"
    code = cli.eval_pose_main(
        [str(pairs_file), "--matcher", "oracle", "--resize-max", "1000", "--image-dir", str(image_dir),
         "--json", str(out), "--no-progress", "--max-pairs", "2"]
    )
    assert code == 0 and built == [("oracle", "cpu")]
    printed = capsys.readouterr().out
    assert "| dataset | pairs |" in printed and str(out) in printed
    saved = json.loads(out.read_text())
    assert saved["task"] == "pose" and saved["datasets"][0]["pairs"] == 2
    assert saved["datasets"][0]["auc_poselib"]["20"] > 97
    assert not list(out.parent.glob("*.tmp"))
    assert cli.eval_pose_main([str(tmp_path / "missing_pairs.txt"), "--matcher", "oracle", "--no-progress"]) == 2
    assert "missing_pairs.txt" in capsys.readouterr().err
    assert cli.eval_pose_main(["--matcher", "oracle"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert cli.eval_homography_main([str(tmp_path), "--matcher", "oracle", "--no-progress"]) == 2
    assert "no homography sequence" in capsys.readouterr().err


@needs_homography
@pytest.mark.data
def test_cli_homography_with_oracle(tmp_path, monkeypatch, capsys):
    folder = HOMOGRAPHY / "oxford_graf"
    monkeypatch.setattr(cli, "MATCHER_FACTORY", lambda name, device: _homography_oracle([folder], 320))
    out = tmp_path / "h.json"
    assert cli.eval_homography_main([str(folder), "--matcher", "x", "--resize-max", "320", "--json", str(out),
                                     "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert saved["datasets"][0]["auc_opencv"]["3"] > 98
    assert "oxford_graf" in capsys.readouterr().out
