"""DICOM series: read headers, check a series' geometry, build its volume in the NIfTI path's frame.

Instances (one file per slice, or the frames of an enhanced multi-frame file) are grouped by
StudyInstanceUID / SeriesInstanceUID whatever the folder layout or file names. A series becomes one
volume: frames sorted by ImagePositionPatient projected on the slice normal (never by
InstanceNumber or file name), RescaleSlope/Intercept applied, affine from ImageOrientationPatient,
ImagePositionPatient and PixelSpacing with the measured slice spacing. The volume is handed to
`pipeline.nifti.NiftiGeometry`, so DICOM and NIfTI go to canonical RAS and back the same way.

Stored grid of a series: `(columns, rows, slices)`, i.e. `data[i, j, k]` is column i, row j of the
k-th frame in sorted order, and the affine maps `(i, j, k)` to RAS millimetres.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from pipeline.errors import ArchiveError
from pipeline.nifti import NiftiGeometry

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Relative tolerance on slice spacing (and on orientation cosines, absolute).
SPACING_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-3
#: DICOM objects that are not images (reports, presentation states, segmentations): ignored.
NON_IMAGE_MODALITIES = {"SR", "PR", "SEG", "KO", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def looks_like_dicom(path: str | Path) -> bool:
    """True for `.dcm`/`.dicom`/`.ima` names or a `DICM` preamble (any name); DICOMDIR is False."""
    p = Path(path)
    if p.name.upper() == "DICOMDIR":
        return False
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


@dataclass(frozen=True)
class Frame:
    """One 2-D image of a series: a single-frame file or one frame of a multi-frame file.

    Attributes:
        path: file.
        frame: 0-based frame in a multi-frame file, None for a single-frame file.
        sop_uid: SOPInstanceUID of the file.
        position: ImagePositionPatient (LPS mm) of the first transmitted pixel.
        orientation: ImageOrientationPatient (row cosines then column cosines, LPS).
        pixel_spacing: `(row spacing, column spacing)` mm.
        size: `(rows, columns)`.
        slope, intercept: RescaleSlope / RescaleIntercept.
        localizer: ImageType / FrameType says LOCALIZER.
        thickness: SliceThickness or SpacingBetweenSlices (mm), NaN if absent.
    """

    path: str
    frame: int | None
    sop_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    size: tuple[int, int]
    slope: float = 1.0
    intercept: float = 0.0
    localizer: bool = False
    thickness: float = float("nan")


@dataclass(frozen=True)
class SeriesHeader:
    """Header facts of one series (no pixels): what selection and geometry need."""

    study_uid: str
    series_uid: str
    number: int | None
    modality: str
    description: str
    protocol: str
    sequence: str
    inversion_time: float | None
    echo_time: float | None
    transfer_syntax: str
    frames: tuple[Frame, ...]

    def describe(self) -> dict[str, Any]:
        """What the report says about the series (no identities, UIDs or dates)."""
        return {
            "series_number": self.number,
            "description": self.description,
            "protocol": self.protocol,
            "sequence": self.sequence,
            "inversion_time_ms": self.inversion_time,
            "echo_time_ms": self.echo_time,
            "images": len(self.frames),
            "transfer_syntax": self.transfer_syntax,
        }


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


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _number(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _first(ds: Dataset | None, name: str) -> Dataset | None:
    seq = ds.get(name) if ds is not None else None
    return seq[0] if seq else None


def _frame_fields(
    item: Dataset | None, shared: Dataset | None, top: Dataset, name: str
) -> Dataset | None:
    """A functional group item from the per-frame item, else the shared one, else None."""
    return _first(item, name) or _first(shared, name) or None


def _single_frame(ds: Dataset, path: str) -> list[Frame]:
    image_type = [str(t).upper() for t in ds.get("ImageType", [])]
    thickness = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness"))
    return [
        Frame(
            path=path,
            frame=None,
            sop_uid=str(ds.get("SOPInstanceUID", "")),
            position=_floats(ds.get("ImagePositionPatient"), 3) or (),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6) or (),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2) or (),  # type: ignore[arg-type]
            size=(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))),
            slope=_number(ds.get("RescaleSlope")) or 1.0,
            intercept=_number(ds.get("RescaleIntercept")) or 0.0,
            localizer="LOCALIZER" in image_type,
            thickness=thickness if thickness else float("nan"),
        )
    ]


def _multi_frame(ds: Dataset, path: str) -> list[Frame]:
    """Frames of an enhanced multi-frame image from its functional groups."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = int(ds.get("NumberOfFrames", 1))
    if len(per_frame) != n:
        raise ArchiveError(
            path, f"multi-frame image with {n} frames but {len(per_frame)} per-frame"
        )
    frames = []
    for f, item in enumerate(per_frame):
        pos = _frame_fields(item, shared, ds, "PlanePositionSequence")
        ori = _frame_fields(item, shared, ds, "PlaneOrientationSequence")
        meas = _frame_fields(item, shared, ds, "PixelMeasuresSequence")
        pvt = _frame_fields(item, shared, ds, "PixelValueTransformationSequence")
        ftype = _frame_fields(item, shared, ds, "MRImageFrameTypeSequence")
        kinds = [str(t).upper() for t in (ftype.get("FrameType", []) if ftype else [])]
        thick = meas and (
            _number(meas.get("SpacingBetweenSlices")) or _number(meas.get("SliceThickness"))
        )
        frames.append(
            Frame(
                path=path,
                frame=f,
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                position=_floats(pos.get("ImagePositionPatient"), 3) if pos else (),  # type: ignore[arg-type]
                orientation=(_floats(ori.get("ImageOrientationPatient"), 6) if ori else None) or (),
                pixel_spacing=_floats(meas.get("PixelSpacing"), 2) if meas else (),  # type: ignore[arg-type]
                size=(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))),
                slope=(_number(pvt.get("RescaleSlope")) if pvt else None) or 1.0,
                intercept=(_number(pvt.get("RescaleIntercept")) if pvt else None) or 0.0,
                localizer="LOCALIZER" in kinds,
                thickness=thick if thick else float("nan"),
            )
        )
    return frames


