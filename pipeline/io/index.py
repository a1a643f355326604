"""The per-slice table of an archive, its summary and fingerprint, and patient-level splits.

`build_index(root)` walks an archive without modifying or following anything outside it:
Kaggle LGG patient folders (TIFs) and NIfTI cases (folders of sequences, or single files)
become one row per slice; every file that cannot be used becomes an `errors` entry
`{"path", "reason"}` and the rest is still indexed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io.dicom import looks_like_dicom
from pipeline.io.dicom_case import index_dicom
from pipeline.io.errors import ArchiveError
from pipeline.io.nifti import (
    NiftiGeometry,
    check_same_grid,
    find_sequences,
    is_nifti,
    nifti_stem,
    open_volume,
    sequence_role,
)
from pipeline.io.quality import (
    DEFAULT_LIMITS,
    InputQualityError,
    Limits,
    check_patient_size,
    check_values,
    value_problem,
    value_range,
)
from pipeline.io.safety import display_text
from pipeline.io.slices import read_kaggle_image, read_kaggle_mask
from pipeline.io.splits import check_no_leakage, split_patients

__all__ = [
    "COLUMNS",
    "SliceIndex",
    "build_index",
    "check_no_leakage",
    "cli_index",
    "fingerprint",
    "index_summary",
    "split_patients",
]

COLUMNS = [
    "patient",
    "slice",
    "format",
    "image_path",
    "mask_path",
    "has_mask",
    "tumour_pixels",
    "height",
    "width",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "source",
    "image_bytes",
    "mask_bytes",
    "series_uid",
    "series_rule",
]
_TIF_SUFFIXES = (".tif", ".tiff")
#: Documentation beside NIfTI sequences (licences, readmes): neither images nor errors.
_DOC_SUFFIXES = (".txt", ".md", ".json", ".csv", ".pdf", ".html", ".rst")
_NAN = float("nan")


@dataclass
class SliceIndex:
    """Result of `build_index`.

    Attributes:
        table: one row per slice, columns `COLUMNS`, sorted by patient then slice.
        errors: `{"path": ..., "reason": ...}` for everything skipped.
        root: the archive root as given (absolute).
    """

    table: pd.DataFrame
    errors: list[dict[str, str]] = field(default_factory=list)
    root: str = ""


@dataclass
class _Walk:
    root: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    patients: dict[str, str] = field(default_factory=dict)
    seen_dirs: set[str] = field(default_factory=set)
    seen_files: dict[str, str] = field(default_factory=dict)
    limits: Limits = DEFAULT_LIMITS
    dicom_files: list[str] = field(default_factory=list)

    def error(self, path: str | Path, reason: str, patient: str | None = None) -> None:
        """Record a skipped file; `patient` is the key it belongs to, when there is one."""
        entry = {"path": display_text(str(path), 1000), "reason": display_text(reason, 1000)}
        if patient is not None:
            entry["patient"] = patient
        self.errors.append(entry)

    def claim(self, patient: str, path: str) -> bool:
        """Register a patient key; a second case with the same key is an error."""
        if patient in self.patients:
            first = display_text(self.patients[patient], 1000)
            self.error(path, f"duplicate patient key (already indexed from {first})", patient)
            return False
        self.patients[patient] = path
        return True


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _entries(walk: _Walk, folder: str, duplicates: list[str]) -> tuple[list[str], list[str]]:
    """Files and folders of `folder` (sorted); symlinks leading outside the archive are errors.

    Links to a file already seen are appended to `duplicates` (the caller knows the patient).
    """
    files, dirs = [], []
    # Real entries before links, so a link (not its target) is the one reported as a duplicate.
    for entry in sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name)):
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not _inside(target, walk.root):
                walk.error(entry.path, "symbolic link leads outside the archive; not followed")
                continue
            if not os.path.exists(target):
                walk.error(entry.path, "broken symbolic link")
                continue
        if entry.is_dir():
            dirs.append(entry.path)
        elif entry.is_file():
            real = os.path.realpath(entry.path)
            if real in walk.seen_files:
                duplicates.append(entry.path)
                continue
            walk.seen_files[real] = entry.path
            files.append(entry.path)
        else:
            walk.error(entry.path, "not a regular file or folder")
    return files, dirs


def _report_duplicates(walk: _Walk, folder: str, files: list[str], duplicates: list[str]) -> None:
    """Error entries for links to files already indexed, with the patient when `folder` is one."""
    is_patient = os.path.realpath(folder) != walk.root and any(
        f.lower().endswith(_TIF_SUFFIXES) or is_nifti(f) for f in files + duplicates
    )
    key = os.path.basename(folder.rstrip(os.sep)) if is_patient else None
    for path in duplicates:
        first = display_text(walk.seen_files[os.path.realpath(path)], 1000)
        walk.error(path, f"same file as {first} (symbolic link); skipped", key)


def _walk(walk: _Walk, folder: str, depth: int = 0) -> None:
    real = os.path.realpath(folder)
    if real in walk.seen_dirs:
        if os.path.islink(folder):
            walk.error(folder, "symbolic link to a folder already indexed; skipped")
        return
    walk.seen_dirs.add(real)
    if depth > walk.limits.max_depth:
        walk.error(folder, f"nested deeper than {walk.limits.max_depth} folders; not indexed")
        return
    duplicates: list[str] = []
    try:
        files, dirs = _entries(walk, folder, duplicates)
    except OSError as exc:
        walk.error(folder, f"cannot list folder ({exc.strerror or exc})")
        return
    _report_duplicates(walk, folder, files, duplicates)
    names = [os.path.basename(f) for f in files]
    tifs = [f for f, n in zip(files, names, strict=True) if n.lower().endswith(_TIF_SUFFIXES)]
    niftis = [f for f, n in zip(files, names, strict=True) if is_nifti(n)]
    if not tifs and not niftis and _collect_dicom(walk, files):
        for sub in dirs:
            _walk(walk, sub, depth + 1)
        return
    if tifs and real == walk.root:  # the root is never a patient: stray TIFs are skipped
        for path in tifs:
            walk.error(path, "image at the archive root, outside any patient folder; skipped")
        tifs = []
    if tifs:
        _index_kaggle(walk, folder, files, dirs)
        return
    if niftis:
        roles = {sequence_role(os.path.basename(f)) for f in niftis} - {None, "aux"}
        if roles:
            _index_nifti_folder(walk, folder, files)
        else:
            for path in niftis:
                _index_nifti_case(walk, path, nifti_stem(os.path.basename(path)))
    elif not dirs and real != walk.root:
        key = os.path.basename(folder.rstrip(os.sep))
        if files:
            walk.error(folder, "no MRI images (TIF or NIfTI) in folder", key)
        else:
            walk.error(folder, "empty patient folder", key)
    for sub in dirs:
        _walk(walk, sub, depth + 1)


def _collect_dicom(walk: _Walk, files: list[str]) -> bool:
    """Keep a folder's DICOM files for the archive-wide series grouping; True if it had any.

    DICOMDIR and documentation files are ignored; any other file beside DICOM files is an error.
    """
    dicom = [f for f in files if looks_like_dicom(f)]
    if not dicom:
        return False
    walk.dicom_files.extend(dicom)
    for path in sorted(set(files) - set(dicom)):
        name = os.path.basename(path)
        if name.upper() != "DICOMDIR" and not name.lower().endswith(_DOC_SUFFIXES):
            walk.error(path, "not a DICOM file (beside DICOM images); ignored")
    return True


def _index_dicom(walk: _Walk, series_pattern: str | None) -> None:
    rows, errors = index_dicom(walk.dicom_files, series_pattern, walk.limits)
    walk.errors.extend(errors)
    claimed: dict[str, bool] = {}
    for row in rows:
        patient = row["patient"]
        if patient not in claimed:
            claimed[patient] = walk.claim(patient, row["source"])
        if claimed[patient]:
            walk.rows.append(row)


def _index_kaggle(walk: _Walk, folder: str, files: list[str], dirs: list[str]) -> None:
    patient = os.path.basename(folder.rstrip(os.sep))
    pattern = re.compile(rf"^{re.escape(patient)}_(\d+)(_mask)?\.tiff?$", re.IGNORECASE)
    images: dict[int, str] = {}
    masks: dict[int, str] = {}
    for path in files:
        match = pattern.match(os.path.basename(path))
        if match is None:
            walk.error(
                path, f"unexpected file in a Kaggle patient folder (not {patient}_<k>.tif)", patient
            )
            continue
        found = masks if match.group(2) else images
        k = int(match.group(1))
        if k in found:  # P_1.tif and P_01.tif: the first (in name order) is kept
            first = os.path.basename(found[k])
            walk.error(path, f"duplicate slice number {k} (also {first}); skipped", patient)
            continue
        found[k] = path
    for sub in dirs:
        walk.error(sub, "unexpected folder inside a Kaggle patient folder; not indexed", patient)
    for k in sorted(set(masks) - set(images)):
        walk.error(masks[k], "mask without its image", patient)
    if not images or not walk.claim(patient, folder):
        return
    reference: tuple[int, ...] | None = None
    rows: list[dict[str, Any]] = []
    low, high, finite = np.inf, -np.inf, True
    for k in sorted(images):
        path = images[k]
        try:
            pixels = read_kaggle_image(path, walk.limits)
        except ArchiveError as exc:
            walk.error(path, exc.reason, patient)
            continue
        reference = reference or pixels.shape
        if pixels.shape != reference:
            walk.error(
                path, f"image shape {pixels.shape} differs from the patient's {reference}", patient
            )
            continue
        lo, hi, ok = value_range(pixels)
        low, high, finite = min(low, lo), max(high, hi), finite and ok
        mask_path, tumour = masks.get(k, ""), 0
        if mask_path:
            try:
                tumour = int(read_kaggle_mask(mask_path, pixels.shape[:2], walk.limits).sum())
            except ArchiveError as exc:
                walk.error(mask_path, exc.reason + "; slice kept without ground truth", patient)
                mask_path = ""
        elif masks:
            walk.error(
                path,
                "mask missing (other slices of this patient have one); kept unlabelled",
                patient,
            )
        rows.append(
            {
                "patient": patient,
                "slice": k,
                "format": "kaggle",
                "image_path": os.path.abspath(path),
                "mask_path": os.path.abspath(mask_path) if mask_path else "",
                "has_mask": bool(mask_path),
                "tumour_pixels": tumour,
                "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1]),
                "spacing_x": _NAN,
                "spacing_y": _NAN,
                "spacing_z": _NAN,
                "source": os.path.abspath(folder),
                "image_bytes": os.path.getsize(path),
                "mask_bytes": os.path.getsize(mask_path) if mask_path else 0,
            }
        )
    problem = value_problem(low, high, finite) if rows else None
    if problem:  # the same rule `load_patient` applies (pipeline.io.quality)
        walk.error(folder, f"{problem}; patient not screened", patient)
        return
    walk.rows.extend(rows)


def _index_nifti_folder(walk: _Walk, folder: str, files: list[str]) -> None:
    for path in files:
        name = os.path.basename(path)
        if not is_nifti(name) and not name.lower().endswith(_DOC_SUFFIXES):
            key = os.path.basename(folder.rstrip(os.sep))
            walk.error(path, "unexpected non-image file in a NIfTI patient folder", key)
    _index_nifti_case(walk, folder, os.path.basename(folder.rstrip(os.sep)))


def _check_volume(
    path: Path, limits: Limits, image_role: bool = True
) -> tuple[NiftiGeometry, np.ndarray]:
    """Header geometry and the stored voxels (unscaled), read once; `ArchiveError` if unusable.

    The header goes through `open_volume` and an image's values through `check_values`: the very
    checks `load_nifti_case` makes, so whatever the index accepts, triage can load.
    """
    image, geometry = open_volume(path, limits)
    try:
        data = np.asarray(image.dataobj.get_unscaled())  # type: ignore[attr-defined]
    except Exception as exc:
        raise ArchiveError(
            path, f"corrupt or truncated NIfTI data ({type(exc).__name__}: {exc})"
        ) from exc
    data = data.reshape(data.shape[:3])
    if image_role:
        scale = float(getattr(image.dataobj, "slope", 1.0))
        check_values(data if np.isfinite(scale) else np.array([np.nan]), path)
    return geometry, data


def _index_nifti_case(walk: _Walk, path: str, patient: str) -> None:
    roles, problems = find_sequences(Path(path))
    for problem in problems:
        walk.error(problem["path"], problem["reason"], patient)
    if "flair" not in roles:
        found = ", ".join(sorted(roles)) or "none"
        reason = f"no FLAIR sequence (need *_flair, *-t2f or Flair*; found: {found})"
        walk.error(path, reason, patient)
        return
    try:
        geometry, _ = _check_volume(roles["flair"], walk.limits)
        tumour = np.zeros(geometry.canonical_shape[2], dtype=np.int64)
        for role in ("t1", "t1ce", "seg"):
            if role not in roles:
                continue
            other, data = _check_volume(roles[role], walk.limits, image_role=role != "seg")
            check_same_grid(geometry, other, roles[role])
            if role == "seg":
                tumour = (geometry.canonical(data) > 0).sum(axis=(0, 1))
    except ArchiveError as exc:
        walk.error(exc.path, exc.reason, patient)
        return
    if not walk.claim(patient, path):
        return
    seg = roles.get("seg")
    x, y, depth = geometry.canonical_shape
    common = {
        "patient": patient,
        "format": "nifti",
        "image_path": os.path.abspath(roles["flair"]),
        "mask_path": os.path.abspath(seg) if seg else "",
        "has_mask": seg is not None,
        "height": x,
        "width": y,
        "spacing_x": geometry.spacing[0],
        "spacing_y": geometry.spacing[1],
        "spacing_z": geometry.spacing[2],
        "source": os.path.abspath(path),
        "image_bytes": os.path.getsize(roles["flair"]),
        "mask_bytes": os.path.getsize(seg) if seg else 0,
    }
    walk.rows.extend({**common, "slice": z, "tumour_pixels": int(tumour[z])} for z in range(depth))


def build_index(
    root: str | Path, series_pattern: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> SliceIndex:
    """Index an archive: one row per slice, every unusable file reported in `errors`.

    Nothing in the archive is modified; symbolic links leading outside it are not followed.
    DICOM files anywhere in the archive are grouped by study and series (`pipeline.io.dicom_case`):
    one patient per study, keyed by its pseudonym, from its FLAIR series.

    Args:
        root: archive root (Kaggle LGG layout, NIfTI folders/files, DICOM, or a mix).
        series_pattern: regular expression choosing the FLAIR series of DICOM studies
            (`--series-pattern`); None = the default rules of `pipeline.io.dicom_select`.
        limits: resource and size limits, checked from headers before decoding.

    Returns:
        The table (columns `COLUMNS`, sorted by patient then slice number) and the errors.

    Raises:
        ArchiveError: `root` is not a readable folder.
    """
    base = Path(root).absolute()
    if not base.is_dir():
        raise ArchiveError(base, "archive folder not found")
    walk = _Walk(root=os.path.realpath(base), limits=limits)
    _walk(walk, str(base))
    if walk.dicom_files:
        _index_dicom(walk, series_pattern)
    if not walk.rows and not walk.errors:
        walk.error(base, "no MRI images (TIF, NIfTI or DICOM) found")
    blank = {"series_uid": "", "series_rule": ""}  # DICOM-only columns
    table = pd.DataFrame([{**blank, **row} for row in walk.rows], columns=COLUMNS)
    table = table.astype(
        {
            "patient": str,
            "slice": "int64",
            "has_mask": bool,
            "tumour_pixels": "int64",
            "height": "int64",
            "width": "int64",
            "spacing_x": float,
            "spacing_y": float,
            "spacing_z": float,
            "image_bytes": "int64",
            "mask_bytes": "int64",
        }
    )
    table = table.sort_values(["patient", "slice"], kind="stable").reset_index(drop=True)
    return SliceIndex(table=_drop_oversized(table, walk), errors=walk.errors, root=str(base))


def _drop_oversized(table: pd.DataFrame, walk: _Walk) -> pd.DataFrame:
    """Patients whose slices would take more memory decoded than `limits.max_patient_mb` become
    errors, by the loader's own rule (`check_patient_size`), so what the index keeps loads."""
    pixels = (table["height"] * table["width"]).groupby(table["patient"]).agg(["sum", "size"])
    sources = table.groupby("patient")["source"].first().to_dict()
    over = []
    for patient, (px, n) in pixels.iterrows():
        try:
            check_patient_size(int(px), int(n), str(sources[patient]), walk.limits)
        except InputQualityError as exc:
            walk.error(exc.path, exc.reason, str(patient))
            over.append(patient)
    return table[~table["patient"].isin(over)].reset_index(drop=True)


