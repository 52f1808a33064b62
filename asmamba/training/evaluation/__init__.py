"""Evaluation protocols: relative pose (OpenCV RANSAC and poselib LO-RANSAC, AUC@5/10/20, epipolar precision)
and homography (AUC@3/5/10 px) for any kornia-contract matcher. Command line: ``asmamba eval pose|homography``.
"""

from asmamba.training.evaluation.homography import evaluate_homography, find_homography_pairs, homography_markdown
from asmamba.training.evaluation.pose import evaluate_pose, pose_markdown
from asmamba.training.evaluation.common import write_json_atomic

__all__ = [
    "evaluate_homography",
    "evaluate_pose",
    "find_homography_pairs",
    "homography_markdown",
    "pose_markdown",
    "write_json_atomic",
]
