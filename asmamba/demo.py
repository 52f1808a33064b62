"""``asmamba demo``: a real main job that needs no extra data.

1. Matches the Middlebury 2014 *Motorcycle* rectified stereo pair that ships with scikit-image and scores every match
   against its ground-truth disparity (right x = left x - disparity, same row): end-point error and precision at
   1 and 3 px; writes a PNG of the matches coloured by their error.
2. Reconstructs ``<data>/sfm/sacre_coeur/images`` (when that folder exists) or ``--images DIR`` with COLMAP and
   prints the reconstruction summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np


def default_matcher_name() -> str:
    """``asmamba`` when trained AS-Mamba weights ship with the package, else the pretrained XFeat baseline."""
    from .checkpoint import shipped_weights

    return "asmamba" if shipped_weights() else "xfeat"


def stereo_errors(kpts0: np.ndarray, kpts1: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """End-point error ``(N,)`` of matches on a rectified pair (NaN where the GT disparity is unknown).

    The GT partner of left pixel (x, y) is (x - d(x, y), y), with d read at the nearest pixel of ``kpts0``.
    """
    h, w = disparity.shape
    xi = np.clip(np.round(kpts0[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.round(kpts0[:, 1]).astype(int), 0, h - 1)
    d = disparity[yi, xi].astype(np.float64)
    d[~np.isfinite(d)] = np.nan
    gt = np.stack([kpts0[:, 0] - d, kpts0[:, 1]], axis=1)
    return np.linalg.norm(kpts1 - gt, axis=1)


def run_stereo(matcher_name: str, resize_max: int, out_png: Path, device: str) -> dict[str, Any]:
    import skimage.data
    import torch

    from .baselines import build_matcher
    from .io import image_to_tensor, resize_max as resize
    from .viz import draw_matches

    left, right, disparity = skimage.data.stereo_motorcycle()
    left_s, scale = resize(left, resize_max)
    right_s, _ = resize(right, resize_max)
    gray = lambda rgb: (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    matcher = build_matcher(matcher_name).to(device).eval()
    with torch.inference_mode():
        out = matcher({"image0": image_to_tensor(gray(left_s), device), "image1": image_to_tensor(gray(right_s), device)})
    k0 = out["keypoints0"].cpu().numpy().astype(np.float64)
    k1 = out["keypoints1"].cpu().numpy().astype(np.float64)
    # score at full resolution: map keypoints back (pixel centres on integers)
    k0_full = (k0 + 0.5) / scale - 0.5
    k1_full = (k1 + 0.5) / scale - 0.5
    epe = stereo_errors(k0_full, k1_full, disparity)
    known = np.isfinite(epe)
    result = {
        "matcher": matcher_name,
        "image_size": f"{left_s.shape[1]}x{left_s.shape[0]}",
        "matches": int(len(k0)),
        "matches_with_gt": int(known.sum()),
        "median_epe_px": float(np.median(epe[known])) if known.any() else float("nan"),
        "precision@1px": float((epe[known] < 1).mean()) if known.any() else 0.0,
        "precision@3px": float((epe[known] < 3).mean()) if known.any() else 0.0,
    }
    correctness = np.where(known, np.clip(1 - epe / 6.0, 0, 1), 0.5)
    draw_matches(left_s, right_s, k0, k1, out_png, color_values=correctness,
                 title=f"{matcher_name}: {len(k0)} matches, {100 * result['precision@3px']:.0f}% within 3 px "
                       "(full-res GT)",
                 legend=("distance to the GT match (yellow: no GT)", ">= 6 px", "0 px"))
    return result


def _check_args(args: argparse.Namespace) -> Optional[Path]:
    """Paths and numbers checked before torch is imported; returns the folder to reconstruct (None: skip)."""
    from .io import check_output_dir, data_root, list_images

    check_output_dir(args.out, "--out")
    if args.resize_max < 32:
        raise ValueError(f"--resize-max must be >= 32, got {args.resize_max}")
    if args.skip_sfm:
        return None
    if args.images:
        list_images(args.images)  # exists and holds images
        return Path(args.images)
    images = data_root() / "sfm" / "sacre_coeur" / "images"
    return images if images.is_dir() else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .clitools import ArgumentParser, run_guarded

    parser = ArgumentParser(prog="asmamba demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--matcher", default=None,
                        help="matcher name (default: asmamba with the shipped weights, else xfeat)")
    parser.add_argument("--images", default=None, help="folder to reconstruct (default: the shared sacre_coeur)")
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--resize-max", type=int, default=640,
                        help="long side of the matched images (640; 'asmamba reconstruct' defaults to 1024)")
    parser.add_argument("--skip-sfm", action="store_true", help="only the stereo part")
    args = parser.parse_args(list(argv) if argv is not None else None)
    return run_guarded(parser.prog, lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    images = _check_args(args)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = args.matcher or default_matcher_name()
    if args.matcher is None and name != "asmamba":
        print("note: no trained AS-Mamba weights ship with this version; the demo runs the pretrained XFeat "
              "baseline through the same code path (pass --matcher asmamba to use an untrained AS-Mamba).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stereo = run_stereo(name, args.resize_max, out / "demo_matches.png", device)
    print("Middlebury Motorcycle (scikit-image), matches scored against GT disparity:")
    print(json.dumps(stereo, indent=2))
    print(f"wrote {out / 'demo_matches.png'}")
    if args.skip_sfm:
        return 0
    if images is None:
        from .io import data_root

        print(f"no image folder at {data_root() / 'sfm' / 'sacre_coeur' / 'images'}: skipping the reconstruction "
              "(pass --images DIR)")
        return 0
    from .pipelines.reconstruct import main as reconstruct_main

    from .io import list_images, read_image

    # Dense matches merge into one keypoint per coarse cell, 8 px at the matched resolution. The pipeline sizes the
    # cells per image by default (quantization.dense.in_matched_pixels); the demo keeps the one scene-wide cell, from
    # the first image, that made the README's numbers, so that they reproduce to the digit.
    long_side = max(read_image(images / list_images(images)[0], grayscale=True).shape)
    cell = 8.0 * max(1.0, long_side / args.resize_max)
    print(f"reconstructing {images} with {name} ...")
    return reconstruct_main([str(images), str(out / "sfm"), "--matcher", name, "--resize-max", str(args.resize_max),
                             "quantization.dense.in_matched_pixels=false", f"quantization.dense.cell_size={cell:.2f}",
                             f"quantization.dense.max_error={cell / 2:.2f}"])


if __name__ == "__main__":
    sys.exit(main())
