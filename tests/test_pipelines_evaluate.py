"""Sim(3) alignment (Umeyama) and pose-error evaluation against known transforms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from asmamba.pipelines.evaluate import (
    align_and_compare,
    camera_centre,
    poses_from_pose_pairs,
    rotation_angle_deg,
    umeyama,
)


def random_similarity(seed):
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.2, 5.0)), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_umeyama_recovers_a_known_similarity(seed):
    s, R, t = random_similarity(seed)
    src = np.random.default_rng(seed + 10).normal(size=(12, 3))
    dst = s * src @ R.T + t
    s_hat, R_hat, t_hat = umeyama(src, dst)
    assert s_hat == pytest.approx(s, rel=1e-9)
    np.testing.assert_allclose(R_hat, R, atol=1e-9)
    np.testing.assert_allclose(t_hat, t, atol=1e-8)


def test_umeyama_refuses_degenerate_input():
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    line = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]], float)
    with pytest.raises(ValueError, match="collinear"):
        umeyama(line, line)


def make_cameras(n, seed):
    rng = np.random.default_rng(seed)
    return {f"{i:04d}.jpg": (Rotation.random(random_state=seed * 100 + i).as_matrix(), rng.normal(size=3) * 3)
            for i in range(n)}


def transform_cameras(cameras, s, R, t):
    """The same cameras in a world frame x' = s R x + t (what a reconstruction's gauge freedom does)."""
    out = {}
    for name, (Rc, tc) in cameras.items():
        centre = s * R @ camera_centre((Rc, tc)) + t
        Rn = Rc @ R.T
        out[name] = (Rn, -Rn @ centre)
    return out


def test_alignment_undoes_the_gauge_and_measures_errors():
    gt = make_cameras(6, seed=3)
    s, R, t = random_similarity(4)
    estimate = transform_cameras(gt, s, R, t)
    report = align_and_compare(estimate, gt)
    assert max(report.position_error.values()) < 1e-8 and max(report.rotation_error.values()) < 1e-6
    assert report.sim3[0] == pytest.approx(1 / s)

    # perturb one camera: its rotation error is the perturbation angle
    name = "0002.jpg"
    Rp = Rotation.from_rotvec([0, 0, np.radians(3.0)]).as_matrix()
    bad = dict(estimate)
    bad[name] = (Rp @ estimate[name][0], Rp @ estimate[name][1])  # rotate the camera about its own centre
    report = align_and_compare(bad, gt)
    assert report.rotation_error[name] == pytest.approx(3.0, abs=1e-6)
    assert report.position_error[name] < 1e-8
    missing = {k: v for k, v in estimate.items() if k != "0005.jpg"}
    assert align_and_compare(missing, gt).missing == ["0005.jpg"]
    with pytest.raises(ValueError, match=">= 3 images"):
        align_and_compare({k: estimate[k] for k in list(estimate)[:2]}, gt)


def test_gt_from_pose_pairs_chains_from_the_first_image(tmp_path):
    cams = make_cameras(4, seed=7)
    T = {n: np.block([[R, t[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]) for n, (R, t) in cams.items()}
    K = "500 0 320 0 500 240 0 0 1"
    lines = []
    # 0000-0001, 0001-0002, 0003-0002: image 0003 is reached only through a reversed pair
    for a, b in (("0000.jpg", "0001.jpg"), ("0001.jpg", "0002.jpg"), ("0003.jpg", "0002.jpg")):
        T_ab = T[b] @ np.linalg.inv(T[a])
        lines.append(f"{a} {b} 0 0 {K} {K} " + " ".join(f"{v:.15g}" for v in T_ab.ravel()))
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    poses = poses_from_pose_pairs(path)
    assert set(poses) == set(cams)
    R0, t0 = poses["0000.jpg"]
    np.testing.assert_allclose(R0, np.eye(3), atol=1e-12)
    for name, (R, t) in poses.items():  # = the true cameras expressed in camera 0000's frame
        T_rel = T[name] @ np.linalg.inv(T["0000.jpg"])
        np.testing.assert_allclose(R, T_rel[:3, :3], atol=1e-9)
        np.testing.assert_allclose(t, T_rel[:3, 3], atol=1e-9)
    assert rotation_angle_deg(np.eye(3), Rotation.from_rotvec([0.1, 0, 0]).as_matrix()) == pytest.approx(
        np.degrees(0.1))
