"""Pieces shared by the pipelines: pipeline configs, scanning an image folder, setting up a matcher.

Importing the pipelines does not import torch or pycolmap: the commands check their arguments first.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf

from asmamba_hloc.h5io import check_pair_keys_unique
from asmamba_hloc.quantize import QuantizationConf

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("asmamba.pipelines")

PathLike = Union[str, os.PathLike]


def load_pipeline_config(
    name: str, config_path: Optional[PathLike] = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """The shipped ``configs/pipelines/<name>.yaml``, updated by a user YAML file and ``key=value`` overrides.

    Raises:
        asmamba.config.ConfigError: the user file is missing or not a mapping, or it or an override names a
            top-level key the shipped config does not have.
    """
    from asmamba.config import ConfigError, configs_dir

    cfg = OmegaConf.load(configs_dir("pipelines") / f"{name}.yaml")
    layers = []
    if config_path:
        if not Path(config_path).is_file():
            raise ConfigError(f"--config {str(config_path)!r} does not exist")
        layer = OmegaConf.load(config_path)
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"--config {str(config_path)!r} must hold a mapping at the top level")
        layers.append(layer)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    for layer in layers:
        unknown = sorted(set(layer.keys()) - set(cfg.keys()))
        if unknown:
            raise ConfigError(f"unknown {name} pipeline option(s) {unknown}; known: {sorted(cfg.keys())}")
        cfg = OmegaConf.merge(cfg, layer)
    return cfg  # type: ignore[return-value]


def to_plain(cfg: Any) -> Any:
    """OmegaConf node -> plain Python containers (other values unchanged)."""
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def resolve_device(spec: Union[str, torch.device, None]) -> torch.device:
    """``"auto"``/None -> cuda if available else cpu; anything else as given."""
    import torch

    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@dataclass
class ImageScan:
    """The readable images of a folder: names (sorted, relative), ``(W, H)`` sizes, and the unreadable ones with
    the reason."""

    names: list[str]
    sizes: dict[str, tuple[int, int]]
    bad: dict[str, str] = field(default_factory=dict)


def scan_images(
    image_dir: PathLike, names: Optional[Sequence[str]] = None, exclude_dir: Optional[PathLike] = None
) -> ImageScan:
    """Check every image of a folder (or the given names) and set the unreadable ones aside.

    Args:
        exclude_dir: a folder inside ``image_dir`` whose files are not images of the scene (e.g. the output folder).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder has no image, two names collide in hloc's pair naming, or fewer than two images
            are readable.
    """
    from asmamba.io import ImageReadError, list_images, read_image

    image_dir = Path(image_dir)
    if names is None:
        names = list_images(image_dir)
    names = list(names)
    if exclude_dir is not None:
        try:
            inner = Path(exclude_dir).resolve().relative_to(image_dir.resolve()).as_posix()
        except ValueError:
            inner = None
        if inner:
            names = [n for n in names if not n.startswith(inner + "/")]
    check_pair_keys_unique(names)
    scan = ImageScan(names=[], sizes={})
    for name in names:
        try:
            image = read_image(image_dir / name, grayscale=True)
        except ImageReadError as err:
            scan.bad[name] = str(err)
            logger.warning("skipping unreadable image %s: %s", name, err)
            continue
        scan.names.append(name)
        scan.sizes[name] = (int(image.shape[1]), int(image.shape[0]))
    if len(scan.names) < 2:
        skipped = f" ({len(scan.bad)} unreadable: {', '.join(sorted(scan.bad))})" if scan.bad else ""
        raise ValueError(f"image folder {str(image_dir)!r} has {len(scan.names)} readable image(s){skipped}; need >= 2")
    return scan


def is_sparse_matcher(name: str, cfg: Mapping[str, Any]) -> bool:
    """Whether the matcher re-detects the same keypoints in every pair (then 1 px quantisation cells suffice)."""
    return name in set(cfg["sparse_matchers"])


def quantization_for(name: str, cfg: Mapping[str, Any]) -> QuantizationConf:
    """The quantisation settings for this matcher (``cfg.quantization.sparse`` or ``.dense``), as configured."""
    q = cfg["quantization"]["sparse" if is_sparse_matcher(name, cfg) else "dense"]
    max_kps = q["max_kps"]
    return QuantizationConf(float(q["cell_size"]), float(q["max_error"]), None if max_kps is None else int(max_kps))


def downscale_factor(size: tuple[int, int], resize_max: Optional[int]) -> float:
    """Original pixels per matched pixel of an image of ``(W, H)`` fed to the matcher at ``resize_max`` (>= 1: the
    matcher never upscales)."""
    long_side = max(size)
    return 1.0 if resize_max is None or long_side <= resize_max else long_side / float(resize_max)


def quantization_scales(name: str, cfg: Mapping[str, Any], sizes: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Per image, the factor its quantisation cell and max error are multiplied by: its downscale factor when the
    matcher's settings are in matched pixels (``in_matched_pixels``), else none (empty dict)."""
    q = cfg["quantization"]["sparse" if is_sparse_matcher(name, cfg) else "dense"]
    if not q.get("in_matched_pixels", False):
        return {}
    resize_max = None if cfg["resize_max"] is None else int(cfg["resize_max"])
    return {n: downscale_factor(size, resize_max) for n, size in sizes.items()}


def scaled(conf: QuantizationConf, factor: float) -> QuantizationConf:
    """``conf`` with its cell size and max error multiplied by ``factor`` (matched -> original pixels)."""
    return QuantizationConf(conf.cell_size * factor, conf.max_error * factor, conf.max_kps)


def matcher_tag(name: str, matcher_conf: Mapping[str, Any], resize_max: Optional[int]) -> str:
    """A string that identifies what produced cached matches (matcher, its options, the image size)."""
    return json.dumps({"matcher": name, "conf": dict(matcher_conf), "resize_max": resize_max}, sort_keys=True)


def lazy_matcher(
    name: str, matcher_conf: Mapping[str, Any], device: torch.device
) -> Callable[[], torch.nn.Module]:
    """A zero-argument builder (so that a fully cached rerun never builds the model)."""

    def build() -> torch.nn.Module:
        from asmamba.baselines import build_matcher

        logger.info("building matcher %s", name)
        return build_matcher(name, **dict(matcher_conf)).to(device)

    return build


def parse_key_values(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, values parsed as YAML scalars (``3`` -> int, ``true`` -> bool, ``a`` -> str)."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        result[key] = yaml.safe_load(value) if value else ""
    return result


def write_json(path: PathLike, data: Mapping[str, Any]) -> None:
    """Write JSON atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
