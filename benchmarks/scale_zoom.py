"""Matching across a strong zoom, with and without test-time scale adaptation (asmamba.scale_adaptation).

Real photos from the shared data are zoomed synthetically, so the ground truth is exact: image 0 is the whole photo
at ``--size`` px, image 1 a crop of 1/z of its sides around a random centre, resized to the same size (z > 1:
image 1 zoomed in; the pair swapped gives z < 1). The first pass runs once per pair; each setting adapts from it.

    python benchmarks/scale_zoom.py --threads 1                      # writes benchmarks/results/scale_zoom.{json,md}
    python benchmarks/scale_zoom.py --ab homography ../shared/data/homography/*     # on / off on real pairs
    python benchmarks/scale_zoom.py --ab pose ../shared/data/pose/strecha_entry-P10/pairs.txt ...

``--ab`` runs the project's evaluation (``asmamba eval homography`` / ``pose`` code, 640 px) of every setting from
the same first passes, and times the first pass and each adaptation's extra work pair by pair in one process, so
the cost ratios hold whatever else the machine runs.

Per pair and setting: matches, the share of matches within 3 px of the GT (pixels of image 1), the mean error of
image 0's corners through an OpenCV-RANSAC homography (pixels of image 1; HPatches' corner error), passes and time.
Results are written atomically after each pair; a rerun skips pairs already measured (``--force`` redoes them).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from asmamba import ASMamba
from asmamba.io import data_root
from asmamba.scale_adaptation import ScaleAdaptConfig, match_with_scale_adaptation
from asmamba.training.evaluation.common import write_json_atomic

#: evaluation photos (never training sources): four pose scenes and two homography sequences
IMAGES = (
    "pose/strecha_entry-P10/images/0000.jpg",
    "pose/strecha_castle-P19/images/0003.jpg",
    "pose/strecha_Herz-Jesus-P25/images/0002.jpg",
    "pose/imc_reichstag/images/05461164_9050854768.jpg",
    "homography/hpatches_v_dogman/1.ppm",
    "homography/oxford_graf/img1.ppm",
)

SETTINGS = {
    "single pass": None,
    "adapt (default, no search)": {},
    "adapt + search [2.5, 5]": {"search_ratios": [2.5, 5.0]},
}


def zoom_pair(source: np.ndarray, zoom: float, width: int, centre: tuple[float, float]):
    """Image 0: the whole ``source`` at ``width`` px; image 1: the crop of ``1/zoom`` of its sides centred at
    ``centre`` (fractions of the free range), resized to the same size. Returns both and ``H`` (image 0 -> 1)."""
    h, w = source.shape
    out_wh = (width, int(round(width * h / w)))
    k0 = width / w
    A0 = np.array([[k0, 0, 0.5 * k0 - 0.5], [0, k0, 0.5 * k0 - 0.5], [0, 0, 1]])  # source -> image 0
    crop_w, crop_h = w / zoom, h / zoom
    left, top = centre[0] * (w - crop_w) - 0.5, centre[1] * (h - crop_h) - 0.5  # pixel edges
    k1 = width / crop_w
    A1 = np.array([[k1, 0, -left * k1 - 0.5], [0, k1, -top * k1 - 0.5], [0, 0, 1]])  # source -> image 1
    image0 = cv2.resize(source, out_wh, interpolation=cv2.INTER_AREA)
    image1 = cv2.warpAffine(source, A1[:2], out_wh, flags=cv2.INTER_LINEAR)
    return image0, image1, A1 @ np.linalg.inv(A0)


def _warp(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ H.T
    return q[:, :2] / q[:, 2:]


def score(k0: torch.Tensor, k1: torch.Tensor, H: np.ndarray, size_wh: tuple[int, int]) -> dict:
    k0, k1 = k0.double().numpy(), k1.double().numpy()
    w, h = size_wh
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    err = np.linalg.norm(_warp(H, k0) - k1, axis=1) if len(k0) else np.zeros(0)
    corner_err = float("inf")
    if len(k0) >= 4:
        H_est, _ = cv2.findHomography(k0, k1, cv2.RANSAC, 3.0, maxIters=5000, confidence=0.9999)
        if H_est is not None:
            corner_err = float(np.linalg.norm(_warp(H_est, corners) - _warp(H, corners), axis=1).mean())
    return {"matches": int(len(k0)), "within3": float((err < 3).mean()) if len(err) else 0.0,
            "corner_err": corner_err}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0, 6.0])
    parser.add_argument("--size", type=int, default=640, help="width of both images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/scale_zoom.json")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--ab", choices=("homography", "pose"), help="evaluate SOURCES with and without adaptation")
    parser.add_argument("sources", nargs="*", help="with --ab: homography folders or pose pairs files")
    parser.add_argument("--max-pairs", type=int, default=None, help="with --ab: at most this many pairs per source")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.ab:
        return ab(args.ab, args.sources, args.size, args.max_pairs)
    root = data_root()
    missing = [p for p in IMAGES if not (root / p).is_file()]
    if missing:
        print(f"scale_zoom: error: shared data images missing under {root}: {missing}", file=sys.stderr)
        return 2
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() and not args.force else {"pairs": {}}
    matcher = ASMamba()
    single = functools.partial(matcher.forward, scale_adapt=False)
    rng = np.random.default_rng(0)
    jobs = []
    for name in IMAGES:
        for zoom in args.zooms:
            centre = tuple(rng.uniform(0.2, 0.8, 2))  # drawn for every job: the same pairs whatever is skipped
            for swap in (False, True):
                jobs.append((name, zoom, centre, swap))
    for name, zoom, centre, swap in tqdm(jobs, desc="zoom pairs"):
        key = f"{name} z={1 / zoom if swap else zoom:.3f}"
        if key in results["pairs"]:
            continue
        source = cv2.imread(str(root / name), cv2.IMREAD_GRAYSCALE)
        im0, im1, H = zoom_pair(source, zoom, args.size, centre)
        if swap:
            im0, im1, H = im1, im0, np.linalg.inv(H)
        data = {"image0": torch.from_numpy(im0)[None, None].float() / 255,
                "image1": torch.from_numpy(im1)[None, None].float() / 255}
        size_wh = (im0.shape[1], im0.shape[0])
        with torch.inference_mode():
            start = time.perf_counter()
            first = single(data)
            first_ms = (time.perf_counter() - start) * 1000
            record = {"zoom": 1 / zoom if swap else zoom, "first_ms": first_ms}
            for setting, conf in SETTINGS.items():
                if conf is None:
                    record[setting] = {**score(first["keypoints0"], first["keypoints1"], H, size_wh),
                                       "ms": first_ms, "passes": 1}
                    continue
                start = time.perf_counter()
                out, info = match_with_scale_adaptation(single, data, first, ScaleAdaptConfig(**conf))
                extra_ms = (time.perf_counter() - start) * 1000
                record[setting] = {**score(out["keypoints0"], out["keypoints1"], H, size_wh),
                                   "ms": first_ms + extra_ms, "passes": len(info[0].passes),
                                   "ratio_est": info[0].ratio, "chosen": info[0].chosen.kind,
                                   "kinds": [p.kind for p in info[0].passes]}
        results["pairs"][key] = record
        results["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                              "torch": torch.__version__, "load_avg": os.getloadavg()}
        write_json_atomic(out_path, results)
    md = markdown(results, args.zooms)
    print(md)
    tmp = out_path.with_suffix(".md.tmp")
    tmp.write_text(md + "\n")
    tmp.replace(out_path.with_suffix(".md"))
    return 0


class _Recorder(torch.nn.Module):
    """Returns the plain first pass; from it, runs the adaptation of every setting and keeps outputs and timings."""

    def __init__(self) -> None:
        super().__init__()
        self.matcher = ASMamba()
        self.log: list[dict] = []

    def forward(self, data: dict) -> dict:
        single = functools.partial(self.matcher.forward, scale_adapt=False)
        start = time.perf_counter()
        first = single(data)
        record = {"first_s": time.perf_counter() - start}
        for setting, conf in SETTINGS.items():
            if conf is None:
                continue
            start = time.perf_counter()
            out, info = match_with_scale_adaptation(single, data, first, ScaleAdaptConfig(**conf))
            record[setting] = {"out": out, "extra_s": time.perf_counter() - start,
                               "extra": [p.kind for p in info[0].passes[1:]], "chosen": info[0].chosen.kind}
        self.log.append(record)
        return first


class _Replay(torch.nn.Module):
    """Returns one setting's recorded outputs, in call order."""

    def __init__(self, log: list[dict], setting: str) -> None:
        super().__init__()
        self.log, self.setting, self.calls = log, setting, 0

    def forward(self, data: dict) -> dict:
        self.calls += 1
        return self.log[self.calls - 1][self.setting]["out"]


