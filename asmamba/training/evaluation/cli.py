"""``asmamba eval pose`` and ``asmamba eval homography`` (wired by :mod:`asmamba.cli`).

Examples::

    asmamba eval pose ../shared/data/pose/*/pairs.txt --matcher sift --resize-max 640 --json pose.json
    asmamba eval pose --megadepth-root data/megadepth_test_1500 \\
        --megadepth-index data/megadepth_test_1500_scene_info/megadepth_test_1500.txt --matcher asmamba
    asmamba eval pose --scannet-root data/scannet_test_1500 --scannet-index test.npz \\
        --scannet-intrinsics intrinsics.npz --matcher asmamba
    asmamba eval homography ../shared/data/homography/* --matcher xfeat --json homography.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from asmamba.clitools import ArgumentParser
from asmamba.training.evaluation.common import build_named_matcher, write_json_atomic

#: how the runners build a matcher from ``--matcher NAME`` (tests may substitute their own)
MATCHER_FACTORY: Callable[[str, str], nn.Module] = build_named_matcher


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matcher", required=True, help="matcher name for asmamba.baselines.build_matcher")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the full results as JSON here")
    parser.add_argument("--max-pairs", type=int, default=None, help="evaluate at most this many pairs per source")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _check_paths(inputs: list, what: str, json_path: Optional[str]) -> None:
    """Inputs exist and the JSON can be written, before a matcher is built."""
    from asmamba.io import check_output_dir

    for item in inputs:
        if not Path(item).exists():
            raise FileNotFoundError(f"{what} {str(item)!r} does not exist")
    if json_path:
        if Path(json_path).is_dir():
            raise IsADirectoryError(f"--json {json_path!r} is a folder; give a file name")
        check_output_dir(Path(json_path).parent, f"--json {json_path!r}: folder")  # created when missing


def _run(prog: str, body: Callable[[], dict], markdown: Callable[[dict], str], json_path: Optional[str]) -> int:
    try:
        results = body()
    except (OSError, ValueError, TypeError, ImportError) as err:
        from asmamba.clitools import one_line

        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(markdown(results))
    if json_path:
        print(f"results written to {write_json_atomic(json_path, results)}")
    return 0


def eval_pose_main(argv: Optional[list[str]] = None) -> int:
    """Relative-pose evaluation (``asmamba eval pose --help``)."""
    parser = ArgumentParser(
        prog="asmamba eval pose",
        description="Relative-pose AUC@5/10/20 (OpenCV RANSAC and poselib LO-RANSAC), matching precision, "
        "matches and latency of a matcher on SuperGlue pairs files and MegaDepth/ScanNet test indices.",
    )
    parser.add_argument("pairs_files", nargs="*", help="SuperGlue-format pairs.txt files")
    _common_args(parser)
    parser.add_argument("--resize-max", type=int, default=640, help="long-side limit for pairs-file images")
    parser.add_argument("--image-dir", default=None, help="image folder of the pairs files (default: <dir>/images)")
    parser.add_argument("--ransac-threshold", type=float, default=0.5, help="pixels at the evaluated resolution")
    parser.add_argument("--epipolar-threshold", type=float, default=None, help="precision threshold (default: "
                        "1e-4, ScanNet 5e-4)")
    parser.add_argument("--megadepth-root", default=None, help="MegaDepth test root (images)")
    parser.add_argument("--megadepth-index", nargs="*", default=[], help="scene_info .npz files or a scene list .txt")
    parser.add_argument("--megadepth-long-side", type=int, default=832, help="network long side for MegaDepth")
    parser.add_argument("--scannet-root", default=None, help="ScanNet test root (scene folders)")
    parser.add_argument("--scannet-index", default=None, help="ScanNet pair index (test.npz)")
    parser.add_argument("--scannet-intrinsics", default=None, help="ScanNet intrinsics.npz")
    args = parser.parse_args(argv)

    def body() -> dict:
        from asmamba.training.evaluation.pose import evaluate_pose

        _check_paths(args.pairs_files, "pairs file", args.json)
        sources: list = list(args.pairs_files)
        sources += _megadepth_sources(args)
        if args.scannet_index or args.scannet_root:
            if not (args.scannet_index and args.scannet_root and args.scannet_intrinsics):
                raise ValueError("ScanNet needs --scannet-root, --scannet-index and --scannet-intrinsics together")
            from asmamba.training.data.scannet import ScanNetPairs

            scannet = ScanNetPairs(args.scannet_root, args.scannet_index, args.scannet_intrinsics, load_depth=False)
            sources.append(scannet)
        if not sources:
            raise ValueError("nothing to evaluate: give pairs files, --megadepth-index or --scannet-index")
        matcher = MATCHER_FACTORY(args.matcher, args.device)
        return evaluate_pose(
            matcher, sources, resize_max=args.resize_max, device=args.device, image_dir=args.image_dir,
            ransac_threshold=args.ransac_threshold, epipolar_threshold=args.epipolar_threshold,
            max_pairs=args.max_pairs, progress=not args.no_progress,
        )

    from asmamba.training.evaluation.pose import pose_markdown

    return _run(parser.prog, body, pose_markdown, args.json)


def _megadepth_sources(args: argparse.Namespace) -> list:
    if not args.megadepth_index and not args.megadepth_root:
        return []
    if not (args.megadepth_index and args.megadepth_root):
        raise ValueError("MegaDepth needs --megadepth-root and --megadepth-index together")
    from asmamba.training.data.megadepth import MegaDepthScene, load_megadepth

    conf = {"long_side": args.megadepth_long_side, "load_depth": False}
    sources = []
    for index in args.megadepth_index:
        p = Path(index)
        if p.suffix == ".txt":
            sources.append(load_megadepth(args.megadepth_root, p.parent, p, **conf))
        else:
            sources.append(MegaDepthScene(args.megadepth_root, p, **conf))
    return sources


def eval_homography_main(argv: Optional[list[str]] = None) -> int:
    """Homography evaluation (``asmamba eval homography --help``)."""
    parser = ArgumentParser(
        prog="asmamba eval homography",
        description="Homography AUC@3/5/10 px (OpenCV RANSAC and poselib LO-RANSAC), matches and latency of a "
        "matcher on HPatches-, VGG- or CMP-layout folders (or folders of such sequences).",
    )
    parser.add_argument("dirs", nargs="+", help="sequence folders or folders of sequences")
    _common_args(parser)
    parser.add_argument("--resize-max", type=int, default=None, help="long-side limit of the matched images")
    parser.add_argument("--ransac-threshold", type=float, default=3.0, help="pixels at the matcher's resolution")
    args = parser.parse_args(argv)

    def body() -> dict:
        from asmamba.training.evaluation.homography import evaluate_homography

        _check_paths(args.dirs, "folder", args.json)
        matcher = MATCHER_FACTORY(args.matcher, args.device)
        return evaluate_homography(
            matcher, args.dirs, resize_max=args.resize_max, device=args.device,
            ransac_threshold=args.ransac_threshold, max_pairs=args.max_pairs, progress=not args.no_progress,
        )

    from asmamba.training.evaluation.homography import homography_markdown

    return _run(parser.prog, body, homography_markdown, args.json)