def index_summary(index: SliceIndex) -> dict[str, Any]:
    """Counts of an index, fit for JSON (no patient keys except inside error paths).

    Returns:
        `patients`, `slices`, `tumour_slices` (tumour pixels > 0), `labelled_slices`
        (has ground truth), `normal_slices` (labelled, no tumour), `patients_by_format`,
        `fingerprint`, `errors` (the list of `{path, reason}`).
    """
    table = index.table
    tumour = table["tumour_pixels"] > 0
    return {
        "patients": int(table["patient"].nunique()),
        "slices": len(table),
        "tumour_slices": int(tumour.sum()),
        "labelled_slices": int(table["has_mask"].sum()),
        "normal_slices": int((table["has_mask"] & ~tumour).sum()),
        "patients_by_format": {
            str(k): int(v) for k, v in table.groupby("format")["patient"].nunique().items()
        },
        "fingerprint": fingerprint(table),
        "errors": list(index.errors),
    }


def fingerprint(table: pd.DataFrame) -> str:
    """Stable SHA-256 (hex) of an index: relative paths, sizes, labels; no absolute paths.

    The same archive gives the same fingerprint wherever it is unpacked, and any added,
    removed, resized or relabelled slice changes it.
    """
    if table.empty:
        return hashlib.sha256(b"empty index").hexdigest()
    paths = [p for p in table["image_path"].tolist() + table["mask_path"].tolist() if p]
    base = os.path.commonpath([os.path.dirname(p) for p in paths])
    digest = hashlib.sha256()
    ordered = table.sort_values(["patient", "slice"], kind="stable")
    for row in ordered.itertuples(index=False):
        mask = os.path.relpath(str(row.mask_path), base) if row.mask_path else ""
        fields = (
            os.path.relpath(str(row.image_path), base),
            mask,
            row.slice,
            row.format,
            row.image_bytes,
            row.mask_bytes,
            bool(row.has_mask),
            row.tumour_pixels,
            row.height,
            row.width,
        )
        digest.update(("|".join(map(str, fields)) + "\n").encode())
    return digest.hexdigest()


