"""DICOM studies as patients: index rows of each study's FLAIR series, and loading it for triage.

One patient per study (key: `pipeline.io.dicom_select.pseudonym` of StudyInstanceUID, never a name,
ID or date). Its FLAIR series (`select_flair`) is checked and decoded once while indexing, so bad
series are caught there; the volume goes to canonical RAS through `NiftiGeometry`, exactly as a
NIfTI file does, and the FLAIR is copied to the three channels (single-sequence convention).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.dicom import (
    SeriesGeometry,
    SeriesHeader,
    check_series,
    looks_like_dicom,
    read_volume,
    scan_series,
)
from pipeline.io.dicom_select import load_salt, pseudonym, select_flair
from pipeline.io.errors import ArchiveError
from pipeline.io.nifti import NiftiCase, NiftiGeometry
from pipeline.io.preprocess import PreprocessConfig, assemble_channels, normalize_intensity
from pipeline.io.quality import DEFAULT_LIMITS, Limits, check_slice_size, check_volume_size


@dataclass(frozen=True)
class DicomSource:
    """The FLAIR series a DICOM patient was read from (what the SEG writer needs).

    Attributes:
        header: the series' header facts.
        geometry: its frames in slice order and stored-grid affine.
        rule: why this series was chosen (`Selection.rule`).
    """

    header: SeriesHeader
    geometry: SeriesGeometry
    rule: str = ""

    def describe(self) -> dict[str, Any]:
        """For `report.json`: the series used and the selection rule (no identities or dates)."""
        return {
            **self.header.describe(),
            "selection": self.rule,
            "images_left_out": len(self.geometry.notes),
            "stored_shape": list(self.geometry.shape),
        }


def _common_folder(paths: Iterable[str]) -> str:
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])


def _slice_files(geometry: SeriesGeometry, ng: NiftiGeometry) -> list[str]:
    """File of each canonical axial slice when slices are the stored frames, else the first file."""
    depth = ng.canonical_shape[2]
    axis, flip = int(ng.to_canonical[2, 0]), ng.to_canonical[2, 1] < 0
    files = [f.path for f in geometry.frames]
    if axis != 2:  # e.g. a sagittal series: every axial slice cuts all files
        return [files[0]] * depth
    return [files[depth - 1 - z] if flip else files[z] for z in range(depth)]


def _rows(patient: str, source: DicomSource, ng: NiftiGeometry) -> list[dict[str, Any]]:
    x, y, _ = ng.canonical_shape
    files = [f.path for f in source.geometry.frames]
    common = {
        "patient": patient,
        "format": "dicom",
        "mask_path": "",
        "has_mask": False,
        "tumour_pixels": 0,
        "height": x,
        "width": y,
        "spacing_x": ng.spacing[0],
        "spacing_y": ng.spacing[1],
        "spacing_z": ng.spacing[2],
        "source": _common_folder(files),
        "mask_bytes": 0,
        "series_uid": source.header.series_uid,
        "series_rule": source.rule,
    }
    return [
        {**common, "slice": z, "image_path": os.path.abspath(p), "image_bytes": os.path.getsize(p)}
        for z, p in enumerate(_slice_files(source.geometry, ng))
    ]


def _study_error(patient: str, files: list[str], reason: str) -> dict[str, str]:
    return {"path": _common_folder(files), "reason": reason, "patient": patient}


def check_series_size(geometry: SeriesGeometry, limits: Limits = DEFAULT_LIMITS) -> None:
    """A series' declared size against `limits`, before decoding it, by a NIfTI file's rules
    (`pipeline.io.nifti.open_volume`; index and loader): pixels per stored frame, voxels in the
    series, and the size of the axial slices triage will see.

    Raises:
        InputQualityError: too many pixels per frame or voxels in the series, or a tiny slice.
    """
    first = geometry.frames[0]
    check_slice_size(first.size, first.path, limits, tiny=False)  # what one frame decodes to
    check_volume_size((*first.size, len(geometry.frames)), first.path, limits)
    check_slice_size(geometry.nifti_geometry().canonical_shape[:2], first.path, limits)


def index_dicom(
    paths: Iterable[str], series_pattern: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Index rows for every DICOM study among `paths` (one patient per study, its FLAIR series).

    The FLAIR series' declared size is checked against `limits` before it is decoded.

    Returns:
        `(rows, errors)`: rows with the index columns (format "dicom"), errors `{"path",
        "reason"[, "patient"]}`: unreadable files, studies without FLAIR, unusable FLAIR series,
        images left out of a series.
    """
    series, errors = scan_series(paths)
    studies: dict[str, list[SeriesHeader]] = {}
    for (study, _), header in series.items():
        studies.setdefault(study, []).append(header)
    salt = load_salt() if studies else b""
    rows: list[dict[str, Any]] = []
    for study, headers in sorted(studies.items(), key=lambda kv: pseudonym(kv[0], salt)):
        patient = pseudonym(study, salt)
        files = [f.path for h in headers for f in h.frames]
        selection = select_flair(headers, series_pattern)
        if selection.series is None:
            names = "; ".join(
                f"{d['series_number']}: {d['description']!r}" for d in selection.considered
            )
            errors.append(_study_error(patient, files, f"{selection.rule} (series {names})"))
            continue
        header = selection.series
        try:
            geometry = check_series(header)
            check_series_size(geometry, limits)
            read_volume(geometry)  # decode once now, so bad pixel data is caught while indexing
        except ArchiveError as exc:
            label = f"FLAIR series {header.number} {header.description!r}"
            errors.append(
                {"path": exc.path, "reason": f"{label}: {exc.reason}", "patient": patient}
            )
            continue
        errors.extend({**note, "patient": patient} for note in geometry.notes)
        source = DicomSource(header, geometry, selection.rule)
        rows.extend(_rows(patient, source, geometry.nifti_geometry()))
    return rows, errors


