"""Reader and writer of hloc's HDF5 layout (no hloc needed).

Features file (one group per image; names with ``/`` become nested groups)::

    /<image name>/keypoints    (K, 2) float32, (x, y) pixels of the original image, pixel centres at integers
    /<image name>/scores       (K,)   float32 (optional; hloc's dense matcher reads it when re-using keypoints)
    /<image name>/image_size   (2,)   int64 (W, H) of the original image (optional)

Matches file (one group per pair, named ``names_to_pair(name0, name1)`` = ``"<name0>/<name1>"`` with every
``/`` inside a name replaced by ``-``)::

    /<pair>/matches0           (K0,) int32, index into image 1's keypoints, -1 = unmatched
    /<pair>/matching_scores0   (K0,) float16
    /<pair>/keypoints0, keypoints1, scores   (optional) the raw dense matches before quantisation, as hloc's
                                             match_dense keeps them

Readers also find pairs stored in the other orientation (``name1/name0``) and in hloc's legacy ``name0_name1``
naming, like ``hloc.utils.io.find_pair``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import h5py
import numpy as np

PathLike = Union[str, os.PathLike]


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: ``name0 + separator + name1`` with ``/`` inside each name replaced by ``-``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """hloc's legacy pair key, ``name0_name1`` (``/`` in names replaced by ``-``)."""
    return names_to_pair(name0, name1, separator="_")


def check_pair_keys_unique(names: list[str]) -> None:
    """Raise ``ValueError`` if two image names map to the same pair-key component (``a/b.jpg`` vs ``a-b.jpg``).

    hloc's pair naming replaces ``/`` by ``-``, so such names would overwrite each other's matches.
    """
    seen: dict[str, str] = {}
    for name in names:
        key = name.replace("/", "-")
        if key in seen and seen[key] != name:
            raise ValueError(
                f"image names {seen[key]!r} and {name!r} collide in hloc's pair naming (both become {key!r}); "
                "rename one of them"
            )
        seen[key] = name


def find_pair(hfile: h5py.File, name0: str, name1: str) -> tuple[str, bool]:
    """The key under which the pair is stored, and whether it is stored as (name1, name0).

    Raises:
        KeyError: the pair is in none of the four possible spellings.
    """
    for key, reverse in (
        (names_to_pair(name0, name1), False),
        (names_to_pair(name1, name0), True),
        (names_to_pair_old(name0, name1), False),
        (names_to_pair_old(name1, name0), True),
    ):
        if key in hfile:
            return key, reverse
    raise KeyError(f"pair ({name0!r}, {name1!r}) is not in {hfile.filename!r} (matched with another pairs list?)")


