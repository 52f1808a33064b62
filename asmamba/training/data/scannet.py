"""ScanNet pairs in the dataset's real layout (as exported for LoFTR / SuperGlue).

Layout under ``root``: ``scene{id:04d}_{sub:02d}/color/{frame}.jpg`` (resized to 640x480 when read),
``.../depth/{frame}.png`` (uint16 millimetres, 640x480, 0 = invalid) and ``.../pose/{frame}.txt`` (4x4
camera-to-world). A pair index ``.npz`` holds ``name`` ``(N, 4)`` = ``(scene, sub, frame0, frame1)``, optionally
``score`` (overlap, training indices) and ``rel_pose`` ``(N, 12)`` (test indices: the first three rows of
``T_0to1``, camera-0 to camera-1 coordinates - the convention of SuperGlue's pairs files). The intrinsics file
(``intrinsics.npz``) maps each scene name to its ``3x3`` K at 640x480.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np
from torch.utils.data import Dataset

from asmamba.training.data.common import depth_pair_item, prepare_view, require_file

PathLike = Union[str, os.PathLike]

default_conf: dict[str, Any] = {
    "image_size": (640, 480),  # network (w, h); LoFTR and ASpanFormer train and test at 640x480
    "intrinsics_size": (640, 480),  # the resolution intrinsics.npz refers to
    "load_depth": True,  # False for test indices evaluated without depth (depth then all zeros)
    "pose_source": "auto",  # "files" (pose/*.txt), "npz" (rel_pose of the index) or "auto" (files if present)
    "min_overlap": None,  # keep pairs with score > min_overlap when the index has 'score'
    "pad_square": False,
}

#: matching-precision threshold of the ScanNet protocol (squared symmetric epipolar distance, normalised)
EPIPOLAR_THRESHOLD = 5e-4


def scene_name(scene: int, sub: int) -> str:
    """``scene0707_00`` from ``(707, 0)``."""
    return f"scene{int(scene):04d}_{int(sub):02d}"


def read_camera_to_world(path: PathLike) -> np.ndarray:
    """A ScanNet pose file: ``(4, 4)`` float64 camera-to-world.

    Raises:
        FileNotFoundError: missing file. ValueError: not a finite 4x4 matrix (ScanNet marks lost tracking with
        ``-inf``).
    """
    p = require_file(path, "ScanNet pose file")
    try:
        pose = np.loadtxt(p, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"ScanNet pose file {str(p)!r} is not a 4x4 matrix of numbers: {err}") from None
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"ScanNet pose file {str(p)!r} is not a finite 4x4 matrix (shape {pose.shape})")
    return pose


def read_depth_png(path: PathLike) -> np.ndarray:
    """A ScanNet depth map ``(h, w)`` float32 in metres (the file stores uint16 millimetres)."""
    p = require_file(path, "ScanNet depth map")
    depth = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.ndim != 2:
        raise ValueError(f"ScanNet depth map {str(p)!r} is not a readable single-channel png")
    return depth.astype(np.float32) / 1000.0


class ScanNetPairs(Dataset):
    """ScanNet pairs as items of the shared layout (:mod:`asmamba.training.data.common`).

    Args:
        root: folder of the scene folders.
        index: pair index ``.npz`` (``name``, optional ``score`` / ``rel_pose``).
        intrinsics: ``intrinsics.npz`` (scene name -> 3x3).
        pose_dir: folder holding the scenes' ``pose/`` folders when apart from ``root``.
        max_pairs: keep only the first ``max_pairs`` pairs.
        conf: overrides of :data:`default_conf`.

    With ``load_depth``, pairs whose depth map is missing are skipped with one warning (``num_skipped_pairs``,
    ``missing_depth``).
    """

    epipolar_threshold = EPIPOLAR_THRESHOLD

    def __init__(
        self,
        root: PathLike,
        index: PathLike,
        intrinsics: PathLike,
        pose_dir: Optional[PathLike] = None,
        max_pairs: Optional[int] = None,
        **conf: Any,
    ):
        unknown = set(conf) - set(default_conf)
        if unknown:
            raise TypeError(f"unknown ScanNet options {sorted(unknown)}; known: {sorted(default_conf)}")
        self.conf = {**default_conf, **conf}
        if self.conf["pose_source"] not in ("auto", "files", "npz"):
            raise ValueError(f"pose_source must be 'auto', 'files' or 'npz', got {self.conf['pose_source']!r}")
        self.root = Path(root)
        self.pose_dir = Path(pose_dir) if pose_dir is not None else self.root
        index_path = require_file(index, "ScanNet pair index")
        self.name = f"scannet/{index_path.stem}"
        with np.load(index_path) as data:
            if "name" not in data.files:
                raise ValueError(f"ScanNet pair index {str(index_path)!r} has no 'name' array ({data.files})")
            names = np.asarray(data["name"]).astype(np.int64)
            rel_pose = np.asarray(data["rel_pose"], np.float64) if "rel_pose" in data.files else None
            score = np.asarray(data["score"], np.float64) if "score" in data.files else None
        if names.ndim != 2 or names.shape[1] != 4:
            raise ValueError(f"{str(index_path)!r}: 'name' must be (N, 4), got {names.shape}")
        if rel_pose is not None and rel_pose.shape != (len(names), 12):
            raise ValueError(f"{str(index_path)!r}: 'rel_pose' must be (N, 12), got {rel_pose.shape}")
        keep = np.ones(len(names), dtype=bool)
        if score is not None and self.conf["min_overlap"] is not None:
            keep &= score > float(self.conf["min_overlap"])
        self.names = names[keep]
        self.rel_pose = rel_pose[keep] if rel_pose is not None else None
        if self.conf["pose_source"] == "npz" and self.rel_pose is None:
            raise ValueError(f"pose_source='npz' but the index {str(index_path)!r} has no 'rel_pose'")
        intr_path = require_file(intrinsics, "ScanNet intrinsics file")
        with np.load(intr_path) as data:
            self.intrinsics = {k: np.asarray(data[k], np.float64).reshape(3, 3) for k in data.files}
        for s in sorted({scene_name(a, b) for a, b, _, _ in self.names}):
            if s not in self.intrinsics:
                raise ValueError(f"ScanNet intrinsics file {str(intr_path)!r} has no entry for {s}")
        self.missing_depth: list[str] = []
        self.num_skipped_pairs = 0
        if self.conf["load_depth"]:
            self._drop_pairs_without_depth()
        if max_pairs is not None:
            self.names = self.names[:max_pairs]
            self.rel_pose = self.rel_pose[:max_pairs] if self.rel_pose is not None else None

    def _path(self, idx: int, view: int, folder: str, suffix: str) -> Path:
        scene, sub = self.names[idx][:2]
        base = self.pose_dir if folder == "pose" else self.root
        return base / scene_name(scene, sub) / folder / f"{self.names[idx][2 + view]}{suffix}"

    def _drop_pairs_without_depth(self) -> None:
        keep = np.ones(len(self.names), dtype=bool)
        missing: set[Path] = set()
        for idx in range(len(self.names)):
            for view in (0, 1):
                p = self._path(idx, view, "depth", ".png")
                if p in missing or not p.is_file():
                    missing.add(p)
                    keep[idx] = False
        self.missing_depth = sorted(str(p) for p in missing)
        self.num_skipped_pairs = int((~keep).sum())
        if self.num_skipped_pairs:
            warnings.warn(
                f"ScanNet: {len(missing)} image(s) have no depth map (first: {self.missing_depth[0]}); "
                f"skipped {self.num_skipped_pairs} of {len(keep)} pairs",
                stacklevel=3,
            )
            self.names = self.names[keep]
            self.rel_pose = self.rel_pose[keep] if self.rel_pose is not None else None

    def __len__(self) -> int:
        return len(self.names)

    def relative_pose(self, idx: int) -> np.ndarray:
        """``T_0to1`` ``(4, 4)``: from the pose files (``inv(cam_to_world_1) @ cam_to_world_0``) or the index's
        ``rel_pose``, as ``pose_source`` says."""
        source = self.conf["pose_source"]
        pose_file0 = self._path(idx, 0, "pose", ".txt")
        if source == "files" or (source == "auto" and (self.rel_pose is None or pose_file0.is_file())):
            c2w0 = read_camera_to_world(pose_file0)
            c2w1 = read_camera_to_world(self._path(idx, 1, "pose", ".txt"))
            return np.linalg.inv(c2w1) @ c2w0
        T = np.eye(4)
        T[:3] = self.rel_pose[idx].reshape(3, 4)
        return T

    def pair_metadata(self, idx: int) -> dict:
        """Names, ``K`` (3, 3, at ``intrinsics_size``) and ``T_0to1`` (4, 4) of a pair, without reading images."""
        scene, sub, frame0, frame1 = self.names[idx]
        s = scene_name(scene, sub)
        return {
            "name0": f"{s}/color/{frame0}.jpg",
            "name1": f"{s}/color/{frame1}.jpg",
            "K0": self.intrinsics[s].copy(),
            "K1": self.intrinsics[s].copy(),
            "T_0to1": self.relative_pose(idx),
        }

    def _view(self, idx: int, view: int, K: np.ndarray) -> dict:
        depth = read_depth_png(self._path(idx, view, "depth", ".png")) if self.conf["load_depth"] else None
        w, h = self.conf["image_size"]
        return prepare_view(
            self._path(idx, view, "color", ".jpg"), K, depth,
            long_side=max(w, h) if self.conf["pad_square"] else None, divisible=1,
            pad_square=self.conf["pad_square"], fixed_size_wh=(w, h), K_size_wh=self.conf["intrinsics_size"],
        )

    def __getitem__(self, idx: int) -> dict:
        meta = self.pair_metadata(idx)
        view0, view1 = self._view(idx, 0, meta["K0"]), self._view(idx, 1, meta["K1"])
        return depth_pair_item(view0, view1, meta["T_0to1"], f"{meta['name0']} {meta['name1']}")
