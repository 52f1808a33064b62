"""End-to-end Structure-from-Motion on real scenes (slow): registration, GT cameras, held-out localization."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from asmamba.io import data_root
from asmamba.pipelines.common import load_pipeline_config
from asmamba.pipelines.evaluate import align_and_compare, camera_centre, poses_from_colmap, poses_from_pose_pairs
from asmamba.pipelines.evaluate import rotation_angle_deg
from asmamba.pipelines.localize import localize
from asmamba.pipelines.reconstruct import reconstruct

pytestmark = pytest.mark.slow

SACRE_COEUR = data_root() / "sfm" / "sacre_coeur" / "images"
P10 = data_root() / "pose" / "strecha_entry-P10"
HELD_OUT = "44120379_8371960244.jpg"


def sift_cfg():
    cfg = load_pipeline_config("reconstruct")
    cfg.matcher, cfg.resize_max = "sift", 640
    return cfg


@pytest.fixture(scope="module")
def sacre_coeur(tmp_path_factory):
    if not SACRE_COEUR.is_dir():
        pytest.skip(f"real data not found at {SACRE_COEUR} (set ASMAMBA_DATA)")
    out = tmp_path_factory.mktemp("sacre_coeur")
    start = time.perf_counter()
    model, summary = reconstruct(SACRE_COEUR, out, sift_cfg(), progress=False)
    print(f"sacre_coeur (sift, 640 px): {summary.num_registered}/10 registered in {time.perf_counter() - start:.1f} s")
    return out, model, summary


def test_sacre_coeur_registers_most_images(sacre_coeur):
    out, model, summary = sacre_coeur
    assert summary.num_registered >= 8
    assert summary.num_points3D > 300 and summary.mean_track_length > 2.5
    assert summary.mean_reprojection_error < 2.0
    assert (out / "reconstruction.png").stat().st_size > 10_000


def test_held_out_image_localizes_near_its_pose_in_the_full_model(sacre_coeur, tmp_path):
    out_full, full_model, _ = sacre_coeur
    full = poses_from_colmap(full_model)
    assert HELD_OUT in full, f"{HELD_OUT} was not registered in the full model"
    images = tmp_path / "images"
    images.mkdir()
    for name in os.listdir(SACRE_COEUR):
        if name != HELD_OUT:
            os.symlink(SACRE_COEUR / name, images / name)
    out = tmp_path / "without"
    shutil.copytree(out_full / "dense", out / "dense")  # same matcher and size: pairs without the query are reused
    reconstruct(images, out, sift_cfg(), progress=False)
    (result,) = localize(out, [SACRE_COEUR / HELD_OUT], progress=False)
    assert result.pose is not None, result.reason

    # both models share 9 cameras: a Sim(3) maps the reduced model's frame onto the full model's
    alignment = align_and_compare(poses_from_colmap(out / "sfm"), full)
    s, R, t = alignment.sim3
    centre = s * R @ camera_centre(result.pose) + t
    position_error = np.linalg.norm(centre - camera_centre(full[HELD_OUT]))
    rotation_error = rotation_angle_deg(result.pose[0] @ R.T, full[HELD_OUT][0])
    print(f"held-out {HELD_OUT}: {result.num_inliers} inliers, position error {position_error:.3f} "
          f"({position_error / alignment.scene_scale:.1%} of the scene scale), rotation error {rotation_error:.2f} deg")
    assert position_error < 0.05 * alignment.scene_scale
    assert rotation_error < 2.0


def test_strecha_entry_p10_matches_its_gt_cameras(tmp_path):
    if not P10.is_dir():
        pytest.skip(f"real data not found at {P10} (set ASMAMBA_DATA)")
    model, summary = reconstruct(P10 / "images", tmp_path / "p10", sift_cfg(), progress=False)
    report = align_and_compare(poses_from_colmap(model), poses_from_pose_pairs(P10 / "pairs.txt"))
    print(report.format())
    assert summary.num_registered == 10 and not report.missing
    positions = np.array(list(report.position_error.values()))
    rotations = np.array(list(report.rotation_error.values()))
    assert np.median(positions) < 0.02 * report.scene_scale and positions.max() < 0.05 * report.scene_scale
    assert np.median(rotations) < 1.5 and rotations.max() < 3.0
