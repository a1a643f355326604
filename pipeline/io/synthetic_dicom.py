"""Synthetic DICOM archives: the phantoms of `pipeline.io.synthetic` as PACS-style MR studies.

Each patient is one study with a localizer series, an axial T1, a FLAIR (axial, or oblique in every
other study; an enhanced multi-frame file in every third) and a sagittal post-contrast T1,
written one file per image (names with and without `.dcm`) under
`OUT/<study folder>/<series folder>/`. Headers carry fake but realistic identities (names, IDs,
birth and study dates), so the reader's pseudonymisation is exercised. No ground truth is written.

`write_dicom_series` (any volume and RAS affine → a series) is also what the tests use to compare
the DICOM reader with the NIfTI path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as ornt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from pipeline.io.synthetic import SPACING_MM, make_phantom, start_archive

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_FAKE_NAMES = (
    "DOE^JANE", "ROE^RICHARD", "MUSTERMANN^ERIKA", "DUPONT^MARIE", "ROSSI^MARIO", "SILVA^ANA",
    "NOWAK^JAN", "TANAKA^HANAKO",
)  # fmt: skip


def _ds(values: Any) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    return f"{float(values):.10g}"


def _plane_fields(lps: np.ndarray, k: int) -> tuple[list[str], list[str], list[str]]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of frame k."""
    col_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = [*(lps[:3, 0] / col_step), *(lps[:3, 1] / row_step)]
    ipp = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
    return [_ds(v) for v in ipp], [_ds(v) for v in iop], [_ds(row_step), _ds(col_step)]


#: MR Image IOD attributes a scanner always writes (overridden by the header's own values).
_MR_DEFAULTS: dict[str, Any] = {
    "ScanningSequence": "SE",
    "SequenceVariant": "NONE",
    "ScanOptions": "",
    "MRAcquisitionType": "2D",
    "EchoTrainLength": 1,
    "PatientPosition": "HFS",
    "PositionReferenceIndicator": "",
    "BodyPartExamined": "HEAD",
}


