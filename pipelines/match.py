"""``asmamba match-dense IMAGES_DIR OUT_DIR``: pairs -> ``features.h5`` + ``matches.h5`` in hloc's layout.

Works with any kornia-contract matcher and without hloc. Resumable (a rerun skips the pairs already matched;
``--overwrite`` redoes them) and splittable: run ``--shard 1/N`` ... ``--shard N/N`` as N processes on the same
OUT_DIR, then ``--merge`` once to quantise and write the two HDF5 files. Outputs in OUT_DIR: ``pairs.txt``,
``dense/`` (raw matches, one file per pair), ``features.h5``, ``matches.h5``, ``run.json`` (the settings).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from asmamba_hloc.match_dense import (
    AggregateReport,
    DenseMatchCache,
    MatchingReport,
    Pair,
    aggregate,
    match_pairs,
    parse_shard,
)

from asmamba.clitools import ArgumentParser, add_overrides, gather_overrides, run_guarded, setup_logging, summary

from .common import (
    ImageScan,
    PathLike,
    lazy_matcher,
    load_pipeline_config,
    matcher_tag,
    quantization_for,
    quantization_scales,
    resolve_device,
    scaled,
    scan_images,
    to_plain,
    write_json,
)

#: what a stopped matching run keeps (the stop message of match-dense, reconstruct and localize)
RESUME_HINT = "the pairs matched so far are kept: run the same command again to resume"


@dataclass
class MatchOutputs:
    """Files and counts of one matching run."""

    out_dir: Path
    scan: ImageScan
    pairs: list[Pair]
    matching: MatchingReport
    merged: Optional[AggregateReport] = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_path(self) -> Path:
        return self.out_dir / "pairs.txt"

    @property
    def features_path(self) -> Path:
        return self.out_dir / "features.h5"

    @property
    def matches_path(self) -> Path:
        return self.out_dir / "matches.h5"


def run_matching(
    image_dir: PathLike,
    out_dir: PathLike,
    cfg: DictConfig,
    overwrite: bool = False,
    shard: Optional[tuple[int, int]] = None,
    merge_only: bool = False,
    progress: bool = True,
) -> MatchOutputs:
    """Pairs, dense matching into the cache, and (unless sharded) the merge into hloc's two files.

    Args:
        cfg: a ``reconstruct`` pipeline config (:func:`asmamba.pipelines.common.load_pipeline_config`).
        shard: ``(i, n)``: match only this share of the pairs and skip the merge.
        merge_only: match nothing; merge what the shards wrote (every pair must be cached).
    """
    from .pairs import describer_for, make_pairs, write_pairs  # torch: only once the arguments are checked

    image_dir, out_dir = Path(image_dir), Path(out_dir)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    scan = scan_images(image_dir, exclude_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = str(cfg.matcher)
    matcher_conf = to_plain(cfg.matcher_conf) or {}
    resize_max = None if cfg.resize_max is None else int(cfg.resize_max)
    device = resolve_device(cfg.device)
    build = lazy_matcher(name, matcher_conf, device)
    describe = None
    if str(cfg.pairs).startswith("retrieval:"):
        matcher = build()
        build = lambda: matcher  # noqa: E731  (the retrieval model is the matcher: build it once)
        describe = describer_for(matcher)
    pairs = make_pairs(str(cfg.pairs), scan.names, image_dir, describe, known_names=list(scan.names) + list(scan.bad),
                       resize_max=cfg.retrieval_resize_max, progress=progress)
    if not pairs:
        raise ValueError(f"pairs spec {cfg.pairs!r} gives no pair for {len(scan.names)} images")
    seconds["pairs"] = time.perf_counter() - start
    base = quantization_for(name, cfg)
    scales = quantization_scales(name, cfg, scan.sizes)
    write_json(out_dir / "run.json", {
        "image_dir": str(image_dir.resolve()), "matcher": name, "matcher_conf": matcher_conf, "resize_max": resize_max,
        "pairs": str(cfg.pairs), "quantization": base.__dict__, "quantization_scales": scales,
    })
    cache = DenseMatchCache(out_dir / "dense", matcher_tag(name, matcher_conf, resize_max))
    report = MatchingReport()
    if not merge_only:
        start = time.perf_counter()
        report = match_pairs(build, pairs, image_dir, cache, resize_max, overwrite=overwrite, shard=shard,
                             device=device, progress=progress)
        seconds["matching"] = time.perf_counter() - start
        for image, reason in report.bad_images.items():
            scan.bad[image] = reason
            if image in scan.names:
                scan.names.remove(image)
    pairs = [p for p in pairs if p[0] not in scan.bad and p[1] not in scan.bad]
    write_pairs(out_dir / "pairs.txt", pairs)
    outputs = MatchOutputs(out_dir, scan, pairs, report, seconds=seconds)
    if shard is not None and not merge_only:
        return outputs
    start = time.perf_counter()
    outputs.merged = aggregate(pairs, cache, outputs.features_path, outputs.matches_path, base,
                               image_sizes=scan.sizes, write_dense=bool(cfg.write_dense), progress=progress,
                               image_confs={n: scaled(base, f) for n, f in scales.items()})
    seconds["merge"] = time.perf_counter() - start
    return outputs


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``match-dense`` and ``reconstruct``."""
    parser.add_argument("images_dir", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("out_dir", type=Path, help="output folder (created; reruns resume in it)")
    add_overrides(parser, "resize_max=640 pairs=sequential:5 quantization.dense.cell_size=12.8; keys: "
                          "configs/pipelines/reconstruct.yaml")
    parser.add_argument("--matcher", default=None,
                        help="asmamba | sift | xfeat | xfeat_lighterglue | disk_lightglue | aliked_lightglue | "
                             "module.path:factory (default from the config: asmamba)")
    parser.add_argument("--matcher-conf", nargs="*", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", default=None, help="exhaustive | sequential:K | retrieval:K | FILE")
    parser.add_argument("--resize-max", type=int, default=None,
                        help="longer image side fed to the matcher (default 1024, from the config; the demo uses "
                             "640, about a third of the CPU time)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda")
    parser.add_argument("--overwrite", action="store_true", help="re-match pairs that are already done")
    parser.add_argument("--config", type=Path, default=None, help="YAML file overriding configs/pipelines/reconstruct.yaml")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def matcher_conf_overrides(args: argparse.Namespace, prog: str) -> list[str]:
    """The deprecated ``--matcher-conf k=v`` as the dotlist overrides ``matcher_conf.k=v`` (with a note)."""
    items = list(getattr(args, "matcher_conf", None) or [])
    if items:
        print(f"{prog}: note: --matcher-conf is deprecated; write matcher_conf.KEY=VALUE as a positional override",
              file=sys.stderr)
    for item in items:
        if "=" not in item or not item.partition("=")[0]:
            raise ValueError(f"--matcher-conf expects key=value, got {item!r}")
    return [f"matcher_conf.{item}" for item in items]


def check_pairs_spec(spec: str) -> None:
    """``exhaustive``, ``sequential:K``, ``retrieval:K`` or an existing pairs file (checked without reading images).

    Raises:
        ValueError: none of these.
    """
    kind, _, arg = str(spec).partition(":")
    if kind in ("sequential", "retrieval"):
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"pairs spec {spec!r}: write {kind}:K with an integer K >= 1, e.g. {kind}:5")
    elif spec != "exhaustive" and not Path(spec).is_file():
        raise ValueError(
            f"pairs spec {spec!r} is neither 'exhaustive', 'sequential:K', 'retrieval:K' nor an existing pairs file"
        )


def config_from_args(args: argparse.Namespace, name: str = "reconstruct", prog: Optional[str] = None) -> DictConfig:
    """The pipeline config with the command line's options applied; the image folder, the output folder and the
    options are checked here, before anything heavy is imported.

    Raises:
        FileNotFoundError / ValueError / OSError: bad input, named in one line.
    """
    from asmamba.io import check_output_dir, list_images

    prog = prog or f"asmamba {name}"
    overrides = gather_overrides(args, prog, matcher_conf_overrides(args, prog))
    cfg = load_pipeline_config(name, args.config, overrides)
    for key, value in (("matcher", args.matcher), ("pairs", args.pairs), ("resize_max", args.resize_max),
                       ("device", args.device), ("camera_mode", getattr(args, "camera_mode", None))):
        if value is not None:
            cfg[key] = value
    if cfg.resize_max is not None and int(cfg.resize_max) < 32:
        raise ValueError(f"resize_max (--resize-max) must be >= 32, got {cfg.resize_max}")
    list_images(args.images_dir)  # the folder exists and holds images
    check_output_dir(args.out_dir, "output folder")
    check_pairs_spec(str(cfg.pairs))
    return cfg


def run_cli(command: Any, argv: Optional[Sequence[str]], parser: argparse.ArgumentParser,
            resume_hint: Optional[str] = RESUME_HINT) -> int:
    """Parse ``argv`` and run ``command(args)``: bad input is one line ``PROG: error: ...`` (exit 2), Ctrl-C or
    SIGTERM one line that says how to resume (exit 130 / 143), never a traceback."""
    args = parser.parse_intermixed_args(argv)
    setup_logging()
    return run_guarded(parser.prog, lambda: command(args), resume_hint=resume_hint)


def _match_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, prog="asmamba match-dense")
    shard = parse_shard(args.shard)
    out = run_matching(args.images_dir, args.out_dir, cfg, overwrite=args.overwrite, shard=shard,
                       merge_only=args.merge, progress=not args.quiet)
    m = out.matching
    print(f"{len(out.scan.names)} images, {len(out.pairs)} pairs: {m.matched} matched now, {m.cached} already done")
    for image, reason in sorted(out.scan.bad.items()):
        print(f"skipped {image}: {reason}")
    if out.merged is None:
        print("shard done; after every shard has finished run the same command with --merge")
    else:
        kps = sum(out.merged.num_keypoints.values())
        matches = sum(out.merged.num_matches.values())
        print(f"wrote {out.features_path} ({kps} keypoints) and {out.matches_path} ({matches} matches)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="asmamba match-dense", description=summary(__doc__))
    add_common_arguments(parser)
    parser.add_argument("--shard", default=None, metavar="I/N", help="match only the I-th of N shares of the pairs")
    parser.add_argument("--merge", action="store_true", help="only merge the shards into features.h5 + matches.h5")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``asmamba match-dense``."""
    return run_cli(_match_command, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