def limits_of(args: argparse.Namespace) -> Limits:
    """`Limits` from `--max-slice-pixels` / `--max-volume-voxels` / `--max-patient-mb` (defaults
    where absent)."""
    d = DEFAULT_LIMITS
    return Limits(
        max_slice_pixels=getattr(args, "max_slice_pixels", d.max_slice_pixels),
        max_volume_voxels=getattr(args, "max_volume_voxels", d.max_volume_voxels),
        max_patient_mb=getattr(args, "max_patient_mb", d.max_patient_mb),
    )


def cli_index(args: argparse.Namespace) -> int:
    """`mri-triage index ARCHIVE [--json] [--csv PATH]`; exit status 2 when anything was skipped."""
    started = time.perf_counter()
    try:
        index = build_index(args.archive, getattr(args, "series_pattern", None), limits_of(args))
    except ArchiveError as exc:
        if args.json:
            error = {"path": exc.path, "reason": exc.reason}
            print(json.dumps({"patients": 0, "slices": 0, "tumour_slices": 0, "errors": [error]}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    summary = index_summary(index)
    summary["seconds"] = round(seconds, 3)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        index.table.to_csv(args.csv, index=False)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['patients']} patients, {summary['slices']} slices, "
            f"{summary['tumour_slices']} with tumour, {summary['normal_slices']} labelled normal, "
            f"{len(index.errors)} errors ({seconds:.2f} s)"
        )
        for item in index.errors:
            print(f"  skipped {item['path']}: {item['reason']}")
    return 2 if index.errors else 0
