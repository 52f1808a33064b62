"""AS-Mamba for hloc (Hierarchical-Localization) and hloc-format files.

With hloc installed (it is not on the package index; install it from its source repository)::

    import asmamba_hloc
    asmamba_hloc.register()            # hloc.matchers.asmamba + hloc.match_dense.confs["asmamba" | "asmamba_aachen"]
    from hloc import match_dense, reconstruction
    features, matches = match_dense.main(match_dense.confs["asmamba"], pairs, images, export_dir=outputs)
    reconstruction.main(sfm_dir, images, pairs, features, matches)

Without hloc, :mod:`asmamba_hloc.match_dense` writes the same ``features.h5`` / ``matches.h5`` layout
(:mod:`asmamba_hloc.h5io`) from any kornia-contract matcher, with hloc's dense-to-keypoint quantisation
(:mod:`asmamba_hloc.quantize`).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

__all__ = ["CONFS", "HLOC_INSTALL_HINT", "register"]

HLOC_INSTALL_HINT = (
    "hloc is not on the package index: install it from its source repository, e.g. "
    "`git clone --recursive https://github.com/cvg/Hierarchical-Localization && "
    "pip install -e Hierarchical-Localization`"
)

_PREPROCESSING = {"grayscale": True, "resize_max": 1024, "dfactor": 8}  # AS-Mamba pads internally: any dfactor

#: Entries added to ``hloc.match_dense.confs`` (same fields as hloc's ``loftr`` / ``loftr_aachen``).
CONFS: dict[str, dict[str, Any]] = {
    # every matched pixel becomes a keypoint candidate (1 px cells): best quality, small scenes only
    "asmamba": {
        "output": "matches-asmamba",
        "model": {"name": "asmamba"},
        "preprocessing": dict(_PREPROCESSING),
        "max_error": 1,  # px: a match end farther than this from its cell's keypoint is dropped
        "cell_size": 1,  # px: at most one keypoint per cell
    },
    # semi-scalable: one keypoint per 8 px cell bounds the keypoints per image
    "asmamba_aachen": {
        "output": "matches-asmamba_aachen",
        "model": {"name": "asmamba"},
        "preprocessing": dict(_PREPROCESSING),
        "max_error": 2,
        "cell_size": 8,
    },
}

MATCHERS_DIR = Path(__file__).resolve().parent / "hloc_matchers"


def _import_hloc() -> tuple[Any, Any]:
    try:
        import hloc.matchers
        import hloc.match_dense
    except ImportError as err:
        raise ImportError(f"asmamba_hloc.register() needs hloc ({err}). {HLOC_INSTALL_HINT}") from err
    return hloc.matchers, hloc.match_dense


def register() -> None:
    """Make ``hloc.matchers.asmamba`` importable and add :data:`CONFS` to ``hloc.match_dense.confs``.

    Idempotent. hloc is imported here, not when ``asmamba_hloc`` is imported.

    Raises:
        ImportError: hloc (or one of its own dependencies) is not installed; the message says how to install it.
    """
    matchers, match_dense = _import_hloc()
    folder = str(MATCHERS_DIR)
    if folder not in list(matchers.__path__):
        matchers.__path__.append(folder)
    stale = sys.modules.get(f"{matchers.__name__}.asmamba")
    if stale is not None and Path(getattr(stale, "__file__", "") or "").parent != MATCHERS_DIR:
        del sys.modules[f"{matchers.__name__}.asmamba"]
    for name, conf in CONFS.items():
        match_dense.confs[name] = copy.deepcopy(conf)
