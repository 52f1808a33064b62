"""Checkpoints: the file format, the shipped weights, and loading with a report of what does not fit.

A checkpoint is a dict saved by :func:`torch.save` and read with ``torch.load(..., weights_only=True)``::

    {"format": "asmamba-checkpoint", "version": <package version>, "config": <plain model config dict>,
     "state_dict": {name: tensor}, ...training extras (optimizer, scheduler, rng) when written by the trainer}
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # torch loads when a checkpoint is read or written, not when this module is imported
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
DEFAULT_WEIGHTS = ("asmamba-xfeat-v2.1", "asmamba-xfeat-v2", "asmamba-xfeat")
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
    """Read and check a checkpoint file (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, empty, corrupt or truncated, holds Python objects that a weights-only
            load refuses, or is not an AS-Mamba checkpoint; the one-line message names the file.
    """
    import torch

    name = repr(str(path))
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {name} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {name} is not a file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {name} is empty (0 bytes)")
    is_zip = zipfile.is_zipfile(p)  # torch.save writes a zip archive; a truncated one has no central directory
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's concern
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own text suggests weights_only=False: wrong advice for a damaged file
        if not is_zip:
            raise CheckpointError(
                f"checkpoint {name} is corrupt or truncated ({size} bytes that are not a torch.save archive); "
                "download or export it again"
            ) from None
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and refused:
            raise CheckpointError(
                f"checkpoint {name} holds a Python object ({refused.group(1)}) that a safe (weights_only) load "
                "refuses: it was not written by asmamba, whose checkpoints hold tensors, numbers and strings only"
            ) from None
        raise CheckpointError(
            f"checkpoint {name} is corrupt ({type(err).__name__} while reading its archive); download or export "
            "it again"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{name} is not an AS-Mamba checkpoint (expected a dict with format={FORMAT!r} and a state_dict)"
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


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
               fresh: Sequence[str] = ()) -> None:
    """Load a state dict strictly, casting to the model's dtypes; raise :class:`CheckpointError` naming the keys
    that differ when it comes from another architecture or config.

    Args:
        fresh: key prefixes (e.g. ``"blocks.0.flow."``) the model keeps as initialised: the checkpoint's tensors under
            them are ignored and the model's may be missing from it. Everything else must fit exactly.
    """
    fresh = tuple(fresh)
    own = model.state_dict()
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
        state = {**{k: v for k, v in own.items() if k.startswith(fresh)}, **state}
    problems = state_dict_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{source} does not fit this model's architecture/config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_checkpoint(path: Union[str, os.PathLike], payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a temporary file, then a rename): an interrupted save never leaves a
    truncated file under ``path``."""
    from . import __version__

    import torch

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
    blocks = cfg.get("blocks")
    if isinstance(blocks, Mapping) and "flow_prior" not in blocks:  # ... and absolute flow, mean-sigma spans
        cfg["blocks"] = {**blocks, "flow_prior": "none", "local_group_spread": False}
    return cfg
