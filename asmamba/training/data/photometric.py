"""Photometric changes of one training view: what a different camera, exposure or time of day does to an image.

Both the synthetic homography pairs and the real SfM pairs draw from :func:`photometric_jitter`, each view of a pair
independently. The draws come from a caller's ``numpy`` generator, so a pair looks the same every time it is read.

=========== ================== ==========================================================================
key         default            meaning
=========== ================== ==========================================================================
brightness  0.15               additive offset, uniform in ``[-b, b]``
contrast    (0.75, 1.3)        gain about the image mean, uniform
gamma       (0.75, 1.35)       ``x ** g``, uniform
noise_std   0.02               Gaussian noise, its std uniform in ``[0, noise_std]``
blur_prob   0.25               share of the views blurred ...
blur_sigma  (0.5, 1.2)         ... by a Gaussian of this sigma (px), uniform
shading     0.0                smooth illumination change (shadows, a lit side): the image times
                               ``exp(f)``, ``f`` a bicubic field through a 3x4 grid of uniform values in
                               ``[-s, s]``; 0 draws nothing (older recipes keep their exact random stream)
=========== ================== ==========================================================================
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

default_conf: dict[str, Any] = {
    "brightness": 0.15,
    "contrast": (0.75, 1.3),
    "gamma": (0.75, 1.35),
    "noise_std": 0.02,
    "blur_prob": 0.25,
    "blur_sigma": (0.5, 1.2),
    "shading": 0.0,
}

#: rows x columns of the shading field's control grid
SHADING_GRID = (3, 4)


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def photometric_conf(conf: Union[None, bool, Mapping[str, Any]], where: str) -> Optional[dict[str, Any]]:
    """The full jitter options from a dataset's ``photometric`` option: None/False = off, True = the defaults, a
    mapping = the defaults updated with it.

    Raises:
        TypeError: an unknown key or a value of the wrong kind (the message names ``where``).
        ValueError: a range whose low end is above its high end, or a negative strength.
    """
    if conf is None or conf is False:
        return None
    if conf is True:
        return dict(default_conf)
    if not isinstance(conf, Mapping):
        raise TypeError(f"{where}: photometric must be true, false, null or a mapping of {sorted(default_conf)}, "
                        f"got {conf!r}")
    unknown = set(conf) - set(default_conf)
    if unknown:
        raise TypeError(f"{where}: unknown photometric options {sorted(unknown)}; known: {sorted(default_conf)}")
    out = {**default_conf, **dict(conf)}
    for key, value in out.items():
        if isinstance(default_conf[key], tuple):
            if len(value) != 2 or float(value[0]) > float(value[1]):
                raise ValueError(f"{where}: photometric.{key} must be a range [low, high], got {value!r}")
            out[key] = (float(value[0]), float(value[1]))
        else:
            if float(value) < 0:
                raise ValueError(f"{where}: photometric.{key} must be >= 0, got {value!r}")
            out[key] = float(value)
    if out["contrast"][0] <= 0 or out["gamma"][0] <= 0:
        raise ValueError(f"{where}: photometric contrast and gamma must be positive, got {out['contrast']}, "
                         f"{out['gamma']}")
    return out


def shading_field(shape_hw: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative gain ``(H, W)`` float32, ``exp`` of a bicubic field through a
    :data:`SHADING_GRID` of values uniform in ``[-strength, strength]``."""
    grid = rng.uniform(-strength, strength, SHADING_GRID).astype(np.float32)
    field = cv2.resize(grid, (int(shape_hw[1]), int(shape_hw[0])), interpolation=cv2.INTER_CUBIC)
    return np.exp(np.clip(field, -strength, strength))


def photometric_jitter(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, conf: Mapping[str, Any]
                       ) -> np.ndarray:
    """Random blur, brightness, contrast, gamma, shading and noise on a float ``(H, W)`` image in [0, 1].

    Pixels outside ``mask`` (padding) stay 0; the result is float32 in [0, 1]. ``conf`` holds the keys of
    :data:`default_conf` (a missing ``shading`` means none).
    """
    out = image.astype(np.float32)
    if rng.uniform() < conf["blur_prob"]:
        out = cv2.GaussianBlur(out, (0, 0), _uniform(rng, conf["blur_sigma"]))
    mean = float(out[mask].mean()) if mask.any() else 0.5
    brightness = _uniform(rng, (-conf["brightness"], conf["brightness"]))
    out = (out - mean) * _uniform(rng, conf["contrast"]) + mean + brightness
    out = np.clip(out, 0.0, 1.0) ** _uniform(rng, conf["gamma"])
    if conf.get("shading", 0.0) > 0:
        out = out * shading_field(out.shape, float(conf["shading"]), rng)
    out = out + rng.normal(0.0, _uniform(rng, (0.0, conf["noise_std"])), out.shape).astype(np.float32)
    return np.where(mask, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)
