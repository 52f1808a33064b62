"""MegaDepth pairs in the dataset's real layout (the LoFTR / D2-Net ``scene_info`` index).

A scene index is a pickled dict despite its ``.npz`` suffix, with one entry per image of the scene:
``image_paths`` and ``depth_paths`` (relative to the dataset root, ``None`` for unused images), ``intrinsics``
(``3x3`` at the original resolution), ``poses`` (``4x4`` world-to-camera) and ``pair_infos``, a list of
``((i, j), overlap_score, central_matches)``. Depth maps are HDF5 files holding a ``depth`` dataset in metres
(0 = invalid). The relative pose of a pair is ``T_0to1 = T_j @ inv(T_i)``.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zlib
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from asmamba.training.data.common import depth_pair_item, prepare_view, require_file
from asmamba.training.data.photometric import photometric_conf, photometric_jitter
from asmamba.training.geometry import relative_pose

PathLike = Union[str, os.PathLike]

default_conf: dict[str, Any] = {
    "long_side": 832,  # network long side (LoFTR/JamMa train at 832, ASpanFormer tests at 1152)
    "divisible": 8,  # floor both sides to a multiple of this
    "pad_square": True,  # zero-pad to a (long_side x long_side) square so items batch
    "min_overlap": 0.0,  # keep pairs with overlap_score > min_overlap
    "max_overlap": 1.0,  # ... and <= max_overlap
    "load_depth": True,  # False for test indices that come without depth maps (depth then all zeros)
    "sparse_depth": False,  # depth known at some pixels only (sfm_scene.py): unknown cells are not negatives
    "photometric": None,  # training only: null/false = the photos as they are; true or a mapping of
                          # asmamba/training/data/photometric.py options = independent jitter of each view
    "photometric_seed": 0,  # the jitter of pair idx of this scene draws from (seed, crc32(scene), idx)
}

#: matching-precision threshold of the MegaDepth protocol (squared symmetric epipolar distance, normalised)
EPIPOLAR_THRESHOLD = 1e-4

SCENE_INFO_KEYS = ("image_paths", "depth_paths", "intrinsics", "poses", "pair_infos")


def read_scene_info(path: PathLike) -> dict:
    """Load and check one MegaDepth scene index.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be unpickled or lacks one of :data:`SCENE_INFO_KEYS`.
    """
    p = require_file(path, "MegaDepth scene_info index")
    try:
        info = np.load(p, allow_pickle=True)
        if isinstance(info, np.lib.npyio.NpzFile):
            info = {k: info[k] for k in info.files}
        elif isinstance(info, np.ndarray) and info.dtype == object and info.shape == ():
            info = info.item()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"MegaDepth scene_info index {str(p)!r} is not readable: {err}") from None
    if not isinstance(info, dict):
        raise ValueError(f"MegaDepth scene_info index {str(p)!r} holds a {type(info).__name__}, not a dict")
    missing = [k for k in SCENE_INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"MegaDepth scene_info index {str(p)!r} lacks the keys {missing}")
    n = len(info["image_paths"])
    for key in ("depth_paths", "intrinsics", "poses"):
        if len(info[key]) != n:
            raise ValueError(f"{str(p)!r}: '{key}' has {len(info[key])} entries but 'image_paths' has {n}")
    return info


def read_depth_h5(path: PathLike) -> np.ndarray:
    """A MegaDepth depth map ``(h, w)`` float32 (metres, 0 = invalid) from its HDF5 file."""
    import h5py

    p = require_file(path, "MegaDepth depth map")
    try:
        with h5py.File(p, "r") as f:
            if "depth" not in f:
                raise ValueError(f"MegaDepth depth map {str(p)!r} has no 'depth' dataset (has {list(f.keys())})")
            depth = np.asarray(f["depth"], dtype=np.float32)
    except OSError as err:
        raise ValueError(f"MegaDepth depth map {str(p)!r} is not a readable HDF5 file: {err}") from None
    if depth.ndim != 2:
        raise ValueError(f"MegaDepth depth map {str(p)!r} has shape {depth.shape}, expected (h, w)")
    return depth


class MegaDepthScene(Dataset):
    """The pairs of one MegaDepth scene, as items of the shared layout (:mod:`asmamba.training.data.common`).

    Args:
        root: dataset root, the folder the index's image and depth paths are relative to.
        scene_info: path of the scene's index file.
        conf: overrides of :data:`default_conf`.
        max_pairs: keep only the first ``max_pairs`` pairs (after filtering).

    Pairs whose image has no depth file (when ``load_depth``) are skipped with one warning; their number is
    ``num_skipped_pairs`` and the images without depth are listed in ``missing_depth``.
    """

    epipolar_threshold = EPIPOLAR_THRESHOLD

    def __init__(self, root: PathLike, scene_info: PathLike, max_pairs: Optional[int] = None, **conf: Any):
        unknown = set(conf) - set(default_conf)
        if unknown:
            raise TypeError(f"unknown MegaDepth options {sorted(unknown)}; known: {sorted(default_conf)}")
        self.conf = {**default_conf, **conf}
        self.photometric = photometric_conf(self.conf["photometric"], "MegaDepth scene options")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MegaDepth root {str(self.root)!r} does not exist or is not a directory")
        self.index_path = Path(scene_info)
        self.scene_id = self.index_path.stem
        self.name = f"megadepth/{self.scene_id}"
        info = read_scene_info(self.index_path)
        self.image_paths = info["image_paths"]
        self.depth_paths = info["depth_paths"]
        self.intrinsics = info["intrinsics"]
        self.poses = info["poses"]
        lo, hi = float(self.conf["min_overlap"]), float(self.conf["max_overlap"])
        pairs = []
        for entry in info["pair_infos"]:
            (i, j), score = entry[0], float(entry[1])
            if lo < score <= hi:
                pairs.append((int(i), int(j), score))
        for i, j, _ in pairs:
            for k in (i, j):
                if self.image_paths[k] is None:
                    raise ValueError(f"{str(self.index_path)!r}: pair uses image {k}, which has no image path")
        self.missing_depth: list[str] = []
        self.num_skipped_pairs = 0
        if self.conf["load_depth"]:
            pairs = self._drop_pairs_without_depth(pairs)
        self.pairs = pairs[:max_pairs] if max_pairs is not None else pairs

    def _drop_pairs_without_depth(self, pairs: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
        has_depth: dict[int, bool] = {}
        for i, j, _ in pairs:
            for k in (i, j):
                if k not in has_depth:
                    rel = self.depth_paths[k]
                    has_depth[k] = rel is not None and (self.root / rel).is_file()
                    if not has_depth[k]:
                        self.missing_depth.append(str(self.root / rel) if rel is not None else f"<image {k}>")
        kept = [p for p in pairs if has_depth[p[0]] and has_depth[p[1]]]
        self.num_skipped_pairs = len(pairs) - len(kept)
        if self.num_skipped_pairs:
            warnings.warn(
                f"MegaDepth scene {self.scene_id}: {len(self.missing_depth)} image(s) have no depth map "
                f"(first: {self.missing_depth[0]}); skipped {self.num_skipped_pairs} of {len(pairs)} pairs",
                stacklevel=3,
            )
        return kept

    def __len__(self) -> int:
        return len(self.pairs)

    def pair_metadata(self, idx: int) -> dict:
        """Names, original-resolution intrinsics ``K0, K1`` (3, 3), ``T_0to1`` (4, 4) and overlap of a pair,
        without reading any image."""
        i, j, score = self.pairs[idx]
        return {
            "name0": str(self.image_paths[i]),
            "name1": str(self.image_paths[j]),
            "K0": np.asarray(self.intrinsics[i], np.float64).reshape(3, 3),
            "K1": np.asarray(self.intrinsics[j], np.float64).reshape(3, 3),
            "T_0to1": relative_pose(self.poses[i], self.poses[j]),
            "overlap": score,
        }

    def _view(self, k: int, K: np.ndarray) -> dict:
        depth = read_depth_h5(self.root / self.depth_paths[k]) if self.conf["load_depth"] else None
        return prepare_view(
            self.root / self.image_paths[k], K, depth,
            long_side=self.conf["long_side"], divisible=self.conf["divisible"], pad_square=self.conf["pad_square"],
        )

    def __getitem__(self, idx: int) -> dict:
        meta = self.pair_metadata(idx)
        i, j, _ = self.pairs[idx]
        view0, view1 = self._view(i, meta["K0"]), self._view(j, meta["K1"])
        if self.photometric is not None:
            rng = np.random.default_rng([int(self.conf["photometric_seed"]), zlib.crc32(self.scene_id.encode()), idx])
            for view in (view0, view1):
                view["image"] = photometric_jitter(view["image"].astype(np.float32) / 255.0, view["mask"], rng,
                                                   self.photometric)
        return depth_pair_item(view0, view1, meta["T_0to1"], f"{meta['name0']} {meta['name1']}",
                               sparse_gt=bool(self.conf["sparse_depth"]))


def read_scene_list(path: PathLike) -> list[str]:
    """Scene names of a MegaDepth list file (one per line, ``.npz`` suffix optional)."""
    p = require_file(path, "MegaDepth scene list")
    names = [line.strip() for line in p.read_text().splitlines()]
    return [n[:-4] if n.endswith(".npz") else n for n in names if n and not n.startswith("#")]


def load_megadepth(
    root: PathLike,
    index_dir: PathLike,
    scenes: Union[PathLike, Sequence[str], None] = None,
    max_pairs_per_scene: Optional[int] = None,
    **conf: Any,
) -> ConcatDataset:
    """Several MegaDepth scenes as one dataset.

    Args:
        root: dataset root (images and depth maps, paths as in the indices).
        index_dir: folder of ``<scene>.npz`` index files.
        scenes: a list file (one scene name a line, as LoFTR's ``megadepth_test_1500.txt``), a list of scene
            names, or None for every ``*.npz`` in ``index_dir``.
        conf: options of :class:`MegaDepthScene`.
    Raises:
        FileNotFoundError: naming the first missing index file.
    """
    index_dir = Path(index_dir)
    if scenes is None:
        names = sorted(p.stem for p in index_dir.glob("*.npz"))
        if not names:
            raise FileNotFoundError(f"no MegaDepth scene_info index (*.npz) in {str(index_dir)!r}")
    elif isinstance(scenes, (str, os.PathLike)):
        names = read_scene_list(scenes)
    else:
        names = [s[:-4] if s.endswith(".npz") else s for s in scenes]
    for name in names:
        require_file(index_dir / f"{name}.npz", "MegaDepth scene_info index")
    dataset = ConcatDataset(
        [MegaDepthScene(root, index_dir / f"{n}.npz", max_pairs=max_pairs_per_scene, **conf) for n in names]
    )
    label = Path(scenes).stem if isinstance(scenes, (str, os.PathLike)) else f"{len(names)} scenes"
    dataset.name = f"megadepth/{label}"  # type: ignore[attr-defined]  (display name for the evaluation)
    return dataset
