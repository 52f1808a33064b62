"""The training corpus: every multi-view photo collection of a training root as sparse-depth MegaDepth scenes,
plus the homography source lists and synthetic plane scenes of the training recipe, split by scene.

``python -m asmamba.training.data.corpus build OUT --train-root ../shared/data/train`` writes (defaults beside OUT)::

    OUT/<scene>/images, OUT/<scene>/depths, OUT/scene_info/<scene>.npz    sparse-depth MegaDepth scenes (sfm_scene.py)
    OUT/stats/<scene>.json                                                per-scene SfM numbers (the "done" marker)
    OUT/corpus_stats.json, OUT/corpus_stats.md                            every scene's numbers, pairs by overlap bin
    OUT/splits/train.txt, OUT/splits/val.txt                              built scenes of each split
    OUT/../colmap/<scene>/                                                SfM work folders (database, models)
    OUT/../homography/{train,val}/<scene>/<image>                         symlinks to the scenes' photos
    OUT/../synthetic/{train,val}/                                         synthetic scenes (MegaDepth layout)

Every scene runs COLMAP (SIFT by default, exhaustive matching) on its photos, the largest model is undistorted and
written with sparse depth, and its pairs are chosen by covisibility (:func:`select_pairs`) so that every overlap
bin - wide baselines included - is present. What to build and how comes from ``configs/data/corpus_build.yaml``
(excluded scenes, the fixed validation scenes, per-scene camera settings, pair bins). A rerun skips every scene
whose ``stats/<scene>.json`` exists (``--force`` rebuilds them from their SfM models; delete a scene's colmap
folder to redo its SfM); every file is written by a rename, so an interrupted run resumes where it stopped.

Evaluation scenes never enter: the builder refuses a training root inside one of the shared data's evaluation
folders (``pose``, ``homography``, ``sfm/sacre_coeur``, ``textures/opensfm_lund``) and any scene named like one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from omegaconf import OmegaConf

from asmamba.io import list_images
from asmamba.training.data.sfm_scene import SparseView, colmap_sift_model, write_sparse_scene
from asmamba.training.data.synthetic import INDEX_DIR, write_atomic

PathLike = Union[str, os.PathLike]

BUILD_CONFIG = "corpus_build"
PARTS = ("homography", "synthetic", "sfm")
#: folders of the shared data root that evaluations read: never a training source
EVALUATION_FOLDERS = ("pose", "homography", "sfm/sacre_coeur", "textures/opensfm_lund")


class CorpusError(ValueError):
    """Bad input to the corpus builder (missing root, too few images, an evaluation scene, a bad split)."""


# ----------------------------------------------------------------------------------------------- scenes
@dataclass
class SceneSource:
    """One photo collection: its name, image folder, image count and licence (from ``SOURCES.tsv``)."""

    name: str
    image_dir: Path
    num_images: int
    licence: str = "unknown"
    repo: str = ""

    @property
    def non_commercial(self) -> bool:
        text = self.licence.lower()
        return "-nc" in text or " nc " in text or "non-commercial" in text or "noncommercial" in text


def read_sources_tsv(train_root: Path) -> dict[str, dict[str, str]]:
    """``scene -> {repo, path, licence}`` from ``train_root/SOURCES.tsv`` (empty if there is none)."""
    path = train_root / "SOURCES.tsv"
    if not path.is_file():
        return {}
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    header, body = rows[0], rows[1:]
    return {r[0]: dict(zip(header[1:], r[1:])) for r in body if len(r) == len(header)}


def evaluation_folders(data_root: Optional[PathLike] = None) -> list[Path]:
    """The shared data's evaluation folders (those that exist)."""
    if data_root is None:
        from asmamba.io import data_root as shared_root

        data_root = shared_root()
    return [Path(data_root) / f for f in EVALUATION_FOLDERS if (Path(data_root) / f).exists()]


def _check_not_evaluation(name: str, image_dir: Path, forbidden: Sequence[Path]) -> None:
    resolved = image_dir.resolve()
    for folder in forbidden:
        f = folder.resolve()
        if resolved == f or f in resolved.parents:
            raise CorpusError(f"scene {name!r} ({str(image_dir)!r}) lies in the evaluation folder {str(folder)!r}")
    names = {folder.name for folder in forbidden}
    for folder in forbidden:
        if folder.is_dir():
            names |= {p.name for p in folder.iterdir() if p.is_dir()}
    if name in names:
        raise CorpusError(f"scene {name!r} is named like an evaluation scene; training on it is not allowed")


