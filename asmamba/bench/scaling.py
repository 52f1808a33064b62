"""``asmamba bench scaling``: latency and peak memory of AS-Mamba and kornia's LoFTR (random weights) against image
size, the Motorcycle pair at each long side (4:3), each point in a fresh process. Writes JSON, markdown and a PNG.

    asmamba bench scaling [--out benchmarks/results] [--readme README.md] [--force] [key=value ...]

A cost linear in tokens grows 4x from 640x480 to 1280x960; the table gives each step's growth and the fitted
exponent ``latency ~ pixels^k`` (k = 1: linear, 2: quadratic).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from asmamba.bench.common import (
    build_any_matcher, machine_line, markdown_table, measure_matcher, parse_bench_args, replace_readme_block,
    run_child, write_json_atomic,
)

README_BLOCK = "bench-scaling"


def size_of(long_side: int) -> tuple[int, int]:
    """(W, H) of a 4:3 landscape image with this long side, H rounded to a multiple of 8."""
    return long_side, int(round(long_side * 3 / 4 / 8)) * 8


def exponent(pixels: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(pixels)."""
    return float(np.polyfit(np.log(pixels), np.log(values), 1)[0])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in results.items():
        ok = [p for p in points if "error" not in p]
        if not ok:
            continue
        px = [p["pixels"] / 1e6 for p in ok]
        axes[0].plot(px, [p["latency_ms"] / 1000 for p in ok], "o-", label=name)
        axes[1].plot(px, [p["peak_rss_mib"] / 1024 for p in ok], "o-", label=name)
        # the linear-in-pixels line through the smallest size
        ref = ok[0]
        xs = np.linspace(px[0], px[-1], 20)
        axes[0].plot(xs, ref["latency_ms"] / 1000 * xs / px[0], ":", color=axes[0].lines[-1].get_color(),
                     alpha=0.6, label=f"{name}: linear from {ref['size']}")
    axes[0].set(xlabel="megapixels per image", ylabel="latency per pair (s)", title="latency")
    axes[1].set(xlabel="megapixels per image", ylabel="peak RSS (GiB)", title="peak memory (process)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(tempfile.mkstemp(suffix=".png", dir=path.parent)[1])
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def render(results: dict, cfg: dict, machine: str) -> str:
    header = ["matcher", "size", "latency (ms)", "x previous", "peak RSS (MiB)", "matches"]
    rows = []
    notes = []
    for name, points in results.items():
        prev = None
        for p in points:
            if "error" in p:
                rows.append([name, p["size"], "not run: " + p["error"].strip().splitlines()[-1][:100], "", "", ""])
                continue
            growth = "" if prev is None else (
                f"{p['latency_ms'] / prev['latency_ms']:.2f} (pixels x{p['pixels'] / prev['pixels']:.2f})")
            rows.append([name, p["size"], f"{p['latency_ms']:.0f}", growth, f"{p['peak_rss_mib']:.0f}",
                         p.get("latency_matches", "")])
            prev = p
        ok = [p for p in points if "error" not in p]
        if len(ok) >= 2:
            k = exponent([p["pixels"] for p in ok], [p["latency_ms"] for p in ok])
            by_size = {p["size"]: p for p in ok}
            ratio = ""
            if "640x480" in by_size and "1280x960" in by_size:
                growth_4x = by_size["1280x960"]["latency_ms"] / by_size["640x480"]["latency_ms"]
                ratio = f", 1280x960 / 640x480 = {growth_4x:.2f}x"
            notes.append(f"{name}: latency ~ pixels^{k:.2f}{ratio}")
    return (markdown_table(header, rows) + "\n\n" + "; ".join(notes) +
            f". {time.strftime('%Y-%m-%d')}, CPU: {machine}; median of {cfg['repeats']} after {cfg['warmup']} "
            "warm-up, each point a fresh process.\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, cfg, out = parse_bench_args("scaling", __doc__, argv)
    points_dir = out / "scaling"
    if args.child:
        name, long_side = args.child[0], int(args.child[1])
        torch.set_num_threads(cfg["threads"])
        from asmamba.profile import stereo_pair

        w, h = size_of(long_side)
        result = measure_matcher(build_any_matcher(name), stereo_pair(h, w), cfg["warmup"], cfg["repeats"])
        result.update(size=f"{w}x{h}", pixels=w * h)
        write_json_atomic(points_dir / f"{name}_{long_side}.json", result)
        return 0
    points_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list] = {name: [] for name in cfg["matchers"]}
    jobs = [(name, s) for s in cfg["long_sides"] for name in cfg["matchers"]]
    for name, long_side in tqdm(jobs, desc="sizes"):
        w, h = size_of(long_side)
        point = run_child("asmamba.bench.scaling", ["--child", name, str(long_side), "--out", str(out),
                                                    *args.overrides],
                          points_dir / f"{name}_{long_side}.json", force=args.force)
        point.setdefault("size", f"{w}x{h}")
        point.setdefault("pixels", w * h)
        results[name].append(point)
    table = render(results, cfg, machine_line(cfg["threads"]))
    write_json_atomic(out / "scaling.json", {"config": cfg, "results": results})
    (out / "scaling.md").write_text(table)
    plot(results, out / "scaling.png")
    print(table)
    if args.readme:
        replace_readme_block(Path(args.readme), README_BLOCK, table + "\n![scaling](benchmarks/results/scaling.png)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
