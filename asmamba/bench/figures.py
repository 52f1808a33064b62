"""``asmamba bench figures``: AS-Mamba's matches next to the strongest baseline's on one hard pair (green: within
``correct_px`` of the GT homography, red: wrong), and one block's flow and uncertainty - where AS-Mamba looks for
each cell's match and how wide (the local span, 5 sigma).

    asmamba bench figures [--out docs] [key=value ...]       # defaults: configs/bench/figures.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from asmamba.allocator import tune_from_environment
from asmamba.bench.common import load_bench_config, plain

STRIDE = 8  # coarse cell size in pixels


def strongest_baseline(compare_json: Path) -> str:
    """The baseline with the best outdoor pose AUC@10 in a compare run (``sift`` without one)."""
    if not compare_json.is_file():
        return "sift"
    rows = [r for r in json.loads(compare_json.read_text())["rows"]
            if r["matcher"] not in ("asmamba", "loftr") and r.get("pose_auc10") is not None]
    return max(rows, key=lambda r: r["pose_auc10"])["matcher"] if rows else "sift"


def load_pair(cfg: dict):
    from asmamba.io import data_root, load_image, read_image, resize_max
    from asmamba.training.evaluation.homography import find_homography_pairs

    pair = find_homography_pairs(data_root() / cfg["pair_folder"])[cfg["pair_index"]]
    t0, s0 = load_image(pair.path0, max_side=cfg["resize_max"])
    t1, s1 = load_image(pair.path1, max_side=cfg["resize_max"])
    # H at the matched resolution: x1 = S1 H S0^-1 x0, with S = diag(sx, sy, 1) (resize_max's scale)
    H = np.diag([*s1, 1.0]) @ pair.H @ np.linalg.inv(np.diag([*s0, 1.0]))
    images = [resize_max(read_image(p), cfg["resize_max"])[0] for p in (pair.path0, pair.path1)]
    return pair.name, t0, t1, H, images


def reprojection_errors(H: np.ndarray, k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
    from asmamba.training.evaluation.metrics import warp_points

    return np.linalg.norm(warp_points(H, k0) - k1, axis=1) if len(k0) else np.zeros(0)


def _stack_pngs(paths: list[Path], out: Path) -> None:
    import cv2

    rows = [cv2.imread(str(p)) for p in paths]
    width = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 4, 0, width - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
            for r in rows]
    tmp = out.with_name(out.stem + ".tmp.png")
    cv2.imwrite(str(tmp), cv2.vconcat(rows))
    os.replace(tmp, out)


def match_figure(cfg: dict, names: list[str], out: Path) -> dict[str, dict]:
    from asmamba.baselines import build_matcher
    from asmamba.viz import draw_matches

    pair_name, t0, t1, H, images = load_pair(cfg)
    stats, parts = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            with torch.inference_mode():
                result = build_matcher(name)({"image0": t0, "image1": t1})
            k0, k1 = result["keypoints0"].numpy(), result["keypoints1"].numpy()
            err = reprojection_errors(H, k0, k1)
            correct = err < cfg["correct_px"]
            stats[name] = {"matches": int(len(k0)), "correct": int(correct.sum()),
                           "precision": float(correct.mean()) if len(k0) else 0.0}
            part = Path(tmp) / f"{name}.png"
            title = (f"{name}: {len(k0)} matches, {correct.sum()} within {cfg['correct_px']:g} px of the GT "
                     f"homography ({100 * stats[name]['precision']:.0f} %) - {pair_name}")
            draw_matches(images[0], images[1], k0, k1, part, color_values=correct.astype(float), title=title)
            parts.append(part)
        _stack_pngs(parts, out)
    return stats


def flow_figure(cfg: dict, out: Path) -> dict:
    """Image 0 with a grid of query cells; image 1 with each query's predicted match (dot), its span (ellipse of
    radius 5 sigma per axis) and the GT match (cross); and the sigma map of image 0's cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    from asmamba import ASMamba

    pair_name, t0, t1, H, images = load_pair(cfg)
    model = ASMamba()
    with torch.inference_mode():
        result = model({"image0": t0, "image1": t1}, return_intermediate=True)
    phi = result["flows"][cfg["flow_block"]][0][0].float().numpy()  # (h, w, 4): Phi_01 of batch item 0
    radius_sigmas = float(model.net.cfg.blocks.local_radius_sigmas)
    h_img, w_img = images[0].shape[:2]
    hv, wv = -(-h_img // STRIDE), -(-w_img // STRIDE)  # cells of the unpadded image
    sigma_px = np.exp(phi[:hv, :wv, 2:] / 2) * STRIDE  # (h, w, 2) per axis, pixels
    cols, rows = cfg["flow_queries"]
    qx = np.linspace(1, wv - 2, cols).round().astype(int)
    qy = np.linspace(1, hv - 2, rows).round().astype(int)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    axes[0].imshow(images[0], cmap="gray")
    axes[1].imshow(images[1], cmap="gray")
    colours = plt.get_cmap("tab20")
    errors = []
    for n, (r, c) in enumerate((r, c) for r in qy for c in qx):
        colour = colours(n % 20)
        centre0 = np.array([[STRIDE * c + (STRIDE - 1) / 2, STRIDE * r + (STRIDE - 1) / 2]])
        pred = phi[r, c, :2] * STRIDE + (STRIDE - 1) / 2  # cell units -> pixels
        gt = (np.c_[centre0, 1.0] @ H.T)
        gt = gt[0, :2] / gt[0, 2]
        errors.append(float(np.linalg.norm(pred - gt)))
        axes[0].plot(*centre0[0], "o", color=colour, markersize=5)
        axes[1].plot(*pred, "o", color=colour, markersize=4)
        axes[1].plot(*gt, "x", color=colour, markersize=6)
        sx, sy = sigma_px[r, c]
        axes[1].add_patch(Ellipse(pred, 2 * radius_sigmas * sx, 2 * radius_sigmas * sy, fill=False, color=colour,
                                  linewidth=1.0, alpha=0.8))
    axes[0].set_title(f"image 0: query cells ({pair_name})")
    axes[1].set_title(f"image 1: predicted match (dot), span {radius_sigmas:g} sigma (ellipse), GT (cross)")
    axes[1].set_xlim(0, images[1].shape[1])
    axes[1].set_ylim(images[1].shape[0], 0)
    im = axes[2].imshow(np.sqrt(sigma_px[..., 0] * sigma_px[..., 1]), cmap="magma")
    axes[2].set_title(f"sigma of image 0's cells (px, geometric mean of x, y), block {cfg['flow_block']}")
    fig.colorbar(im, ax=axes[2], fraction=0.035)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return {"median_flow_error_px": float(np.median(errors)), "median_sigma_px": float(np.median(sigma_px)),
            "queries": len(errors)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="asmamba bench figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="configs/bench/figures.yaml keys")
    parser.add_argument("--out", default="docs", help="folder for matches_vs_baseline.png and flow_uncertainty.png")
    parser.add_argument("--compare", default="benchmarks/results/compare.json",
                        help="compare results naming the strongest baseline (baseline=auto)")
    args = parser.parse_args(argv)
    tune_from_environment()
    cfg = plain(load_bench_config("figures", args.overrides))
    torch.set_num_threads(cfg["threads"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baseline = strongest_baseline(Path(args.compare)) if cfg["baseline"] == "auto" else cfg["baseline"]
    stats = match_figure(cfg, ["asmamba", baseline], out / "matches_vs_baseline.png")
    stats["flow"] = flow_figure(cfg, out / "flow_uncertainty.png")
    print(json.dumps(stats, indent=1))
    from asmamba.bench.common import write_json_atomic

    write_json_atomic(out / "figures.json", stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
