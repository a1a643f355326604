"""DICOM out: the SEG read back with highdicom lies on the source images; no identity leaks."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import triage_helpers as th
from dicom_helpers import SALT, grid, phantom, write_series

from pipeline.io.index import build_index
from pipeline.io.slices import load_patient
from pipeline.io.synthetic_dicom import write_synthetic_dicom_archive


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRI_TRIAGE_SALT", SALT)


def _voxel_of(affine_ras: np.ndarray, ipp_lps: np.ndarray) -> np.ndarray:
    ras = np.array([-ipp_lps[0], -ipp_lps[1], ipp_lps[2], 1.0])
    return (np.linalg.inv(affine_ras) @ ras)[:3]


@pytest.mark.parametrize("multiframe", [False, True], ids=["single-frame", "multi-frame"])
def test_seg_references_sources_and_matches_nifti_mask(tmp_path: Path, multiframe: bool):
    stored, affine = grid(phantom(slices=9, size=32), oblique=21.0)
    files = write_series(tmp_path / "arch" / "s", stored, affine, multiframe=multiframe)
    index = build_index(tmp_path / "arch")
    ps = load_patient(index.table)
    pred = ps.images[..., 1] > 0.7
    assert pred.any()
    nii_path, seg_path = ps.write_masks(pred, tmp_path / "out")
    seg = hd.seg.segread(seg_path)
    source = [pydicom.dcmread(f) for f in files]
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source[0].SeriesInstanceUID
    refs = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert refs == {ds.SOPInstanceUID for ds in source}
    # Independent check through world coordinates: each SEG frame sits where its source image
    # sits, and holds what the NIfTI mask holds at that position.
    nii = nib.load(nii_path)
    mask = np.asarray(nii.dataobj)
    seg_pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), *mask.shape[1::-1])
    assert int(seg.NumberOfFrames) == stored.shape[2]
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        ds = next(d for d in source if d.SOPInstanceUID == ref.ReferencedSOPInstanceUID)
        if multiframe:
            number = int(ref.ReferencedFrameNumber)
            src_item = ds.PerFrameFunctionalGroupsSequence[number - 1]
            src_ipp = src_item.PlanePositionSequence[0].ImagePositionPatient
        else:
            src_ipp = ds.ImagePositionPatient
        np.testing.assert_allclose(ipp, np.array(src_ipp, float), atol=1e-3)
        i, j, k = np.round(_voxel_of(nii.affine, ipp)).astype(int)
        assert (i, j) == (0, 0)
        np.testing.assert_array_equal(seg_pixels[f] > 0, mask[:, :, k].T > 0)
    assert (seg_pixels > 0).sum() == pred.sum()


def test_empty_prediction_still_writes_a_valid_seg(tmp_path: Path):
    stored, affine = grid(phantom(slices=4, size=16))
    write_series(tmp_path / "a", stored, affine)
    ps = load_patient(build_index(tmp_path / "a").table)
    _, seg_path = ps.write_masks(np.zeros((4, 16, 16), bool), tmp_path / "out")
    seg = hd.seg.segread(seg_path)
    assert int(seg.NumberOfFrames) == 4 and not seg.pixel_array.any()


def test_synth_cli_writes_a_multi_series_archive(tmp_path: Path):
    out = tmp_path / "synth"
    cmd = [sys.executable, "-m", "pipeline.cli", "synth", str(out), "--format", "dicom",
           "--patients", "3", "--slices", "6", "--image-size", "32"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    series = {}
    for f in out.rglob("*"):
        if f.is_file():
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            series.setdefault((ds.StudyInstanceUID, ds.SeriesDescription), ds)
    studies = {s for s, _ in series}
    assert len(studies) == 3
    assert {d for _, d in series} == {"localizer", "AX T1 SE", "AX T2 FLAIR", "SAG T1 POST"}
    oblique = [
        ds
        for (_, d), ds in series.items()
        if d == "AX T2 FLAIR" and "PerFrameFunctionalGroupsSequence" not in ds
    ]
    assert any(abs(float(ds.ImageOrientationPatient[5])) > 0.1 for ds in oblique)
    index = build_index(out)
    assert index.errors == [] and index.table["patient"].nunique() == 3


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_triage_on_dicom_archive_leaks_no_identity(tmp_path: Path, mlflow_uri: str):
    from flows.triage import triage_flow

    archive = write_synthetic_dicom_archive(tmp_path / "pacs", patients=3, seed=2, slices=8,
                                            image_size=64)  # fmt: skip
    secrets: set[str] = set()
    for f in (p for p in archive.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        name = str(ds.PatientName)
        secrets |= {name, name.replace("^", " "), ds.PatientID, ds.PatientBirthDate, ds.StudyDate,
                    ds.AccessionNumber, ds.StudyInstanceUID}  # fmt: skip
        d = ds.StudyDate
        secrets.add(f"{d[:4]}-{d[4:6]}-{d[6:]}")
    models = tmp_path / "models"
    clf = th.save(th.bright_classifier(), models / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), models / "s.keras", "segmenter")
    out = tmp_path / "out"
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        result = triage_flow(str(archive), str(out), classifier=clf, segmenter=seg,
                             threshold=0.99, track=True)  # fmt: skip
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert result["exit_code"] == 0 and result["metrics"]["patients"] == 3
    reports = sorted(out.glob("*/report.json"))
    assert len(reports) == 3
    for path in reports:
        rep = json.loads(path.read_text())
        assert rep["format"] == "dicom" and rep["patient"].startswith("DCM-")
        assert (
            rep["series"]["description"] == "AX T2 FLAIR" and "FLAIR" in rep["series"]["selection"]
        )
        assert sorted(p.suffix for p in path.parent.iterdir() if "_" in p.name) == [".dcm", ".gz"]
        assert "Series chosen by" in (path.parent / "report.html").read_text()
    assert not (out / "pseudonym_map.csv").exists()
    texts = {"logs": logs.getvalue()}
    assert "triaging 3 patients" in texts["logs"]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".html"):
            texts[str(path)] = path.read_text(errors="replace")
    store = tmp_path / "mlflow.db"
    texts["mlflow.db"] = store.read_bytes().decode("latin-1")
    for path in (tmp_path / "artifacts").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert any("report.json" in k for k in texts) and len(texts["mlflow.db"]) > 1000
    assert not any(k.endswith(".dcm") for k in texts if "artifacts" in k)
    leaks = [(k, s) for k, text in texts.items() for s in secrets if s and s in text]
    assert leaks == []
    # The map is written only on request, only into the output folder.
    again = triage_flow(str(archive), str(tmp_path / "out2"), classifier=clf, segmenter=seg,
                        threshold=0.99, track=False, key_map=True)  # fmt: skip
    assert again["exit_code"] == 0
    mapping = (tmp_path / "out2" / "pseudonym_map.csv").read_text()
    assert len(mapping.strip().splitlines()) == 4 and "DCM-" in mapping
