"""Side-by-side accuracy of several matchers, same code and same run: relative pose on the held-out pose scenes and
homography on the shared homography folders. Writes JSON and a markdown table.

    python benchmarks/side_by_side.py --matchers asmamba sift xfeat xfeat_lighterglue --out benchmarks/results

Held out (never used for training): every scene of ``<data>/pose`` and ``<data>/homography``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from asmamba.baselines import build_matcher
from asmamba.io import data_root
from asmamba.training.evaluation.homography import evaluate_homography
from asmamba.training.evaluation.pose import evaluate_pose

POSE_SCENES = ["strecha_entry-P10", "strecha_castle-P19", "strecha_castle-P30", "strecha_Herz-Jesus-P25",
               "imc_reichstag", "scannet_samples"]


def weighted_mean(datasets: list[dict], key: str, threshold: str) -> float:
    """Pair-weighted mean of one AUC over several datasets."""
    total = sum(d["pairs"] for d in datasets)
    return sum(d[key][threshold] * d["pairs"] for d in datasets) / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matchers", nargs="+", default=["asmamba", "sift", "xfeat", "xfeat_lighterglue"])
    parser.add_argument("--resize-max", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-pairs", type=int, default=None, help="per pose scene (default: all)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root()
    pose_files = [root / "pose" / s / "pairs.txt" for s in POSE_SCENES if (root / "pose" / s / "pairs.txt").is_file()]
    homography_dirs = sorted(p for p in (root / "homography").iterdir() if p.is_dir())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads, torch {torch.__version__}"
    rows, results = [], {}
    for name in args.matchers:
        matcher = build_matcher(name)
        pose = evaluate_pose(matcher, [str(p) for p in pose_files], resize_max=args.resize_max,
                             max_pairs=args.max_pairs, progress=False)
        homog = evaluate_homography(matcher, [str(d) for d in homography_dirs], resize_max=args.resize_max,
                                    progress=False)
        results[name] = {"pose": pose, "homography": homog}
        outdoor = [d for d in pose["datasets"] if not d["name"].startswith("scannet")]
        indoor = [d for d in pose["datasets"] if d["name"].startswith("scannet")]
        hd = homog["datasets"]
        key_h = "auc_opencv" if "auc_opencv" in hd[0] else next(k for k in hd[0] if k.startswith("auc"))
        rows.append([
            name,
            *(f"{weighted_mean(outdoor, 'auc_poselib', t):.1f}" for t in ("5", "10", "20")),
            *(f"{weighted_mean(outdoor, 'auc_opencv', t):.1f}" for t in ("5", "10", "20")),
            f"{weighted_mean(indoor, 'auc_poselib', '10'):.1f}" if indoor else "-",
            *(f"{weighted_mean(hd, key_h, t):.1f}" for t in ("3", "5", "10")),
            f"{sum(d['mean_matches'] * d['pairs'] for d in outdoor) / max(1, sum(d['pairs'] for d in outdoor)):.0f}",
            f"{sorted(d['median_latency_ms'] for d in outdoor)[len(outdoor) // 2]:.0f}",
        ])
        print(name, rows[-1], flush=True)
    header = ["matcher", "outdoor pose AUC@5 (LO-RANSAC)", "@10", "@20", "AUC@5 (OpenCV)", "@10", "@20",
              "ScanNet AUC@10", "homography AUC@3px", "@5px", "@10px", "matches/pair", "median ms/pair"]
    table = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    table += "".join("| " + " | ".join(r) + " |\n" for r in rows)
    note = (f"\n{args.resize_max} px long side, CPU ({machine}), {time.strftime('%Y-%m-%d')}. Outdoor pose: "
            f"{', '.join(d['name'] for d in outdoor)} (pair-weighted mean); homography: "
            f"{', '.join(p.name for p in homography_dirs)}.\n")
    (out / "side_by_side.md").write_text(table + note)
    tmp = out / "side_by_side.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=float))
    os.replace(tmp, out / "side_by_side.json")
    print(table + note)


if __name__ == "__main__":
    main()
