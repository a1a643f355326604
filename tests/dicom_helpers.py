"""Small DICOM series for tests: a phantom volume written both as NIfTI and as DICOM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from pydicom.uid import generate_uid

from pipeline.io.synthetic import make_phantom
from pipeline.io.synthetic_dicom import _rotation_x, stored_grid, write_dicom_series

SALT = "test-salt"
#: Fake identities written into test headers; none may appear in any output.
IDENTITY = {
    "PatientName": "TESTPERSON^ZELDA",
    "PatientID": "ZID4711",
    "PatientBirthDate": "19610203",
    "StudyDate": "20250917",
    "AccessionNumber": "ACC98765",
}


def phantom(slices: int = 10, size: int = 32, seed: int = 0) -> np.ndarray:
    """A FLAIR phantom as int16 canonical RAS `(X, Y, Z)` with a tumour."""
    p = make_phantom(np.random.default_rng(seed), slices, size, True, False, 3)
    return np.round(np.transpose(p.channels[1], (1, 2, 0)) * 1500).astype(np.int16)


def header(study: str | None = None, **fields: Any) -> dict[str, Any]:
    """A FLAIR series header with fake identities (new UIDs unless given)."""
    base = {
        **IDENTITY,
        "StudyInstanceUID": study or generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "SeriesNumber": 4,
        "SeriesDescription": "AX T2 FLAIR",
        "ProtocolName": "t2_flair_tra",
        "InversionTime": 2500,
        "ScanningSequence": ["SE", "IR"],
        "EchoTime": 110,
    }
    return {**base, **fields}


def grid(
    canonical: np.ndarray, codes: tuple[str, str, str] = ("L", "P", "S"), oblique: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The stored volume and RAS affine for `codes`, rotated `oblique` degrees about x."""
    stored, affine = stored_grid(canonical, codes)
    return stored, _rotation_x(oblique) @ affine if oblique else affine


def write_nifti(stored: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    image = nib.Nifti1Image(stored, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    nib.save(image, str(path))
    return path


def canonical_affine(geometry: Any) -> np.ndarray:
    return geometry.affine @ ornt.inv_ornt_aff(geometry.to_canonical, geometry.shape)


def write_series(folder: Path, stored: np.ndarray, affine: np.ndarray, **kw: Any) -> list[Path]:
    """`write_dicom_series` with a FLAIR header (kw: header fields, or writer options)."""
    opts = {k: kw.pop(k) for k in ("multiframe", "names", "instance_numbers", "rescale") if k in kw}
    return write_dicom_series(stored, affine, folder, header(**kw), **opts)