def ab(protocol: str, sources: list, size: int, max_pairs=None) -> int:
    """The project's evaluation (pose or homography) of every setting from the same first passes, and what each
    adaptation costs over them, pair by pair in one process."""
    from asmamba.training.evaluation.homography import evaluate_homography, homography_markdown
    from asmamba.training.evaluation.pose import evaluate_pose, pose_markdown

    evaluate, md = (evaluate_homography, homography_markdown) if protocol == "homography" else \
        (evaluate_pose, pose_markdown)
    recorder = _Recorder()
    results = {"single pass": evaluate(recorder, sources, resize_max=size, max_pairs=max_pairs, progress=False)}
    first = sum(r["first_s"] for r in recorder.log)
    lines = [f"single pass:\n{md(results['single pass'])}"]
    for setting, conf in SETTINGS.items():
        if conf is None:
            continue
        results[setting] = evaluate(_Replay(recorder.log, setting), sources, resize_max=size, max_pairs=max_pairs,
                                    progress=False)
        extra = sum(r[setting]["extra_s"] for r in recorder.log)
        triggered = [r[setting] for r in recorder.log if r[setting]["extra"]]
        lines.append(f"{setting}:\n{md(results[setting])}\nextra passes on {len(triggered)} of {len(recorder.log)} "
                     "pairs: " + ", ".join(f"{'+'.join(r['extra'])} -> {r['chosen']}" for r in triggered)
                     + f"\ntime: first passes {first:.1f} s, extra {extra:.1f} s (+{100 * extra / first:.0f} %)")
    print("\n\n".join(lines) + f"\n\nload average {os.getloadavg()}")
    return 0


def markdown(results: dict, zooms) -> str:
    rows = ["| zoom (both ways) | setting | matches within 3 px | pairs with corner error < 3 px | < 10 px "
            "| median corner error (px) | passes | time (s) |", "|---|---|---|---|---|---|---|---|"]
    pairs = list(results["pairs"].values())
    for zoom in zooms:
        group = [p for p in pairs if abs(abs(math.log(p["zoom"])) - math.log(zoom)) < 1e-6]
        if not group:
            continue
        for setting in SETTINGS:
            r = [p[setting] for p in group]
            ce = np.array([x["corner_err"] for x in r])
            rows.append(
                f"| {zoom:g}x ({len(group)}) | {setting} | {100 * np.mean([x['within3'] for x in r]):.0f} % | "
                f"{100 * np.mean(ce < 3):.0f} % | {100 * np.mean(ce < 10):.0f} % | {np.median(ce):.1f} | "
                f"{np.mean([x['passes'] for x in r]):.1f} | {np.mean([x['ms'] for x in r]) / 1000:.1f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