def _acquisition(ds: Dataset) -> tuple[float | None, float | None, str]:
    """(InversionTime ms, EchoTime ms, sequence name), also from enhanced MR groups."""
    ti, te = _number(ds.get("InversionTime")), _number(ds.get("EchoTime"))
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    modifier = _first(shared, "MRModifierSequence")
    if ti is None and modifier is not None and modifier.get("InversionTimes") is not None:
        times = modifier.InversionTimes
        ti = _number(times[0] if isinstance(times, list | MultiValue) else times)
    echo = _first(shared, "MREchoSequence")
    if te is None and echo is not None:
        te = _number(echo.get("EffectiveEchoTime"))
    sequence = str(ds.get("SequenceName", "") or ds.get("PulseSequenceName", ""))
    return ti, te, sequence


def _dcmread_header(path: str) -> Dataset:
    """Header up to the pixel data (pixels are checked when decoded); files without the DICM
    preamble (old exports) are read with `force` and kept only with a SOP class or modality."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if not ds.get("SOPClassUID") and not ds.get("Modality"):
            raise
        return ds


def read_header(path: str | Path) -> tuple[Dataset, list[Frame]] | None:
    """Read one file's header (not its pixel data) and its frames.

    Returns:
        `(dataset, frames)`, or None for a DICOM object that is not an image (SR, SEG, ...).

    Raises:
        ArchiveError: not a DICOM file, or an image without the attributes a series needs.
    """
    path = str(path)
    try:
        ds = _dcmread_header(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise ArchiveError(path, f"not a readable DICOM file ({type(exc).__name__})") from exc
    modality = str(ds.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES or "Rows" not in ds:
        return None
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(key):
            raise ArchiveError(path, f"DICOM image without {key}")
    multi = "PerFrameFunctionalGroupsSequence" in ds
    frames = (_multi_frame if multi else _single_frame)(ds, path)
    if not multi and int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ArchiveError(path, "multi-frame image without per-frame geometry (4-D or cine?)")
    return ds, frames


def scan_series(
    paths: Iterable[str | Path],
) -> tuple[dict[tuple[str, str], SeriesHeader], list[dict[str, str]]]:
    """Group image files into series by (StudyInstanceUID, SeriesInstanceUID).

    Returns:
        `(series, errors)`: series keyed by `(study_uid, series_uid)`, errors `{"path", "reason"}`
        for files that are not DICOM or lack what a series needs.
    """
    frames: dict[tuple[str, str], list[Frame]] = {}
    first: dict[tuple[str, str], Dataset] = {}
    errors: list[dict[str, str]] = []
    for path in paths:
        try:
            got = read_header(path)
        except ArchiveError as exc:
            errors.append({"path": exc.path, "reason": exc.reason})
            continue
        if got is None:
            continue
        ds, fr = got
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        frames.setdefault(key, []).extend(fr)
        first.setdefault(key, ds)
    series = {}
    for key, ds in first.items():
        ti, te, sequence = _acquisition(ds)
        number = _number(ds.get("SeriesNumber"))
        series[key] = SeriesHeader(
            study_uid=key[0],
            series_uid=key[1],
            number=None if number is None else int(number),
            modality=str(ds.get("Modality", "")),
            description=str(ds.get("SeriesDescription", "")),
            protocol=str(ds.get("ProtocolName", "")),
            sequence=sequence,
            inversion_time=ti,
            echo_time=te,
            transfer_syntax=str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "")),
            frames=tuple(frames[key]),
        )
    return series, errors


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
