"""Input-quality and resource rules shared by the index and the loaders (one place for each).

Two kinds of rule, both raising `InputQualityError` (an `ArchiveError`, so every caller that already
skips unreadable files skips these too, with the reason):

- **Resource limits** checked from a header, before any pixel is decoded: pixels per slice,
  voxels per volume (and so the bytes a decoder would produce), and the memory one patient's
  decoded slices take (so a patient of many slices, each within the limits, cannot exhaust a
  worker either). `Limits` holds them.
- **Usable content**: a scan that is all zero, constant, holds NaN/Inf, is tiny, or has a NaN/zero
  voxel size cannot be screened; it is a failure with a reason, never a tumour-free patient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io.errors import ArchiveError


class InputQualityError(ArchiveError):
    """An input that can be read but must not be screened (or must not be decoded at all)."""


@dataclass(frozen=True)
class Limits:
    """Largest and smallest inputs a run accepts.

    Attributes:
        max_slice_pixels: most pixels in one 2-D slice (height × width; 4096² by default).
        max_volume_voxels: most voxels in one 3-D volume (2^27 ≈ 134 M, e.g. 512³).
        min_side: fewest pixels along a slice's height or width.
        max_depth: deepest folder nesting walked below the archive root.
        max_patient_mb: most MiB one patient's slices take decoded (`patient_mb`: slices ×
            height × width × 3 channels × 4 bytes). Triage's peak per patient in flight measured
            about 7 times this (a 40-slice 512 px patient: 120 MiB decoded, 830 MiB at the peak
            with 256 px models), so a worker's memory stays bounded by about 7 × this × the
            patients it runs at once, besides its models.
    """

    max_slice_pixels: int = 4096 * 4096
    max_volume_voxels: int = 2**27
    min_side: int = 16
    max_depth: int = 32
    max_patient_mb: int = 1024

    def __post_init__(self) -> None:
        values = (self.max_slice_pixels, self.max_volume_voxels, self.min_side, self.max_depth)
        if min(*values, self.max_patient_mb) < 1:
            raise ValueError("limits must be positive integers")


DEFAULT_LIMITS = Limits()


def check_slice_size(
    shape: Sequence[int], path: str | Path, limits: Limits = DEFAULT_LIMITS, *, tiny: bool = True
) -> None:
    """Refuse a 2-D slice `(H, W[, C])` from its declared shape, before decoding it.

    Args:
        shape: declared shape.
        path: the file (for the error).
        limits: the limits.
        tiny: also refuse a side shorter than `limits.min_side` (images; masks are checked
            against their image instead).

    Raises:
        InputQualityError: too many pixels, or (with `tiny`) a side that is too short.
    """
    if len(shape) < 2:
        raise InputQualityError(path, f"not an image (shape {tuple(shape)})")
    h, w = int(shape[0]), int(shape[1])
    if h * w > limits.max_slice_pixels:
        raise InputQualityError(
            path,
            f"image of {h}x{w} pixels exceeds the limit of {limits.max_slice_pixels} per slice",
        )
    if tiny and min(h, w) < limits.min_side:
        raise InputQualityError(
            path, f"image of {h}x{w} pixels is too small (min side {limits.min_side})"
        )


def check_volume_size(
    shape: Sequence[int], path: str | Path, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Refuse a 3-D volume from its declared shape: empty or too many voxels (the slice size is
    checked on the canonical axial plane, once the orientation is known).

    Raises:
        InputQualityError: with the reason.
    """
    dims = [int(s) for s in shape]
    if len(dims) < 3 or min(dims[:3]) < 1:
        raise InputQualityError(path, f"degenerate volume shape {tuple(dims)}")
    voxels = math.prod(dims)
    if voxels > limits.max_volume_voxels:
        raise InputQualityError(
            path,
            f"volume {tuple(dims)} has {voxels} voxels, over the limit of "
            f"{limits.max_volume_voxels}",
        )


#: Bytes one decoded pixel of a patient takes in memory: 3 channels of float32.
BYTES_PER_PIXEL = 3 * 4


def patient_mb(pixels: int) -> float:
    """MiB a patient's slices take decoded, from their total pixel count (sum of height × width)."""
    return pixels * BYTES_PER_PIXEL / 2**20


def check_patient_size(
    pixels: int, slices: int, path: str | Path, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Refuse a patient whose decoded slices would exceed `limits.max_patient_mb`, from the
    sizes its headers declare (the index's height and width columns), before loading any.

    Args:
        pixels: sum of height × width over the patient's slices.
        slices: how many slices that is.
        path: the patient's folder or file (for the error).
        limits: the limits.

    Raises:
        InputQualityError: over the limit (the reason gives the estimate and the limit).
    """
    need = patient_mb(pixels)
    if need > limits.max_patient_mb:
        raise InputQualityError(
            path,
            f"patient of {slices} slices ({pixels} pixels) takes about {need:.0f} MiB decoded, "
            f"over the limit of {limits.max_patient_mb} MiB per patient (--max-patient-mb)",
        )


def check_spacing(spacing: Sequence[float], path: str | Path) -> None:
    """Refuse a NaN, infinite, zero or negative voxel size (a NIfTI header's pixdim/affine).

    Raises:
        InputQualityError: with the offending spacing.
    """
    values = [float(s) for s in spacing]
    if not all(math.isfinite(v) and v > 0 for v in values):
        shown = ", ".join(f"{v:g}" for v in values)
        raise InputQualityError(path, f"unusable voxel size ({shown}) mm")


def value_problem(low: float, high: float, finite: bool) -> str | None:
    """Why an image with this value range cannot be screened, or None when it can.

    Args:
        low, high: smallest and largest finite value of the whole scan.
        finite: False when any value is NaN or infinite.
    """
    if not finite:
        return "image contains NaN or infinite values"
    if high <= low:
        return "image is all zero" if high == 0 else f"image is constant (every value {high:g})"
    return None


def value_range(data: np.ndarray) -> tuple[float, float, bool]:
    """`(low, high, finite)` of an array for `value_problem` (bounded memory: no copies kept)."""
    arr = np.asarray(data)
    if arr.size == 0:
        return 0.0, 0.0, True
    if np.issubdtype(arr.dtype, np.floating):
        finite = bool(np.isfinite(arr).all())
        if not finite:
            return 0.0, 0.0, False
    return float(arr.min()), float(arr.max()), True


def check_values(data: np.ndarray, path: str | Path) -> None:
    """Raise `InputQualityError` when a whole scan is empty, constant or not finite."""
    problem = value_problem(*value_range(data))
    if problem:
        raise InputQualityError(path, problem)
