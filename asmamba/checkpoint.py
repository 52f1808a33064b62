"""Checkpoints: the file format, the shipped weights, and loading with a report of what does not fit.

A checkpoint is a dict saved by :func:`torch.save` and read with ``torch.load(..., weights_only=True)``::

    {"format": "asmamba-checkpoint", "version": <package version>, "config": <plain model config dict>,
     "state_dict": {name: tensor}, ...training extras (optimizer, scheduler, rng) when written by the trainer}
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

FORMAT = "asmamba-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def shipped_weights() -> dict[str, Path]:
    """Names and paths of the weights that ship inside the package (``asmamba/weights/<name>.pt``)."""
    folder = Path(str(resources.files("asmamba.weights")))
    return {p.stem: p for p in sorted(folder.glob("*.pt"))}


#: ``pretrained="default"`` resolves to the first of these that ships (``asmamba/weights/<name>.pt``).
DEFAULT_WEIGHTS = ("asmamba-xfeat",)
DEFAULT = "default"


def default_weights() -> str:
    """Name of the shipped weights that ``pretrained="default"`` means.

    Raises:
        CheckpointError: no weights ship with this installation.
    """
    shipped = shipped_weights()
    for name in DEFAULT_WEIGHTS:
        if name in shipped:
            return name
    if shipped:
        return next(iter(shipped))
    raise CheckpointError(
        "no AS-Mamba weights ship with this installation (asmamba/weights/*.pt); pass pretrained=<checkpoint path>, "
        "or pretrained=None for an untrained model"
    )


def resolve_weights(pretrained: Union[str, os.PathLike]) -> Path:
    """``"default"``, a shipped weights name or a file path -> an existing file (never a download)."""
    if isinstance(pretrained, str) and pretrained == DEFAULT:
        pretrained = default_weights()
    shipped = shipped_weights()
    if isinstance(pretrained, str) and pretrained in shipped:
        return shipped[pretrained]
    path = Path(pretrained)
    if path.is_file():
        return path
    names = ", ".join(shipped) or "none in this version"
    raise CheckpointError(f"pretrained={str(pretrained)!r} is neither a shipped weights name ({names}) nor a file")


def read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read and check a checkpoint file (``weights_only=True``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as err:  # corrupt file, pickle with disallowed objects, truncated zip ...
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{str(path)!r} is not an AS-Mamba checkpoint (expected a dict with format={FORMAT!r} and a state_dict)"
        )
    return ckpt


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's parameters and a state dict (empty when they fit)."""
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches, e.g. {shapes[:5]}")
    return problems


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict strictly, casting to the model's dtypes; raise :class:`CheckpointError` naming the keys
    that differ when it comes from another architecture or config."""
    problems = state_dict_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{source} does not fit this model's architecture/config: " + "; ".join(problems))
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_checkpoint(path: Union[str, os.PathLike], payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a temporary file, then a rename): an interrupted save never leaves a
    truncated file under ``path``."""
    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": __version__, **payload}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def half_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point tensors in fp16 (for small shipped files); other tensors unchanged."""
    return {k: (v.half() if v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}


def checkpoint_config(ckpt: Mapping[str, Any]) -> Optional[dict]:
    cfg = ckpt.get("config")
    if not isinstance(cfg, Mapping):
        return None
    cfg = dict(cfg)
    fine = cfg.get("fine")
    if isinstance(fine, Mapping) and "kind" not in fine:  # checkpoints from before fine.kind had the window stage
        cfg["fine"] = {**fine, "kind": "window"}
    return cfg
