"""Reconstructed cameras against ground-truth cameras: Sim(3) alignment (Umeyama) and per-image errors.

``asmamba evaluate-sfm SFM_DIR --gt GT`` where GT is a SuperGlue-format pairs file (``name0 name1 rot0 rot1 K0 K1
T_0to1``; poses chained from the first image of the file) or a COLMAP model folder. The reconstructed camera
centres are aligned to the GT centres by the least-squares similarity (scale, rotation, translation) of Umeyama
(1991); each image then gets a position error (GT units) and a rotation error (degrees) of its aligned pose.
"""

from __future__ import annotations

import argparse
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]
#: ``x_cam = R @ x_world + t``
Pose = tuple[np.ndarray, np.ndarray]


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``target ~ s * R @ source + t`` (Umeyama 1991).

    Args:
        source, target: ``(N, 3)`` corresponding points, N >= 3, not all collinear.

    Returns:
        scale ``s``, rotation ``R (3, 3)`` (det +1), translation ``t (3,)``.

    Raises:
        ValueError: fewer than 3 points, different shapes, or a degenerate (collinear / coincident) configuration.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"umeyama needs two (N, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {len(src)}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    xs, xd = src - mu_src, dst - mu_dst
    var_src = (xs**2).sum() / len(src)
    covariance = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(covariance)
    if var_src < 1e-18 or d[1] < 1e-12 * max(d[0], 1e-300):
        raise ValueError("the source points are coincident or collinear: the similarity is not determined")
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float((d * sign).sum() / var_src) if with_scale else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    return scale, rotation, translation


