"""Real 3D training pairs from a COLMAP reconstruction, written in MegaDepth's layout with *sparse* depth.

MegaDepth itself is COLMAP + multi-view stereo on internet photos. Multi-view stereo needs CUDA in COLMAP, so this
writer keeps what a CPU reconstruction gives: undistorted images, their cameras, and the depth of every 3D point an
image observes. Each point's depth is written into a low-resolution depth map (one cell per ``depth_stride`` pixels),
splatted over its ``splat`` neighbouring cells with the nearest depth winning; every other cell stays 0 (unknown).
Because the points are observations of the image (COLMAP's tracks), every written depth is visible.

The training loss treats such a pair as *sparse* ground truth (``sparse_gt``): cells without depth are neither
positives nor negatives, except where the GT cameras' epipolar geometry rules a match out (see
:func:`asmamba.training.supervision.compute_supervision_coarse`).

Layout under ``out_dir`` (the loader's root; ``MegaDepthScene(out_dir, out_dir/scene_info/<scene>.npz,
sparse_depth=True)`` reads it)::

    <scene>/images/<name>            undistorted images (PINHOLE cameras)
    <scene>/depths/<name>.h5         'depth' dataset, float32, 0 = unknown, at 1/depth_stride resolution
    scene_info/<scene>.npz           pickled dict, as MegaDepth's real indices

Command line: ``python -m asmamba.training.data.sfm_scene IMAGE_DIR OUT_DIR --scene NAME`` runs COLMAP's own SIFT
reconstruction (pycolmap: SIFT, exhaustive matching, one shared camera, incremental mapping) in
``OUT_DIR/colmap/NAME`` and writes its largest model; ``--model SFM_DIR`` writes an existing COLMAP model instead.
:func:`known_camera_model` triangulates SIFT points from given cameras instead of estimating them. The whole training
corpus (every photo collection, binned pairs, split by scene) is :mod:`asmamba.training.data.corpus`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from asmamba.training.data.synthetic import INDEX_DIR, write_atomic, write_depth_h5

PathLike = Union[str, os.PathLike]


@dataclass
class SparseView:
    """One registered image: name, PINHOLE intrinsics (pixel centres at integers), world-to-camera pose, its
    observed points (pixels, ``(N, 2)``), their depths ``(N,)`` and 3D point ids ``(N,)``."""

    name: str
    width: int
    height: int
    K: np.ndarray
    T_world_to_cam: np.ndarray
    xy: np.ndarray
    depth: np.ndarray
    point_ids: np.ndarray


def sparse_depth_map(xy: np.ndarray, depth: np.ndarray, size_wh: tuple[int, int], stride: int, splat: int) -> np.ndarray:
    """The low-resolution sparse depth map of one view.

    Low-resolution cell ``u`` covers the image pixels whose centre-aligned resize lands on it: with ``w_lr =
    round(w / stride)`` cells across, pixel ``x`` falls in cell ``floor((x + 0.5) * w_lr / w)`` - the inverse of
    :func:`asmamba.training.data.common.resize_depth_nearest`. Each point fills the cells within ``splat`` (Chebyshev
    distance) of its own, and a cell keeps the smallest depth written into it.

    Args:
        xy: ``(N, 2)`` pixels (centres at integers; points outside the image are dropped); depth: ``(N,)``
            positive; size_wh: the image's ``(w, h)``.
    Returns:
        ``(h_lr, w_lr)`` float32, 0 where no point reached.
    """
    w, h = size_wh
    w_lr, h_lr = max(1, int(round(w / stride))), max(1, int(round(h / stride)))
    out = np.full((h_lr, w_lr), np.inf, dtype=np.float64)
    keep = np.isfinite(xy).all(1) & (depth > 0)
    keep &= (xy[:, 0] >= -0.5) & (xy[:, 0] < w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < h - 0.5)
    u = np.floor((xy[keep, 0] + 0.5) * w_lr / w).astype(np.int64)
    v = np.floor((xy[keep, 1] + 0.5) * h_lr / h).astype(np.int64)
    z = depth[keep].astype(np.float64)
    for dv in range(-splat, splat + 1):
        for du in range(-splat, splat + 1):
            uu, vv = u + du, v + dv
            inside = (uu >= 0) & (uu < w_lr) & (vv >= 0) & (vv < h_lr)
            np.minimum.at(out, (vv[inside], uu[inside]), z[inside])
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


def read_views(reconstruction) -> list[SparseView]:
    """The registered images of an undistorted (PINHOLE / SIMPLE_PINHOLE) ``pycolmap.Reconstruction``.

    COLMAP's pixel centres sit at ``+0.5``; keypoints and principal points are shifted to this project's integer
    convention. Raises ValueError for a camera with distortion (undistort first).
    """
    views = []
    for image_id in sorted(reconstruction.images):
        image = reconstruction.images[image_id]
        if not image.has_pose:
            continue
        camera = image.camera
        if camera.model_name not in ("PINHOLE", "SIMPLE_PINHOLE"):
            raise ValueError(f"image {image.name!r} has a {camera.model_name} camera; undistort the model first")
        K = np.asarray(camera.calibration_matrix(), np.float64).copy()
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        pose = image.cam_from_world()
        T = np.eye(4)
        T[:3, :4] = np.asarray(pose.matrix(), np.float64)
        xy, ids = [], []
        for p in image.points2D:
            if p.has_point3D():
                xy.append(np.asarray(p.xy, np.float64) - 0.5)
                ids.append(int(p.point3D_id))
        xy_arr = np.asarray(xy, np.float64).reshape(-1, 2)
        ids_arr = np.asarray(ids, np.int64)
        world = np.asarray([reconstruction.points3D[i].xyz for i in ids], np.float64).reshape(-1, 3)
        depth = world @ T[2, :3] + T[2, 3]
        views.append(SparseView(image.name, int(camera.width), int(camera.height), K, T, xy_arr, depth, ids_arr))
    return views


def covisible_pairs(views: list[SparseView], min_shared: int) -> list[tuple[np.ndarray, float, float]]:
    """``((i, j), overlap, shared)`` of every pair sharing at least ``min_shared`` 3D points; overlap is the shared
    count over the smaller of the two images' point counts."""
    sets = [set(v.point_ids.tolist()) for v in views]
    pairs = []
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            shared = len(sets[i] & sets[j])
            if shared >= min_shared:
                overlap = shared / max(1, min(len(sets[i]), len(sets[j])))
                pairs.append((np.array([i, j]), float(overlap), float(shared)))
    return pairs


