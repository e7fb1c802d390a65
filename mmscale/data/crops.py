"""Lesion-centred crops of CT (and optionally PET) volumes.

As in the paper: every slice is resized to ``resize x resize``, ``depth`` slices are
taken around the lesion, and a ``crop x crop`` window around the lesion centre feeds
the network (random position in training, centre in evaluation). The cache keeps a
``margin`` around the window so that random crops need no second read of the DICOMs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmscale.data.dicom import AXIAL, CTSeries, PETSeries
from mmscale.data.tcia import Box

__all__ = [
    "CropConfig",
    "center_crop",
    "crop_volume",
    "lesion_center",
    "random_crop",
    "resample_pet_to_ct",
]


@dataclass(frozen=True)
class CropConfig:
    """How crops are cut (defaults: the paper's 12 slices, resize 208, crop 192).

    Attributes:
        depth: slices per crop.
        resize: every slice is resized to ``resize x resize`` first.
        crop: in-plane size fed to the network.
        margin: pixels kept on each side of the ``crop`` window for random crops;
            ``None`` means ``(resize - crop) // 2``.
        hu_min, hu_max: CT window mapped to ``[0, 1]`` (values outside are clipped).
        pet: add a PET channel resampled onto the CT grid (zeros when a patient has no
            PET series).

    Raises:
        ValueError: a size or margin that is not an int, a non-positive size,
            ``crop > resize``, a negative margin, a non-finite window, ``hu_max <= hu_min``,
            or a ``pet`` that is not a bool.

    Example:
        >>> cfg = CropConfig(depth=8, resize=128, crop=24, margin=4)
        >>> cfg.stored, cfg.channels, CropConfig().pad
        (32, 1, 8)
    """

    depth: int = 12
    resize: int = 208
    crop: int = 192
    margin: int | None = None
    hu_min: float = -1000.0
    hu_max: float = 400.0
    pet: bool = False

    def __post_init__(self):
        for name in ("depth", "resize", "crop", "margin"):
            value = getattr(self, name)
            if name == "margin" and value is None:
                continue
            # 2.5 or True would pass int() and shape every crop differently than asked.
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name}: must be an int, got {value!r}")
            if value < (0 if name == "margin" else 1):
                raise ValueError(f"{name}: must be {'>= 0' if name == 'margin' else 'a positive int'}, "
                                 f"got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop: {self.crop} is larger than resize={self.resize}")
        for name in ("hu_min", "hu_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
                raise ValueError(f"{name}: must be a finite number, got {value!r}")
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max: must exceed hu_min, got {self.hu_min}, {self.hu_max}")
        if not isinstance(self.pet, bool):
            raise ValueError(f"pet: must be True or False, got {self.pet!r}")

    @property
    def pad(self) -> int:
        """The margin actually used on each side."""
        return (self.resize - self.crop) // 2 if self.margin is None else int(self.margin)

    @property
    def stored(self) -> int:
        """In-plane size of a cached crop: ``crop + 2 * pad``."""
        return self.crop + 2 * self.pad

    @property
    def channels(self) -> int:
        """1 (CT) or 2 (CT + PET)."""
        return 2 if self.pet else 1

    def to_dict(self) -> dict:
        """Plain-type form for caches and checkpoints."""
        return asdict(self)


def lesion_center(ct: CTSeries, boxes: Sequence[Box]) -> tuple[float, float, float] | None:
    """Lesion centre ``(z_index, y, x)`` in the CT's voxel coordinates.

    The slice is the median annotated slice; in-plane, the centre of the largest box on
    that slice (several boxes can sit on one slice).

    Args:
        ct: the CT series the boxes were matched to.
        boxes: boxes keyed by SOPInstanceUID.

    Returns:
        The centre, or ``None`` when no box lies on a slice of ``ct``.

    Example:
        >>> lesion_center(ct, record.boxes)  # doctest: +SKIP
        (31.0, 356.0, 320.5)
    """
    on_slices = [(ct.slice_index(b.sop_instance_uid), b) for b in boxes if b.area > 0]
    on_slices = [(k, b) for k, b in on_slices if k is not None]
    if not on_slices:
        return None
    ks = sorted(k for k, _ in on_slices)
    k_mid = ks[(len(ks) - 1) // 2]
    best = max((b for k, b in on_slices if k == k_mid), key=lambda b: b.area)
    return float(k_mid), (best.ymin + best.ymax) / 2.0, (best.xmin + best.xmax) / 2.0


def resample_pet_to_ct(pet: PETSeries, ct: CTSeries) -> np.ndarray:
    """Trilinear resampling of a PET volume onto the CT voxel grid.

    Both series must be axial (ImageOrientationPatient ``(1, 0, 0, 0, 1, 0)``, as in the
    collection); voxels outside the PET field of view become 0.

    Args:
        pet: the PET series (``values [Dp, Hp, Wp]``).
        ct: the target CT series (``hu [D, H, W]``).

    Returns:
        float32 ``[D, H, W]`` PET values on the CT grid.

    Raises:
        ValueError: either series is not axial.

    Example:
        >>> resample_pet_to_ct(pet, ct).shape == ct.hu.shape  # doctest: +SKIP
        True
    """
    for name, series in (("pet", pet), ("ct", ct)):
        if np.abs(np.asarray(series.orientation, dtype=np.float64) - AXIAL).max() > 1e-3:
            raise ValueError(f"{name}: ImageOrientationPatient {list(series.orientation)} is not "
                             f"axial {list(AXIAL)}; resampling supports axial series only")
    d, h, w = ct.hu.shape
    _, dy, dx = ct.spacing
    pd_, ph, pw = pet.values.shape
    pdz, pdy, pdx = pet.spacing
    x = ct.origin[0] + dx * torch.arange(w, dtype=torch.float64)
    y = ct.origin[1] + dy * torch.arange(h, dtype=torch.float64)
    z = torch.tensor(ct.z_positions, dtype=torch.float64)

    def to_grid(coord, origin, step, n):
        idx = (coord - origin) / step
        return 2.0 * idx / max(n - 1, 1) - 1.0 if n > 1 else idx * 0.0

    gx = to_grid(x, pet.origin[0], pdx, pw)
    gy = to_grid(y, pet.origin[1], pdy, ph)
    gz = to_grid(z, pet.origin[2], pdz, pd_)
    zz, yy, xx = torch.meshgrid(gz, gy, gx, indexing="ij")
    grid = torch.stack([xx, yy, zz], dim=-1).float()[None]  # [1, D, H, W, 3] as (x, y, z)
    src = torch.from_numpy(np.ascontiguousarray(pet.values, dtype=np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy()


def _window_2d(planes: torch.Tensor, cy: float, cx: float, size: int) -> torch.Tensor:
    """``size x size`` window of ``planes [C, D, H, W]`` centred at (cy, cx), zero-padded."""
    _, _, h, w = planes.shape
    top = int(round(cy)) - size // 2
    left = int(round(cx)) - size // 2
    pad = (max(0, -left), max(0, left + size - w), max(0, -top), max(0, top + size - h))
    if any(pad):
        planes = F.pad(planes, pad, value=0.0)
        top += pad[2]
        left += pad[0]
    return planes[:, :, top:top + size, left:left + size]


def crop_volume(
    ct: CTSeries,
    center: tuple[float, float, float] | None,
    config: CropConfig,
    pet: np.ndarray | None = None,
) -> np.ndarray:
    """Cut the cached, normalised crop around a lesion (or the volume centre).

    Args:
        ct: the CT series (``hu [D, H, W]``).
        center: ``(z_index, y, x)`` in CT voxels, or ``None`` for the volume centre.
        config: the :class:`CropConfig`.
        pet: PET on the CT grid ``[D, H, W]`` (from :func:`resample_pet_to_ct`), or
            ``None``; used only when ``config.pet`` (zeros when missing).

    Returns:
        float32 ``[C, depth, stored, stored]``: CT mapped from ``[hu_min, hu_max]`` to
        ``[0, 1]``; PET divided by its 99.5th percentile and clipped to ``[0, 2]``.
        Slices beyond the volume repeat the edge slice; pixels beyond it are 0.

    Raises:
        ValueError: ``pet`` is given but its shape differs from the CT's, or ``center``
            is not finite or lies more than one volume size outside the volume.

    Example:
        >>> crop_volume(ct, None, CropConfig(depth=4, resize=64, crop=32)).shape  # doctest: +SKIP
        (1, 4, 64, 64)
    """
    d, h, w = ct.hu.shape
    if center is None:
        center = ((d - 1) / 2.0, (h - 1) / 2.0, (w - 1) / 2.0)
    cz, cy, cx = (float(v) for v in center)
    # A centre far outside the volume would make the zero padding (and memory) explode.
    if not all(np.isfinite(v) and -n <= v <= 2 * n for v, n in ((cz, d), (cy, h), (cx, w))):
        raise ValueError(f"center: {tuple(center)} is not finite or lies far outside the volume "
                         f"of shape {(d, h, w)}")
    first = int(round(cz)) - config.depth // 2
    idx = np.clip(np.arange(first, first + config.depth), 0, d - 1)
    hu = torch.from_numpy(np.ascontiguousarray(ct.hu[idx], dtype=np.float32))
    chans = [((hu.clamp(config.hu_min, config.hu_max) - config.hu_min)
              / (config.hu_max - config.hu_min))]
    if config.pet:
        if pet is None:
            chans.append(torch.zeros_like(chans[0]))
        else:
            if pet.shape != ct.hu.shape:
                raise ValueError(f"pet: shape {pet.shape} differs from the CT's {ct.hu.shape}")
            scale = float(np.percentile(pet, 99.5))
            scale = scale if np.isfinite(scale) and scale > 0 else 1.0  # empty or negative PET
            chans.append((torch.from_numpy(pet[idx].astype(np.float32)) / scale).clamp(0.0, 2.0))
    vol = torch.stack(chans)  # [C, depth, H, W]
    if (h, w) != (config.resize, config.resize):
        c = vol.shape[0]
        vol = F.interpolate(vol.reshape(c * config.depth, 1, h, w), size=(config.resize,) * 2,
                            mode="bilinear", align_corners=False, antialias=True)
        vol = vol.reshape(c, config.depth, config.resize, config.resize)
    sy, sx = config.resize / h, config.resize / w
    # Pixel centres map as (p + 0.5) * s - 0.5 under align_corners=False.
    out = _window_2d(vol, (cy + 0.5) * sy - 0.5, (cx + 0.5) * sx - 0.5, config.stored)
    return out.contiguous().numpy()


def center_crop(x: np.ndarray | torch.Tensor, size: int):
    """Central ``size x size`` in-plane window of ``x [..., H, W]``.

    Raises:
        ValueError: ``size`` exceeds the in-plane size.

    Example:
        >>> center_crop(np.arange(16).reshape(4, 4), 2).tolist()
        [[5, 6], [9, 10]]
    """
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"size: {size} exceeds the input's {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_crop(x: np.ndarray | torch.Tensor, size: int, rng: np.random.Generator):
    """Random ``size x size`` in-plane window of ``x [..., H, W]`` drawn with ``rng``.

    Raises:
        ValueError: ``size`` exceeds the in-plane size.

    Example:
        >>> random_crop(np.zeros((1, 8, 8)), 4, np.random.default_rng(0)).shape
        (1, 4, 4)
    """
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"size: {size} exceeds the input's {h}x{w}")
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return x[..., top:top + size, left:left + size]
