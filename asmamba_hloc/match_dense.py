"""Standalone dense matching into hloc's ``features.h5`` + ``matches.h5`` (no hloc needed).

Two stages, so that a long run can be killed, resumed and split across processes:

1. :func:`match_pairs` runs any kornia-contract matcher on each pair and stores the raw matches (in original-image
   pixels) in a :class:`DenseMatchCache`: one small ``.npz`` per pair, written to a temporary name and moved into
   place, so a killed run never leaves a half-written pair that looks complete. A rerun skips cached pairs
   (``overwrite=True`` redoes them); ``shard=(i, n)`` processes every n-th pair, so n processes can share a cache.
2. :func:`aggregate` (the merge step) reads every pair of the cache, quantises each image's matched points into
   keypoints (:mod:`asmamba_hloc.quantize`) and writes both HDF5 files in hloc's layout (:mod:`asmamba_hloc.h5io`),
   each atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from .h5io import atomic_h5, check_pair_keys_unique, pairs_to_matches0, write_features, write_matches
from .quantize import QuantizationConf, assign_to_keypoints, quantize_points, unique_matches

if TYPE_CHECKING:  # torch loads when a pair is matched, so that the command line answers before it does
    import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Pair = tuple[str, str]


def unique_pairs(pairs: Iterable[Sequence[str]]) -> list[Pair]:
    """Pairs in their first order of appearance, without repeats (``(a, b)`` and ``(b, a)`` are one pair).

    Raises:
        ValueError: a pair of an image with itself, or an entry that is not two names.
    """
    seen: set[frozenset] = set()
    result: list[Pair] = []
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(n, str) and n for n in pair):
            raise ValueError(f"a pair is two image names, got {pair!r}")
        name0, name1 = pair
        if name0 == name1:
            raise ValueError(f"pair ({name0!r}, {name1!r}) matches an image with itself")
        key = frozenset(pair)
        if key not in seen:
            seen.add(key)
            result.append((name0, name1))
    return result


def parse_shard(spec: Optional[str]) -> Optional[tuple[int, int]]:
    """``"i/n"`` (1 <= i <= n) -> ``(i, n)``; None -> None.

    Raises:
        ValueError: not of that form.
    """
    if spec is None:
        return None
    try:
        index, count = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard is written i/n with 1 <= i <= n (e.g. 1/4), got {spec!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard i/n needs 1 <= i <= n, got {spec!r}")
    return index, count


def shard_pairs(pairs: Sequence[Pair], shard: Optional[tuple[int, int]]) -> list[Pair]:
    """The pairs of shard ``(i, n)``: every n-th pair starting at the i-th (1-based); all pairs if None."""
    if shard is None:
        return list(pairs)
    index, count = shard
    return list(pairs[index - 1 :: count])


@dataclass
class DenseMatches:
    """Raw matches of one pair: ``keypoints0 (N, 2)``, ``keypoints1 (N, 2)`` float32 original-image pixels
    (pixel centres at integers), ``scores (N,)`` float32."""

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    scores: np.ndarray


class DenseMatchCache:
    """A folder with one ``.npz`` of raw matches per pair, tagged with what produced them.

    Args:
        root: the folder (created on first save).
        tag: identifies the matcher and its settings; a cached pair with another tag counts as missing.
    """

    def __init__(self, root: PathLike, tag: str) -> None:
        self.root = Path(root)
        self.tag = str(tag)

    def path(self, name0: str, name1: str) -> Path:
        digest = hashlib.sha1(f"{name0}\0{name1}".encode()).hexdigest()[:24]
        return self.root / f"{digest}.npz"

    def load(self, name0: str, name1: str) -> Optional[DenseMatches]:
        """The cached matches of the pair in this orientation, or None if absent, unreadable or of another tag."""
        path = self.path(name0, name1)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["tag"]) != self.tag or str(data["name0"]) != name0 or str(data["name1"]) != name1:
                    return None
                return DenseMatches(data["keypoints0"], data["keypoints1"], data["scores"])
        except Exception as err:  # a file damaged outside this program: redo the pair
            logger.warning("ignoring unreadable cached matches %s (%s)", path, err)
            return None

    def save(self, name0: str, name1: str, matches: DenseMatches) -> None:
        """Store one pair atomically (temporary file + ``os.replace``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(name0, name1)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
        try:
            np.savez(
                tmp,
                tag=np.array(self.tag),
                name0=np.array(name0),
                name1=np.array(name1),
                keypoints0=np.asarray(matches.keypoints0, np.float32).reshape(-1, 2),
                keypoints1=np.asarray(matches.keypoints1, np.float32).reshape(-1, 2),
                scores=np.asarray(matches.scores, np.float32).reshape(-1),
            )
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


@dataclass
class MatchingReport:
    """What :func:`match_pairs` did: pairs matched now, pairs found in the cache, pairs that failed (with the
    reason) and images that could not be read."""

    matched: int = 0
    cached: int = 0
    failed: dict[Pair, str] = field(default_factory=dict)
    bad_images: dict[str, str] = field(default_factory=dict)


def _to_original_pixels(points: torch.Tensor, scale: np.ndarray) -> np.ndarray:
    """Resized-image points -> original-image points (pixel centres at integers)."""
    pts = points.detach().float().cpu().numpy().astype(np.float64)
    return ((pts + 0.5) / np.asarray(scale, dtype=np.float64) - 0.5).astype(np.float32)


def match_pair(
    matcher: torch.nn.Module, image0: torch.Tensor, image1: torch.Tensor, scale0: np.ndarray, scale1: np.ndarray
) -> DenseMatches:
    """Run a kornia-contract matcher on one pair of ``(1, 1, H, W)`` images and map the matches to the original
    images (``scale = resized / original`` per axis)."""
    import torch

    with torch.no_grad():
        out = matcher({"image0": image0, "image1": image1})
    for key in ("keypoints0", "keypoints1", "confidence"):
        if key not in out:
            raise ValueError(f"the matcher's output has no {key!r} (keys: {sorted(out)}); it breaks the kornia contract")
    return DenseMatches(
        _to_original_pixels(out["keypoints0"], scale0),
        _to_original_pixels(out["keypoints1"], scale1),
        out["confidence"].detach().float().cpu().numpy().reshape(-1),
    )


def match_pairs(
    matcher: Union[torch.nn.Module, Callable[[], torch.nn.Module]],
    pairs: Sequence[Pair],
    images: Union[PathLike, Callable[[str], Path]],
    cache: DenseMatchCache,
    resize_max: Optional[int] = 1024,
    overwrite: bool = False,
    shard: Optional[tuple[int, int]] = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> MatchingReport:
    """Match every pair not yet in the cache (stage 1). A pair whose image cannot be read is reported and skipped.

    A rerun logs ``resuming: k/N pairs done`` and matches the other pairs only; the matcher is built only if a pair
    needs matching.

    Args:
        matcher: kornia-contract matcher (eval mode), or a zero-argument builder called only if a pair needs matching.
        pairs: ``(name0, name1)``; name0 is passed as ``image0``.
        images: the folder the names are relative to, or a function from a name to its file.
        resize_max: longer image side fed to the matcher (None = full size); matches are stored in original pixels.
        overwrite: redo pairs already in the cache.
        shard: ``(i, n)``: only this process's share of the pairs.
    """
    from asmamba.io import load_image  # the project's one image reader

    path_of = images if callable(images) else (lambda name: Path(images) / name)
    report = MatchingReport()
    loaded: "OrderedDict[str, tuple[torch.Tensor, np.ndarray]]" = OrderedDict()

    def get_image(name: str) -> tuple[torch.Tensor, np.ndarray]:
        if name in report.bad_images:
            raise ValueError(report.bad_images[name])
        if name not in loaded:
            try:
                loaded[name] = load_image(path_of(name), grayscale=True, max_side=resize_max, device=device)
            except (ValueError, OSError) as err:
                report.bad_images[name] = str(err)
                raise
            if len(loaded) > 8:
                loaded.popitem(last=False)
        loaded.move_to_end(name)
        return loaded[name]

    import torch

    model = matcher if isinstance(matcher, torch.nn.Module) else None
    todo = shard_pairs(unique_pairs(pairs), shard)
    done = set() if overwrite else {p for p in todo if cache.load(*p) is not None}
    report.cached = len(done)
    if done:
        logger.info("resuming: %d/%d pairs done", len(done), len(todo))
    if model is None and len(done) < len(todo):
        model = matcher()  # before the progress bar, so that what building logs stays out of it
    with tqdm(total=len(todo), initial=len(done), desc="matching pairs", unit="pair", disable=not progress) as bar:
        for name0, name1 in todo:
            if (name0, name1) in done:
                continue
            try:
                image0, scale0 = get_image(name0)
                image1, scale1 = get_image(name1)
            except (ValueError, OSError) as err:
                report.failed[(name0, name1)] = str(err)
                bar.update(1)
                continue
            cache.save(name0, name1, match_pair(model, image0, image1, scale0, scale1))
            report.matched += 1
            bar.update(1)
    for name, reason in report.bad_images.items():
        logger.warning("skipped image %s: %s", name, reason)
    return report


@dataclass
class AggregateReport:
    """Keypoints per image and matches per pair written by :func:`aggregate`."""

    num_keypoints: dict[str, int] = field(default_factory=dict)
    num_matches: dict[Pair, int] = field(default_factory=dict)


def _check_all_cached(cache: DenseMatchCache, pairs: Sequence[Pair]) -> None:
    missing = [p for p in pairs if not cache.path(*p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(pairs)} pairs have no dense matches in {str(cache.root)!r} yet "
            f"(first: {missing[0]}); run the matching (every shard) before merging"
        )


def aggregate(
    pairs: Sequence[Pair],
    cache: DenseMatchCache,
    features_path: PathLike,
    matches_path: PathLike,
    conf: QuantizationConf = QuantizationConf(),
    image_sizes: Optional[Mapping[str, tuple[int, int]]] = None,
    fixed_keypoints: Optional[Mapping[str, np.ndarray]] = None,
    exact_images: Iterable[str] = (),
    write_dense: bool = True,
    progress: bool = True,
    image_confs: Optional[Mapping[str, QuantizationConf]] = None,
) -> AggregateReport:
    """Quantise the cached raw matches into keypoints and index matches; write hloc's two files (stage 2).

    Args:
        pairs: the pairs to merge (all shards); each must be in the cache.
        conf: cell size, max error and keypoint budget of the quantisation.
        image_sizes: ``(W, H)`` per image, stored as ``image_size``.
        fixed_keypoints: images whose keypoints already exist (``(P, 2)`` each, e.g. a reconstruction's database
            images): their matched points are assigned to those keypoints within ``max_error``; they are not written
            to ``features_path``.
        exact_images: images kept unquantised (every distinct matched point is a keypoint; localization queries).
        write_dense: also keep each pair's raw matches in the matches file, as hloc's match_dense does.
        image_confs: per-image settings that replace ``conf`` for those images (e.g. cells that follow each image's
            downscale factor); also the max error a fixed image's matched points are assigned with.
    """
    pairs = unique_pairs(pairs)
    names = sorted({n for p in pairs for n in p})
    check_pair_keys_unique(names)
    fixed = {k: np.asarray(v, np.float32).reshape(-1, 2) for k, v in (fixed_keypoints or {}).items()}
    exact = set(exact_images)
    exact_conf = QuantizationConf(cell_size=0.0, max_error=0.0, max_kps=None)
    confs = dict(image_confs or {})

    def conf_of(name: str) -> QuantizationConf:
        return exact_conf if name in exact else confs.get(name, conf)

    _check_all_cached(cache, pairs)

    def raw(pair: Pair) -> DenseMatches:
        matches = cache.load(*pair)
        if matches is None:
            raise ValueError(f"cached matches of {pair} were produced by another matcher setting than {cache.tag!r}")
        return matches

    observed: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for pair in tqdm(pairs, desc="collecting matched points", unit="pair", disable=not progress):
        matches = raw(pair)
        for name, points in zip(pair, (matches.keypoints0, matches.keypoints1)):
            if name not in fixed:
                observed[name].append((points, matches.scores))

    report = AggregateReport()
    keypoints: dict[str, np.ndarray] = dict(fixed)
    with atomic_h5(features_path) as fd:
        for name in names:
            if name in fixed:
                continue
            chunks = observed.get(name, [])
            points = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, 2), np.float32)
            scores = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.float32)
            kps, kp_scores = quantize_points(points, scores, conf_of(name))
            keypoints[name] = kps
            size = None if image_sizes is None else image_sizes.get(name)
            write_features(fd, name, kps, kp_scores, size)
            report.num_keypoints[name] = len(kps)
    observed.clear()

    with atomic_h5(matches_path) as fd:
        for pair in tqdm(pairs, desc="assigning matches", unit="pair", disable=not progress):
            matches = raw(pair)
            ids = [
                assign_to_keypoints(points, keypoints[name], conf_of(name).max_error)
                for name, points in zip(pair, (matches.keypoints0, matches.keypoints1))
            ]
            index_pairs, scores = unique_matches(ids[0], ids[1], matches.scores)
            matches0, scores0 = pairs_to_matches0(index_pairs, scores, len(keypoints[pair[0]]))
            dense = (matches.keypoints0, matches.keypoints1, matches.scores) if write_dense else None
            write_matches(fd, pair[0], pair[1], matches0, scores0, dense)
            report.num_matches[pair] = len(index_pairs)
    return report


