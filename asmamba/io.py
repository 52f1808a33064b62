"""Reading images and ground-truth files, with errors that name what is wrong.

Everything that turns a path into a tensor or an array lives here so that the CLI, the pipelines and the
evaluation read files the same way. OpenCV and torch load on first use: the command line checks its paths with
:func:`check_input_file`, :func:`check_output_file` and :func:`check_output_dir` before anything heavy is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


def data_root() -> Path:
    """The shared real-data folder: ``$ASMAMBA_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("ASMAMBA_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def check_input_file(path: PathLike, what: str = "file") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is an existing file.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a folder.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise IsADirectoryError(f"{what} {str(p)!r} is a folder, not a file")
    return p


def _check_writable_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise NotADirectoryError(f"{what}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: folder {str(folder)!r} is not writable")


def check_output_file(path: PathLike, what: str = "output file") -> Path:
    """``path`` if a file can be written there: its folder exists and is writable, and it is not a folder itself.

    Raises:
        FileNotFoundError: the folder does not exist (it is not created: a typo should not make folders).
        NotADirectoryError / PermissionError / IsADirectoryError: the folder is a file, is read-only, or ``path``
            is a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {str(p)!r} is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"{what} {str(p)!r}: folder {str(parent)!r} does not exist")
    _check_writable_dir(parent, f"{what} {str(p)!r}")
    return p


def check_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """``path`` if it is a writable folder or can be created (its nearest existing ancestor is a writable folder).

    Raises:
        NotADirectoryError: ``path`` or an ancestor is a file.
        PermissionError: the folder (or the ancestor it would be created in) is not writable.
    """
    p = Path(path)
    if p.exists():
        _check_writable_dir(p, what)
        return p
    ancestor = p.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{what} {str(p)!r} cannot be created: {str(ancestor)!r} is a file")
    _check_writable_dir(ancestor, f"{what} {str(p)!r} cannot be created")
    return p


def list_images(folder: PathLike, recursive: bool = True) -> list[str]:
    """Relative paths (posix style, sorted) of the image files below ``folder``.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no image file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    pattern = "**/*" if recursive else "*"
    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise ValueError(f"image folder {str(root)!r} contains no image ({', '.join(IMAGE_SUFFIXES)})")
    return names


def read_image(path: PathLike, grayscale: bool = False) -> np.ndarray:
    """Read an image as uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` RGB.

    Raises:
        ImageReadError: the file is missing, empty, unreadable or not a decodable image.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"image {str(p)!r} does not exist" if not p.exists() else f"image {str(p)!r} is a folder")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"image {str(p)!r} is empty (0 bytes)")
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flag)
    if image is None or image.size == 0:
        raise ImageReadError(f"image {str(p)!r} is corrupt or not an image format OpenCV can decode")
    if not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def resize_max(image: np.ndarray, max_side: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Downscale so that the longer side is at most ``max_side`` (never upscales).

    Returns:
        the resized image and the scale ``(sx, sy)`` with ``resized_xy = original_xy * scale`` (pixel centres at
        integer coordinates, so the mapping uses ``(x + 0.5) * s - 0.5``; see :func:`scale_points`).
    """
    import cv2

    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, np.array([1.0, 1.0])
    s = max_side / max(h, w)
    new_w, new_h = max(1, int(round(w * s))), max(1, int(round(h * s)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, np.array([new_w / w, new_h / h])


def scale_points(points: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Map ``(N, 2)`` pixel coordinates (pixel centres on integers) through an image resize by ``scale``."""
    s = np.asarray(scale, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) + 0.5) * s - 0.5


def image_to_tensor(image: np.ndarray, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` array -> float tensor ``(1, C, H, W)`` in [0, 1]."""
    import torch

    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got {image.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t[None].to(device)


def load_image(
    path: PathLike,
    grayscale: bool = True,
    max_side: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
) -> tuple[torch.Tensor, np.ndarray]:
    """Read, optionally resize, and convert an image to a ``(1, C, H, W)`` tensor in [0, 1].

    Returns:
        the tensor and the resize scale ``(sx, sy)`` (``[1, 1]`` when not resized).
    """
    image, scale = resize_max(read_image(path, grayscale=grayscale), max_side)
    return image_to_tensor(image, device), scale


@dataclass
class PosePair:
    """One line of a SuperGlue/LoFTR pairs file.

    ``K0``, ``K1`` are 3x3 intrinsics at the stored image resolution; ``T_0to1`` maps camera-0 coordinates
    to camera-1 coordinates (4x4).
    """

    name0: str
    name1: str
    rot0: int
    rot1: int
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray


def iter_pair_lines(path: PathLike) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank, non-comment line of a pairs file.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pairs file {str(p)!r} does not exist")
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield lineno, fields


def read_pose_pairs(path: PathLike) -> list[PosePair]:
    """Parse a SuperGlue-format pairs file: ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)`` per line.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line has the wrong number of fields or a non-numeric value (the line number is named).
    """
    p = Path(path)
    pairs = []
    for lineno, fields in iter_pair_lines(p):
        if len(fields) != 38:
            raise ValueError(
                f"{p}:{lineno}: a pose pair line has 38 fields (2 names, 2 rotations, 9+9 K, 16 T_0to1), "
                f"this one has {len(fields)}"
            )
        try:
            numbers = np.array([float(x) for x in fields[2:]], dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{p}:{lineno}: non-numeric calibration value ({err})") from None
        pairs.append(
            PosePair(
                name0=fields[0],
                name1=fields[1],
                rot0=int(numbers[0]),
                rot1=int(numbers[1]),
                K0=numbers[2:11].reshape(3, 3),
                K1=numbers[11:20].reshape(3, 3),
                T_0to1=numbers[20:36].reshape(4, 4),
            )
        )
    return pairs


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
