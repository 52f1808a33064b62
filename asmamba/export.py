"""``asmamba export WEIGHTS OUT [key=value ...]``: the file a release ships.

A trainer checkpoint (``best.pt``, ``last.pt``) or shipped weights, written as fp16 weights with the model config they
were trained with and, on top of it, the inference settings chosen on the validation split with ``asmamba validate``
(e.g. ``coarse.threshold=0.1``). The overrides must leave the architecture as it is: the weights are loaded into the
model the new config describes before anything is written, and the file is written atomically.

>>> export_weights("/work/runs/cpu_xfeat_v2/checkpoints/best.pt", "asmamba/weights/asmamba-xfeat-v2.pt",
...                ["coarse.threshold=0.1"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .checkpoint import (CheckpointError, checkpoint_config, half_state_dict, load_state, read_checkpoint,
                         resolve_weights, save_checkpoint)


def export_weights(weights: Union[str, os.PathLike], out: Union[str, os.PathLike],
                   overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``weights`` to ``out`` as fp16 inference weights with their config and ``overrides`` applied.

    Args:
        weights: a checkpoint path, a shipped weights name or ``"default"``.
        out: the file to write (its folder is created).
        overrides: OmegaConf dotlist on the checkpoint's own config (inference settings).
    Returns:
        the plain config written.
    Raises:
        CheckpointError: unreadable weights, no config in them, or overrides that change the architecture.
        ConfigError: an override names an unknown key or has a wrong value.
    """
    from .config import load_config, to_plain
    from .model.network import ASMambaNet

    source = resolve_weights(weights)
    ckpt = read_checkpoint(source)
    config = checkpoint_config(ckpt)
    if config is None:
        raise CheckpointError(f"checkpoint {str(source)!r} holds no model config to export with")
    exported = load_config(config, list(overrides))
    net = ASMambaNet(load_config(exported, ["encoder.pretrained=false"]))  # the file holds every weight
    changes = " ".join(overrides) or "no overrides"
    load_state(net, ckpt["state_dict"], source=f"checkpoint {str(source)!r} with {changes}")
    payload: dict[str, Any] = {"config": to_plain(exported), "state_dict": half_state_dict(net)}
    if ckpt.get("step") is not None:
        payload["step"] = int(ckpt["step"])
    save_checkpoint(out, payload)
    return payload["config"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``asmamba export WEIGHTS OUT [key=value ...]``: fp16 inference weights with their config and overrides."""
    from .clitools import ArgumentParser, add_overrides, gather_overrides, run_guarded

    parser = ArgumentParser(prog="asmamba export", description=main.__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("weights", help="a checkpoint path (e.g. a run's best.pt), a shipped weights name or 'default'")
    parser.add_argument("out", type=Path, help="the file to write (fp16, read with torch.load(weights_only=True))")
    add_overrides(parser, "coarse.threshold=0.1")
    args = parser.parse_args(argv)

    def body() -> int:
        overrides = gather_overrides(args, "asmamba export")
        if args.out.is_dir():
            raise ValueError(f"OUT {str(args.out)!r} is a folder: give the file to write")
        config = export_weights(args.weights, args.out, overrides)
        changed = ", ".join(overrides) if overrides else "no overrides"
        print(f"exported {args.weights} -> {args.out} (fp16, {changed}; coarse.threshold "
              f"{config['coarse']['threshold']})")
        return 0

    return run_guarded(parser.prog, body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
