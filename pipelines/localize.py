"""``asmamba localize SFM_DIR QUERY_IMAGES...``: camera poses of new images in a reconstruction.

SFM_DIR is the output folder of ``asmamba reconstruct`` (its ``sfm/`` model, ``features.h5`` and ``run.json``).
Each query is matched to its top retrieved database images with the same matcher (by default), its matched points
are lifted to 3D through the database keypoints' 3D points, and ``pycolmap.estimate_and_refine_absolute_pose``
(LO-RANSAC PnP + refinement) gives the pose. Poses are written in hloc's results format, one line per localized
query: ``name qw qx qy qz tx ty tz`` (``x_cam = R(q) x_world + t``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from omegaconf import DictConfig

from asmamba.clitools import (ArgumentParser, add_overrides, gather_overrides, rearm_sigterm, split_overrides,
                              summary)
from asmamba_hloc.h5io import read_keypoints, read_matches
from asmamba_hloc.match_dense import DenseMatchCache, aggregate, match_pairs
from asmamba_hloc.quantize import QuantizationConf

from .common import (
    PathLike,
    lazy_matcher,
    load_pipeline_config,
    logger,
    matcher_tag,
    resolve_device,
    to_plain,
    write_json,
)
from .evaluate import Pose

QUERY_PREFIX = "query/"


@dataclass
class QueryResult:
    """Outcome for one query: the pose (None if not localized), PnP inliers, 2D-3D correspondences tried."""

    name: str
    pose: Optional[Pose]
    num_inliers: int
    num_correspondences: int
    retrieved: list[str]
    reason: str = ""


def find_model(sfm_dir: PathLike) -> tuple[Path, dict[str, Any]]:
    """The reconstruct output folder and its ``run.json`` settings (``sfm_dir`` may also be its ``sfm/``)."""
    root = Path(sfm_dir)
    if not (root / "run.json").is_file() and (root.parent / "run.json").is_file():
        root = root.parent
    for needed in ("run.json", "features.h5", "sfm"):
        if not (root / needed).exists():
            raise FileNotFoundError(
                f"{str(root)!r} is not an `asmamba reconstruct` output folder (missing {needed}); run reconstruct first"
            )
    return root, json.loads((root / "run.json").read_text())


def query_names(paths: Sequence[PathLike]) -> dict[str, Path]:
    """Internal query names (``query/<file name>``) -> paths.

    Raises:
        FileNotFoundError: a query file does not exist.
        ValueError: no query, or two queries with the same file name.
    """
    if not paths:
        raise ValueError("give at least one query image")
    names: dict[str, Path] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"query image {str(p)!r} does not exist")
        name = QUERY_PREFIX + p.name
        if name in names:
            raise ValueError(f"two query images share the file name {p.name!r}: {str(names[name])!r} and {str(p)!r}")
        names[name] = p
    return names


def query_camera(path: Path, model: str) -> Any:
    """A COLMAP camera for a query: EXIF focal length if present, else 1.2 * max(W, H) (COLMAP's default)."""
    import pycolmap

    return pycolmap.infer_camera_from_image(path, pycolmap.ImageReaderOptions({"camera_model": model}))


def correspondences_2d3d(
    reconstruction: Any, query: str, db_names: Sequence[str], matches_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Query keypoint indices ``(M,)`` and 3D point ids ``(M,)`` from the query's matches to database images
    (each (keypoint, 3D point) once)."""
    by_name = {reconstruction.images[i].name: reconstruction.images[i] for i in reconstruction.reg_image_ids()}
    seen: set[tuple[int, int]] = set()
    for db_name in db_names:
        image = by_name[db_name]
        point3d_ids = np.array([p.point3D_id if p.has_point3D() else -1 for p in image.points2D], dtype=np.int64)
        matches, _ = read_matches(matches_path, query, db_name)
        for q_idx, db_idx in matches:
            if db_idx < len(point3d_ids) and point3d_ids[db_idx] != -1:
                seen.add((int(q_idx), int(point3d_ids[db_idx])))
    pairs = np.array(sorted(seen), dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def localize(
    sfm_dir: PathLike,
    query_paths: Sequence[PathLike],
    cfg: Optional[DictConfig] = None,
    out_dir: Optional[PathLike] = None,
    progress: bool = True,
) -> list[QueryResult]:
    """Localize query images in a reconstruction (see the module docstring).

    Args:
        out_dir: where the query features/matches and the match cache go (default ``SFM_DIR/localization``).
    """
    import pycolmap

    from .pairs import compute_descriptors, describer_for, pairs_from_descriptors

    cfg = cfg if cfg is not None else load_pipeline_config("localize")
    root, run = find_model(sfm_dir)
    reconstruction = pycolmap.Reconstruction(root / "sfm")
    image_dir = Path(run["image_dir"])
    work = Path(out_dir) if out_dir is not None else root / "localization"
    work.mkdir(parents=True, exist_ok=True)
    queries = query_names(query_paths)

    name = str(cfg.matcher) if cfg.matcher is not None else run["matcher"]
    matcher_conf = to_plain(cfg.matcher_conf) or (run["matcher_conf"] if cfg.matcher is None else {})
    resize_max = run["resize_max"] if cfg.resize_max is None else int(cfg.resize_max)
    max_error = float(run["quantization"]["max_error"] if cfg.max_error is None else cfg.max_error)
    device = resolve_device(cfg.device)

    db_names = sorted(reconstruction.images[i].name for i in reconstruction.reg_image_ids())
    db_keypoints = {n: read_keypoints(root / "features.h5", n) for n in db_names}
    for n in db_names:
        image = reconstruction.find_image_with_name(n)
        if image.num_points2D() != len(db_keypoints[n]):
            raise ValueError(f"{root}: features.h5 has {len(db_keypoints[n])} keypoints for {n!r} but the model "
                             f"{image.num_points2D()}; the folder mixes two runs")

    matcher = lazy_matcher(name, matcher_conf, device)()
    describe = describer_for(matcher)
    results: dict[str, QueryResult] = {}
    readable: dict[str, Path] = {}
    from asmamba.io import ImageReadError, read_image

    for q, path in queries.items():
        try:
            read_image(path, grayscale=True)
            readable[q] = path
        except ImageReadError as err:
            results[q] = QueryResult(q, None, 0, 0, [], reason=str(err))
            logger.warning("skipping query %s: %s", path, err)
    if readable:
        start = time.perf_counter()
        db_desc = compute_descriptors([image_dir / n for n in db_names], describe, cfg.retrieval_resize_max,
                                      device, progress)
        q_desc = compute_descriptors(list(readable.values()), describe, cfg.retrieval_resize_max, device, progress)
        pairs = pairs_from_descriptors(list(readable), q_desc, db_names, db_desc, int(cfg.num_retrieved))
        paths = {**{n: image_dir / n for n in db_names}, **readable}
        cache = DenseMatchCache(work / "dense", matcher_tag(name, matcher_conf, resize_max))
        match_pairs(matcher, pairs, paths.__getitem__, cache, resize_max, device=device, progress=progress)
        # the database keypoints were quantised with cells that followed each image's downscale (run.json)
        scales = {} if cfg.max_error is not None else run.get("quantization_scales", {})
        aggregate(pairs, cache, work / "features_query.h5", work / "matches_query.h5",
                  QuantizationConf(0.0, max_error, None), fixed_keypoints=db_keypoints, exact_images=readable,
                  write_dense=False, progress=progress,
                  image_confs={n: QuantizationConf(0.0, max_error * scales[n], None) for n in db_names if n in scales})
        logger.info("matched %d query pairs in %.1f s", len(pairs), time.perf_counter() - start)
        retrieved = defaultdict(list)
        for q, db in pairs:
            retrieved[q].append(db)
        for q, path in readable.items():
            results[q] = _estimate_pose(reconstruction, q, path, retrieved[q], work, cfg)
    return [results[q] for q in queries]


def _estimate_pose(reconstruction: Any, query: str, path: Path, db_names: list[str], work: Path,
                   cfg: DictConfig) -> QueryResult:
    import pycolmap

    kp_idx, p3d_ids = correspondences_2d3d(reconstruction, query, db_names, work / "matches_query.h5")
    n = len(kp_idx)
    if n < 4:
        return QueryResult(query, None, 0, n, db_names, reason=f"only {n} 2D-3D correspondences")
    keypoints = read_keypoints(work / "features_query.h5", query).astype(np.float64) + 0.5  # COLMAP pixel centres
    points3d = np.stack([reconstruction.points3D[int(i)].xyz for i in p3d_ids])
    camera = query_camera(path, str(cfg.camera_model))
    estimate_focal = cfg.estimate_focal_length
    if estimate_focal == "auto":
        estimate_focal = not camera.has_prior_focal_length
    elif not isinstance(estimate_focal, bool):
        raise ValueError(f"estimate_focal_length must be auto, true or false, got {estimate_focal!r}")
    estimation = pycolmap.AbsolutePoseEstimationOptions(to_plain(cfg.estimation))
    refinement = pycolmap.AbsolutePoseRefinementOptions(to_plain(cfg.refinement))
    estimation.estimate_focal_length = refinement.refine_focal_length = bool(estimate_focal)
    ret = pycolmap.estimate_and_refine_absolute_pose(
        keypoints[kp_idx], points3d, camera, estimation_options=estimation, refinement_options=refinement
    )
    if ret is None or int(ret["num_inliers"]) < int(cfg.min_num_inliers):
        inliers = 0 if ret is None else int(ret["num_inliers"])
        return QueryResult(query, None, inliers, n, db_names, reason=f"PnP found {inliers} inliers of {n}")
    pose = ret["cam_from_world"]
    return QueryResult(query, (np.asarray(pose.rotation.matrix()), np.asarray(pose.translation)),
                       int(ret["num_inliers"]), n, db_names)


def write_results(path: PathLike, results: Sequence[QueryResult]) -> None:
    """hloc's results format: ``name qw qx qy qz tx ty tz`` per localized query (file name without ``query/``)."""
    from scipy.spatial.transform import Rotation

    lines = []
    for r in results:
        if r.pose is None:
            continue
        x, y, z, w = Rotation.from_matrix(r.pose[0]).as_quat()
        t = r.pose[1]
        lines.append(f"{r.name[len(QUERY_PREFIX):]} {w} {x} {y} {z} {t[0]} {t[1]} {t[2]}\n")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def _localize_command(args: argparse.Namespace) -> int:
    from asmamba.io import check_output_file

    from .match import matcher_conf_overrides

    prog = "asmamba localize"
    queries, positional = split_overrides([str(q) for q in args.queries])
    overrides = gather_overrides(args, prog, positional + matcher_conf_overrides(args, prog))
    cfg = load_pipeline_config("localize", args.config, overrides)
    for key, value in (("matcher", args.matcher), ("num_retrieved", args.num_retrieved)):
        if value is not None:
            cfg[key] = value
    root, _ = find_model(args.sfm_dir)
    query_names(queries)  # every query file exists, no two share a name
    out = args.out or root / "localization" / "results.txt"
    if args.out:
        check_output_file(out, "--out")
    rearm_sigterm("pycolmap")  # checked: now the heavy part (pycolmap's glog would dump a stack on SIGTERM)
    results = localize(args.sfm_dir, queries, cfg, progress=not args.quiet)
    write_results(out, results)
    write_json(Path(out).with_suffix(".json"), {
        r.name: {"localized": r.pose is not None, "num_inliers": r.num_inliers,
                 "num_correspondences": r.num_correspondences, "retrieved": r.retrieved, "reason": r.reason}
        for r in results})
    for r in results:
        status = "localized" if r.pose is not None else f"NOT localized ({r.reason})"
        print(f"{r.name[len(QUERY_PREFIX):]}: {status}; {r.num_inliers} inliers / {r.num_correspondences} 2D-3D")
    print(f"{sum(r.pose is not None for r in results)} / {len(results)} localized; poses: {out}")
    return 0 if any(r.pose is not None for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="asmamba localize", description=summary(__doc__))
    parser.add_argument("sfm_dir", type=Path, help="output folder of `asmamba reconstruct`")
    parser.add_argument("queries", nargs="+", metavar="QUERY",
                        help="query images, then any key=value overrides of configs/pipelines/localize.yaml "
                             "(e.g. num_retrieved=10 min_num_inliers=20)")
    parser.add_argument("--matcher", default=None, help="default: the reconstruction's matcher")
    parser.add_argument("--matcher-conf", nargs="*", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    parser.add_argument("--num-retrieved", type=int, default=None, help="database images matched per query")
    parser.add_argument("--out", type=Path, default=None, help="results file (default SFM_DIR/localization/results.txt)")
    parser.add_argument("--config", type=Path, default=None, help="YAML overriding configs/pipelines/localize.yaml")
    add_overrides(parser, "", positional=False)
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``asmamba localize``; 0 if any query was localized, 1 if none, 2 on bad input."""
    from .match import run_cli

    return run_cli(_localize_command, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
