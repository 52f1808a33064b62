"""A synthetic 3D scene of textured planes, written in MegaDepth's real layout so its loader reads it unchanged.

Each view is rendered by exact ray-plane intersection with a z-buffer: the ray of pixel ``(x, y)`` (pixel
centres at integers) is ``K^-1 (x, y, 1)`` in camera coordinates, a plane ``n . X = d`` (camera frame) is hit at
depth ``z = d / (n . ray)``, and the nearest hit inside a plane's rectangle gives the pixel its texture and its
depth. Pixels that hit nothing keep depth 0 (like MegaDepth's sky) and a flat background.

Layout written under ``out_dir`` (the loader's root)::

    Undistorted_SfM/<scene>/images/<view>.jpg
    phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<view>.h5    ('depth' dataset, float32 metres)
    scene_info/<scene>.npz                                           (pickled dict, as the real indices)

Command line: ``python -m asmamba.training.data.synthetic OUT_DIR --scenes 4 --views 8 --size 320x240``.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from asmamba.io import list_images, read_image
from asmamba.training.data.homography import SKIMAGE_IMAGES, _skimage_image
from asmamba.training.geometry import relative_pose, warp_points_depth

PathLike = Union[str, os.PathLike]

IMAGE_DIR = "Undistorted_SfM/{scene}/images"
DEPTH_DIR = "phoenix/S6/zl548/MegaDepth_v1/{scene}/dense0/depths"
INDEX_DIR = "scene_info"


@dataclass
class Plane:
    """A textured rectangle in world coordinates.

    ``centre`` (3,), orthonormal in-plane axes ``axis_u``, ``axis_v`` (3,) and half-extents ``half_size``
    ``(hu, hv)``: the rectangle is ``centre + a*axis_u + b*axis_v`` for ``|a| <= hu``, ``|b| <= hv``. Its normal is
    ``cross(axis_u, axis_v)``. Texture pixel ``(0, 0)`` sits at ``a = -hu, b = -hv``.
    """

    centre: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    half_size: tuple[float, float]
    texture: str = ""

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.axis_u, self.axis_v)


@dataclass
class Camera:
    """A pinhole view: ``K`` (3, 3) and ``T_world_to_cam`` (4, 4)."""

    K: np.ndarray
    T_world_to_cam: np.ndarray


@dataclass
class SyntheticScene:
    """What :func:`generate_scene` wrote: the geometry it rendered and where the files are."""

    root: Path
    scene: str
    planes: list[Plane]
    cameras: list[Camera]
    image_size: tuple[int, int]
    scene_info_path: Path
    image_paths: list[str] = field(default_factory=list)
    depth_paths: list[str] = field(default_factory=list)
    pair_infos: list = field(default_factory=list)


def look_at(position: np.ndarray, target: np.ndarray, up: Sequence[float] = (0.0, -1.0, 0.0)) -> np.ndarray:
    """World-to-camera ``(4, 4)`` of a camera at ``position`` whose optical axis (+z) points at ``target``,
    with image y pointing along ``-up`` (OpenCV camera frame: x right, y down, z forward)."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, float), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, -R @ np.asarray(position, float)
    return T


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    return cv2.Rodrigues((np.asarray(axis, float) / np.linalg.norm(axis) * angle).reshape(3, 1))[0]


