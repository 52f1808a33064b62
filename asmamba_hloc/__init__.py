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

# AS-Mamba pads internally, so no dfactor rounding is needed: with dfactor 1 hloc feeds an image whose long side is
# at most resize_max unscaled (scale exactly 1), and the quantisation grids below line up with AS-Mamba's cells.
_PREPROCESSING = {"grayscale": True, "resize_max": 1024, "dfactor": 1}

#: Entries added to ``hloc.match_dense.confs`` (same fields as hloc's ``loftr`` / ``loftr_aachen``).
#:
#: Quantisation offsets: hloc's ``match_dense`` puts a point x in cell ``round((x + 0.5) / cell_size)``, so its cell
#: centres lie at ``cell_size * j - 0.5`` and its cell edges half a cell further. AS-Mamba's coarse keypoints sit at
#: its 8 px cell centres, ``8 i + 3.5``: exactly on the edges of hloc's 8 px cells (numpy rounds those ties to
#: even, which merges two AS-Mamba cells into one hloc cell and splits the refined points around each of them).
#: 4 px cells put every AS-Mamba cell centre at an hloc cell centre (``8 i + 3.5 = 4 (2 i + 1) - 0.5``), and so do
#: the 2 px bins of ``max_error`` 2 and the 1 px cells of ``asmamba`` (that is the shipped ``fine.kind: window``
#: model; a ``two_stage`` model's keypoints0 sit at ``2 u + 0.5``, never on a 4 px edge). This holds when hloc does
#: not rescale the image (long side <= ``resize_max``); for larger images use ``asmamba match-dense``, whose cells
#: follow each image's matched resolution, or resize the images first.
CONFS: dict[str, dict[str, Any]] = {
    # every matched pixel becomes a keypoint candidate (1 px cells): best quality, small scenes only
    "asmamba": {
        "output": "matches-asmamba",
        "model": {"name": "asmamba"},
        "preprocessing": dict(_PREPROCESSING),
        "max_error": 1,  # px: a match end farther than this from its cell's keypoint is dropped
        "cell_size": 1,  # px: at most one keypoint per cell
    },
    # semi-scalable: one keypoint per 4 px cell (centred on AS-Mamba's cell centres) bounds the keypoints per image
    "asmamba_aachen": {
        "output": "matches-asmamba_aachen",
        "model": {"name": "asmamba"},
        "preprocessing": dict(_PREPROCESSING),
        "max_error": 2,
        "cell_size": 4,
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
