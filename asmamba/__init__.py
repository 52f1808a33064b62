"""AS-Mamba: adaptive-span, Mamba-based detector-free image matching.

``ASMamba`` follows kornia's LoFTR call contract; ``load_config`` gives validated model configs. The training
subpackage (``asmamba.training``) is separate and never imported from here.
"""

__version__ = "0.1.0"

from .config import load_config  # noqa: E402
from .matcher import ASMamba  # noqa: E402

__all__ = ["ASMamba", "load_config", "__version__"]