def random_planes(rng: np.random.Generator, n_planes: int, textures: Sequence[str]) -> list[Plane]:
    """A back wall plus ``n_planes - 1`` tilted rectangles in front of it, around the world origin (cameras look
    along +z from z < 0)."""
    planes = [Plane(np.array([0.0, 0.0, 4.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (6.0, 4.5))]
    for _ in range(n_planes - 1):
        tilt = _rotation(rng.normal(size=3), math.radians(rng.uniform(10, 45)))
        centre = np.array([rng.uniform(-2.5, 2.5), rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 2.5)])
        half = (float(rng.uniform(0.6, 1.6)), float(rng.uniform(0.6, 1.4)))
        planes.append(Plane(centre, tilt @ np.array([1.0, 0, 0]), tilt @ np.array([0, 1.0, 0]), half))
    for k, p in enumerate(planes):
        p.texture = textures[int(rng.integers(len(textures)))] if k else textures[0]
    return planes


def random_cameras(
    rng: np.random.Generator, n_views: int, image_size: Sequence[int], target: Sequence[float] = (0.0, 0.0, 1.0)
) -> list[Camera]:
    """Cameras on an arc in front of the scene (distance 7-9, yaw within +-30 deg, pitch within +-12 deg),
    each looking near ``target`` with a little roll."""
    w, h = image_size
    cams = []
    for _ in range(n_views):
        yaw, pitch = math.radians(rng.uniform(-30, 30)), math.radians(rng.uniform(-12, 12))
        dist = rng.uniform(7.0, 9.0)
        position = np.asarray(target) + dist * np.array(
            [math.sin(yaw) * math.cos(pitch), math.sin(pitch), -math.cos(yaw) * math.cos(pitch)]
        )
        aim = np.asarray(target) + rng.uniform(-0.5, 0.5, 3)
        roll = math.radians(rng.uniform(-8, 8))
        T = look_at(position, aim, up=(math.sin(roll), -math.cos(roll), 0.0))
        f = rng.uniform(0.9, 1.3) * w
        K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
        cams.append(Camera(K, T))
    return cams


def load_texture(spec: str) -> np.ndarray:
    """RGB uint8 texture from an image file or ``"skimage/<name>"``."""
    if spec.startswith("skimage/"):
        image = _skimage_image(spec[len("skimage/"):])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        return np.ascontiguousarray(image[..., :3].astype(np.uint8))
    return read_image(spec, grayscale=False)


def resolve_textures(textures: Union[str, PathLike, Sequence[PathLike], None]) -> list[str]:
    """Texture specs from None / ``"skimage"`` (scikit-image's shipped images), a folder, or a list of files."""
    if textures is None or str(textures) == "skimage":
        return [f"skimage/{n}" for n in SKIMAGE_IMAGES]
    if isinstance(textures, (str, os.PathLike)):
        folder = Path(textures)
        if not folder.is_dir():
            raise FileNotFoundError(f"texture folder {str(folder)!r} does not exist")
        return [str(folder / n) for n in list_images(folder)]
    specs = [str(t) for t in textures]
    for s in specs:
        if not s.startswith("skimage/") and not Path(s).is_file():
            raise FileNotFoundError(f"texture {s!r} does not exist")
    if not specs:
        raise ValueError("no texture given")
    return specs


def render_view(
    planes: Sequence[Plane], camera: Camera, image_size: Sequence[int], textures: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view by ray casting with a z-buffer.

    Returns:
        RGB uint8 ``(h, w, 3)`` and depth float32 ``(h, w)`` (camera z, 0 where no plane is hit).
    """
    w, h = int(image_size[0]), int(image_size[1])
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(camera.K).T  # (h, w, 3), z = 1
    R, t = camera.T_world_to_cam[:3, :3], camera.T_world_to_cam[:3, 3]
    depth = np.full((h, w), np.inf)
    owner = np.full((h, w), -1)
    coords = np.zeros((h, w, 2))
    for k, plane in enumerate(planes):
        n_c = R @ plane.normal
        d_c = n_c @ (R @ plane.centre + t)
        denom = rays @ n_c
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(np.abs(denom) > 1e-12, d_c / denom, np.inf)
        X_world = (rays * z[..., None] - t) @ R  # camera -> world: R^T (X - t)
        rel = X_world - plane.centre
        a, b = rel @ plane.axis_u, rel @ plane.axis_v
        hit = (z > 1e-6) & np.isfinite(z) & (np.abs(a) <= plane.half_size[0]) & (np.abs(b) <= plane.half_size[1])
        closer = hit & (z < depth)
        depth[closer], owner[closer] = z[closer], k
        coords[closer] = np.stack([a, b], -1)[closer]
    image = np.zeros((h, w, 3), np.float32)
    image[:] = np.array([150.0, 170.0, 190.0], np.float32)  # flat "sky"
    for k, plane in enumerate(planes):
        sel = owner == k
        if not sel.any():
            continue
        tex = textures[plane.texture]
        th, tw = tex.shape[:2]
        hu, hv = plane.half_size
        u = (coords[..., 0] + hu) / (2 * hu) * (tw - 1)
        v = (coords[..., 1] + hv) / (2 * hv) * (th - 1)
        # mip level from the texture footprint of one pixel, so minified textures do not alias
        footprint = np.hypot(np.diff(u, axis=1, append=u[:, -1:]), np.diff(v, axis=1, append=v[:, -1:]))
        level = int(np.clip(np.floor(np.log2(max(np.median(footprint[sel]), 1e-6))), 0, 6))
        mip = tex
        for _ in range(level):
            mip = cv2.pyrDown(mip)
        f = mip.shape[1] / tw
        map_x = ((u + 0.5) * f - 0.5).astype(np.float32)
        map_y = ((v + 0.5) * (mip.shape[0] / th) - 0.5).astype(np.float32)
        sampled = cv2.remap(mip, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        image[sel] = sampled[sel]
    depth[~np.isfinite(depth)] = 0.0
    return np.clip(image, 0, 255).astype(np.uint8), depth.astype(np.float32)


def pair_overlap(
    depth0: np.ndarray, depth1: np.ndarray, cam0: Camera, cam1: Camera, step: int = 4
) -> tuple[float, np.ndarray]:
    """Covisibility of two rendered views: the smaller of the two fractions of valid-depth pixels (on a grid of
    ``step``) that warp into the other view and pass its depth test.

    Returns:
        the overlap score and the mean of the covisible points ``(x0, y0, x1, y1)`` (zeros if none).
    """
    T01 = relative_pose(cam0.T_world_to_cam, cam1.T_world_to_cam)
    fractions, centres = [], []
    for da, db, ca, cb, T in ((depth0, depth1, cam0, cam1, T01), (depth1, depth0, cam1, cam0, np.linalg.inv(T01))):
        ys, xs = np.nonzero(da[::step, ::step] > 0)
        if len(xs) == 0:
            return 0.0, np.zeros(4)
        pts = torch.from_numpy(np.stack([xs, ys], -1) * step).double()[None]
        valid, warped = warp_points_depth(
            pts, torch.from_numpy(da)[None], torch.from_numpy(db)[None], torch.from_numpy(T)[None],
            torch.from_numpy(ca.K)[None], torch.from_numpy(cb.K)[None],
        )
        fractions.append(float(valid.float().mean()))
        v = valid[0]
        centres.append(torch.cat([pts[0][v], warped[0][v]], -1).mean(0).numpy() if v.any() else np.zeros(4))
    return min(fractions), centres[0]


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` into a sibling temporary file, then rename it to ``path`` (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def generate_scene(
    out_dir: PathLike,
    n_views: int = 6,
    seed: int = 0,
    image_size: Sequence[int] = (320, 240),
    textures: Union[str, PathLike, Sequence[PathLike], None] = "skimage",
    *,
    scene: Optional[str] = None,
    n_planes: int = 5,
    planes: Optional[Sequence[Plane]] = None,
    cameras: Optional[Sequence[Camera]] = None,
    min_overlap: float = 0.05,
    jpeg_quality: int = 95,
) -> SyntheticScene:
    """Render a scene of textured planes and write it in MegaDepth's layout (see the module docstring).

    Args:
        out_dir: dataset root to write into (created if needed; other scenes in it are kept).
        n_views: number of cameras (ignored when ``cameras`` is given).
        seed: seeds the planes, cameras and texture choice.
        image_size: ``(w, h)`` of the rendered views.
        textures: ``"skimage"``, a folder of images, or a list of image files / ``"skimage/<name>"``.
        scene: scene name (default ``synth{seed:04d}``).
        planes, cameras: explicit geometry instead of random (each plane's ``texture`` must then be set).
        min_overlap: pairs with a smaller overlap score are left out of ``pair_infos``.
    Returns:
        the :class:`SyntheticScene` (geometry, paths, pairs).
    """
    if n_views < 2 and cameras is None:
        raise ValueError(f"a scene needs at least 2 views, got n_views={n_views}")
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    scene = scene or f"synth{seed:04d}"
    size = (int(image_size[0]), int(image_size[1]))
    specs = resolve_textures(textures)
    planes = list(planes) if planes is not None else random_planes(rng, n_planes, specs)
    cameras = list(cameras) if cameras is not None else random_cameras(rng, n_views, size)
    texture_images = {p.texture: load_texture(p.texture) for p in planes}
    result = SyntheticScene(root, scene, planes, cameras, size, root / INDEX_DIR / f"{scene}.npz")
    depths = []
    for k, cam in enumerate(cameras):
        image, depth = render_view(planes, cam, size, texture_images)
        image_rel = f"{IMAGE_DIR.format(scene=scene)}/{k:04d}.jpg"
        depth_rel = f"{DEPTH_DIR.format(scene=scene)}/{k:04d}.h5"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError(f"JPEG encoding of view {k} failed")
        write_atomic(root / image_rel, lambda p, e=encoded: p.write_bytes(e.tobytes()))
        write_atomic(root / depth_rel, lambda p, d=depth: write_depth_h5(p, d))
        result.image_paths.append(image_rel)
        result.depth_paths.append(depth_rel)
        depths.append(depth)
    for i in range(len(cameras)):
        for j in range(i + 1, len(cameras)):
            score, central = pair_overlap(depths[i], depths[j], cameras[i], cameras[j])
            if score > min_overlap:
                result.pair_infos.append((np.array([i, j]), float(score), central))
    info = {
        "image_paths": np.array(result.image_paths, dtype=object),
        "depth_paths": np.array(result.depth_paths, dtype=object),
        "intrinsics": np.array([c.K for c in cameras] + [None], dtype=object)[:-1],
        "poses": np.array([c.T_world_to_cam for c in cameras] + [None], dtype=object)[:-1],
        "pair_infos": result.pair_infos,
    }
    write_atomic(result.scene_info_path, lambda p: p.write_bytes(pickle.dumps(info, protocol=4)))
    return result


def write_depth_h5(path: Path, depth: np.ndarray) -> None:
    """A depth map in MegaDepth's HDF5 layout (a float32 ``depth`` dataset)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("depth", data=depth.astype(np.float32))


def main(argv: Optional[list[str]] = None) -> int:
    """Write synthetic MegaDepth-format scenes (``python -m asmamba.training.data.synthetic --help``)."""
    parser = argparse.ArgumentParser(prog="asmamba-synthetic", description=main.__doc__)
    parser.add_argument("out_dir", help="dataset root to write (MegaDepth layout)")
    parser.add_argument("--scenes", type=int, default=1, help="number of scenes (seeds seed..seed+scenes-1)")
    parser.add_argument("--views", type=int, default=6, help="views per scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="320x240", help="WxH of the rendered views")
    parser.add_argument("--planes", type=int, default=5, help="planes per scene")
    parser.add_argument("--textures", default="skimage", help="'skimage' or a folder of texture images")
    args = parser.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 320x240, got {args.size!r}")
    for s in range(args.seed, args.seed + args.scenes):
        result = generate_scene(args.out_dir, args.views, s, (w, h), args.textures, n_planes=args.planes)
        counts = f"{len(result.cameras)} views, {len(result.pair_infos)} pairs"
        print(f"{result.scene}: {counts} -> {result.scene_info_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
