"""Training and evaluation datasets in the shared item layout (see :mod:`asmamba.training.data.common`).

- :class:`MegaDepthScene` / :func:`load_megadepth`: MegaDepth in its real scene_info layout.
- :class:`ScanNetPairs`: ScanNet in its real layout (test.npz / intrinsics.npz / color, depth, pose folders).
- :class:`HomographyPairs`: self-supervised random homographic pairs from any images.
- :func:`generate_scene`: writes a synthetic scene of textured planes in MegaDepth's layout.
- :func:`build_dataset`: any of them from a ``configs/data`` preset, a YAML file or a dict.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, Dataset

from asmamba.training.data.common import GT_DEPTH, GT_HOMOGRAPHY, make_pair_item
from asmamba.training.data.homography import HomographyPairs
from asmamba.training.data.megadepth import MegaDepthScene, load_megadepth, read_scene_info
from asmamba.training.data.scannet import ScanNetPairs
from asmamba.training.data.synthetic import generate_scene

__all__ = [
    "build_dataset",
    "GT_DEPTH",
    "GT_HOMOGRAPHY",
    "HomographyPairs",
    "Interleaved",
    "MegaDepthScene",
    "ScanNetPairs",
    "SourceTagged",
    "generate_scene",
    "load_megadepth",
    "make_pair_item",
    "read_scene_info",
]


class SourceTagged(Dataset):
    """A dataset whose items carry ``item["source"] = source`` (a string; batches collate it to a list)."""

    def __init__(self, dataset: Dataset, source: str):
        self.dataset, self.source = dataset, source
        self.name = getattr(dataset, "name", source)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> dict:
        item = dict(self.dataset[idx])
        item["source"] = self.source
        return item


class Interleaved(Dataset):
    """Several datasets taken in turn (item 0 of each, then item 1 of each, ...; a shorter one drops out when it
    runs out), so that the first ``n`` items of a validation set cover every part."""

    def __init__(self, datasets: list[Dataset]):
        self.datasets = datasets
        sizes = [len(d) for d in datasets]  # type: ignore[arg-type]
        self.order = [(p, k) for k in range(max(sizes, default=0)) for p, n in enumerate(sizes) if k < n]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: int) -> dict:
        part, k = self.order[idx]
        return self.datasets[part][k]


def _required(conf: dict, keys: tuple[str, ...], kind: str) -> list[Any]:
    missing = [k for k in keys if conf.get(k) in (None, "???")]
    if missing:
        raise ValueError(f"{kind} dataset config needs {missing}")
    return [conf.pop(k) for k in keys]


def build_dataset(config: Union[str, Mapping[str, Any], DictConfig], **overrides: Any) -> Dataset:
    """A dataset from a ``configs/data`` preset name (``megadepth``, ``megadepth_test``, ``scannet_test``,
    ``homography_cpu``), a YAML path, a dict or a ``DictConfig``, with keyword overrides.

    ``type`` selects the class (``megadepth``, ``scannet``, ``homography``, or ``concat`` with a ``datasets``
    list of such configs, or ``interleave``: the same, its parts' items taken in turn); ``repeat: n`` lists a
    dataset's items n times (to weight the parts of a concat; a MegaDepth-layout dataset with ``photometric`` on gets
    another jitter seed in each listing);
    ``source: name`` tags every item of the dataset with ``item["source"] = name`` (a per-source label for logs and
    validation); the other keys are its arguments. Values left ``???`` must come as overrides.

    Raises:
        ValueError: unknown type or a required value missing. TypeError: an option the dataset does not take.
    """
    from asmamba.config import as_dictconfig

    cfg = as_dictconfig(config, "data")
    conf = OmegaConf.to_container(OmegaConf.merge(cfg, OmegaConf.create(overrides)), resolve=True)
    kind = conf.pop("type", None)
    source = conf.pop("source", None)
    if source is not None:
        if not isinstance(source, str) or not source:
            raise ValueError(f"source must be a non-empty name (a label of the dataset's items), got {source!r}")
        return SourceTagged(build_dataset(dict(conf, type=kind)), source)
    repeat = conf.pop("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"repeat must be a positive integer (how often the dataset's items are listed), got {repeat!r}")
    if repeat > 1 and kind == "megadepth" and conf.get("photometric"):
        seed = int(conf.pop("photometric_seed", 0))  # each listing of a jittered scene gets its own jitter
        return ConcatDataset([build_dataset(dict(conf, type=kind, photometric_seed=seed + r)) for r in range(repeat)])
    if repeat > 1:
        return ConcatDataset([build_dataset(dict(conf, type=kind))] * repeat)
    if kind == "concat":
        return ConcatDataset([build_dataset(c) for c in conf.get("datasets", [])])
    if kind == "interleave":
        return Interleaved([build_dataset(c) for c in conf.get("datasets", [])])
    if kind == "megadepth":
        root, index_dir = _required(conf, ("root", "index_dir"), kind)
        return load_megadepth(root, index_dir, conf.pop("scenes", None), conf.pop("max_pairs_per_scene", None), **conf)
    if kind == "scannet":
        root, index, intrinsics = _required(conf, ("root", "index", "intrinsics"), kind)
        return ScanNetPairs(root, index, intrinsics, **conf)
    if kind == "homography":
        (sources,) = _required(conf, ("sources",), kind)
        return HomographyPairs(sources, **conf)
    raise ValueError(f"unknown dataset type {kind!r}; known: megadepth, scannet, homography, concat, interleave")
