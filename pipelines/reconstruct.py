"""``asmamba reconstruct IMAGES_DIR OUT_DIR``: Structure-from-Motion from any kornia-contract matcher.

Dense matching into hloc's files (:mod:`asmamba.pipelines.match`), a COLMAP database through pycolmap (keypoints
shifted by +0.5 px to COLMAP's pixel-centre convention, matches, geometric verification), incremental mapping, a
summary and a top-view plot. Outputs in OUT_DIR, besides the matching outputs: ``database.db``, ``models/`` (every
model COLMAP made), ``sfm/`` (the largest, in COLMAP binary format), ``reconstruction.png``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from asmamba.clitools import ArgumentParser, rearm_sigterm, summary
from asmamba_hloc.h5io import read_keypoints, read_matches

from .common import PathLike, load_pipeline_config, to_plain, write_json
from .evaluate import poses_from_colmap
from .match import MatchOutputs, add_common_arguments, config_from_args, run_cli, run_matching

CAMERA_MODES = {"auto": "AUTO", "single": "SINGLE", "per_folder": "PER_FOLDER", "per_image": "PER_IMAGE"}


class ReconstructionError(RuntimeError):
    """COLMAP could not build a model from the matches (the message gives the match statistics)."""


@dataclass
class ReconstructionSummary:
    """Numbers of one reconstruction run."""

    num_input_images: int
    skipped_images: dict[str, str]
    num_pairs: int
    num_matched_pairs: int
    num_matches: int
    num_verified_pairs: int
    num_registered: int = 0
    num_points3D: int = 0
    mean_track_length: float = 0.0
    mean_observations_per_image: float = 0.0
    mean_reprojection_error: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        lines = [
            f"registered images:        {self.num_registered} / {self.num_input_images}",
            f"3D points:                {self.num_points3D}",
            f"mean track length:        {self.mean_track_length:.2f}",
            f"mean observations/image:  {self.mean_observations_per_image:.1f}",
            f"mean reprojection error:  {self.mean_reprojection_error:.3f} px",
            f"pairs matched / verified: {self.num_matched_pairs} / {self.num_verified_pairs} of {self.num_pairs}"
            f" ({self.num_matches} matches)",
            "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()),
        ]
        lines += [f"skipped {name}: {reason}" for name, reason in sorted(self.skipped_images.items())]
        return "\n".join(lines)


def camera_mode(name: str) -> Any:
    """``auto | single | per_folder | per_image`` -> ``pycolmap.CameraMode``."""
    import pycolmap

    key = str(name).lower()
    if key not in CAMERA_MODES:
        raise ValueError(f"camera mode must be one of {sorted(CAMERA_MODES)}, got {name!r}")
    return getattr(pycolmap.CameraMode, CAMERA_MODES[key])


def write_database(
    database: Path,
    image_dir: Path,
    names: Sequence[str],
    mode: Any,
    features_path: Path,
    matches_path: Path,
    pairs: Sequence[tuple[str, str]],
    min_match_score: Optional[float] = None,
) -> tuple[dict[str, int], int, int]:
    """A fresh COLMAP database with the images, keypoints (+0.5 px) and raw matches.

    Returns:
        image ids by name, the number of pairs with at least one match, the total number of matches.
    """
    import pycolmap

    if database.exists():
        database.unlink()
    with pycolmap.Database.open(database):  # creates the empty database that import_images fills
        pass
    pycolmap.import_images(database, image_dir, mode, image_names=list(names))
    with pycolmap.Database.open(database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        missing = sorted(set(names) - set(ids))
        if missing:
            raise ValueError(f"COLMAP could not import {len(missing)} image(s): {missing[:5]}")
        for name in names:
            keypoints = read_keypoints(features_path, name).astype(np.float64) + 0.5  # COLMAP: pixel centre at +0.5
            db.write_keypoints(ids[name], keypoints.astype(np.float32))
        done: set[frozenset] = set()
        matched_pairs = num_matches = 0
        for name0, name1 in pairs:
            key = frozenset((ids[name0], ids[name1]))
            if key in done:
                continue
            done.add(key)
            matches, scores = read_matches(matches_path, name0, name1)
            if min_match_score is not None:
                matches = matches[scores > min_match_score]
            db.write_matches(ids[name0], ids[name1], matches.astype(np.uint32))
            matched_pairs += int(len(matches) > 0)
            num_matches += len(matches)
    return ids, matched_pairs, num_matches


def verify_pairs(database: Path, pairs_path: Path, options: Mapping[str, Any]) -> int:
    """COLMAP geometric verification of the listed pairs; returns the number of pairs with inliers."""
    import pycolmap

    pycolmap.verify_matches(database, pairs_path, options=pycolmap.TwoViewGeometryOptions(dict(options)))
    with pycolmap.Database.open(database) as db:
        _, inliers = db.read_two_view_geometry_num_inliers()
    return int(sum(1 for n in inliers if n > 0))


def incremental_mapping(
    database: Path, image_dir: Path, models_dir: Path, options: Mapping[str, Any], num_images: int, progress: bool
) -> dict[int, Any]:
    """pycolmap incremental mapping with a progress bar of registered images."""
    import pycolmap

    if models_dir.exists():
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True)
    bars: list[tqdm] = []

    def new_model() -> None:
        if bars:
            bars[-1].close()
        bars.append(tqdm(total=num_images, desc=f"model {len(bars)}", unit="image", disable=not progress))
        bars[-1].update(2)

    def next_image() -> None:
        if bars:
            bars[-1].update(1)

    try:
        return pycolmap.incremental_mapping(
            database, image_dir, models_dir, options=pycolmap.IncrementalPipelineOptions(dict(options)),
            initial_image_pair_callback=new_model, next_image_callback=next_image,
        )
    finally:
        for bar in bars:
            bar.close()


def summarize(reconstruction: Any, summary: ReconstructionSummary) -> ReconstructionSummary:
    """Fill the model statistics of ``summary`` from a ``pycolmap.Reconstruction``."""
    summary.num_registered = int(reconstruction.num_reg_images())
    summary.num_points3D = int(reconstruction.num_points3D())
    summary.mean_track_length = float(reconstruction.compute_mean_track_length())
    summary.mean_observations_per_image = float(reconstruction.compute_mean_observations_per_reg_image())
    summary.mean_reprojection_error = float(reconstruction.compute_mean_reprojection_error())
    return summary


def plot_top_view(reconstruction: Any, path: Path, max_points: int = 20000, title: str = "") -> None:
    """PNG of the points and cameras seen from above.

    "Up" is minus the mean image-down axis of the cameras (photos are mostly taken upright); the horizontal axes
    are the mean viewing direction and its perpendicular.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    poses = poses_from_colmap(reconstruction)
    rotations = np.stack([r for r, _ in poses.values()])
    centres = np.stack([-r.T @ t for r, t in poses.values()])
    views = rotations[:, 2, :]
    up = -rotations[:, 1, :].mean(0)
    up /= max(np.linalg.norm(up), 1e-12)
    forward = views.mean(0) - up * (views.mean(0) @ up)
    if np.linalg.norm(forward) < 1e-9:
        forward = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward)
    side = np.cross(forward, up)
    basis = np.stack([side, forward])  # (2, 3): x = side, y = forward

    points = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    if len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    p2 = points @ basis.T
    c2 = centres @ basis.T
    v2 = views @ basis.T

    fig = Figure(figsize=(7, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if len(p2):
        ax.scatter(p2[:, 0], p2[:, 1], s=2, c="0.3", alpha=0.6, linewidths=0, label=f"{len(points)} points")
    extent = np.concatenate([c2, np.percentile(p2, [2, 98], axis=0) if len(p2) else c2])
    scale = 0.08 * max(np.ptp(extent, axis=0).max(), 1e-6)
    ax.scatter(c2[:, 0], c2[:, 1], s=18, c="tab:red", zorder=3, label=f"{len(c2)} cameras")
    for c, v in zip(c2, v2):
        ax.plot([c[0], c[0] + scale * v[0]], [c[1], c[1] + scale * v[1]], c="tab:red", lw=1, zorder=3)
    lo, hi = extent.min(0), extent.max(0)
    pad = 0.1 * (hi - lo).max()
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.set_title(title or "reconstruction, top view")
    ax.legend(loc="upper right")
    ax.set_xlabel("side")
    ax.set_ylabel("forward")
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def reconstruct(
    image_dir: PathLike,
    out_dir: PathLike,
    cfg: Optional[DictConfig] = None,
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> tuple[Any, ReconstructionSummary]:
    """Run the whole pipeline; return the largest ``pycolmap.Reconstruction`` and its summary.

    Raises:
        ReconstructionError: COLMAP made no model (the message gives the numbers of matches and verified pairs).
        FileNotFoundError / ValueError: bad input (no images, unknown matcher, pairs naming missing images, ...).
    """
    import pycolmap

    cfg = cfg if cfg is not None else load_pipeline_config("reconstruct")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    mode = camera_mode(cfg.camera_mode)
    total = time.perf_counter()
    matched: MatchOutputs = run_matching(image_dir, out_dir, cfg, overwrite=overwrite, progress=progress)
    seconds = dict(matched.seconds)

    start = time.perf_counter()
    database = out_dir / "database.db"
    if not verbose:
        pycolmap.logging.minloglevel = 2  # COLMAP's INFO lines and Ceres' solver warnings stay out of the terminal
    _, matched_pairs, num_matches = write_database(
        database, image_dir, matched.scan.names, mode, matched.features_path, matched.matches_path, matched.pairs,
        cfg.min_match_score,
    )
    verified = verify_pairs(database, matched.pairs_path, to_plain(cfg.verification))
    seconds["database+verification"] = time.perf_counter() - start
    summary = ReconstructionSummary(
        num_input_images=len(matched.scan.names) + len(matched.scan.bad), skipped_images=dict(matched.scan.bad),
        num_pairs=len(matched.pairs), num_matched_pairs=matched_pairs, num_matches=num_matches,
        num_verified_pairs=verified,
    )

    start = time.perf_counter()
    models = incremental_mapping(database, image_dir, out_dir / "models", to_plain(cfg.mapper),
                                 len(matched.scan.names), progress)
    seconds["mapping"] = time.perf_counter() - start
    best = max(models.values(), key=lambda r: r.num_reg_images(), default=None)
    if best is None or best.num_reg_images() < 2:
        raise ReconstructionError(
            f"COLMAP could not initialise a reconstruction from {len(matched.scan.names)} images: "
            f"{matched_pairs} of {len(matched.pairs)} pairs have matches ({num_matches} matches in total) and "
            f"{verified} pairs passed geometric verification (>= {cfg.verification.min_num_inliers} inliers). "
            "Try more pairs (--pairs exhaustive), a larger --resize-max or another --matcher."
        )
    sfm_dir = out_dir / "sfm"
    sfm_dir.mkdir(exist_ok=True)
    best.write(sfm_dir)
    seconds["total"] = time.perf_counter() - total
    summary.seconds = seconds
    summarize(best, summary)
    plot_top_view(best, out_dir / "reconstruction.png", int(cfg.plot_max_points),
                  f"{cfg.matcher}: {summary.num_registered}/{summary.num_input_images} images, "
                  f"{summary.num_points3D} points (top view)")
    write_json(out_dir / "summary.json", asdict(summary))
    return best, summary


def _reconstruct_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, prog="asmamba reconstruct")  # every argument and path checked: now the heavy part
    rearm_sigterm("pycolmap")  # pycolmap's glog would print a native stack trace on SIGTERM
    try:
        _, summary = reconstruct(args.images_dir, args.out_dir, cfg, overwrite=args.overwrite,
                                 progress=not args.quiet, verbose=args.verbose)
    except ReconstructionError as err:
        print(f"asmamba reconstruct: reconstruction failed: {err}", file=sys.stderr)
        return 1
    print(summary.format())
    print(f"model: {args.out_dir / 'sfm'}  plot: {args.out_dir / 'reconstruction.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="asmamba reconstruct", description=summary(__doc__))
    add_common_arguments(parser)
    parser.add_argument("--camera-mode", default=None, choices=sorted(CAMERA_MODES),
                        help="COLMAP camera sharing (default auto)")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's log")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``asmamba reconstruct``; returns 0 on success, 1 if COLMAP made no model, 2 on bad input."""
    return run_cli(_reconstruct_command, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
