"""Image pairs to match: exhaustive, sequential window, from a file, or by retrieval on a global descriptor.

Retrieval takes any ``describe(image) -> (D,)`` callable, so it works with every matcher:

- AS-Mamba's ``ASMamba.describe`` (GeM-pooled coarse encoder features) and the baselines' ``describe`` (XFeat: the
  pooled dense feature map; SIFT: the mean of its RootSIFT descriptors) are used when the matcher has one
  (:func:`describer_for`);
- otherwise :func:`histogram_descriptor`, a weights-free fallback (intensity and gradient-orientation histograms on
  a 2 x 2 grid), which is enough to order a small photo collection but not to search a large one.

A pairs file is hloc's format, ``name0 name1`` per line (extra fields, as in SuperGlue pose files, are ignored).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Collection, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm import tqdm

from asmamba.io import iter_pair_lines
from asmamba_hloc.match_dense import Pair, unique_pairs

PathLike = Union[str, os.PathLike]
Describe = Callable[[torch.Tensor], torch.Tensor]


def pairs_exhaustive(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair ``(names[i], names[j])``, ``i < j``."""
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def pairs_sequential(names: Sequence[str], window: int) -> list[Pair]:
    """Each image with the next ``window`` images of the (already ordered) list, e.g. frames of a video."""
    if window < 1:
        raise ValueError(f"the sequential window must be >= 1, got {window}")
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, min(len(names), i + 1 + window))]