def _dicom_files(folder: str) -> list[str]:
    out: list[str] = []
    for base, _dirs, names in os.walk(folder):
        out.extend(
            os.path.join(base, n) for n in sorted(names) if looks_like_dicom(os.path.join(base, n))
        )
    return sorted(out)


@functools.lru_cache(maxsize=4)
def _scan_folder(folder: str, stamp: tuple[float, int]) -> dict[tuple[str, str], SeriesHeader]:
    """Series headers under `folder`, cached per folder state: a flat export holding many studies
    is scanned once per run, not once per patient (`stamp` = folder mtime and file count)."""
    del stamp  # part of the cache key only
    return scan_series(_dicom_files(folder))[0]


def _series_in(folder: str) -> dict[tuple[str, str], SeriesHeader]:
    files = _dicom_files(folder)
    stamp = (max((os.path.getmtime(f) for f in files), default=0.0), len(files))
    return _scan_folder(folder, stamp)


def load_dicom_case(
    source: str | Path, series_uid: str, patient: str, rule: str = "",
    config: PreprocessConfig | None = None, limits: Limits = DEFAULT_LIMITS,
) -> tuple[NiftiCase, DicomSource]:  # fmt: skip
    """Read one indexed DICOM series into canonical RAS orientation (FLAIR ×3 channels).

    Args:
        source: folder holding the series' files (any depth; other series there are ignored).
        series_uid: SeriesInstanceUID chosen while indexing.
        patient: the study's pseudonym.
        rule: the selection rule recorded while indexing.
        config: intensity percentiles (defaults if None).
        limits: size limits, checked from the headers before decoding.

    Returns:
        `(case, dicom_source)`: the case as the NIfTI reader gives it (no ground truth), and the
        series for writing the DICOM SEG.

    Raises:
        ArchiveError: the series is gone or no longer usable.
    """
    cfg = config or PreprocessConfig()
    series = _series_in(str(source))
    found = [h for (_, uid), h in series.items() if uid == series_uid]
    if not found:
        raise ArchiveError(source, "indexed DICOM series not found any more; re-index")
    geometry = check_series(found[0])
    check_series_size(geometry, limits)
    ng = geometry.nifti_geometry()
    raw = ng.canonical(read_volume(geometry))
    flair = normalize_intensity(raw, cfg.low_percentile, cfg.high_percentile)
    image = assemble_channels(flair)
    case = NiftiCase(patient, image, None, ng, {"flair": Path(geometry.frames[0].path)})
    return case, DicomSource(found[0], geometry, rule)


def canonical_volume(source: DicomSource) -> tuple[np.ndarray, np.ndarray]:
    """Raw rescaled voxels on the canonical RAS grid and the canonical affine (for tests, tools)."""
    from nibabel import orientations as ornt

    ng = source.geometry.nifti_geometry()
    data = ng.canonical(read_volume(source.geometry))
    affine = ng.affine @ ornt.inv_ornt_aff(ng.to_canonical, ng.shape)
    return data, affine


KEY_MAP_NAME = "pseudonym_map.csv"


def write_key_map(out_dir: str | Path, table: Any) -> Path | None:
    """Write `OUT/pseudonym_map.csv` (patient key, StudyInstanceUID) for the DICOM patients.

    Only on the user's request (`--write-key-map`), only into the output folder; never logged
    to MLflow. Returns the path, or None when the archive holds no DICOM patient.
    """
    import csv
    import io

    import pydicom

    from pipeline.io.manifest import atomic_write_text

    dicom = table[table["format"] == "dicom"].drop_duplicates("patient")
    if dicom.empty:
        return None
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["patient", "study_instance_uid"])
    for row in dicom.itertuples(index=False):
        ds = pydicom.dcmread(str(row.image_path), stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID"])  # fmt: skip
        writer.writerow([row.patient, str(ds.StudyInstanceUID)])
    path = Path(out_dir) / KEY_MAP_NAME
    atomic_write_text(path, buf.getvalue())
    return path