def match_to_hloc(
    matcher: Union[torch.nn.Module, Callable[[], torch.nn.Module]],
    pairs: Union[PathLike, Sequence[Pair]],
    image_dir: PathLike,
    export_dir: PathLike,
    tag: str = "matcher",
    resize_max: Optional[int] = 1024,
    conf: QuantizationConf = QuantizationConf(),
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """One call from pairs to hloc files: :func:`match_pairs` then :func:`aggregate`.

    Args:
        pairs: an hloc pairs file (``name0 name1`` per line) or a list of pairs.
        export_dir: receives ``features.h5``, ``matches.h5`` and the raw-match cache ``dense/``.
        tag: names the matcher and its settings in the cache (change it when they change).

    Returns:
        the paths of ``features.h5`` and ``matches.h5``.
    """
    if isinstance(pairs, (str, os.PathLike)):
        path = Path(pairs)
        if not path.is_file():
            raise FileNotFoundError(f"pairs file {str(path)!r} does not exist")
        pairs = [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]
    export_dir = Path(export_dir)
    cache = DenseMatchCache(export_dir / "dense", f"{tag}|resize_max={resize_max}")
    report = match_pairs(matcher, pairs, image_dir, cache, resize_max, overwrite=overwrite, progress=progress)
    if report.failed:
        first = next(iter(report.failed.items()))
        raise ValueError(f"{len(report.failed)} pair(s) could not be matched (first: {first[0]}: {first[1]})")
    features, matches = export_dir / "features.h5", export_dir / "matches.h5"
    aggregate(pairs, cache, features, matches, conf, progress=progress)
    return features, matches