def _base(header: Mapping[str, Any], sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    defaults = _MR_DEFAULTS if sop_class == MR_STORAGE else {}
    for key, value in {**defaults, **header}.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    header: Mapping[str, Any],
    *,
    multiframe: bool = False,
    names: list[str] | None = None,
    instance_numbers: list[int] | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
) -> list[Path]:
    """Write a stored-grid volume as an MR series (one file per slice, or one enhanced file).

    Args:
        volume: `(columns, rows, slices)` integer voxels on the stored grid (pixel i, j of
            slice k is `volume[i, j, k]`).
        affine: `(4, 4)` RAS affine of that grid (column 2 along the slice normal).
        folder: output folder (created).
        header: DICOM keywords → values (identities, UIDs, series description, TI, TE, ...);
            must hold StudyInstanceUID, SeriesInstanceUID and FrameOfReferenceUID.
        multiframe: one Enhanced MR file instead of one file per slice.
        names: file names per slice (default `IM{k:05d}.dcm`), or the one multi-frame name.
        instance_numbers: InstanceNumber per slice (default k + 1).
        rescale: (RescaleSlope, RescaleIntercept): stored = round((voxel - intercept) / slope).

    Returns:
        The files written.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    slope, intercept = rescale
    stored = np.round((np.asarray(volume, np.float64) - intercept) / slope).astype(np.int16)
    depth = stored.shape[2]
    thickness = _ds(np.linalg.norm(lps[:3, 2]))
    if multiframe:
        return [_write_enhanced(stored, lps, out, header, names, rescale, thickness)]
    paths = []
    for k in range(depth):
        ds = _base(header, MR_STORAGE)
        ds.ImageType = header.get("ImageType", ["ORIGINAL", "PRIMARY", "OTHER"])
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = _plane_fields(lps, k)
        ds.SliceThickness = ds.SpacingBetweenSlices = thickness
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / (names[k] if names else f"IM{k + 1:05d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_enhanced(
    stored: np.ndarray,
    lps: np.ndarray,
    out: Path,
    header: Mapping[str, Any],
    names: list[str] | None,
    rescale: tuple[float, float],
    thickness: str,
) -> Path:
    ds = _base({k: v for k, v in header.items() if k not in ("InversionTime", "EchoTime")},
               ENHANCED_MR_STORAGE)  # fmt: skip
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = stored.shape[2]
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
    _, iop, spacing = _plane_fields(lps, 0)
    measures, orientation, pvt, modifier, echo, ftype = (Dataset() for _ in range(6))
    measures.PixelSpacing, measures.SliceThickness = spacing, thickness
    measures.SpacingBetweenSlices = thickness
    orientation.ImageOrientationPatient = iop
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = _ds(rescale[0]), _ds(rescale[1]), "US"
    if "InversionTime" in header:
        modifier.InversionRecovery, modifier.InversionTimes = "YES", [header["InversionTime"]]
    echo.EffectiveEchoTime = header.get("EchoTime", 100)
    ftype.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([pvt])
    shared.MRModifierSequence = DicomSequence([modifier])
    shared.MREchoSequence = DicomSequence([echo])
    shared.MRImageFrameTypeSequence = DicomSequence([ftype])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(stored.shape[2]):
        item, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = _plane_fields(lps, k)[0]
        content.DimensionIndexValues = [k + 1]
        content.StackID, content.InStackPositionNumber = "1", k + 1
        item.PlanePositionSequence = DicomSequence([position])
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    dim = Dataset()
    dim.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
    dim.FunctionalGroupPointer = 0x00209113  # PlanePositionSequence
    ds.DimensionIndexSequence = DicomSequence([dim])
    ds.DimensionOrganizationUID = generate_uid()
    ds.PixelData = np.ascontiguousarray(np.transpose(stored, (2, 1, 0))).tobytes()
    path = out / (names[0] if names else "ENHANCED.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def _rotation_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return rot


def stored_grid(
    canonical: np.ndarray, codes: tuple[str, str, str], spacing=SPACING_MM
) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """A canonical RAS `(X, Y, Z)` volume stored in orientation `codes`, with its RAS affine."""
    x, y, z = canonical.shape
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-x * spacing[0] / 2, -y * spacing[1] / 2, -z * spacing[2] / 2]
    transform = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(codes))
    stored = ornt.apply_orientation(canonical, transform)
    return np.ascontiguousarray(stored), affine @ ornt.inv_ornt_aff(transform, canonical.shape)


def _identity(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """Fake patient and study identity fields (what a real archive would leak)."""
    year = int(rng.integers(1940, 2000))
    return {
        "PatientName": _FAKE_NAMES[i % len(_FAKE_NAMES)],
        "PatientID": f"PID{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "PatientSex": "FM"[i % 2],
        "StudyDate": f"2025{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "StudyTime": "083000",
        "AccessionNumber": f"ACC{int(rng.integers(10**5, 10**6))}",
        "ReferringPhysicianName": "WHO^EVER",
        "InstitutionName": "Synthetic General Hospital",
        "StudyID": str(i + 1),
        "StudyDescription": "MRI BRAIN W/WO CONTRAST",
        "StudyInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "Manufacturer": "SYNTHETIC",
        "MagneticFieldStrength": "3",
    }


#: (series number, description, protocol, sequence name, TI ms, TE ms, channel, stored codes).
_SERIES = (
    (2, "AX T1 SE", "t1_se_tra", "*se2d1", None, 12, 0, ("L", "P", "S")),
    (4, "AX T2 FLAIR", "t2_tirm_tra_dark-fluid", "*tir2d1_16", 2500, 120, 1, ("L", "P", "S")),
    (7, "SAG T1 POST", "t1_se_sag_post", "*se2d1", None, 12, 2, ("P", "S", "L")),
)


def _localizer(folder: Path, ident: dict[str, Any], size: int) -> None:
    """Three single images in three orientations (a scout series, never a volume)."""
    header = {**ident, "SeriesInstanceUID": generate_uid(), "SeriesNumber": 1,
              "SeriesDescription": "localizer", "ProtocolName": "AAHead_Scout",
              "EchoTime": 4, "RepetitionTime": 8,
              "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}  # fmt: skip
    for k, codes in enumerate((("L", "P", "S"), ("P", "S", "L"), ("L", "S", "A"))):
        affine = np.zeros((4, 4))
        for axis, (ras, sign) in enumerate(ornt.axcodes2ornt(codes)):
            affine[int(ras), axis] = sign
        affine[:, 3] = [-size / 2, -size / 2, 0.0, 1.0]
        stored = np.zeros((size, size, 1), np.int16)
        write_dicom_series(stored, affine, folder, header, names=[f"LOC{k}"])


def write_dicom_study(
    folder: Path, phantom_channels: np.ndarray, rng: np.random.Generator, i: int
) -> None:
    """One study: localizer, axial T1, FLAIR (oblique when i is odd, multi-frame when i % 3 == 2),
    sagittal T1 post-contrast; raw int16 intensities as the NIfTI synthetic archive stores."""
    ident = _identity(rng, i)
    size = phantom_channels.shape[2]
    _localizer(folder / "series_01", ident, size)
    for number, desc, protocol, sequence, ti, te, channel, codes in _SERIES:
        canonical = np.transpose(phantom_channels[channel], (1, 2, 0))  # (X, Y, Z)
        raw = np.round(canonical * rng.uniform(800, 3000)).astype(np.int16)
        stored, affine = stored_grid(raw, codes)
        header = {**ident, "SeriesInstanceUID": generate_uid(), "SeriesNumber": number,
                  "SeriesDescription": desc, "ProtocolName": protocol, "SequenceName": sequence,
                  "EchoTime": te, "RepetitionTime": 9000 if ti else 500}  # fmt: skip
        flair = ti is not None
        if flair:
            header["InversionTime"] = ti
            header["ScanningSequence"], header["EchoTrainLength"] = ["SE", "IR"], 16
            if i % 2:
                affine = _rotation_x(10.0 + 3.0 * (i % 7)) @ affine  # 10-28 deg: still "axial"
        multi = flair and i % 3 == 2
        sub = folder / f"series_{number:02d}"
        depth = stored.shape[2]
        names = [f"{generate_uid()[-12:]}{'.dcm' if k % 2 else ''}" for k in range(depth)]
        order = [int(v) + 1 for v in rng.permutation(depth)]
        write_dicom_series(stored, affine, sub, header, multiframe=multi,
                           names=None if multi else names, instance_numbers=order)  # fmt: skip


def write_synthetic_dicom_archive(
    out: str | Path, patients: int, seed: int, slices: int = 24, image_size: int = 256
) -> Path:
    """Write `patients` synthetic DICOM studies (same phantoms and seeds as the other formats).

    Returns:
        The archive root `out` (must be empty or absent).
    """
    root, tumour_free = start_archive(out, patients, slices, image_size, seed)
    for i in range(patients):
        rng = np.random.default_rng([seed, i])
        phantom = make_phantom(rng, slices, image_size, i not in tumour_free, bool(i % 2), 3)
        write_dicom_study(root / f"study_{i + 1:04d}", phantom.channels, rng, i)
    return root