def list_h5_names(path: PathLike) -> list[str]:
    """Names of the groups that directly hold datasets (image names of a features file, pair keys of a matches
    file), sorted."""
    names: set[str] = set()

    def visit(_: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(obj.parent.name.strip("/"))

    with h5py.File(str(path), "r") as fd:
        fd.visititems(visit)
    return sorted(names)


def write_features(
    fd: h5py.File,
    name: str,
    keypoints: np.ndarray,
    scores: Optional[np.ndarray] = None,
    image_size: Optional[tuple[int, int]] = None,
) -> None:
    """Write (replace) one image's keypoints ``(K, 2)``, optional ``scores (K,)`` and ``image_size (W, H)``."""
    keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
    if name in fd:
        del fd[name]
    group = fd.create_group(name)
    group.create_dataset("keypoints", data=keypoints)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if scores.shape[0] != keypoints.shape[0]:
            raise ValueError(f"{name}: {keypoints.shape[0]} keypoints but {scores.shape[0]} scores")
        group.create_dataset("scores", data=scores)
    if image_size is not None:
        group.create_dataset("image_size", data=np.asarray(image_size, dtype=np.int64).reshape(2))


def read_keypoints(path: PathLike, name: str) -> np.ndarray:
    """``(K, 2)`` float32 keypoints of one image.

    Raises:
        KeyError: the image is not in the file.
    """
    with h5py.File(str(path), "r") as fd:
        if name not in fd or "keypoints" not in fd[name]:
            raise KeyError(f"image {name!r} has no keypoints in {str(path)!r}")
        return fd[name]["keypoints"][()].astype(np.float32)


def pairs_to_matches0(
    matches: np.ndarray, scores: np.ndarray, num_keypoints0: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(M, 2)`` index pairs and ``(M,)`` scores -> ``matches0 (K0,)`` int32 (-1 = none), ``scores0 (K0,)`` float16."""
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    matches0 = np.full(num_keypoints0, -1, dtype=np.int32)
    scores0 = np.zeros(num_keypoints0, dtype=np.float16)
    if len(matches):
        if matches[:, 0].max() >= num_keypoints0 or matches.min() < 0:
            raise ValueError(f"match indices out of range for {num_keypoints0} keypoints in image 0")
        if len(np.unique(matches[:, 0])) != len(matches):
            raise ValueError("a keypoint of image 0 appears in several matches; matches0 holds one match per keypoint")
        matches0[matches[:, 0]] = matches[:, 1]
        scores0[matches[:, 0]] = np.asarray(scores, dtype=np.float16)
    return matches0, scores0


def write_matches(
    fd: h5py.File,
    name0: str,
    name1: str,
    matches0: np.ndarray,
    scores0: np.ndarray,
    dense: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
) -> str:
    """Write (replace) one pair's ``matches0`` (int32) and ``matching_scores0`` (float16); return its key.

    Args:
        dense: optional raw matches ``(keypoints0 (N, 2), keypoints1 (N, 2), scores (N,))`` kept beside them.
    """
    matches0 = np.asarray(matches0)
    if matches0.ndim != 1 or np.asarray(scores0).shape != matches0.shape:
        raise ValueError(f"matches0 and matching_scores0 must both be (K0,), got {matches0.shape} and "
                         f"{np.asarray(scores0).shape}")
    key = names_to_pair(name0, name1)
    if key in fd:
        del fd[key]
    group = fd.create_group(key)
    group.create_dataset("matches0", data=matches0.astype(np.int32))
    group.create_dataset("matching_scores0", data=np.asarray(scores0).astype(np.float16))
    if dense is not None:
        kpts0, kpts1, scores = dense
        group.create_dataset("keypoints0", data=np.asarray(kpts0, dtype=np.float32).reshape(-1, 2))
        group.create_dataset("keypoints1", data=np.asarray(kpts1, dtype=np.float32).reshape(-1, 2))
        group.create_dataset("scores", data=np.asarray(scores, dtype=np.float32).reshape(-1))
    return key


def read_matches(path: PathLike, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches of a pair as ``(M, 2)`` int64 indices ``(i0, i1)`` into (name0, name1) keypoints and ``(M,)`` float32
    scores, whichever orientation the pair is stored in.

    Raises:
        KeyError: the pair is not in the file.
    """
    with h5py.File(str(path), "r") as fd:
        key, reverse = find_pair(fd, name0, name1)
        matches0 = fd[key]["matches0"][()]
        scores0 = fd[key]["matching_scores0"][()]
    idx = np.nonzero(matches0 != -1)[0]
    matches = np.stack([idx, matches0[idx]], -1).astype(np.int64)
    if reverse:
        matches = matches[:, ::-1].copy()
    return matches, scores0[idx].astype(np.float32)


@contextmanager
def atomic_h5(path: PathLike) -> Iterator[h5py.File]:
    """Open a fresh HDF5 file whose content replaces ``path`` only when the block finishes without error.

    The file is written next to ``path`` under a temporary name and moved over it with ``os.replace``, so a
    killed run leaves either the previous file or nothing, never a truncated file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(str(tmp), "w") as fd:
            yield fd
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