def discover_scenes(
    train_root: PathLike,
    extra_scenes: Optional[Mapping[str, PathLike]] = None,
    exclude: Sequence[str] = (),
    min_images: int = 3,
    extra_licences: Optional[Mapping[str, str]] = None,
    data_root: Optional[PathLike] = None,
) -> list[SceneSource]:
    """Every ``<train_root>/<scene>/images`` folder (plus ``extra_scenes``), minus ``exclude``, sorted by name.

    Raises:
        CorpusError: the root does not exist or holds no scene, a scene has fewer than ``min_images`` images, an
            excluded name is unknown, or a scene is an evaluation scene.
    """
    root = Path(train_root)
    if not root.is_dir():
        raise CorpusError(f"training root {str(root)!r} does not exist or is not a directory")
    folders = {p.name: p / "images" for p in sorted(root.iterdir()) if (p / "images").is_dir()}
    if not folders:
        raise CorpusError(f"training root {str(root)!r} holds no <scene>/images folder")
    for name, folder in (extra_scenes or {}).items():
        if name in folders:
            raise CorpusError(f"extra scene {name!r} has the name of a scene of the training root")
        if not Path(folder).is_dir():
            raise CorpusError(f"image folder {str(folder)!r} of extra scene {name!r} does not exist")
        folders[name] = Path(folder)
    unknown = sorted(set(exclude) - set(folders))
    if unknown:
        raise CorpusError(f"excluded scene(s) {unknown} are not scenes of {str(root)!r}")
    forbidden = evaluation_folders(data_root)
    tsv = read_sources_tsv(root)
    scenes = []
    for name in sorted(set(folders) - set(exclude)):
        folder = folders[name]
        _check_not_evaluation(name, folder, forbidden)
        try:
            count = len(list_images(folder, recursive=False))
        except ValueError:
            count = 0
        if count < min_images:
            raise CorpusError(f"scene {name!r} has {count} image(s) in {str(folder)!r}; "
                              f"SfM needs at least {min_images}")
        meta = tsv.get(name, {})
        licence = (extra_licences or {}).get(name) or meta.get("licence", "unknown")
        scenes.append(SceneSource(name, folder, count, licence, meta.get("repo", "")))
    return scenes