def read_pairs_file(path: PathLike) -> list[Pair]:
    """Pairs of an hloc pairs file (``name0 name1`` per line; ``#`` comments and blank lines skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line with fewer than two names (its number is given).
    """
    p = Path(path)
    pairs = []
    for lineno, fields in iter_pair_lines(p):
        if len(fields) < 2:
            raise ValueError(f"{p}:{lineno}: a pair line holds two image names, got {' '.join(fields)!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def check_pairs_known(pairs: Sequence[Pair], known: Collection[str], source: str = "pairs") -> None:
    """Raise ``FileNotFoundError`` naming the images of ``pairs`` that are not in ``known``."""
    known = set(known)
    missing = sorted({n for p in pairs for n in p if n not in known})
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(f"{source} names {len(missing)} image(s) that are not in the image folder: {shown}")


def write_pairs(path: PathLike, pairs: Sequence[Pair]) -> None:
    """Write an hloc pairs file atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    os.replace(tmp, path)


@torch.no_grad()
def histogram_descriptor(image: torch.Tensor, bins: int = 16, orientations: int = 8) -> torch.Tensor:
    """Weights-free global descriptor of an image ``(1, C, H, W)`` or ``(C, H, W)`` in [0, 1].

    Per cell of a 2 x 2 grid: a ``bins``-bin intensity histogram (per channel) and an ``orientations``-bin histogram
    of gradient orientation weighted by magnitude; square-rooted (Hellinger) and L2-normalised. Size
    ``4 * (C * bins + orientations)``.
    """
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"expected an image (1, C, H, W), got shape {tuple(image.shape)}")
    x = F.interpolate(image[:1].float(), size=(128, 128), mode="area").clamp(0, 1)
    gray = x.mean(1, keepdim=True)
    gx = F.pad(gray[..., :, 2:] - gray[..., :, :-2], (1, 1, 0, 0))
    gy = F.pad(gray[..., 2:, :] - gray[..., :-2, :], (0, 0, 1, 1))
    magnitude = torch.sqrt(gx**2 + gy**2)[0, 0]
    angle = torch.atan2(gy, gx)[0, 0] % math.pi  # unsigned orientation
    parts = []
    for rows in (slice(0, 64), slice(64, 128)):
        for cols in (slice(0, 64), slice(64, 128)):
            for c in range(x.shape[1]):
                parts.append(torch.histc(x[0, c, rows, cols], bins=bins, min=0.0, max=1.0))
            index = (angle[rows, cols] / math.pi * orientations).long().clamp(max=orientations - 1)
            parts.append(torch.bincount(index.flatten(), weights=magnitude[rows, cols].flatten(), minlength=orientations))
    descriptor = torch.cat([p / p.sum().clamp_min(1e-12) for p in parts]).sqrt()
    return F.normalize(descriptor, dim=0)


def describer_for(matcher: Optional[torch.nn.Module]) -> Describe:
    """The matcher's own ``describe`` when it has one, else :func:`histogram_descriptor`."""
    describe = getattr(matcher, "describe", None)
    return describe if callable(describe) else histogram_descriptor


def compute_descriptors(
    paths: Sequence[PathLike],
    describe: Describe,
    resize_max: Optional[int] = 512,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """``(N, D)`` L2-normalised global descriptors of the image files (grayscale, longer side <= ``resize_max``)."""
    from asmamba.io import load_image

    rows = []
    for name in tqdm(paths, desc="global descriptors", unit="image", disable=not progress):
        image, _ = load_image(name, grayscale=True, max_side=resize_max, device=device)
        d = describe(image)
        if d.ndim == 2 and d.shape[0] == 1:  # describers that keep the batch dimension
            d = d[0]
        if d.ndim != 1:
            raise ValueError(f"describe() must return a (D,) descriptor, got shape {tuple(d.shape)} for {str(name)!r}")
        rows.append(F.normalize(d.float().cpu(), dim=0))
    return torch.stack(rows) if rows else torch.zeros((0, 1))


def pairs_from_descriptors(
    query_names: Sequence[str],
    query_descriptors: torch.Tensor,
    db_names: Sequence[str],
    db_descriptors: torch.Tensor,
    k: int,
) -> list[Pair]:
    """For each query, its ``k`` most similar database images by cosine similarity (itself excluded), as
    ``(query, db)`` pairs, best first."""
    if k < 1:
        raise ValueError(f"the number of retrieved images must be >= 1, got {k}")
    similarity = query_descriptors.float() @ db_descriptors.float().t()
    same = torch.tensor([[q == d for d in db_names] for q in query_names], dtype=torch.bool).reshape(similarity.shape)
    similarity = similarity.masked_fill(same, float("-inf"))
    top = similarity.topk(min(k, len(db_names)), dim=1)
    pairs = []
    for i, name in enumerate(query_names):
        for value, j in zip(top.values[i].tolist(), top.indices[i].tolist()):
            if math.isfinite(value):
                pairs.append((name, db_names[j]))
    return pairs


def make_pairs(
    spec: str,
    names: Sequence[str],
    image_dir: Optional[PathLike] = None,
    describe: Optional[Describe] = None,
    known_names: Optional[Collection[str]] = None,
    resize_max: Optional[int] = 512,
    progress: bool = True,
) -> list[Pair]:
    """Pairs from a spec: ``exhaustive``, ``sequential:K``, ``retrieval:K`` or the path of a pairs file.

    Args:
        names: the images to pair (sorted order is the sequence order).
        image_dir: needed by retrieval, which reads the images.
        describe: retrieval's global descriptor (default :func:`histogram_descriptor`).
        resize_max: image size for the global descriptors.
        known_names: every image of the folder; a pairs file naming another image is an error. Pairs of a file that
            name a known image missing from ``names`` (e.g. a corrupt one) are dropped.

    Raises:
        ValueError: unknown spec or bad number; FileNotFoundError: missing pairs file or images.
    """
    kind, _, arg = spec.partition(":")
    if kind in ("sequential", "retrieval"):
        try:
            k = int(arg)
        except ValueError:
            raise ValueError(f"pairs spec {spec!r}: write {kind}:K with an integer K, e.g. {kind}:5") from None
        if kind == "sequential":
            return pairs_sequential(names, k)
        if image_dir is None:
            raise ValueError("retrieval pairs need the image folder")
        paths = [Path(image_dir) / n for n in names]
        descriptors = compute_descriptors(paths, describe or histogram_descriptor, resize_max, progress=progress)
        return unique_pairs(pairs_from_descriptors(names, descriptors, names, descriptors, k))
    if spec == "exhaustive":
        return pairs_exhaustive(names)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"pairs spec {spec!r} is neither 'exhaustive', 'sequential:K', 'retrieval:K' nor an existing pairs file"
        )
    pairs = read_pairs_file(path)
    check_pairs_known(pairs, known_names if known_names is not None else names, source=f"pairs file {str(path)!r}")
    usable = set(names)
    pairs = [p for p in pairs if p[0] in usable and p[1] in usable]
    if not pairs:
        raise ValueError(f"pairs file {str(path)!r} holds no pair of readable images")
    return unique_pairs(pairs)
