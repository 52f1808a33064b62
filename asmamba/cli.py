"""The ``asmamba`` command line.

Sub-commands that belong to other parts of the project (pipelines, training, evaluation) are looked up lazily, so
``asmamba match`` never imports pycolmap or the training code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Optional, Sequence

from .allocator import tune_from_environment

#: sub-command -> "module:function" taking ``argv`` and returning an exit code
DELEGATED = {
    "reconstruct": "asmamba.pipelines.reconstruct:main",
    "localize": "asmamba.pipelines.localize:main",
    "match-dense": "asmamba.pipelines.match:main",
    "evaluate-sfm": "asmamba.pipelines.evaluate:main",
    "train": "asmamba.training.trainer:main",
    "demo": "asmamba.demo:main",
}
BENCH_COMMANDS = {
    "compare": "asmamba.bench.compare:main",
    "scaling": "asmamba.bench.scaling:main",
    "ablations": "asmamba.bench.ablations:main",
    "figures": "asmamba.bench.figures:main",
}
EVAL_COMMANDS = {
    "pose": "asmamba.training.evaluation.cli:eval_pose_main",
    "homography": "asmamba.training.evaluation.cli:eval_homography_main",
}


def _call(target: str, argv: list[str]) -> int:
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def _parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    return w, h


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="model preset (base, tiny) or YAML path")
    p.add_argument("--weights", default="default",
                   help="'default' (the shipped trained weights), another shipped name, a checkpoint path, or 'none'")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (OmegaConf dotlist)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _build_model(args: argparse.Namespace):
    import torch

    from .matcher import ASMamba

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = None if str(args.weights).lower() == "none" else args.weights
    model = ASMamba(config=args.config, pretrained=weights, overrides=args.set)
    if torch.cuda.is_available():
        model = model.cuda()
    return model


def cmd_match(args: argparse.Namespace) -> int:
    import torch

    from .io import load_image, read_image, resize_max
    from .viz import draw_matches

    model = _build_model(args)
    device = next(model.parameters()).device
    t0, _ = load_image(args.image0, grayscale=True, max_side=args.resize_max, device=device)
    t1, _ = load_image(args.image1, grayscale=True, max_side=args.resize_max, device=device)
    with torch.inference_mode():
        out = model({"image0": t0, "image1": t1})
    k0, k1 = out["keypoints0"].cpu().numpy(), out["keypoints1"].cpu().numpy()
    conf = out["confidence"].float().cpu().numpy()
    print(f"{len(k0)} matches")
    if args.out:
        img0 = resize_max(read_image(args.image0), args.resize_max)[0]
        img1 = resize_max(read_image(args.image1), args.resize_max)[0]
        draw_matches(img0, img1, k0, k1, args.out, color_values=conf, title=f"AS-Mamba: {len(k0)} matches")
        print(f"wrote {args.out}")
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    import torch
    from kornia.feature import LoFTR

    from .profile import median_latency_ms, stereo_pair

    torch.set_num_threads(args.threads)
    w, h = args.size
    pair = stereo_pair(h, w)
    model = _build_model(args)
    loftr = LoFTR(pretrained=None).eval()
    with torch.inference_mode():
        ours = median_latency_ms(lambda: model(pair), warmup=args.warmup, repeats=args.repeats)
        theirs = (
            median_latency_ms(lambda: loftr(pair), warmup=args.warmup, repeats=args.repeats)
            if not args.skip_loftr else float("nan")
        )
    result = {
        "size": f"{w}x{h}", "threads": args.threads, "config": str(args.config or "base"),
        "weights": str(args.weights), "asmamba_ms": round(ours, 1), "loftr_ms": round(theirs, 1),
        "ratio": round(ours / theirs, 3),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .profile import flops_per_component, parameter_counts, stereo_pair

    model = _build_model(args)
    w, h = args.size
    pair = stereo_pair(h, w)
    params = parameter_counts(model.net)
    flops = flops_per_component(model.net, lambda: model(pair))
    rows = [("component", "params (M)", f"GFLOPs @ {w}x{h}")]
    for name in params:
        rows.append((name, f"{params[name] / 1e6:.3f}", f"{flops.get(name, 0.0) / 1e9:.2f}"))
    if args.json:
        print(json.dumps({"params": params, "flops": flops, "size": f"{w}x{h}"}))
    else:
        width = max(len(r[0]) for r in rows)
        for r in rows:
            print(f"{r[0]:<{width}}  {r[1]:>11}  {r[2]:>16}")
        print(f"torch {torch.__version__}, selective scan backend: {_scan_backend()}")
    return 0


def _scan_backend() -> str:
    try:
        from .mamba import selective_scan as ss

        return str(getattr(ss, "backend_name", lambda: "pytorch")())
    except Exception:  # pragma: no cover - informational only
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asmamba", description="AS-Mamba dense image matching")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("match", help="match two images and draw the matches")
    p.add_argument("image0")
    p.add_argument("image1")
    p.add_argument("--out", default="matches.png", help="PNG to write ('' to skip)")
    p.add_argument("--resize-max", type=int, default=640, help="downscale so the long side is at most this")
    _add_model_args(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("latency", help="AS-Mamba vs kornia's LoFTR (random weights), same process and threads, "
                                         "on the Motorcycle stereo pair resized to --size")
    b.add_argument("--size", type=_parse_size, default=(640, 480), help="WxH, default 640x480")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--json", action="store_true")
    b.add_argument("--skip-loftr", action="store_true", help="time AS-Mamba only")
    _add_model_args(b)
    b.set_defaults(func=cmd_bench_latency, threads=2)
    for name in BENCH_COMMANDS:
        bench.add_parser(name, help=f"see 'asmamba bench {name} --help'", add_help=False)

    p = sub.add_parser("info", help="parameters and FLOPs per component")
    p.add_argument("--size", type=_parse_size, default=(640, 480))
    p.add_argument("--json", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    for name in DELEGATED:
        sub.add_parser(name, help=f"see 'asmamba {name} --help'", add_help=False)
    sub.add_parser("eval", help="evaluate a matcher: 'asmamba eval pose|homography --help'", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_from_environment()  # glibc keeps freed memory: ~35 % faster on CPU (asmamba.allocator)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCH_COMMANDS:
        return _call(BENCH_COMMANDS[argv[1]], argv[2:])
    if argv and argv[0] in DELEGATED:
        return _call(DELEGATED[argv[0]], argv[1:])
    if argv and argv[0] == "eval":
        if len(argv) < 2 or argv[1] not in EVAL_COMMANDS:
            print(f"usage: asmamba eval {{{','.join(EVAL_COMMANDS)}}} ...", file=sys.stderr)
            return 2
        return _call(EVAL_COMMANDS[argv[1]], argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as err:
        print(f"asmamba {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
