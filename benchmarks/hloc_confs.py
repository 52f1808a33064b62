"""The hloc route with real hloc: ``match_dense`` + ``reconstruction`` on sacre_coeur with each of the plugin's confs.

Issue 15 measured the ``asmamba_aachen`` conf at 1,377 points against 5,066 for ``asmamba`` on the same scene (8 px
cell centres on the edges of hloc's quantisation cells). This runs hloc's own pipeline, unchanged, on the 10
sacre_coeur images (all 45 pairs) with both confs at one resolution and reports what COLMAP reconstructs.

Needs hloc (not on the package index) in the torch 2.14.1 + torchvision environment (README, "hloc")::

    . .venv-lg/bin/activate
    python benchmarks/hloc_confs.py --resize-max 640 --threads 2

Writes ``benchmarks/results/hloc_confs.{json,md}`` and hloc's files under ``--work`` (default ``outputs/hloc_confs``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFS = ("asmamba", "asmamba_aachen")


def reconstruct_with(conf_name: str, images: Path, work: Path, resize_max: int) -> dict:
    """hloc's match_dense with ``confs[conf_name]`` (resize_max changed only), then hloc's reconstruction."""
    from hloc import match_dense, reconstruction

    out = work / conf_name
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    pairs = out / "pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for a, b in itertools.combinations(names, 2)))
    conf = {**match_dense.confs[conf_name]}
    conf["preprocessing"] = {**conf["preprocessing"], "resize_max": resize_max}
    features, matches = match_dense.main(conf, pairs, images, export_dir=out)
    model = reconstruction.main(out / "sfm", images, pairs, features, matches)
    if model is None:
        return {"conf": conf_name, "images": len(names), "registered": 0}
    return {"conf": conf_name, "images": len(names), "registered": model.num_reg_images(),
            "points": model.num_points3D(), "track_length": round(model.compute_mean_track_length(), 3),
            "reprojection_px": round(model.compute_mean_reprojection_error(), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resize-max", type=int, default=640, help="hloc's preprocessing.resize_max (default 640)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--work", type=Path, default=Path("outputs/hloc_confs"), help="hloc's output folder")
    args = parser.parse_args(argv)
    try:
        import hloc  # noqa: F401
    except ImportError:
        print("hloc_confs: error: hloc is not installed (README, 'hloc': install it in .venv-lg)", file=sys.stderr)
        return 2
    import torch

    import asmamba_hloc
    from asmamba.io import data_root

    images = data_root() / "sfm" / "sacre_coeur" / "images"
    if not images.is_dir():
        print(f"hloc_confs: error: {images} does not exist (set ASMAMBA_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    asmamba_hloc.register()
    rows = [reconstruct_with(name, images, args.work, args.resize_max) for name in CONFS]
    record = {"scene": "sfm/sacre_coeur", "resize_max": args.resize_max, "threads": args.threads, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hloc_confs.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"hloc match_dense + reconstruction, sacre_coeur, 45 pairs, resize_max {args.resize_max}", "",
             "| conf | registered | points | track length | reprojection px |", "|---|---|---|---|---|"]
    lines += [f"| `{r['conf']}` | {r['registered']} / {r['images']} | {r.get('points', '-')} | "
              f"{r.get('track_length', '-')} | {r.get('reprojection_px', '-')} |" for r in rows]
    (RESULTS / "hloc_confs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
