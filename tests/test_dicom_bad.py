"""Bad DICOM input: each case is a clear `errors` entry and the rest of the archive is indexed."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import SALT, grid, header, phantom, write_series
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pipeline.io.dicom_select import pseudonym
from pipeline.io.index import build_index
from pipeline.io.synthetic_dicom import write_dicom_series


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRI_TRIAGE_SALT", SALT)


def _archive(tmp_path: Path) -> tuple[Path, list[Path], str]:
    """An archive with one good study and one study whose FLAIR files the test then spoils."""
    root = tmp_path / "archive"
    stored, affine = grid(phantom(slices=8, size=16))
    write_series(root / "good", stored, affine)
    study = generate_uid()
    files = write_series(root / "bad" / "flair", stored, affine, StudyInstanceUID=study)
    return root, files, pseudonym(study, SALT.encode())


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _move(ds: pydicom.Dataset, mm: float) -> None:
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + mm]  # fmt: skip


def _missing(files: list[Path]) -> None:
    files[4].unlink()


def _duplicate_position(files: list[Path]) -> None:
    copy = files[3].with_name("copy.dcm")
    shutil.copy(files[3], copy)
    _edit(copy, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))


def _uneven(files: list[Path]) -> None:
    _edit(files[5], lambda ds: _move(ds, 0.9))


def _mixed_orientation(files: list[Path]) -> None:
    _edit(files[2], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.98, 0.199]))


def _mixed_size(files: list[Path]) -> None:
    def shrink(ds: pydicom.Dataset) -> None:
        ds.Rows = ds.Columns = 8
        ds.PixelData = np.zeros((8, 8), np.int16).tobytes()

    _edit(files[6], shrink)


def _no_pixels(files: list[Path]) -> None:
    _edit(files[1], lambda ds: delattr(ds, "PixelData"))


def _four_d(files: list[Path]) -> None:
    ds = pydicom.dcmread(files[0])
    stored, affine = grid(phantom(slices=8, size=16, seed=1))
    series = {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID}
    write_dicom_series(stored, affine, files[0].parent / "t2", header(**series))


def _unsupported_syntax(files: list[Path]) -> None:
    """Every file claims a compressed syntax no plugin decodes (MPEG-2)."""
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)


def _as_t2(ds: pydicom.Dataset) -> None:
    ds.SeriesDescription, ds.ProtocolName = "AX T2 TSE", "t2_tse"
    del ds.InversionTime


def _no_flair(files: list[Path]) -> None:
    for f in files:
        _edit(f, _as_t2)


BAD = {
    "missing slice": (_missing, "1 missing slice"),
    "duplicated slice": (_duplicate_position, "duplicated slices"),
    "uneven spacing": (_uneven, "uneven slice spacing"),
    "mixed orientation": (_mixed_orientation, "mixed orientations"),
    "mixed size": (_mixed_size, "mixed image sizes"),
    "missing pixel data": (_no_pixels, "without pixel data"),
    "4-D series": (_four_d, "4-D series: 2 images at each of 8 positions"),
    "unsupported transfer syntax": (_unsupported_syntax, "cannot decode pixel data"),
    "no FLAIR series": (_no_flair, "no series matches"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_series_is_an_error_and_the_rest_goes_on(tmp_path: Path, case: str):
    root, files, bad_key = _archive(tmp_path)
    spoil, reason = BAD[case]
    spoil(files)
    index = build_index(root)
    assert index.table["patient"].nunique() == 1 and len(index.table) == 8  # the good study
    assert bad_key not in set(index.table["patient"])
    mine = [e for e in index.errors if e.get("patient") == bad_key]
    assert len(mine) == 1, index.errors
    assert reason in mine[0]["reason"]
    assert all("TESTPERSON" not in e["reason"] for e in index.errors)


def test_unsupported_syntax_names_it(tmp_path: Path):
    root, files, bad_key = _archive(tmp_path)
    _unsupported_syntax(files)
    (err,) = [e for e in build_index(root).errors if e.get("patient") == bad_key]
    assert "MPEG2" in err["reason"] and "FLAIR series 4" in err["reason"]


def test_localizer_and_exact_duplicate_are_left_out_and_noted(tmp_path: Path):
    root, files, bad_key = _archive(tmp_path)
    shutil.copy(files[2], files[2].with_name("same_instance_again.dcm"))

    def localizer(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    scout = files[0].with_name("scout.dcm")
    shutil.copy(files[0], scout)
    _edit(scout, localizer)
    index = build_index(root)
    assert set(index.table.groupby("patient").size()) == {8} and len(index.table) == 16
    reasons = sorted(e["reason"] for e in index.errors if e.get("patient") == bad_key)
    assert reasons == [
        "duplicate instance (same SOPInstanceUID); left out",
        "localizer image among the series' slices; left out",
    ]


def test_non_dicom_files_are_errors_and_dicomdir_docs_are_ignored(tmp_path: Path):
    root, _, _ = _archive(tmp_path)
    (root / "good" / "notes.bin").write_bytes(b"\x00" * 300)
    (root / "good" / "fake.dcm").write_text("not dicom at all")
    (root / "good" / "README.txt").write_text("export notes")
    shutil.copy(get_testdata_file("test-SR.dcm"), root / "good" / "report.dcm")  # a non-image
    (root / "DICOMDIR").write_bytes(b"\x00" * 200)
    index = build_index(root)
    assert index.table["patient"].nunique() == 2
    bad = {Path(e["path"]).name: e["reason"] for e in index.errors}
    assert set(bad) == {"notes.bin", "fake.dcm"}
    assert "not a DICOM file" in bad["notes.bin"] and "not a readable DICOM" in bad["fake.dcm"]


def test_series_pattern_picks_and_reports(tmp_path: Path):
    root, files, bad_key = _archive(tmp_path)
    _no_flair(files)
    index = build_index(root, series_pattern=r"t2[_ ]tse")
    assert bad_key in set(index.table["patient"])
    rule = index.table.loc[index.table["patient"] == bad_key, "series_rule"].iloc[0]
    assert "--series-pattern" in rule and "t2 tse" in rule.lower()
    assert index.table["patient"].nunique() == 1  # the other study has no T2 TSE: reported
    assert any("no series matches --series-pattern" in e["reason"] for e in index.errors)


def test_cli_index_series_pattern_and_json_errors(tmp_path: Path, capsys: pytest.CaptureFixture):
    import json

    from pipeline.cli import main as cli

    root, files, bad_key = _archive(tmp_path)
    _no_flair(files)
    assert cli.main(["index", str(root), "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"] == 1 and summary["errors"][0]["patient"] == bad_key
    assert "TESTPERSON" not in json.dumps(summary) and "ZID4711" not in json.dumps(summary)
    args = ["index", str(root), "--json", "--series-pattern", r"t2[_ ]tse|flair"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["patients"] == 2
