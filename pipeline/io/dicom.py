"""DICOM series: check a series' geometry and build its volume in the NIfTI path's frame.

Headers are read and grouped into series by `pipeline.io.dicom_header` (re-exported here). A series
becomes one volume: frames sorted by ImagePositionPatient projected on the slice normal (never by
InstanceNumber or file name), RescaleSlope/Intercept applied, affine from ImageOrientationPatient,
ImagePositionPatient and PixelSpacing with the measured slice spacing. The volume is handed to
`pipeline.io.nifti.NiftiGeometry`, so DICOM and NIfTI go to canonical RAS and back the same way.

Stored grid of a series: `(columns, rows, slices)`, i.e. `data[i, j, k]` is column i, row j of the
k-th frame in sorted order, and the affine maps `(i, j, k)` to RAS millimetres.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipeline.io.dicom_header import (
    DICOM_SUFFIXES,
    NON_IMAGE_MODALITIES,
    Frame,
    SeriesHeader,
    looks_like_dicom,
    read_header,
    scan_series,
)
from pipeline.io.errors import ArchiveError
from pipeline.io.nifti import NiftiGeometry

__all__ = [
    "DICOM_SUFFIXES",
    "NON_IMAGE_MODALITIES",
    "Frame",
    "SeriesGeometry",
    "SeriesHeader",
    "check_series",
    "looks_like_dicom",
    "read_header",
    "read_volume",
    "scan_series",
]

#: Relative tolerance on slice spacing (and on orientation cosines, absolute).
SPACING_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SeriesGeometry:
    """A checked series: frames in slice order and the affine of the stored grid.

    Attributes:
        frames: frames sorted along the slice normal (k = 0 first).
        affine: `(4, 4)` RAS affine of the stored grid `(columns, rows, slices)`.
        notes: `{"path", "reason"}` for instances left out (localizers, exact duplicates).
    """

    frames: tuple[Frame, ...]
    affine: np.ndarray
    notes: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, cols = self.frames[0].size
        return (cols, rows, len(self.frames))

    def nifti_geometry(self) -> NiftiGeometry:
        return NiftiGeometry.from_affine(self.affine, self.shape)


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return np.cross(row, col)


def _check_uniform(frames: list[Frame], where: str) -> None:
    """Same size, pixel spacing and orientation across the frames, or `ArchiveError`."""
    sizes = Counter(f.size for f in frames)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} ({n})" for (r, c), n in sizes.most_common())
        raise ArchiveError(where, f"mixed image sizes within the series: {listed}")
    missing = [f for f in frames if len(f.orientation) != 6 or len(f.position) != 3]
    if missing or any(len(f.pixel_spacing) != 2 for f in frames):
        raise ArchiveError(where, "image without ImagePositionPatient, Orientation or PixelSpacing")
    ori = np.array([f.orientation for f in frames])
    if np.abs(ori - ori[0]).max() > _ORIENTATION_TOLERANCE:
        n = len({tuple(np.round(o, 3)) for o in ori})
        raise ArchiveError(where, f"mixed orientations within the series ({n} different)")
    spacing = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacing - spacing[0]).max() > SPACING_TOLERANCE * spacing[0].min():
        raise ArchiveError(where, "mixed pixel spacings within the series")


def _drop_duplicates(frames: list[Frame]) -> tuple[list[Frame], list[dict[str, str]]]:
    """Exact copies (same SOPInstanceUID and frame) are left out with a note."""
    seen: set[tuple[str, int | None]] = set()
    kept, notes = [], []
    for f in sorted(frames, key=lambda f: (f.path, f.frame or 0)):
        key = (f.sop_uid, f.frame)
        if f.sop_uid and key in seen:
            notes.append(
                {"path": f.path, "reason": "duplicate instance (same SOPInstanceUID); left out"}
            )
            continue
        seen.add(key)
        kept.append(f)
    return kept, notes


def check_series(header: SeriesHeader) -> SeriesGeometry:
    """Check a series' geometry from headers alone and sort its frames along the slice normal.

    Localizers and exact duplicate instances are left out (listed in `notes`); anything else that
    stops one volume from being built raises.

    Raises:
        ArchiveError: mixed sizes/orientations/spacings, several frames at
            one position (4-D, or duplicated slices), missing slices (a gap), uneven spacing,
            positions not along the slice normal.
    """
    where = header.frames[0].path if header.frames else header.series_uid
    notes = [
        {"path": f.path, "reason": "localizer image among the series' slices; left out"}
        for f in header.frames
        if f.localizer
    ]
    frames, dup_notes = _drop_duplicates([f for f in header.frames if not f.localizer])
    notes += dup_notes
    if not frames:
        raise ArchiveError(where, "series holds no usable image")
    _check_uniform(frames, where)
    normal = _normal(frames[0].orientation)
    dist = np.array([np.dot(f.position, normal) for f in frames])
    order = np.argsort(dist, kind="stable")
    frames, dist = [frames[i] for i in order], dist[order]
    counts = Counter(np.round(dist, 2))
    if max(counts.values()) > 1:
        per = set(counts.values())
        if len(per) == 1:
            raise ArchiveError(
                where, f"4-D series: {per.pop()} images at each of {len(counts)} positions"
            )
        dup = sum(1 for c in counts.values() if c > 1)
        raise ArchiveError(where, f"duplicated slices: {dup} position(s) hold several images")
    step = _slice_step(frames, dist, where)
    lateral = np.array([f.position for f in frames]) - np.outer(dist - dist[0], normal)
    if np.abs(lateral - lateral[0]).max() > max(SPACING_TOLERANCE * step, 1e-3) * 10:
        raise ArchiveError(where, "slice positions do not lie along the slice normal (tilt?)")
    row_cos, col_cos = np.asarray(frames[0].orientation[:3]), np.asarray(frames[0].orientation[3:])
    row_spacing, col_spacing = frames[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing  # along a row: column index i
    lps[:3, 1] = col_cos * row_spacing  # down a column: row index j
    lps[:3, 2] = normal * step
    lps[:3, 3] = frames[0].position
    return SeriesGeometry(tuple(frames), _LPS_TO_RAS @ lps, tuple(notes))


def _slice_step(frames: list[Frame], dist: np.ndarray, where: str) -> float:
    """The one slice spacing (mm) of a sorted series, or `ArchiveError` for gaps/uneven steps."""
    if len(frames) == 1:
        thick = frames[0].thickness
        return float(thick) if np.isfinite(thick) and thick > 0 else 1.0
    steps = np.diff(dist)
    step = float(np.median(steps))
    tol = max(SPACING_TOLERANCE * step, 1e-3)
    if np.all(np.abs(steps - step) <= tol):
        return step
    multiples = steps / step
    if np.all(np.abs(multiples - np.round(multiples)) <= SPACING_TOLERANCE * multiples):
        missing = int(np.round(multiples).sum() - len(steps))
        at = int(np.argmax(multiples)) + 1
        raise ArchiveError(
            where, f"{missing} missing slice(s): gap of {steps.max():.2f} mm before sorted "
            f"slice {at} (spacing {step:.2f} mm)"
        )  # fmt: skip
    raise ArchiveError(where, f"uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm)")


def _decode(ds: Dataset, path: str) -> np.ndarray:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ArchiveError(path, "image without pixel data")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises several types for undecodable pixel data
        syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ArchiveError(
            path, f"cannot decode pixel data (transfer syntax {name}): {type(exc).__name__}: {exc}"
        ) from exc


def read_volume(geometry: SeriesGeometry) -> np.ndarray:
    """Pixels of a checked series on its stored grid, rescaled.

    Returns:
        `(columns, rows, slices)` float32 (RescaleSlope × stored + RescaleIntercept).

    Raises:
        ArchiveError: missing or unreadable pixel data, or an unsupported transfer syntax (the
            message names the syntax).
    """
    out = np.zeros(geometry.shape, dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for k, f in enumerate(geometry.frames):
        if f.path not in cache:
            cache.clear()  # multi-frame files are read once; single-frame files one at a time
            try:
                ds = pydicom.dcmread(f.path)
            except Exception as exc:
                raise ArchiveError(f.path, f"unreadable DICOM file ({type(exc).__name__})") from exc
            pixels = _decode(ds, f.path)
            if int(ds.get("SamplesPerPixel", 1)) != 1:
                raise ArchiveError(f.path, "colour image; expected greyscale MR")
            cache[f.path] = pixels
        pixels = cache[f.path]
        plane = pixels if f.frame is None else pixels[f.frame]
        if plane.shape != f.size:
            raise ArchiveError(f.path, f"pixel data shape {plane.shape} differs from {f.size}")
        out[:, :, k] = (plane.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)).T
    return out