def camera_centre(pose: Pose) -> np.ndarray:
    """World position ``-R^T t`` of a camera ``x_cam = R x_world + t``."""
    rotation, translation = pose
    return -np.asarray(rotation).T @ np.asarray(translation)


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle (degrees) of the rotation ``r_a @ r_b^T`` (from its rotation vector: accurate near 0, unlike arccos)."""
    from scipy.spatial.transform import Rotation

    relative = np.asarray(r_a, dtype=np.float64) @ np.asarray(r_b, dtype=np.float64).T
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(relative).as_rotvec())))


def poses_from_pose_pairs(path: PathLike) -> dict[str, Pose]:
    """GT cameras from a SuperGlue pairs file, in the frame of the file's first image (``R = I, t = 0``).

    Every image reachable through the pairs gets ``T_ref_to_img`` by chaining the ``T_0to1`` of the pairs (in
    either direction, breadth-first from the reference).

    Raises:
        ValueError: the file has no pair.
    """
    from asmamba.io import read_pose_pairs

    pairs = read_pose_pairs(path)
    if not pairs:
        raise ValueError(f"pairs file {str(path)!r} holds no pose pair")
    edges: dict[str, list[tuple[str, np.ndarray]]] = {}
    for p in pairs:
        edges.setdefault(p.name0, []).append((p.name1, p.T_0to1))
        edges.setdefault(p.name1, []).append((p.name0, np.linalg.inv(p.T_0to1)))
    reference = pairs[0].name0
    transforms = {reference: np.eye(4)}
    queue = deque([reference])
    while queue:
        name = queue.popleft()
        for other, t_name_to_other in edges[name]:
            if other not in transforms:
                transforms[other] = t_name_to_other @ transforms[name]
                queue.append(other)
    return {name: (t[:3, :3].copy(), t[:3, 3].copy()) for name, t in transforms.items()}


def poses_from_colmap(path_or_reconstruction: Union[PathLike, Any]) -> dict[str, Pose]:
    """Cameras of the registered images of a COLMAP model (folder or ``pycolmap.Reconstruction``)."""
    import pycolmap

    reconstruction = path_or_reconstruction
    if not isinstance(reconstruction, pycolmap.Reconstruction):
        folder = Path(path_or_reconstruction)
        if not folder.is_dir():
            raise FileNotFoundError(f"COLMAP model folder {str(folder)!r} does not exist")
        reconstruction = pycolmap.Reconstruction(folder)
    poses = {}
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.images[image_id]
        pose = image.cam_from_world()
        poses[image.name] = (np.asarray(pose.rotation.matrix()), np.asarray(pose.translation))
    return poses


def load_gt_poses(gt: PathLike) -> dict[str, Pose]:
    """GT from a SuperGlue pairs file or a COLMAP model folder."""
    gt = Path(gt)
    if gt.is_dir():
        return poses_from_colmap(gt)
    if gt.is_file():
        return poses_from_pose_pairs(gt)
    raise FileNotFoundError(f"ground truth {str(gt)!r} is neither a pairs file nor a COLMAP model folder")


@dataclass
class PoseEvaluation:
    """Errors after Sim(3) alignment of the estimated camera centres to the GT ones.

    Attributes:
        position_error: per image, distance of the aligned centre to the GT centre (GT units).
        rotation_error: per image, angle (degrees) between aligned and GT camera orientation.
        scene_scale: median distance of the GT centres from their centroid (to read position errors relatively).
        sim3: ``(s, R, t)`` mapping estimated world points to GT world points.
        missing: GT images the estimate lacks.
    """

    position_error: dict[str, float]
    rotation_error: dict[str, float]
    scene_scale: float
    sim3: tuple[float, np.ndarray, np.ndarray]
    missing: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'image':30s} {'position':>10s} {'rotation':>9s}"]
        for name in sorted(self.position_error):
            lines.append(f"{name:30s} {self.position_error[name]:10.4f} {self.rotation_error[name]:8.3f}°")
        pos = np.array(list(self.position_error.values()))
        rot = np.array(list(self.rotation_error.values()))
        lines.append(
            f"median position error {np.median(pos):.4f} ({np.median(pos) / self.scene_scale:.2%} of the scene "
            f"scale {self.scene_scale:.3f}), median rotation error {np.median(rot):.3f}°, Sim3 scale {self.sim3[0]:.4f}"
        )
        if self.missing:
            lines.append(f"not reconstructed: {', '.join(sorted(self.missing))}")
        return "\n".join(lines)


def align_and_compare(estimated: Mapping[str, Pose], gt: Mapping[str, Pose]) -> PoseEvaluation:
    """Sim(3)-align the estimated camera centres to GT (images present in both) and measure per-image errors.

    Raises:
        ValueError: fewer than 3 common images, or their centres are collinear.
    """
    common = sorted(set(estimated) & set(gt))
    if len(common) < 3:
        raise ValueError(f"need >= 3 images with both an estimate and GT for a Sim(3) alignment, got {len(common)}")
    est_centres = np.stack([camera_centre(estimated[n]) for n in common])
    gt_centres = np.stack([camera_centre(gt[n]) for n in common])
    scale, rotation, translation = umeyama(est_centres, gt_centres)
    aligned = scale * est_centres @ rotation.T + translation
    position = {n: float(np.linalg.norm(a - g)) for n, a, g in zip(common, aligned, gt_centres)}
    # x_cam = R_est x_est = R_est R^T (x_gt - t) / s: the orientation in the GT frame is R_est @ R^T
    orientation = {n: rotation_angle_deg(np.asarray(estimated[n][0]) @ rotation.T, gt[n][0]) for n in common}
    scene_scale = float(np.median(np.linalg.norm(gt_centres - gt_centres.mean(0), axis=1)))
    return PoseEvaluation(position, orientation, scene_scale, (scale, rotation, translation),
                          sorted(set(gt) - set(estimated)))


def _evaluate_command(args: argparse.Namespace) -> int:
    model = Path(args.sfm_dir)
    if (model / "sfm").is_dir():
        model = model / "sfm"
    if not model.is_dir():
        raise FileNotFoundError(f"model folder {str(args.sfm_dir)!r} does not exist")
    if not any((model / f"images{ext}").is_file() for ext in (".bin", ".txt")):
        raise FileNotFoundError(f"{str(model)!r} holds no COLMAP model (images.bin or images.txt); give "
                                "reconstruct's OUT_DIR or a model folder")
    if not Path(args.gt).exists():
        raise FileNotFoundError(f"--gt {str(args.gt)!r} does not exist")
    report = align_and_compare(poses_from_colmap(model), load_gt_poses(args.gt))
    print(report.format())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from asmamba.clitools import ArgumentParser, summary

    parser = ArgumentParser(prog="asmamba evaluate-sfm", description=summary(__doc__))
    parser.add_argument("sfm_dir", type=Path, help="reconstruct's OUT_DIR or a COLMAP model folder")
    parser.add_argument("--gt", type=Path, required=True, help="SuperGlue pairs file or COLMAP model folder")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``asmamba evaluate-sfm``."""
    from .match import run_cli

    return run_cli(_evaluate_command, argv, build_parser(), resume_hint=None)


if __name__ == "__main__":
    raise SystemExit(main())