#: camera sharing: ``per_size`` - one camera per image size (frames rotated by 90 degrees get their own);
#: the others are COLMAP's own (``pycolmap.CameraMode``; without EXIF, ``auto`` gives every image its own camera)
CAMERA_MODES = ("per_size", "auto", "single", "per_folder", "per_image")


def _images_by_size(image_dir: Path) -> dict[tuple[int, int], list[str]]:
    """Image names (sorted) of a folder grouped by their ``(w, h)``."""
    import cv2

    from asmamba.io import list_images

    groups: dict[tuple[int, int], list[str]] = {}
    for name in list_images(image_dir, recursive=False):
        image = cv2.imread(str(image_dir / name), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"image {str(image_dir / name)!r} cannot be read")
        groups.setdefault((image.shape[1], image.shape[0]), []).append(name)
    return groups


def _sift_database(
    image_dir: Path, database: Path, camera_mode: str, camera_model: str, num_threads: int,
    exhaustive_max_images: Optional[int], sequential_overlap: int, seed: int, peak_threshold: Optional[float] = None,
) -> None:
    """A fresh COLMAP database of the folder's SIFT features and verified matches."""
    import pycolmap

    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"unknown camera_mode {camera_mode!r}; choose one of {', '.join(CAMERA_MODES)}")
    database.unlink(missing_ok=True)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    if peak_threshold is not None:
        extraction.sift.peak_threshold = float(peak_threshold)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    if camera_mode == "per_size":  # one extraction per size, each sharing a single camera
        for names in _images_by_size(image_dir).values():
            pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
    else:
        pycolmap.extract_features(database, image_dir, camera_mode=getattr(pycolmap.CameraMode, camera_mode.upper()),
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    n_images = sum(len(names) for names in _images_by_size(image_dir).values())
    if exhaustive_max_images is None or n_images <= exhaustive_max_images:
        pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                  device=pycolmap.Device.cpu)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = sequential_overlap
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                  verification_options=verification, device=pycolmap.Device.cpu)


