"""DICOM headers: find DICOM files, read their image frames, group them into series.

Instances (one file per slice, or the frames of an enhanced multi-frame file) are grouped by
StudyInstanceUID / SeriesInstanceUID whatever the folder layout or file names. Only headers are
read here (up to the pixel data); `pipeline.io.dicom` checks a series' geometry and decodes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from pipeline.io.errors import ArchiveError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: DICOM objects that are not images (reports, presentation states, segmentations): ignored.
NON_IMAGE_MODALITIES = {"SR", "PR", "SEG", "KO", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC"}


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


def _frame_fields(item: Dataset | None, shared: Dataset | None, name: str) -> Dataset | None:
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
        pos = _frame_fields(item, shared, "PlanePositionSequence")
        ori = _frame_fields(item, shared, "PlaneOrientationSequence")
        meas = _frame_fields(item, shared, "PixelMeasuresSequence")
        pvt = _frame_fields(item, shared, "PixelValueTransformationSequence")
        ftype = _frame_fields(item, shared, "MRImageFrameTypeSequence")
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
