"""Joint two-image scan orders for the Mamba layers, and their exact inverse merges.

A Mamba layer reads a 1-D sequence, so the coarse maps of the two images of a pair are laid out on one
joint canvas and read in four directions. Following JamMa's JEGO scan, the images are placed on two
canvases by plain concatenation (no interleaving):

- the horizontal canvas ``(H, 2W)``: image 0 on the left, image 1 on the right;
- the vertical canvas ``(2H, W)``: image 0 on top, image 1 below.

Each direction reads one stride-2 parity sub-grid ``(row parity, col parity)`` of its canvas, so the
four directions together read every token of both images exactly once (because H and W are even, a
parity on the canvas is the same parity inside each image):

=========  ==========  ============  ==========
direction  canvas      sub-grid      traversal
=========  ==========  ============  ==========
0          horizontal  (even, even)  forward
1          horizontal  (even, odd)   reversed
2          vertical    (odd, odd)    forward
3          vertical    (odd, even)   reversed
=========  ==========  ============  ==========

The kinds differ in how a sub-grid is traversed:

- ``"jego"`` (JamMa): the horizontal canvas row-major, the vertical canvas column-major. With plain
  concatenation a row of the horizontal canvas runs through image 0 and then image 1, so the causal
  scan switches image every ``W/2`` tokens (``H/2`` on the vertical canvas): every token after the
  first such run has read both images before it. JamMa's ``scan_jego`` uses the same four (canvas,
  sub-grid, forward/reversed) triples but numbers them 0 = horizontal forward, 1 = vertical forward,
  2 = horizontal reversed, 3 = vertical reversed; :data:`JAMMA_DIRECTION_ORDER` maps ours to theirs.
- ``"hilbert"``: the same sub-grids traversed along the generalised Hilbert curve of
  :func:`hilbert_curve`, so consecutive tokens are 4-neighbours on the sub-grid (2 cells apart on the
  canvas). The vertical canvas uses the transposed curve of the transposed sub-grid, as ``jego`` does.
  Note: because the curve fills a region before leaving it, each direction reads one image
  completely before the other (one switch per direction, e.g. for 104x104 and 60x80 maps), so only
  half of the tokens of a direction have read the other image before them (jego: about 99%).

Sequences are returned as ``(B, 4, C, L)`` with ``L = H * W / 2``. All orders are index tensors built
once per ``(kind, H, W)`` (and per device) and cached; scanning and merging are one ``gather``
each, differentiable, on any device and dtype.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, NamedTuple, Optional

import torch
from torch import nn

ScanKind = Literal["jego", "hilbert"]
SCAN_KINDS: tuple[str, ...] = ("jego", "hilbert")
NUM_DIRECTIONS = 4
# JAMMA_DIRECTION_ORDER[k] = JamMa's index of our direction k (its scan_jego numbering).
JAMMA_DIRECTION_ORDER: tuple[int, ...] = (0, 2, 1, 3)


class _Direction(NamedTuple):
    """One of the four scans: which canvas, which parity sub-grid, read forward or reversed."""

    vertical: bool  # False: side-by-side canvas (H, 2W); True: stacked canvas (2H, W)
    row_parity: int
    col_parity: int
    reversed: bool


DIRECTIONS: tuple[_Direction, ...] = (
    _Direction(vertical=False, row_parity=0, col_parity=0, reversed=False),
    _Direction(vertical=False, row_parity=0, col_parity=1, reversed=True),
    _Direction(vertical=True, row_parity=1, col_parity=1, reversed=False),
    _Direction(vertical=True, row_parity=1, col_parity=0, reversed=True),
)


# --------------------------------------------------------------------------------------------------
# generalised Hilbert curve
# --------------------------------------------------------------------------------------------------


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _hilbert_cells(height: int, width: int) -> list[tuple[int, int]]:
    """The (row, col) cells of the generalised Hilbert curve on a ``height x width`` grid.

    The curve is built recursively on a rectangle given by a corner cell, a "major" vector ``a`` along
    which the curve runs from its start to its end corner, and a "minor" vector ``b`` across it (the
    generalised Hilbert / "gilbert" construction of J. Cervený). A rectangle one cell thick is a straight
    line. A long rectangle (``2|a| > 3|b|``) is cut in two along ``a``. Otherwise it is cut in three like
    the classic curve: up the first half of ``b`` (major and minor swapped), along all of ``a`` on the
    other half of ``b``, and back down. Halves are rounded so that the sub-rectangle a sub-curve runs
    along has an even length whenever possible, which keeps every step between 4-neighbours.
    """
    cells: list[tuple[int, int]] = []

    def walk(row: int, col: int, a_row: int, a_col: int, b_row: int, b_col: int) -> None:
        len_a, len_b = abs(a_row + a_col), abs(b_row + b_col)
        step_a = (_sign(a_row), _sign(a_col))
        step_b = (_sign(b_row), _sign(b_col))
        if len_b == 1 or len_a == 1:  # a straight line of cells
            step, length = (step_a, len_a) if len_b == 1 else (step_b, len_b)
            cells.extend((row + k * step[0], col + k * step[1]) for k in range(length))
            return
        half_a_row, half_a_col = a_row // 2, a_col // 2
        half_b_row, half_b_col = b_row // 2, b_col // 2
        if 2 * len_a > 3 * len_b:  # long rectangle: two sub-curves one after the other along a
            if abs(half_a_row + half_a_col) % 2 == 1 and len_a > 2:
                half_a_row, half_a_col = half_a_row + step_a[0], half_a_col + step_a[1]
            walk(row, col, half_a_row, half_a_col, b_row, b_col)
            walk(row + half_a_row, col + half_a_col, a_row - half_a_row, a_col - half_a_col, b_row, b_col)
            return
        if abs(half_b_row + half_b_col) % 2 == 1 and len_b > 2:
            half_b_row, half_b_col = half_b_row + step_b[0], half_b_col + step_b[1]
        # up: the first half of b, run along b
        walk(row, col, half_b_row, half_b_col, half_a_row, half_a_col)
        # across: the whole of a, on the remaining part of b
        walk(row + half_b_row, col + half_b_col, a_row, a_col, b_row - half_b_row, b_col - half_b_col)
        # down: back along -b on the far part of a, ending at the far corner of a
        walk(
            row + (a_row - step_a[0]) + (half_b_row - step_b[0]),
            col + (a_col - step_a[1]) + (half_b_col - step_b[1]),
            -half_b_row,
            -half_b_col,
            -(a_row - half_a_row),
            -(a_col - half_a_col),
        )

    walk(0, 0, *_hilbert_axes(height, width))
    return cells


def _hilbert_axes(height: int, width: int) -> tuple[int, int, int, int]:
    """Major and minor vectors ``(a_row, a_col, b_row, b_col)`` of the top-level curve.

    The curve runs along the longer side, except when the longer side is odd and the shorter one even:
    a path from a corner to the far end of an odd side of a grid with an even number of cells must take
    a diagonal step (both ends have the same chessboard colour), so it then runs along the even side.
    """
    along_rows = height > width
    if height != width and max(height, width) % 2 == 1 and min(height, width) % 2 == 0:
        along_rows = not along_rows
    return (height, 0, 0, width) if along_rows else (0, width, height, 0)


def _tensor_cache(maxsize: Optional[int] = None) -> Callable:
    """``functools.lru_cache`` for functions returning tensors, which builds them outside inference mode.

    A tensor made under ``torch.inference_mode()`` (an evaluation, a benchmark) may never take part in autograd;
    cached, it would break every later training step that reads it ("Inference tensors cannot be saved for
    backward").
    """
    def decorate(fn: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args):
            with torch.inference_mode(False):
                return fn(*args)
        return cached
    return decorate


@_tensor_cache()
def _hilbert_curve_cached(height: int, width: int) -> torch.Tensor:
    return torch.tensor(_hilbert_cells(height, width), dtype=torch.long).view(height * width, 2)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def hilbert_curve(height: int, width: int) -> torch.Tensor:
    """The generalised Hilbert curve through every cell of a ``height x width`` grid.

    Starts at cell (0, 0) and ends at the far corner of its major side: (0, width - 1) when it runs
    along the columns, (height - 1, 0) when it runs along the rows. The major side is the longer one,
    except for a grid with an odd long side and an even short side, where it is the even side. On a
    square of power-of-two side it is the classic Hilbert curve, with ``row = y`` and ``col = x`` of the
    classic ``d2xy`` (from the top-left to the top-right cell). Consecutive cells are 4-neighbours for
    every size (checked exhaustively for all sizes up to 128 x 128; no diagonal step).

    Args:
        height: number of rows (>= 1).
        width: number of columns (>= 1).

    Returns:
        cells: ``(height * width, 2)`` long tensor of (row, col), in curve order.
    """
    _check_positive_int("height", height)
    _check_positive_int("width", width)
    return _hilbert_curve_cached(height, width).clone()


# --------------------------------------------------------------------------------------------------
# scan orders
# --------------------------------------------------------------------------------------------------


def _sub_grid_path(kind: str, rows: int, cols: int, vertical: bool) -> torch.Tensor:
    """Traversal of a ``rows x cols`` sub-grid as ``(rows * cols, 2)`` (row, col) sub-grid cells.

    The vertical canvas is read by the transpose of the horizontal traversal of the transposed
    sub-grid (row-major becomes column-major; the Hilbert curve is mirrored about the diagonal).
    """
    if vertical:
        return _sub_grid_path(kind, cols, rows, vertical=False).flip(-1)
    if kind == "jego":
        grid_rows, grid_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        return torch.stack([grid_rows.reshape(-1), grid_cols.reshape(-1)], dim=-1)
    return _hilbert_curve_cached(rows, cols)


def _check_kind(kind: str) -> None:
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}; expected one of {SCAN_KINDS}")


def _check_even_size(height: int, width: int) -> None:
    if isinstance(height, bool) or isinstance(width, bool) or not isinstance(height, int) or not isinstance(width, int):
        raise TypeError(f"height and width must be ints, got {height!r} x {width!r}")
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ValueError(
            f"joint scans need even feature-map sides >= 2 (the model pads to them), got H={height}, W={width}"
        )


@_tensor_cache()
def _scan_orders_cached(kind: str, height: int, width: int) -> torch.Tensor:
    tokens_per_image = height * width
    orders = []
    for direction in DIRECTIONS:
        # sub-grid size on the canvas of this direction
        rows, cols = (height, width // 2) if direction.vertical else (height // 2, width)
        cells = _sub_grid_path(kind, rows, cols, direction.vertical)
        canvas_row = direction.row_parity + 2 * cells[:, 0]
        canvas_col = direction.col_parity + 2 * cells[:, 1]
        if direction.vertical:  # image 0 on top of image 1
            image, row, col = canvas_row // height, canvas_row % height, canvas_col
        else:  # image 0 left of image 1
            image, row, col = canvas_col // width, canvas_row, canvas_col % width
        flat = image * tokens_per_image + row * width + col
        orders.append(flat.flip(0) if direction.reversed else flat)
    return torch.stack(orders)


def scan_orders(kind: str, height: int, width: int) -> torch.Tensor:
    """The four scan orders of a pair of ``height x width`` maps.

    Args:
        kind: ``"jego"`` or ``"hilbert"``.
        height, width: the (even) sides of each image's feature map.

    Returns:
        orders: ``(4, H * W / 2)`` long tensor; ``orders[k, t]`` is the token read at step ``t`` of
        direction ``k`` as an index into the concatenated token list of both images, where token
        ``(image i, row r, col c)`` has index ``i * H * W + r * W + c``. Together the rows are a
        permutation of ``range(2 * H * W)``.
    """
    _check_kind(kind)
    _check_even_size(height, width)
    return _scan_orders_cached(kind, height, width).clone()


@_tensor_cache(maxsize=128)
def _device_orders(kind: str, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened orders ``(2HW,)`` and their inverse permutation ``(2HW,)`` on ``device``."""
    order = _scan_orders_cached(kind, height, width).reshape(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return order.to(device), inverse.to(device)


def _gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, c, t] = tokens[b, c, index[t]]`` for ``tokens (B, C, N)`` and ``index (N,)``.

    ``torch.gather`` with an expanded (stride-0) index: on CPU several times faster than
    ``index_select`` along the last dimension.
    """
    return torch.gather(tokens, 2, index.expand(*tokens.shape[:2], -1))


class JointScan(nn.Module):
    """Four-direction joint scan of two feature maps and its exact inverse (no parameters).

    Example:
        >>> scanner = JointScan("jego")
        >>> seq = scanner.scan(feats0, feats1)         # (B, 4, C, H*W/2)
        >>> feats0, feats1 = scanner.merge(seq, (H, W))  # inverse: exactly feats0, feats1 again
    """

    def __init__(self, kind: str = "jego") -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind
        self._last_size: Optional[tuple[int, int]] = None

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def scan(self, feats0: torch.Tensor, feats1: torch.Tensor) -> torch.Tensor:
        """Read both maps in the four directions.

        Args:
            feats0: ``(B, C, H, W)`` features of image 0; H and W even.
            feats1: ``(B, C, H, W)`` features of image 1, same shape, dtype and device.

        Returns:
            seq: ``(B, 4, C, L)`` with ``L = H * W / 2``; ``seq[:, k]`` is direction k
            (see the module docstring for the directions).
        """
        for name, feats in (("feats0", feats0), ("feats1", feats1)):
            if not isinstance(feats, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(feats).__name__}")
            if feats.dim() != 4:
                raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(feats.shape)}")
        if feats0.shape != feats1.shape:
            raise ValueError(
                f"both maps must have the same (B, C, H, W), got {tuple(feats0.shape)} and {tuple(feats1.shape)}"
            )
        if feats0.dtype != feats1.dtype or feats0.device != feats1.device:
            raise TypeError(
                f"both maps must share dtype and device, got {feats0.dtype}/{feats0.device} "
                f"and {feats1.dtype}/{feats1.device}"
            )
        batch, channels, height, width = feats0.shape
        _check_even_size(height, width)
        order, _ = _device_orders(self.kind, height, width, feats0.device)
        tokens = torch.cat([feats0.reshape(batch, channels, -1), feats1.reshape(batch, channels, -1)], dim=2)
        seq = _gather_tokens(tokens, order).view(batch, channels, NUM_DIRECTIONS, -1)
        self._last_size = (height, width)
        return seq.transpose(1, 2).contiguous()

    forward = scan

    def merge(
        self, seq: torch.Tensor, size: Optional[tuple[int, int]] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter four direction sequences back to the two maps (the exact inverse of :meth:`scan`).

        Args:
            seq: ``(B, 4, C, L)`` direction sequences, ``L = H * W / 2``.
            size: ``(H, W)`` of each map; defaults to the size of the last :meth:`scan` of this module.

        Returns:
            feats0, feats1: ``(B, C, H, W)`` each.
        """
        if not isinstance(seq, torch.Tensor):
            raise TypeError(f"seq must be a torch.Tensor, got {type(seq).__name__}")
        if size is None:
            if self._last_size is None:
                raise ValueError("merge() needs size=(H, W) when this JointScan has not scanned anything yet")
            size = self._last_size
        height, width = size
        _check_even_size(height, width)
        if seq.dim() != 4 or seq.shape[1] != NUM_DIRECTIONS or seq.shape[3] != height * width // 2:
            raise ValueError(
                f"seq must be (B, 4, C, H*W/2) = (B, 4, C, {height * width // 2}) for maps of {height}x{width}, "
                f"got shape {tuple(seq.shape)}"
            )
        batch, _, channels, _ = seq.shape
        _, inverse = _device_orders(self.kind, height, width, seq.device)
        tokens = _gather_tokens(seq.transpose(1, 2).reshape(batch, channels, -1), inverse)
        feats0, feats1 = tokens.view(batch, channels, 2, height, width).unbind(2)
        return feats0, feats1