def colmap_sift_model(
    image_dir: PathLike,
    work_dir: PathLike,
    camera_mode: str = "single",
    camera_model: str = "SIMPLE_RADIAL",
    num_threads: int = -1,
    exhaustive_max_images: Optional[int] = None,
    sequential_overlap: int = 10,
    seed: int = 0,
    peak_threshold: Optional[float] = None,
) -> Path:
    """COLMAP's SIFT reconstruction of one folder; returns the largest model's folder.

    Args:
        camera_mode: one of :data:`CAMERA_MODES`.
        camera_model: COLMAP camera model of the new cameras (e.g. ``SIMPLE_RADIAL``, ``OPENCV``).
        num_threads: threads of every COLMAP stage (-1: all cores).
        exhaustive_max_images: match every pair up to this many images, else consecutive file names
            (``sequential_overlap`` neighbours each); None: always exhaustive.
        seed: seeds COLMAP's RANSAC and mapper.
        peak_threshold: SIFT's detection threshold (None: COLMAP's 0.0067; lower finds more in dark images).

    Reruns reuse a finished model (``work_dir/models``, written by one rename). Raises RuntimeError when COLMAP
    builds no model and ValueError for an unknown camera mode.
    """
    import pycolmap

    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"unknown camera_mode {camera_mode!r}; choose one of {', '.join(CAMERA_MODES)}")
    image_dir, work = Path(image_dir), Path(work_dir)
    models = work / "models"
    if models.is_dir() and any(models.iterdir()):
        return _largest_model(models)
    work.mkdir(parents=True, exist_ok=True)
    database = work / "database.db"
    _sift_database(image_dir, database, camera_mode, camera_model, num_threads, exhaustive_max_images,
                   sequential_overlap, seed, peak_threshold)
    mapper = pycolmap.IncrementalPipelineOptions()
    mapper.num_threads = num_threads
    mapper.random_seed = seed
    mapper.extract_colors = False
    tmp = work / "models.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    reconstructions = pycolmap.incremental_mapping(database, image_dir, tmp, options=mapper)
    if not reconstructions:
        raise RuntimeError(f"COLMAP built no model from the images in {str(image_dir)!r}")
    os.replace(tmp, models)
    return _largest_model(models)


def known_camera_model(
    image_dir: PathLike,
    work_dir: PathLike,
    cameras: dict[str, tuple[np.ndarray, np.ndarray]],
    num_threads: int = -1,
    exhaustive_max_images: Optional[int] = None,
    seed: int = 0,
    peak_threshold: Optional[float] = None,
) -> Path:
    """COLMAP's SIFT points triangulated from *given* cameras (no pose estimation); returns the model's folder.

    For scenes whose source holds calibrated cameras but whose photos are too far apart for incremental SfM.

    Args:
        cameras: image name -> ``(K, T_world_to_cam)``: PINHOLE intrinsics ``(3, 3)`` of the image file in COLMAP's
            pixel frame (centres at +0.5) and the ``(4, 4)`` pose. Images without an entry stay unregistered.
        num_threads, exhaustive_max_images, seed, peak_threshold: as :func:`colmap_sift_model`.
    Raises:
        ValueError: no image of the folder has a camera. RuntimeError: nothing could be triangulated.
    """
    import pycolmap

    image_dir, work = Path(image_dir), Path(work_dir)
    models = work / "models"
    if models.is_dir() and any(models.iterdir()):
        return _largest_model(models)
    work.mkdir(parents=True, exist_ok=True)
    database = work / "database.db"
    _sift_database(image_dir, database, "per_image", "PINHOLE", num_threads, exhaustive_max_images, 10, seed,
                   peak_threshold)
    db = pycolmap.Database.open(str(database))
    try:
        images = [im for im in db.read_all_images() if im.name in cameras]
        db_cameras = {c.camera_id: c for c in db.read_all_cameras()}
    finally:
        db.close()
    if not images:
        raise ValueError(f"none of the images in {str(image_dir)!r} has a given camera")
    rec = pycolmap.Reconstruction()
    for im in images:
        K, T = cameras[im.name]
        size = db_cameras[im.camera_id]
        camera = pycolmap.Camera.create_from_model_name(im.camera_id, "PINHOLE", float(K[0, 0]), size.width,
                                                        size.height)
        camera.params = [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])]
        rec.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=im.name, camera_id=im.camera_id, image_id=im.image_id)
        R, t = np.asarray(T[:3, :3], np.float64), np.asarray(T[:3, 3], np.float64)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)
        rec.add_image_with_trivial_frame(image, pose)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.extract_colors = False
    tmp = work / "models.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "0").mkdir(parents=True)
    result = pycolmap.triangulate_points(rec, database, image_dir, tmp / "0", options=options)
    if result.num_points3D() == 0:
        raise RuntimeError(f"no point could be triangulated from the given cameras of {str(image_dir)!r}")
    result.write(str(tmp / "0"))
    os.replace(tmp, models)
    return _largest_model(models)


def _largest_model(models: Path) -> Path:
    import pycolmap

    folders = [p for p in sorted(models.iterdir()) if (p / "images.bin").is_file()]
    if not folders:
        raise RuntimeError(f"{str(models)!r} holds no COLMAP model")
    return max(folders, key=lambda p: pycolmap.Reconstruction(str(p)).num_reg_images())


