"""Efficiency checks of issue 2, on this machine: latency against kornia's LoFTR (random weights) at 640x480,
scaling with pixels (1280x960 vs 640x480), and peak memory of a 1024x768 pair. Prints one JSON object.

    python benchmarks/perf.py --threads 2 [--weights default] [--config xfeat]

Each measurement runs in a fresh process so that peak RSS belongs to that measurement alone. The allocator is tuned
as the command line does (asmamba.allocator); ASMAMBA_TUNE_MALLOC=0 measures with glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from asmamba.allocator import tune_from_environment
tuned = tune_from_environment()
from asmamba import ASMamba
from asmamba.profile import median_latency_ms, stereo_pair
threads, w, h, weights, config, what = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
torch.set_num_threads(threads)
pair = stereo_pair(h, w)
if what == "loftr":
    from kornia.feature import LoFTR
    model = LoFTR(pretrained=None).eval()
else:
    model = ASMamba(config=None if config == "none" else config, pretrained=None if weights == "none" else weights)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    n = len(model(pair)["keypoints0"])
    ms = median_latency_ms(lambda: model(pair), warmup=0, repeats=3)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"ms": ms, "matches": n, "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - before) / 1024,
                  "malloc_tuned": tuned}))
"""


def run(what: str, w: int, h: int, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), str(w), str(h), args.weights,
                          args.config, what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="default", help="AS-Mamba weights ('none' for random)")
    parser.add_argument("--config", default="none", help="model config ('none': the checkpoint's own)")
    args = parser.parse_args()
    ours_640 = run("asmamba", 640, 480, args)
    loftr_640 = run("loftr", 640, 480, args)
    ours_1280 = run("asmamba", 1280, 960, args)
    ours_1024 = run("asmamba", 1024, 768, args)
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads, "weights": args.weights, "config": args.config,
        "torch": __import__("torch").__version__, "malloc_tuned": ours_640["malloc_tuned"],
        "asmamba_640x480_ms": round(ours_640["ms"]), "asmamba_640x480_matches": ours_640["matches"],
        "loftr_640x480_ms": round(loftr_640["ms"]),
        "ratio_vs_loftr": round(ours_640["ms"] / loftr_640["ms"], 3),
        "asmamba_1280x960_ms": round(ours_1280["ms"]), "asmamba_1280x960_matches": ours_1280["matches"],
        "scaling_1280_over_640": round(ours_1280["ms"] / ours_640["ms"], 2),
        "asmamba_1024x768_peak_rss_mib": round(ours_1024["peak_rss_mib"]),
        "loftr_640x480_peak_rss_mib": round(loftr_640["peak_rss_mib"]),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
