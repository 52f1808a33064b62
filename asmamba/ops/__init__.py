"""Public operator names of AS-Mamba.

``selective_scan`` has the contract of mamba-ssm's ``selective_scan_fn``: mamba-ssm's CUDA kernel when it is
installed and the tensors are on CUDA, otherwise an exact blocked PyTorch scan (see
:mod:`asmamba.mamba.selective_scan`). ``selective_scan_backend`` names the backend used for a device.
"""

from ..mamba.selective_scan import backend_name as selective_scan_backend
from ..mamba.selective_scan import mamba_ssm_available, selective_scan, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference", "selective_scan_backend", "mamba_ssm_available"]
