"""The ``asmamba`` command line.

Arguments and paths are checked before torch, kornia or pycolmap are imported, so that ``--help`` and a typo are
answered at once. Sub-commands that belong to other parts of the project (pipelines, training, evaluation,
benchmarks) are looked up lazily, so ``asmamba match`` never imports pycolmap or the training code.

Shared conventions (:mod:`asmamba.clitools`): config overrides are positional ``key=value`` arguments (OmegaConf
dotlist); bad input is one line ``asmamba CMD: error: ...`` with exit code 2; Ctrl-C / SIGTERM stop with one line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Optional, Sequence

from .allocator import tune_from_environment
from .clitools import ArgumentParser, add_overrides, gather_overrides, run_guarded

#: sub-command -> "module:function" taking ``argv`` and returning an exit code
DELEGATED = {
    "reconstruct": "asmamba.pipelines.reconstruct:main",
    "localize": "asmamba.pipelines.localize:main",
    "match-dense": "asmamba.pipelines.match:main",
    "evaluate-sfm": "asmamba.pipelines.evaluate:main",
    "train": "asmamba.training.trainer:main",
    "validate": "asmamba.training.validation:main",
    "export": "asmamba.export:main",
    "demo": "asmamba.demo:main",
}
#: what each delegated command does (the top-level ``--help``)
DELEGATED_HELP = {
    "reconstruct": "Structure-from-Motion of an image folder: dense matching, COLMAP database, incremental "
                   "mapping (pycolmap); resumable",
    "localize": "camera poses of query images in a model made by 'asmamba reconstruct'",
    "match-dense": "hloc's features.h5 + matches.h5 from the dense matches of image pairs (shards, resumes)",
    "evaluate-sfm": "reconstructed cameras against ground truth (Sim(3)-aligned position and rotation errors)",
    "train": "train AS-Mamba from a configs/train preset or YAML file, with key=value overrides",
    "validate": "score weights (with model overrides) on held-out training scenes, per source: choose settings "
                "there, never on the evaluation scenes",
    "export": "fp16 inference weights from a checkpoint, with inference settings (key=value) in their config",
    "demo": "match the Motorcycle stereo pair and score it against its GT disparity, then reconstruct a scene",
}
BENCH_COMMANDS = {
    "compare": "asmamba.bench.compare:main",
    "scaling": "asmamba.bench.scaling:main",
    "ablations": "asmamba.bench.ablations:main",
    "figures": "asmamba.bench.figures:main",
    "perf": "asmamba.bench.perf:main",
}
#: what each benchmark does (``asmamba bench --help``); a command missing here says where its help is
BENCH_HELP = {
    "compare": "every matcher side by side: pose and homography accuracy, matches, latency, memory, params, FLOPs",
    "scaling": "AS-Mamba vs LoFTR latency and memory from 320x240 to 1280x960 (table + PNG)",
    "ablations": "train and evaluate the design ablations (scan order, heads, feedback, flow predictor)",
    "figures": "the README's pictures: matches against a baseline, flow and uncertainty",
    "perf": "per-component times of one forward and the speed targets (latency, scaling, memory, scan, training)",
}
EVAL_COMMANDS = {
    "pose": "asmamba.training.evaluation.cli:eval_pose_main",
    "homography": "asmamba.training.evaluation.cli:eval_homography_main",
}
EVAL_HELP = {
    "pose": "relative-pose AUC@5/10/20 of a matcher on SuperGlue pairs files or MegaDepth/ScanNet test indices",
    "homography": "homography AUC@3/5/10 px of a matcher on HPatches/VGG/CMP-layout folders",
}
#: what stopping a delegated command keeps, for its stop message
RESUME_HINTS = {
    "train": "continue from the last checkpoint with the same command and --resume",
    "bench": "finished measurements are kept: run the same command again to resume",
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
    from .config import available_presets

    p.add_argument("--config", default=None,
                   help=f"model preset ({', '.join(available_presets('model'))}) or YAML path (default: the "
                        "checkpoint's config)")
    p.add_argument("--weights", default="default",
                   help="'default' (the shipped trained weights), another shipped name, a checkpoint path, or 'none'")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_overrides(p, "coarse.threshold=0.3")


def _check_model_args(args: argparse.Namespace) -> None:
    """Model config, overrides and weights, validated before torch is imported (``args.model_overrides``)."""
    from .checkpoint import resolve_weights
    from .config import load_config

    args.model_overrides = gather_overrides(args, args.prog)
    load_config(args.config, args.model_overrides)  # unknown preset, key or value: ConfigError naming it
    if str(args.weights).lower() != "none":
        resolve_weights(args.weights)  # neither a shipped name nor a file: CheckpointError naming it
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def _check_match_args(args: argparse.Namespace) -> None:
    from .io import check_input_file, check_output_file

    check_input_file(args.image0, "image")
    check_input_file(args.image1, "image")
    if args.out:
        check_output_file(args.out, "--out")
    if args.resize_max is not None and args.resize_max < 32:
        raise ValueError(f"--resize-max must be >= 32, got {args.resize_max}")
    _check_model_args(args)


def _build_model(args: argparse.Namespace):
    import torch

    from .matcher import ASMamba

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = None if str(args.weights).lower() == "none" else args.weights
    model = ASMamba(config=args.config, pretrained=weights, overrides=args.model_overrides)
    if torch.cuda.is_available():
        model = model.cuda()
    return model


def cmd_match(args: argparse.Namespace) -> int:
    from .io import image_to_tensor, read_image, resize_max

    _check_match_args(args)
    gray = [resize_max(read_image(p, grayscale=True), args.resize_max)[0] for p in (args.image0, args.image1)]
    colour = [resize_max(read_image(p), args.resize_max)[0] for p in (args.image0, args.image1)] if args.out else []

    import torch  # only now: every argument and both images are fine

    from .viz import draw_matches

    model = _build_model(args)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model({"image0": image_to_tensor(gray[0], device), "image1": image_to_tensor(gray[1], device)})
    k0, k1 = out["keypoints0"].cpu().numpy(), out["keypoints1"].cpu().numpy()
    conf = out["confidence"].float().cpu().numpy()
    print(f"{len(k0)} matches")
    if args.out:
        draw_matches(colour[0], colour[1], k0, k1, args.out, color_values=conf,
                     title=f"AS-Mamba: {len(k0)} matches", legend=("match confidence", "0", "1"))
        print(f"wrote {args.out}")
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    _check_model_args(args)
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")

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
    _check_model_args(args)

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
    """The whole command tree; delegated commands are listed with what they do and parse their own arguments."""
    parser = ArgumentParser(
        prog="asmamba", description="AS-Mamba dense image matching: match, reconstruct, localize, train, evaluate.",
        epilog="'asmamba COMMAND --help' gives a command's options. Config overrides are positional key=value "
               "arguments (OmegaConf dotlist).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("match", help="match two images and draw the matches (PNG)",
                       description="Match two images with AS-Mamba and draw the matches.")
    p.add_argument("image0")
    p.add_argument("image1")
    p.add_argument("--out", default="matches.png", help="PNG to write ('' to skip); its folder must exist")
    p.add_argument("--resize-max", type=int, default=640, help="downscale so the long side is at most this (640)")
    _add_model_args(p)
    p.set_defaults(func=cmd_match, prog="asmamba match")

    p = sub.add_parser("bench", help="benchmarks: latency, compare, scaling, ablations, figures",
                       description="Benchmarks; each writes JSON results and can update the README's tables.")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    b = bench.add_parser("latency", help="AS-Mamba vs kornia's LoFTR (random weights), same process and threads, "
                                         "on the Motorcycle stereo pair resized to --size")
    b.add_argument("--size", type=_parse_size, default=(640, 480), help="WxH, default 640x480")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--json", action="store_true")
    b.add_argument("--skip-loftr", action="store_true", help="time AS-Mamba only")
    _add_model_args(b)
    b.set_defaults(func=cmd_bench_latency, threads=2, prog="asmamba bench latency")
    for name in BENCH_COMMANDS:
        bench.add_parser(name, help=BENCH_HELP.get(name, f"see 'asmamba bench {name} --help'"), add_help=False)

    p = sub.add_parser("info", help="parameters and FLOPs per component",
                       description="Parameters and FLOPs of each component of the model.")
    p.add_argument("--size", type=_parse_size, default=(640, 480))
    p.add_argument("--json", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_info, prog="asmamba info")

    for name in DELEGATED:
        sub.add_parser(name, help=DELEGATED_HELP.get(name, f"see 'asmamba {name} --help'"), add_help=False)
    p = sub.add_parser("eval", help="evaluate any matcher: relative-pose or homography AUC",
                       description="Evaluate a matcher; 'asmamba eval pose --help' and 'asmamba eval homography "
                                   "--help' give the options.")
    evals = p.add_subparsers(dest="eval", metavar="PROTOCOL", required=True)
    for name in EVAL_COMMANDS:
        evals.add_parser(name, help=EVAL_HELP[name], add_help=False)
    # the commands parsed here, by their words: parsed on their own so that options and key=value may intermix
    parser.set_defaults(local_parsers={"match": sub.choices["match"], "info": sub.choices["info"],
                                       "bench latency": bench.choices["latency"]})
    return parser


def _print_help_of(argv: list[str]) -> int:
    """``asmamba eval`` / ``asmamba bench`` without a sub-command: their help and exit code 2."""
    parser = build_parser()
    try:
        parser.parse_args([*argv, "--help"])
    except SystemExit:
        pass
    print(f"asmamba {' '.join(argv)}: error: choose one of the commands above", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``asmamba``: 0 on success, 2 on bad input, 130 / 143 when stopped by Ctrl-C / SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_from_environment()  # glibc keeps freed memory: ~35 % faster on CPU (asmamba.allocator)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCH_COMMANDS:
        prog, target, rest = f"asmamba bench {argv[1]}", BENCH_COMMANDS[argv[1]], argv[2:]
    elif argv and argv[0] in DELEGATED:
        prog, target, rest = f"asmamba {argv[0]}", DELEGATED[argv[0]], argv[1:]
    elif len(argv) >= 2 and argv[0] == "eval" and argv[1] in EVAL_COMMANDS:
        prog, target, rest = f"asmamba eval {argv[1]}", EVAL_COMMANDS[argv[1]], argv[2:]
    elif argv in (["eval"], ["bench"]):
        return _print_help_of(argv)
    elif not argv:
        build_parser().print_help()
        return 2
    else:
        parser = build_parser()
        local = parser.get_default("local_parsers")
        words = " ".join(argv[:2]) if argv[:2] == ["bench", "latency"] else (argv[0] if argv else "")
        if words in local:
            args = local[words].parse_intermixed_args(argv[len(words.split()):])
        else:
            args = parser.parse_args(argv)
        return run_guarded(args.prog, lambda: args.func(args))
    # delegated commands report their own errors; this catches what escapes them (e.g. a bad train preset)
    return run_guarded(prog, lambda: _call(target, rest), resume_hint=RESUME_HINTS.get(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
