"""The DICOM reader against the NIfTI path: same voxels and affine, whatever the file order."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import (
    SALT,
    canonical_affine,
    grid,
    header,
    phantom,
    write_nifti,
    write_series,
)
from pydicom.data import get_testdata_file

from pipeline.io.dicom import check_series, looks_like_dicom, read_volume, scan_series
from pipeline.io.dicom_case import index_dicom, load_dicom_case
from pipeline.io.dicom_select import pseudonym, select_flair
from pipeline.io.errors import ArchiveError
from pipeline.io.index import build_index
from pipeline.io.nifti import load_nifti_case
from pipeline.io.slices import load_patient


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRI_TRIAGE_SALT", SALT)


def _dicom_case(folder: Path):
    rows, errors = index_dicom([str(p) for p in folder.rglob("*") if p.is_file()])
    assert errors == [] and rows
    first = rows[0]
    return load_dicom_case(folder, first["series_uid"], first["patient"], first["series_rule"])


CASES = {
    "axial LPS": {"codes": ("L", "P", "S")},
    "axial RAS": {"codes": ("R", "A", "S")},
    "sagittal PSR": {"codes": ("P", "S", "R")},
    "coronal LSA": {"codes": ("L", "S", "A")},
    "oblique 17 deg": {"codes": ("L", "P", "S"), "oblique": 17.0},
    "oblique 40 deg sagittal": {"codes": ("P", "S", "L"), "oblique": 40.0},
}


@pytest.mark.parametrize("multiframe", [False, True], ids=["single-frame", "multi-frame"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_round_trip_matches_nifti_path(tmp_path: Path, case: str, multiframe: bool):
    stored, affine = grid(phantom(), **CASES[case])
    nifti = load_nifti_case(write_nifti(stored, affine, tmp_path / "flair.nii.gz"))
    write_series(tmp_path / "dcm", stored, affine, multiframe=multiframe)
    dcm, source = _dicom_case(tmp_path / "dcm")
    np.testing.assert_allclose(dcm.image, nifti.image, atol=1e-6)
    assert dcm.image.shape == nifti.image.shape
    np.testing.assert_allclose(
        canonical_affine(dcm.geometry), canonical_affine(nifti.geometry), atol=1e-4
    )
    np.testing.assert_allclose(dcm.spacing, nifti.spacing, rtol=1e-5)
    assert source.geometry.shape == stored.shape


def test_shuffled_names_and_instance_numbers(tmp_path: Path):
    stored, affine = grid(phantom(slices=12), oblique=9.0)
    reference = tmp_path / "ref"
    write_series(reference, stored, affine)
    rng = np.random.default_rng(3)
    depth = stored.shape[2]
    names = [f"x{v:03d}" for v in rng.permutation(depth)]  # no suffix: found by the DICM preamble
    numbers = [int(v) for v in rng.permutation(depth) + 1]
    nested = tmp_path / "shuffled"
    files = write_series(nested / "a", stored, affine, names=names, instance_numbers=numbers)
    for i, f in enumerate(files[::3]):  # scatter over folders of any depth
        dest = nested / "b" / f"deep{i}" / "er"
        dest.mkdir(parents=True)
        shutil.move(str(f), dest / f.name)
    a, _ = _dicom_case(reference)
    b, _ = _dicom_case(nested)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


def test_rescale_slope_and_intercept(tmp_path: Path):
    stored, affine = grid(phantom())
    even = (stored // 2 * 2).astype(np.int16)
    files = write_series(tmp_path / "d", even, affine, rescale=(2.0, -100.0))
    raw = pydicom.dcmread(files[0]).pixel_array
    assert not np.array_equal(raw.T, even[:, :, 0])  # really stored rescaled
    series, _ = scan_series(files)
    geometry = check_series(next(iter(series.values())))
    np.testing.assert_array_equal(read_volume(geometry), even.astype(np.float32))


def test_index_and_load_patient(tmp_path: Path):
    stored, affine = grid(phantom(slices=8))
    write_series(tmp_path / "arch" / "one" / "two", stored, affine)
    index = build_index(tmp_path / "arch")
    assert index.errors == []
    table = index.table
    assert set(table["format"]) == {"dicom"} and len(table) == 8
    patient = table["patient"].iloc[0]
    assert patient.startswith("DCM-") and "TESTPERSON" not in patient
    ps = load_patient(table)
    assert ps.format == "dicom" and ps.images.shape == (8, 32, 32, 3)
    assert ps.dicom.describe()["description"] == "AX T2 FLAIR"
    np.testing.assert_allclose(ps.spacing, (0.9, 0.9, 3.0), atol=1e-6)


def test_pseudonym_is_stable_salted_and_never_the_uid(monkeypatch: pytest.MonkeyPatch, tmp_path):
    uid = "1.2.3.4.5"
    key = pseudonym(uid, b"a")
    assert key == pseudonym(uid, b"a") and key != pseudonym(uid, b"b")
    assert uid not in key and key.startswith("DCM-") and len(key) == 20
    from pipeline.io.dicom_select import load_salt

    monkeypatch.delenv("MRI_TRIAGE_SALT")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    salt = load_salt()
    assert salt == load_salt() and len(salt) == 64  # created once, then reused
    assert (tmp_path / "mri-triage" / "salt").stat().st_mode & 0o077 == 0


def _series(tmp_path: Path, **fields) -> object:
    stored, affine = grid(phantom(slices=3, size=16))
    files = write_series(tmp_path / fields.get("SeriesDescription", "s"), stored, affine, **fields)
    series, _ = scan_series(files)
    return next(iter(series.values()))


def test_flair_selection_rules(tmp_path: Path):
    flair = _series(tmp_path, SeriesDescription="AX FLAIR", SeriesNumber=5)
    t1_flair = _series(
        tmp_path, SeriesDescription="T1 FLAIR SAG", InversionTime=860, SeriesNumber=6
    )
    t2 = _series(tmp_path, SeriesDescription="AX T2 TSE", ProtocolName="t2_tse", InversionTime=None,
                 SeriesNumber=3)  # fmt: skip
    darkfluid = _series(tmp_path, SeriesDescription="ep2d", ProtocolName="t2_tirm_dark-fluid",
                        SeriesNumber=7, InversionTime=None)  # fmt: skip
    by_ti = _series(tmp_path, SeriesDescription="ax ir", ProtocolName="ir", SeriesNumber=8,
                    InversionTime=2400, EchoTime=95)  # fmt: skip
    sel = select_flair([t2, t1_flair, flair])
    assert sel.series is flair and "FLAIR" in sel.rule and sel.candidates == 1
    assert select_flair([t2, darkfluid]).series is darkfluid
    by = select_flair([t2, by_ti])
    assert by.series is by_ti and "InversionTime 2400" in by.rule
    none = select_flair([t2, t1_flair])
    assert none.series is None and "no series matches" in none.rule
    assert len(none.considered) == 2
    assert select_flair([flair, t2], pattern=r"t2[_ ]tse").series is t2
    with pytest.raises(re.error):
        select_flair([flair], pattern="(")


PYDICOM_MR = [
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.parametrize("name", PYDICOM_MR)
def test_pydicom_wheel_mr_files_all_transfer_syntaxes(name: str):
    """The MR files shipped inside the pydicom wheel, in many transfer syntaxes, read alike."""
    series, errors = scan_series([get_testdata_file(name)])
    assert errors == [] and len(series) == 1
    header = next(iter(series.values()))
    geometry = check_series(header)
    volume = read_volume(geometry)
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    assert volume.shape == (64, 64, 1)
    np.testing.assert_array_equal(volume[:, :, 0], reference.T.astype(np.float32))
    assert geometry.nifti_geometry().spacing[0] == pytest.approx(0.3125)


def test_pydicom_wheel_ct_rescale_and_headers():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series, _ = scan_series([get_testdata_file("CT_small.dcm")])
    volume = read_volume(check_series(next(iter(series.values()))))
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    np.testing.assert_array_equal(volume[:, :, 0], expected.T)
    assert float(ds.RescaleIntercept) != 0  # the rescale really is exercised


def test_pydicom_wheel_non_images_and_broken_files():
    """SR / RT objects are ignored quietly; a truncated or non-DICOM file is an error entry."""
    names = ["test-SR.dcm", "rtplan.dcm", "rtstruct.dcm", "MR_truncated.dcm", "README.txt"]
    paths = [get_testdata_file(n) for n in names]
    series, errors = scan_series([p for p in paths if p])
    bad = {Path(e["path"]).name for e in errors}
    assert bad == {"README.txt"}
    assert len(series) == 1  # the truncated MR: its header is fine, its pixels are not
    with pytest.raises(ArchiveError, match="cannot decode pixel data"):
        read_volume(check_series(next(iter(series.values()))))
    assert looks_like_dicom(get_testdata_file("MR_small.dcm"))
    assert not looks_like_dicom(get_testdata_file("README.txt"))


def test_nibabel_wheel_dicom_files():
    """nibabel ships Siemens DICOM files (incl. a mosaic); each reads or fails with a reason."""
    import nibabel

    root = Path(nibabel.__file__).parent
    files = sorted(p for p in root.rglob("*.dcm"))
    if not files:
        pytest.skip("this nibabel wheel ships no DICOM files")
    series, errors = scan_series(files)
    assert series or errors
    for one in series.values():
        try:
            volume = read_volume(check_series(one))
        except Exception as exc:  # must be our clear error, never a crash of another type
            assert type(exc).__name__ == "ArchiveError", exc
        else:
            assert volume.ndim == 3 and np.isfinite(volume).all()
    assert all(e["reason"] for e in errors)


def test_header_keeps_no_identity(tmp_path: Path):
    s = _series(tmp_path, SeriesDescription="AX FLAIR")
    text = repr(s.describe())
    for value in header().values():
        if (
            isinstance(value, str)
            and len(value) > 3
            and value not in ("AX T2 FLAIR", "t2_flair_tra")
        ):
            assert value not in text


def test_flat_export_of_several_studies_in_one_folder(tmp_path: Path):
    """All instances of all studies in one folder (a common PACS export), one of them sagittal."""
    flat = tmp_path / "flat"
    expected = {}
    for n, codes in enumerate([("L", "P", "S"), ("P", "S", "R"), ("R", "A", "S")]):
        stored, affine = grid(phantom(slices=6, size=24, seed=n), codes)
        names = [f"IMG{n}_{k:03d}" for k in range(stored.shape[2])]
        files = write_series(flat, stored, affine, names=names)
        nifti = load_nifti_case(write_nifti(stored, affine, tmp_path / f"{n}.nii.gz"))
        uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        expected[pseudonym(uid, SALT.encode())] = nifti
    index = build_index(flat)
    assert index.errors == [] and set(index.table["patient"]) == set(expected)
    for key, rows in index.table.groupby("patient"):
        ps = load_patient(rows)
        want = np.transpose(expected[key].image, (2, 0, 1, 3))
        np.testing.assert_allclose(ps.images, want, atol=1e-6)


#: More files from the pydicom wheel: what each becomes (a volume, a clear error, or ignored).
PYDICOM_VARIETY = {
    "693_J2KI.dcm": "volume",  # CT, JPEG 2000 lossy
    "MR_small_bigendian.dcm": "volume",
    "JPEG-lossy.dcm": "without ImagePositionPatient",  # no patient geometry: not a volume
    "JPGExtended.dcm": "without ImagePositionPatient",
    "SC_rgb_jpeg.dcm": "without ImagePositionPatient",  # secondary capture
    "JPEGLSNearLossless_16.dcm": "without StudyInstanceUID",
    "examples_ybr_color.dcm": "multi-frame image without per-frame geometry",
    "liver_1frame.dcm": "ignored",  # a DICOM SEG
    "rtdose.dcm": "ignored",
}


@pytest.mark.parametrize("name", list(PYDICOM_VARIETY))
def test_pydicom_wheel_header_variety(name: str):
    want = PYDICOM_VARIETY[name]
    series, errors = scan_series([get_testdata_file(name)])
    if want == "ignored":
        assert series == {} and errors == []
        return
    if errors:
        assert want in errors[0]["reason"]
        return
    try:
        volume = read_volume(check_series(next(iter(series.values()))))
    except ArchiveError as exc:
        assert want in exc.reason
        return
    assert want == "volume" and volume.ndim == 3 and np.isfinite(volume).all()