def split_scenes(names: Sequence[str], validation: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(train, val)`` scene names: the validation scenes are held out whole. Raises CorpusError for a validation
    scene that is not among ``names`` or a split that leaves no training scene."""
    missing = sorted(set(validation) - set(names))
    if missing:
        raise CorpusError(f"validation scene(s) {missing} are not scenes of the corpus (excluded or absent)")
    val = [n for n in names if n in set(validation)]
    train = [n for n in names if n not in set(validation)]
    if not train:
        raise CorpusError("every scene is a validation scene; nothing is left to train on")
    return train, val


# ----------------------------------------------------------------------------------------------- pairs
def pair_overlaps(views: Sequence[SparseView], min_shared: int) -> list[tuple[int, int, float, int]]:
    """``(i, j, overlap, shared)`` of every pair of views sharing at least ``min_shared`` 3D points.

    ``overlap`` is the smaller of the two fractions of each view's observed points that the other also sees
    (shared over the larger point count): a small close-up inside a wide view scores low, as its baseline / scale
    change deserves.
    """
    sets = [set(np.asarray(v.point_ids).tolist()) for v in views]
    out = []
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            shared = len(sets[i] & sets[j])
            if shared >= max(1, min_shared):
                out.append((i, j, shared / max(len(sets[i]), len(sets[j])), shared))
    return out


def bin_index(overlap: float, bins: Sequence[float]) -> int:
    """Index ``k`` of the bin ``[bins[k], bins[k+1])`` holding ``overlap`` (the last bin includes its upper edge),
    -1 below ``bins[0]``."""
    if overlap < bins[0] or overlap > bins[-1]:
        return -1
    k = int(np.searchsorted(np.asarray(bins), overlap, side="right")) - 1
    return min(k, len(bins) - 2)


def select_pairs(
    views: Sequence[SparseView], bins: Sequence[float], max_per_bin: Optional[int], min_shared: int, seed: int = 0
) -> list[tuple[np.ndarray, float, float]]:
    """Training pairs of one scene, as ``pair_infos`` entries ``((i, j), overlap, shared)``, sorted by ``(i, j)``.

    Pairs with ``min_shared`` 3D points and an overlap (:func:`pair_overlaps`) within ``bins`` are kept; from each
    bin at most ``max_per_bin`` (None: all) are drawn uniformly with ``seed``, so the many near-duplicate pairs of
    a sequence do not crowd out its wide baselines.
    """
    if len(bins) < 2 or any(b >= c for b, c in zip(bins[:-1], bins[1:])):
        raise ValueError(f"overlap bins must be at least two increasing edges, got {list(bins)}")
    rng = np.random.default_rng(seed)
    by_bin: dict[int, list[tuple[int, int, float, int]]] = {}
    for pair in pair_overlaps(views, min_shared):
        k = bin_index(pair[2], bins)
        if k >= 0:
            by_bin.setdefault(k, []).append(pair)
    chosen = []
    for k in sorted(by_bin):
        members = by_bin[k]
        if max_per_bin is not None and len(members) > max_per_bin:
            keep = np.sort(rng.choice(len(members), size=max_per_bin, replace=False))
            members = [members[m] for m in keep]
        chosen += members
    chosen.sort(key=lambda p: (p[0], p[1]))
    return [(np.array([i, j]), float(o), float(s)) for i, j, o, s in chosen]


def bin_counts(pair_infos: Sequence, bins: Sequence[float]) -> list[int]:
    """Pairs per overlap bin (``len(bins) - 1`` counts)."""
    counts = [0] * (len(bins) - 1)
    for entry in pair_infos:
        k = bin_index(float(entry[1]), bins)
        if k >= 0:
            counts[k] += 1
    return counts


def bin_labels(bins: Sequence[float]) -> list[str]:
    return [f"{a:g}-{b:g}" for a, b in zip(bins[:-1], bins[1:])]


# ----------------------------------------------------------------------------------------------- SfM scenes
@dataclass
class SceneStats:
    """What one scene's SfM gave and what was written."""

    scene: str
    split: str
    images: int
    registered: int = 0
    points: int = 0
    mean_track_length: float = 0.0
    mean_observations_per_image: float = 0.0
    mean_reprojection_error: float = 0.0
    cameras: int = 0
    pairs: int = 0
    pairs_by_bin: dict[str, int] = field(default_factory=dict)
    matcher: str = ""
    licence: str = ""
    non_commercial: bool = False
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def scene_settings(cfg: Mapping[str, Any], scene: str) -> dict[str, Any]:
    """The SfM options of one scene (``sfm`` merged with its ``sfm.scenes.<scene>`` overrides)."""
    sfm = {k: v for k, v in cfg["sfm"].items() if k != "scenes"}
    overrides = (cfg["sfm"].get("scenes") or {}).get(scene) or {}
    unknown = set(overrides) - set(sfm)
    if unknown:
        raise CorpusError(f"sfm.scenes.{scene} sets unknown option(s) {sorted(unknown)}; known: {sorted(sfm)}")
    return {**sfm, **overrides}


def _build_settings(cfg: Mapping[str, Any], scene: str) -> dict[str, Any]:
    return {"sfm": scene_settings(cfg, scene), "pairs": dict(cfg["pairs"]), "depth": dict(cfg["depth"])}


def read_projection_cameras(
    folder: PathLike, image_dir: PathLike, source_size: Sequence[int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cameras from per-image 3x4 projection matrices ``<stem>_P.txt`` (AliceVision's datasets: ``P = K [R | t]``
    for the original ``source_size`` ``(w, h)`` images), rescaled to the stored image files of ``image_dir``.

    An image ``NNNNN<anything>.jpg`` takes ``NNNNN_P.txt``. Returns ``name -> (K, T_world_to_cam)`` as
    :func:`asmamba.training.data.sfm_scene.known_camera_model` takes them.
    """
    import cv2

    folder, image_dir = Path(folder), Path(image_dir)
    cameras = {}
    for name in list_images(image_dir, recursive=False):
        path = folder / f"{name.split('.')[0]}_P.txt"
        if not path.is_file():
            continue
        P = np.loadtxt(path).reshape(3, 4)
        K, R, C = cv2.decomposeProjectionMatrix(P)[:3]
        K = K / K[2, 2]
        D = np.diag(np.sign(np.diag(K)))  # positive focal lengths
        K, R = K @ D, D @ R
        if np.linalg.det(R) < 0:
            R = -R  # P is known up to sign only
        C = C[:3, 0] / C[3, 0]
        image = cv2.imread(str(image_dir / name), cv2.IMREAD_GRAYSCALE)
        h, w = image.shape
        K = np.diag([w / source_size[0], h / source_size[1], 1.0]) @ K
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, -R @ C
        cameras[name] = (K, T)
    if not cameras:
        raise CorpusError(f"no <image>_P.txt projection matrix in {str(folder)!r} matches an image of "
                          f"{str(image_dir)!r}")
    return cameras


def _halcon_values(path: Path) -> dict[str, float]:
    """``name -> value`` of a HALCON camera parameter file (lines ``Name:short:\tvalue;``)."""
    values = {}
    for line in path.read_text().splitlines():
        parts = line.split(":")
        if len(parts) == 3 and not line.startswith(("#", "\t", " ")) and parts[2].strip().endswith(";"):
            try:
                values[parts[0].strip()] = float(parts[2].strip().rstrip(";"))
            except ValueError:
                pass
    return values


def read_halcon_cameras(
    folder: PathLike, image_dir: PathLike, source_size: Optional[Sequence[int]] = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cameras of HALCON calibration files (the multi-view stereo benchmark of ``drewm1980``):
    ``intrinsics_cameraNN.txt`` (Focus, Sx, Sy, Cx, Cy, ImageWidth, ImageHeight; distortion must be 0, the images
    being undistorted) and ``extrinsics_cameraNN.txt`` (12 numbers, the row-major ``3x4`` camera-to-world pose) for
    the image ``image_cameraNN.<ext>``, rescaled to the stored image files. ``source_size`` is unused (the files
    state their size). HALCON puts pixel centres at integers; the returned ``K`` is in COLMAP's frame (+0.5)."""
    import cv2

    folder, image_dir = Path(folder), Path(image_dir)
    cameras = {}
    for name in list_images(image_dir, recursive=False):
        tag = Path(name).stem.replace("image_", "")
        intr, extr = folder / f"intrinsics_{tag}.txt", folder / f"extrinsics_{tag}.txt"
        if not (intr.is_file() and extr.is_file()):
            continue
        v = _halcon_values(intr)
        missing = [k for k in ("Focus", "Sx", "Sy", "Cx", "Cy", "ImageWidth", "ImageHeight") if k not in v]
        if missing:
            raise CorpusError(f"HALCON intrinsics {str(intr)!r} lack {missing}")
        if any(v.get(f"Poly{k}", 0.0) != 0.0 for k in range(1, 6)):
            raise CorpusError(f"HALCON intrinsics {str(intr)!r} have lens distortion; only undistorted images are read")
        image = cv2.imread(str(image_dir / name), cv2.IMREAD_GRAYSCALE)
        sx, sy = image.shape[1] / v["ImageWidth"], image.shape[0] / v["ImageHeight"]
        K = np.array([[v["Focus"] / v["Sx"] * sx, 0, (v["Cx"] + 0.5) * sx],
                      [0, v["Focus"] / v["Sy"] * sy, (v["Cy"] + 0.5) * sy], [0, 0, 1.0]])
        cam_to_world = np.eye(4)
        cam_to_world[:3, :4] = np.array([float(x) for x in extr.read_text().split()]).reshape(3, 4)
        cameras[name] = (K, np.linalg.inv(cam_to_world))
    if not cameras:
        raise CorpusError(f"no intrinsics_/extrinsics_<camera>.txt pair in {str(folder)!r} matches an image of "
                          f"{str(image_dir)!r}")
    return cameras


#: readers of a scene's ``source_cameras`` folder (``sfm.cameras`` of the build config)
CAMERA_READERS = {"projection_matrices": read_projection_cameras, "halcon": read_halcon_cameras}


def run_sfm(image_dir: Path, work_dir: Path, opts: Mapping[str, Any]) -> Path:
    """A COLMAP model of one scene (reused when ``work_dir`` already holds one); returns its folder.

    ``opts["cameras"]``: ``sfm`` estimates the cameras; a key of :data:`CAMERA_READERS` reads them from the scene's
    ``source_cameras`` folder (beside ``image_dir``, for ``source_size`` originals) and only triangulates."""
    matcher = str(opts["matcher"])
    if opts.get("cameras", "sfm") != "sfm":
        from asmamba.training.data.sfm_scene import known_camera_model

        reader = CAMERA_READERS.get(str(opts["cameras"]))
        if reader is None or matcher != "colmap_sift":
            raise CorpusError(f"sfm.cameras must be 'sfm' or one of {sorted(CAMERA_READERS)} (with colmap_sift), "
                              f"got {opts['cameras']!r}")
        if reader is read_projection_cameras and not opts.get("source_size"):
            raise CorpusError("sfm.cameras 'projection_matrices' needs sfm.source_size, the originals' (w, h)")
        cameras = reader(image_dir.parent / "source_cameras", image_dir, opts["source_size"])
        return known_camera_model(image_dir, work_dir, cameras, int(opts["num_threads"]),
                                  opts.get("exhaustive_max_images"), int(opts["seed"]), opts.get("peak_threshold"))
    if matcher == "colmap_sift":
        return colmap_sift_model(
            image_dir, work_dir, camera_mode=str(opts["camera_mode"]), camera_model=str(opts["camera_model"]),
            num_threads=int(opts["num_threads"]), exhaustive_max_images=opts.get("exhaustive_max_images"),
            seed=int(opts["seed"]), peak_threshold=opts.get("peak_threshold"),
        )
    from asmamba.pipelines.common import load_pipeline_config
    from asmamba.pipelines.reconstruct import reconstruct

    sfm_dir = work_dir / "sfm"
    if (sfm_dir / "images.bin").is_file():
        return sfm_dir
    n = len(list_images(image_dir, recursive=False))
    pairs = "exhaustive" if opts.get("exhaustive_max_images") is None or n <= int(opts["exhaustive_max_images"]) \
        else "sequential:10"
    cfg = load_pipeline_config("reconstruct")
    mode = str(opts["camera_mode"])
    if mode == "per_size":  # the pipeline's modes are COLMAP's own
        from asmamba.training.data.sfm_scene import _images_by_size

        mode = "single" if len(_images_by_size(image_dir)) == 1 else "per_image"
    cfg.matcher, cfg.pairs, cfg.camera_mode, cfg.device = matcher, pairs, mode, "cpu"
    cfg.mapper.num_threads, cfg.mapper.random_seed = int(opts["num_threads"]), int(opts["seed"])
    reconstruct(image_dir, work_dir, cfg, progress=False)
    return sfm_dir


def build_scene(
    source: SceneSource, out_dir: Path, work_dir: Path, cfg: Mapping[str, Any], split: str
) -> SceneStats:
    """SfM of one scene, written as a sparse-depth MegaDepth scene under ``out_dir`` with binned pairs; the stats
    JSON (the scene's "done" marker) is written last. Errors of the SfM are returned in ``stats.error``."""
    import pycolmap

    start = time.perf_counter()
    settings = _build_settings(cfg, source.name)
    opts, pcfg, dcfg = settings["sfm"], settings["pairs"], settings["depth"]
    stats = SceneStats(source.name, split, source.num_images, matcher=str(opts["matcher"]), licence=source.licence,
                       non_commercial=source.non_commercial, settings=settings)
    try:
        model_dir = run_sfm(source.image_dir, work_dir / source.name, opts)
        rec = pycolmap.Reconstruction(str(model_dir))
        stats.registered = int(rec.num_reg_images())
        stats.points = int(rec.num_points3D())
        stats.mean_track_length = float(rec.compute_mean_track_length())
        stats.mean_observations_per_image = float(rec.compute_mean_observations_per_reg_image())
        stats.mean_reprojection_error = float(rec.compute_mean_reprojection_error())
        stats.cameras = int(rec.num_cameras())
        if stats.registered < int(opts["min_registered"]):
            raise RuntimeError(f"only {stats.registered} of {source.num_images} images registered "
                               f"(min_registered {opts['min_registered']})")
        bins = [float(b) for b in pcfg["bins"]]

        cap = pcfg["val_max_per_bin"] if split == "val" else pcfg["max_per_bin"]

        def choose(views: list[SparseView]) -> list:
            return select_pairs(views, bins, cap, int(pcfg["min_shared"]), int(pcfg["seed"]))

        index = write_sparse_scene(
            model_dir, source.image_dir, out_dir, source.name, int(dcfg["stride"]), int(dcfg["splat"]),
            select_pairs=choose, num_threads=int(opts["num_threads"]),
            extra_info={"overlap_bins": np.asarray(bins), "split": split, "source_licence": source.licence},
        )
        from asmamba.training.data.megadepth import read_scene_info

        pair_infos = read_scene_info(index)["pair_infos"]
        stats.pairs = len(pair_infos)
        stats.pairs_by_bin = dict(zip(bin_labels(bins), bin_counts(pair_infos, bins)))
    except (RuntimeError, ValueError) as err:
        stats.error = f"{type(err).__name__}: {err}"
    stats.seconds = round(time.perf_counter() - start, 1)
    if not stats.error:
        _write_json(out_dir / "stats" / f"{source.name}.json", asdict(stats))
    return stats


def read_scene_stats(out_dir: PathLike, scene: str) -> Optional[SceneStats]:
    """The stats of a finished scene (None if it is not built: no stats JSON or no scene_info)."""
    path = Path(out_dir) / "stats" / f"{scene}.json"
    if not path.is_file() or not (Path(out_dir) / INDEX_DIR / f"{scene}.npz").is_file():
        return None
    return SceneStats(**json.loads(path.read_text()))


def build_sfm_corpus(
    out_dir: PathLike,
    scenes: Sequence[SceneSource],
    cfg: Mapping[str, Any],
    work_dir: Optional[PathLike] = None,
    force: bool = False,
    progress: bool = True,
) -> list[SceneStats]:
    """Build (or skip, when finished) every scene; write the split lists and the stats report.

    Returns:
        the stats of every scene, in ``scenes`` order (failed scenes carry ``error``; they are retried on a rerun).
    """
    from tqdm import tqdm

    out, work = Path(out_dir), Path(work_dir) if work_dir is not None else Path(out_dir).parent / "colmap"
    out.mkdir(parents=True, exist_ok=True)
    validation = set(cfg.get("validation") or [])
    results = []
    bar = tqdm(scenes, desc="sfm scenes", unit="scene", disable=not progress, file=sys.stdout)
    for source in bar:
        bar.set_postfix_str(source.name)
        done = None if force else read_scene_stats(out, source.name)
        if done is not None:
            if done.settings != _build_settings(cfg, source.name):
                print(f"note: {source.name} was built with other settings; --force rebuilds it", flush=True)
            results.append(done)
            continue
        stats = build_scene(source, out, work, cfg, "val" if source.name in validation else "train")
        line = (f"{stats.scene}: {stats.registered}/{stats.images} registered, {stats.points} points, "
                f"track {stats.mean_track_length:.2f}, reproj {stats.mean_reprojection_error:.2f} px, "
                f"{stats.pairs} pairs, {stats.seconds:.0f} s")
        print(line + (f" FAILED {stats.error}" if stats.error else ""), flush=True)
        results.append(stats)
    # the lists and the report cover every finished scene of OUT (also those of earlier runs with other --scenes)
    this_run = {r.scene for r in results}
    finished = [read_scene_stats(out, p.stem) for p in sorted((out / "stats").glob("*.json"))]
    everything = [r for r in finished if r is not None and r.scene not in this_run] + results
    everything.sort(key=lambda r: r.scene)
    for split in ("train", "val"):
        lines = "".join(f"{r.scene}\n" for r in everything if not r.error and r.split == split)
        write_atomic(out / "splits" / f"{split}.txt", lambda p, t=lines: p.write_text(t))
    write_report(out, everything, [float(b) for b in cfg["pairs"]["bins"]])
    return results


def write_report(out_dir: Path, results: Sequence[SceneStats], bins: Sequence[float]) -> None:
    """``corpus_stats.json`` and ``corpus_stats.md``: every scene's numbers and the pairs by overlap bin."""
    labels = bin_labels(bins)
    totals = {split: [sum(r.pairs_by_bin.get(lab, 0) for r in results if r.split == split and not r.error)
                      for lab in labels] for split in ("train", "val")}
    _write_json(out_dir / "corpus_stats.json", {
        "scenes": [asdict(r) for r in results],
        "pairs_by_bin": {split: dict(zip(labels, counts)) for split, counts in totals.items()},
    })
    head = ["scene", "split", "registered / images", "points", "track length", "reproj. px", "pairs"] + labels
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        nc = " (NC)" if r.non_commercial else ""
        if r.error:
            rows.append(f"| {r.scene}{nc} | {r.split} | failed: {r.error} |" + " |" * (len(head) - 3))
            continue
        rows.append("| " + " | ".join([
            f"{r.scene}{nc}", r.split, f"{r.registered} / {r.images}", str(r.points), f"{r.mean_track_length:.2f}",
            f"{r.mean_reprojection_error:.2f}", str(r.pairs)] + [str(r.pairs_by_bin.get(lab, 0)) for lab in labels]
        ) + " |")
    for split, counts in totals.items():
        rows.append(f"| **total {split}** | | | | | | {sum(counts)} | " + " | ".join(map(str, counts)) + " |")
    text = ("# SfM training corpus\n\nCOLMAP models of the training photo collections, written as sparse-depth "
            "MegaDepth scenes. Overlap = shared 3D points / the larger point count of the pair. (NC): "
            "non-commercial licence.\n\n" + "\n".join(rows) + "\n")
    write_atomic(out_dir / "corpus_stats.md", lambda p: p.write_text(text))


# ----------------------------------------------------------------------------------------------- other data kinds
def link_homography_sources(out_dir: PathLike, scenes: Sequence[SceneSource], split_of: Mapping[str, str]) -> dict:
    """``out_dir/<split>/<scene>/<image>`` symlinks to every scene's photos (homography sources and synthetic
    textures by split). Stale links of a previous split are removed. Returns ``{split: image count}``."""
    root = Path(out_dir)
    counts: dict[str, int] = {"train": 0, "val": 0}
    wanted: set[Path] = set()
    for s in scenes:
        split = split_of[s.name]
        for name in list_images(s.image_dir, recursive=False):
            link = root / split / s.name / name
            wanted.add(link)
            target = (s.image_dir / name).resolve()
            if not (link.is_symlink() and Path(os.readlink(link)) == target):
                link.parent.mkdir(parents=True, exist_ok=True)
                tmp = link.with_name(link.name + ".tmp")
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(target)
                os.replace(tmp, link)
            counts[split] += 1
    for split in ("train", "val"):
        if (root / split).is_dir():
            for p in (root / split).rglob("*"):
                if p.is_symlink() and p not in wanted:
                    p.unlink()
    return counts


def build_synthetic(
    out_dir: PathLike, textures: Mapping[str, Path], cfg: Mapping[str, Any], progress: bool = True
) -> dict:
    """Synthetic plane scenes under ``out_dir/train`` and ``out_dir/val`` (textures from each split's photos);
    a scene whose scene_info exists is skipped. Returns ``{split: scene count}``."""
    from tqdm import tqdm

    from asmamba.training.data.synthetic import generate_scene

    root = Path(out_dir)
    w, h = (int(v) for v in cfg["size"])
    jobs = [("train", int(cfg["seed"]) + k) for k in range(int(cfg["scenes"]))]
    jobs += [("val", int(cfg["val_seed"]) + k) for k in range(int(cfg["val_scenes"]))]
    for split, seed in tqdm(jobs, desc="synthetic scenes", unit="scene", disable=not progress, file=sys.stdout):
        if (root / split / INDEX_DIR / f"synth{seed:04d}.npz").is_file():
            continue
        generate_scene(root / split, int(cfg["views"]), seed, (w, h), str(textures[split]), n_planes=int(cfg["planes"]))
    return {split: sum(1 for s, _ in jobs if s == split) for split in ("train", "val")}


# ----------------------------------------------------------------------------------------------- command line
def load_build_config(config: PathLike = BUILD_CONFIG, overrides: Sequence[str] = ()) -> dict:
    """The builder's settings (``configs/data/corpus_build.yaml`` or a YAML path) with dotlist overrides."""
    from asmamba.config import as_dictconfig

    cfg = OmegaConf.merge(as_dictconfig(config, "data"), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(cfg, resolve=True)


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1, default=_json_default)))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def build(
    out_dir: PathLike,
    train_root: PathLike,
    cfg: Mapping[str, Any],
    *,
    work_dir: Optional[PathLike] = None,
    homography_dir: Optional[PathLike] = None,
    synthetic_dir: Optional[PathLike] = None,
    parts: Sequence[str] = PARTS,
    scenes: Optional[Sequence[str]] = None,
    force: bool = False,
    progress: bool = True,
) -> list[SceneStats]:
    """Everything of the module docstring; ``parts`` chooses among homography, synthetic and sfm, ``scenes``
    restricts the SfM part to some scenes. Returns the SfM stats (empty without the sfm part)."""
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise CorpusError(f"unknown part(s) {bad}; choose among {', '.join(PARTS)}")
    out = Path(out_dir)
    sources = discover_scenes(train_root, cfg.get("extra_scenes"), cfg.get("exclude") or [], int(cfg["min_images"]),
                              cfg.get("extra_licences"))
    names = [s.name for s in sources]
    train, val = split_scenes(names, list(cfg.get("validation") or []))
    split_of = {**{n: "train" for n in train}, **{n: "val" for n in val}}
    homography = Path(homography_dir) if homography_dir is not None else out.parent / "homography"
    if "homography" in parts or "synthetic" in parts:
        counts = link_homography_sources(homography, sources, split_of)
        print(f"homography sources: {counts['train']} train / {counts['val']} val photos -> {homography}", flush=True)
    if "synthetic" in parts:
        synthetic = Path(synthetic_dir) if synthetic_dir is not None else out.parent / "synthetic"
        counts = build_synthetic(synthetic, {"train": homography / "train", "val": homography / "val"},
                                 cfg["synthetic"], progress)
        print(f"synthetic scenes: {counts['train']} train / {counts['val']} val -> {synthetic}", flush=True)
    if "sfm" not in parts:
        return []
    no_sfm = set(cfg.get("no_sfm") or [])
    unknown = sorted(no_sfm - set(names))
    if unknown:
        raise CorpusError(f"no_sfm names {unknown}, which are not corpus scenes ({', '.join(names)})")
    sources = [s for s in sources if s.name not in no_sfm]
    if scenes is not None:
        unknown = sorted(set(scenes) - set(names))
        if unknown:
            raise CorpusError(f"--scenes names {unknown}, which are not corpus scenes ({', '.join(names)})")
        sources = [s for s in sources if s.name in set(scenes)]
    return build_sfm_corpus(out, sources, cfg, work_dir, force=force, progress=progress)


def main(argv: Optional[list[str]] = None) -> int:
    """Build the training corpus (``python -m asmamba.training.data.corpus build -h``)."""
    parser = argparse.ArgumentParser(prog="asmamba-corpus", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build or resume the corpus")
    b.add_argument("out_dir", help="output folder of the SfM scenes (MegaDepth layout), e.g. /work/data/corpus")
    b.add_argument("--train-root", required=True, help="folder of <scene>/images photo collections")
    b.add_argument("--config", default=BUILD_CONFIG, help="builder settings (configs/data/corpus_build.yaml)")
    b.add_argument("--work-dir", help="SfM work folders (default: OUT/../colmap)")
    b.add_argument("--homography-dir", help="homography source links (default: OUT/../homography)")
    b.add_argument("--synthetic-dir", help="synthetic scenes (default: OUT/../synthetic)")
    b.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to build (default: all)")
    b.add_argument("--scenes", nargs="+", help="only these SfM scenes")
    b.add_argument("--force", action="store_true", help="rewrite finished SfM scenes (their SfM models are reused)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--verbose", action="store_true", help="keep COLMAP's log lines")
    b.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides of the settings, e.g. --set pairs.max_per_bin=50 sfm.matcher=xfeat_lighterglue")
    args = parser.parse_args(argv)
    try:
        cfg = load_build_config(args.config, args.overrides)
        if not args.verbose:
            try:
                import pycolmap

                pycolmap.logging.minloglevel = 2
            except ImportError:
                pass
        results = build(args.out_dir, args.train_root, cfg, work_dir=args.work_dir,
                        homography_dir=args.homography_dir, synthetic_dir=args.synthetic_dir, parts=args.parts,
                        scenes=args.scenes, force=args.force, progress=not args.no_progress)
    except (CorpusError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    failed = [r.scene for r in results if r.error]
    if results:
        print(f"{len(results) - len(failed)} of {len(results)} scenes built; report: "
              f"{Path(args.out_dir) / 'corpus_stats.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
