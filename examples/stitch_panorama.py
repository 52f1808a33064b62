"""Stitch two overlapping photos into a panorama PNG with kornia's ``ImageStitcher`` and an image matcher.

    python examples/stitch_panorama.py --out panorama.png                    # two overlapping crops of a real photo
    python examples/stitch_panorama.py LEFT.jpg RIGHT.jpg --out panorama.png # your own pair, ordered left to right
    python examples/stitch_panorama.py --matcher asmamba --weights none --config tiny \
        coarse.threshold=0                                                   # untrained AS-Mamba: plumbing only

``--matcher asmamba`` builds ``kornia.feature.ASMamba``; any other name goes through
``asmamba.baselines.build_matcher`` (``xfeat``, the default, ``sift``, ...) and ``asmamba.kornia.as_kornia_matcher``,
so both reach the stitcher through the same code path; ``--weights none`` runs an untrained AS-Mamba (noise).
Positional ``key=value`` arguments override AS-Mamba's model config (OmegaConf dotlist, as for every ``asmamba``
command; ``--override key=value`` is the old spelling).

Without LEFT and RIGHT, the pair is two crops of one real photo (the Sceaux castle of the shared data folder when
it exists, else scikit-image's ``rocket``) that overlap by ``--overlap`` of their width; the script then also
checks the panorama against the photo it was cut from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

import asmamba  # noqa: F401  (registers KF.ASMamba once kornia.feature is imported)
from asmamba.clitools import ArgumentParser, run_guarded, split_overrides
from asmamba.io import check_input_file, check_output_dir, data_root, image_to_tensor, load_image, resize_max

if TYPE_CHECKING:  # torch and kornia load after the arguments are checked
    import torch
    from torch import nn

SCEAUX_PHOTO = Path("sfm/sceaux_castle/images/100_7104.jpg")


def build_stitch_matcher(name: str, weights: str, config: Optional[str], overrides: Sequence[str] = ()) -> nn.Module:
    """The matcher ``ImageStitcher`` will call: ``KF.ASMamba`` for ``"asmamba"``, else a wrapped baseline.

    Args:
        weights: for ``"asmamba"``: ``"default"``, a shipped name, a checkpoint path, or ``"none"`` (random).
        config: for ``"asmamba"``: a preset or YAML path (``None``: the checkpoint's, or ``"base"``).
        overrides: for ``"asmamba"``: ``key=value`` config overrides.
    """
    import kornia.feature as KF

    from asmamba.baselines import build_matcher
    from asmamba.kornia import as_kornia_matcher

    if name == "asmamba":
        pretrained = None if weights.lower() == "none" else weights
        return KF.ASMamba(pretrained=pretrained, config=config, overrides=list(overrides))
    if overrides or config is not None:
        raise ValueError("--config and key=value overrides apply to --matcher asmamba only")
    return as_kornia_matcher(build_matcher(name))


def photo_crops(photo: torch.Tensor, overlap: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two crops of ``photo (1, 3, H, W)``, each ``(1, 3, H, w)``, overlapping by ``overlap * w`` columns.

    Returns:
        ``left`` (columns ``[0, w)``), ``right`` (columns ``[dx, dx + w)``) and ``dx``; ``dx + w == W``.
    """
    if not 0.1 <= overlap <= 0.9:
        raise ValueError(f"--overlap must lie in [0.1, 0.9], got {overlap}")
    W = photo.shape[-1]
    w = int(round(W / (2 - overlap)))
    dx = W - w
    return photo[..., :w], photo[..., dx:], dx


def default_photo(max_side: int) -> tuple[torch.Tensor, str]:
    """A real RGB photo ``(1, 3, H, W)`` in [0, 1] and its name."""
    path = data_root() / SCEAUX_PHOTO
    if path.is_file():
        return load_image(path, grayscale=False, max_side=max_side)[0], str(path)
    import skimage.data

    return image_to_tensor(resize_max(skimage.data.rocket(), max_side)[0]), "skimage.data.rocket()"


def load_pair(left: str, right: str, max_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two RGB photos; the right one is resized to the left one's height, as ``ImageStitcher`` needs."""
    import torch.nn.functional as F

    image_left = load_image(left, grayscale=False, max_side=max_side)[0]
    image_right = load_image(right, grayscale=False, max_side=max_side)[0]
    h, (hr, wr) = image_left.shape[-2], image_right.shape[-2:]
    if hr != h:
        image_right = F.interpolate(image_right, size=(h, max(32, round(wr * h / hr))), mode="area")
    return image_left, image_right


def write_png(image: torch.Tensor, path: Path) -> None:
    """``(1, 3, H, W)`` RGB in [0, 1] -> PNG."""
    import cv2

    rgb = (image[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {str(path)!r}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="stitch_panorama.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", metavar="LEFT RIGHT | KEY=VALUE",
                        help="two overlapping photos, left to right (or none), then any model config overrides "
                             "for --matcher asmamba, e.g. coarse.threshold=0.3")
    parser.add_argument("--matcher", default="xfeat", help="asmamba, or a baseline name of build_matcher (xfeat, sift)")
    parser.add_argument("--weights", default="default", help="asmamba only: default | shipped name | path | none")
    parser.add_argument("--config", default=None, help="asmamba only: model preset or YAML (e.g. tiny)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    parser.add_argument("--max-side", type=int, default=640, help="downscale the photos to this longer side")
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap of the two crops (no LEFT RIGHT)")
    parser.add_argument("--estimator", default="ransac", choices=["ransac", "vanilla"])
    parser.add_argument("--out", type=Path, default=Path("panorama.png"))
    args = parser.parse_intermixed_args(argv)
    args.images, overrides = split_overrides(args.images)
    if args.override:
        print("stitch_panorama.py: note: --override is deprecated; give overrides as positional key=value "
              "arguments", file=sys.stderr)
    args.overrides = overrides + list(args.override)
    if len(args.images) not in (0, 2):
        parser.error(f"give two images LEFT RIGHT or none, got {len(args.images)}")
    return run_guarded(parser.prog, lambda: _stitch(args))


def _stitch(args: argparse.Namespace) -> int:
    for image in args.images:
        check_input_file(image, "image")
    if args.out.is_dir():
        raise IsADirectoryError(f"--out {str(args.out)!r} is a folder; give a PNG file name")
    check_output_dir(args.out.parent, f"--out {str(args.out)!r}: folder")  # created if missing
    if args.matcher == "asmamba":  # preset, keys and weights name checked before torch loads
        from asmamba.checkpoint import resolve_weights
        from asmamba.config import load_config

        load_config(args.config, args.overrides)
        if args.weights.lower() != "none":
            resolve_weights(args.weights)
    elif args.overrides or args.config is not None:
        raise ValueError("--config and key=value overrides apply to --matcher asmamba only")
    if not 0.1 <= args.overlap <= 0.9:
        raise ValueError(f"--overlap must lie in [0.1, 0.9], got {args.overlap}")

    import torch
    from kornia.contrib import ImageStitcher

    matcher = build_stitch_matcher(args.matcher, args.weights, args.config, args.overrides)
    photo = dx = None
    if args.images:
        left, right = load_pair(args.images[0], args.images[1], args.max_side)
        source = f"{args.images[0]} + {args.images[1]}"
    else:
        photo, name = default_photo(args.max_side)
        left, right, dx = photo_crops(photo, args.overlap)
        source = f"two crops of {name}, {args.overlap:.0%} overlap"

    stitcher = ImageStitcher(matcher, estimator=args.estimator)
    counts: list[int] = []  # matches per call, seen by a hook on the matcher
    matcher.register_forward_hook(lambda module, inputs, out: counts.append(len(out["keypoints0"])))
    try:
        with torch.inference_mode():
            panorama = stitcher(left, right)
    except RuntimeError as err:  # ImageStitcher needs 4 matches
        print(f"stitch_panorama.py: error: {err}", file=sys.stderr)
        return 1
    write_png(panorama, args.out)
    print(f"{args.matcher}: {source}; {counts[0]} matches")
    print(f"panorama {panorama.shape[-1]}x{panorama.shape[-2]} px -> {args.out}")
    if photo is not None:  # the crops came from one photo: the panorama should give it back
        width = min(panorama.shape[-1], photo.shape[-1])
        error = (panorama[..., :width] - photo[..., :width]).abs().mean().item()
        print(f"expected width {dx + left.shape[-1]} px (the photo's); mean |panorama - photo| = {error:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
