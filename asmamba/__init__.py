"""AS-Mamba: adaptive-span, Mamba-based detector-free image matching.

``ASMamba`` follows kornia's LoFTR call contract; ``load_config`` gives validated model configs. The training
subpackage (``asmamba.training``) is separate and never imported from here. Importing the package registers
``kornia.feature.ASMamba`` (:mod:`asmamba.kornia`).
"""

__version__ = "0.1.0"

from .config import load_config  # noqa: E402
from .matcher import ASMamba  # noqa: E402
from .kornia import register as _register_kornia  # noqa: E402

# kornia.feature.ASMamba: one added name, nothing replaced (why at import and not on request: asmamba/kornia.py)
_register_kornia()

__all__ = ["ASMamba", "load_config", "__version__"]