def write_sparse_scene(
    sfm_dir: PathLike, image_dir: PathLike, out_dir: PathLike, scene: str, depth_stride: int = 8, splat: int = 1,
    min_shared: int = 100,
    select_pairs: Optional[Callable[[list[SparseView]], list]] = None,
    extra_info: Optional[dict] = None,
    num_threads: int = -1,
) -> Path:
    """Undistort a COLMAP model and write it as a sparse-depth MegaDepth scene (module docstring).

    Args:
        sfm_dir: COLMAP model folder (cameras/images/points3D); image_dir: the images it was built from.
        out_dir: dataset root; scene: scene name; depth_stride, splat: see :func:`sparse_depth_map`.
        min_shared: pairs sharing fewer 3D points are not listed (default pair list: :func:`covisible_pairs`).
        select_pairs: instead, a function of the registered views returning ``pair_infos`` entries
            ``((i, j), overlap, shared)`` (e.g. :func:`asmamba.training.data.corpus.select_pairs`).
        extra_info: more keys for the scene_info dict (the loader ignores unknown keys).
        num_threads: threads of COLMAP's undistortion (-1: all cores).
    Returns:
        the scene_info path (written last, by one rename: a scene is complete once it exists).
    """
    import pycolmap

    sfm_dir, image_dir, root = Path(sfm_dir), Path(image_dir), Path(out_dir)
    if not sfm_dir.is_dir():
        raise FileNotFoundError(f"COLMAP model folder {str(sfm_dir)!r} does not exist")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {str(image_dir)!r} does not exist")
    scene_dir = root / scene
    with tempfile.TemporaryDirectory(dir=root if root.exists() else None) as tmp:
        pycolmap.undistort_images(tmp, str(sfm_dir), str(image_dir), num_threads=num_threads)
        reconstruction = pycolmap.Reconstruction(str(Path(tmp) / "sparse"))
        views = read_views(reconstruction)
        if len(views) < 2:
            raise ValueError(f"{str(sfm_dir)!r} has {len(views)} registered image(s); a scene needs 2")
        (scene_dir / "images").mkdir(parents=True, exist_ok=True)
        for v in views:
            target = scene_dir / "images" / v.name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, lambda p, src=Path(tmp) / "images" / v.name: shutil.copyfile(src, p))
    image_paths, depth_paths = [], []
    for v in views:
        depth = sparse_depth_map(v.xy, v.depth, (v.width, v.height), depth_stride, splat)
        depth_rel = f"{scene}/depths/{v.name}.h5"
        (root / depth_rel).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(root / depth_rel, lambda p, d=depth: write_depth_h5(p, d))
        image_paths.append(f"{scene}/images/{v.name}")
        depth_paths.append(depth_rel)
    info = {
        "image_paths": np.array(image_paths, dtype=object),
        "depth_paths": np.array(depth_paths, dtype=object),
        "intrinsics": np.array([v.K for v in views] + [None], dtype=object)[:-1],
        "poses": np.array([v.T_world_to_cam for v in views] + [None], dtype=object)[:-1],
        "pair_infos": select_pairs(views) if select_pairs is not None else covisible_pairs(views, min_shared),
        **(extra_info or {}),
    }
    index = root / INDEX_DIR / f"{scene}.npz"
    index.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(index, lambda p: p.write_bytes(pickle.dumps(info, protocol=4)))
    return index


def main(argv: Optional[list[str]] = None) -> int:
    """Write a COLMAP model as a sparse-depth MegaDepth scene (``python -m asmamba.training.data.sfm_scene -h``)."""
    parser = argparse.ArgumentParser(prog="asmamba-sfm-scene", description=main.__doc__)
    parser.add_argument("image_dir", help="folder of the scene's images")
    parser.add_argument("out_dir", help="dataset root to write (MegaDepth layout)")
    parser.add_argument("--scene", required=True, help="scene name")
    parser.add_argument("--model", help="an existing COLMAP model of these images (default: run COLMAP's SIFT SfM)")
    parser.add_argument("--depth-stride", type=int, default=8, help="pixels per depth cell")
    parser.add_argument("--splat", type=int, default=1, help="cells each point fills around its own")
    parser.add_argument("--min-shared", type=int, default=100, help="3D points a listed pair must share")
    args = parser.parse_args(argv)
    model = args.model or colmap_sift_model(args.image_dir, Path(args.out_dir) / "colmap" / args.scene)
    index = write_sparse_scene(model, args.image_dir, args.out_dir, args.scene, args.depth_stride, args.splat,
                               args.min_shared)
    info = pickle.loads(index.read_bytes())
    print(f"{args.scene}: {len(info['image_paths'])} views, {len(info['pair_infos'])} pairs -> {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
