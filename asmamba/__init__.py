"""AS-Mamba: adaptive-span, Mamba-based detector-free image matching.

``ASMamba`` follows kornia's LoFTR call contract; ``load_config`` gives validated model configs. The training
subpackage (``asmamba.training``) is separate and never imported from here. Importing the package registers
``kornia.feature.ASMamba`` (:mod:`asmamba.kornia`).

Importing the package is cheap: torch and kornia load when ``ASMamba`` is first used or when ``kornia.feature``
is imported (the registration then runs right after kornia's module), so ``asmamba --help`` and the command
line's checks of its arguments never wait for them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

from .config import load_config  # noqa: E402  (omegaconf only)

__all__ = ["ASMamba", "load_config", "__version__"]

#: public names imported on first access (PEP 562), so that ``import asmamba`` does not import torch
_LAZY = {"ASMamba": "asmamba.matcher"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asmamba' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_kornia() -> None:
    """kornia.feature.ASMamba: one added name, nothing replaced (why at import: asmamba/kornia.py)."""
    from .kornia import register

    register()


class _KorniaFeatureLoader(importlib.abc.Loader):
    """Runs kornia.feature's own loader, then registers ``kornia.feature.ASMamba``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        parent = sys.modules.get("kornia")
        if parent is not None:  # the import system binds the submodule to its parent only after this returns
            setattr(parent, "feature", module)
        try:
            _register_kornia()
        except Exception as err:  # never break kornia's own import
            warnings.warn(f"asmamba could not register kornia.feature.ASMamba: {err}", RuntimeWarning, stacklevel=2)


class _RegisterWhenKorniaLoads(importlib.abc.MetaPathFinder):
    """Finds ``kornia.feature`` with the other finders and wraps its loader (once)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "kornia.feature":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _KorniaFeatureLoader(spec.loader)
                return spec
        return None


if "kornia.feature" in sys.modules:
    _register_kornia()
elif not any(isinstance(f, _RegisterWhenKorniaLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenKorniaLoads())
