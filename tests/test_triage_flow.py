"""The triage flow run for real (Prefect, TensorFlow, MLflow SQLite) on tiny synthetic archives."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import triage_helpers as th

from flows.triage import triage_flow
from pipeline.cli import main as cli
from pipeline.io.manifest import MANIFEST_NAME, load_manifest, output_lock
from pipeline.io.synthetic import write_synthetic_archive

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("models")
    return {
        "bright": th.save(th.bright_classifier(), d / "bright.keras", "classifier"),
        "normal": th.save(th.constant_classifier(0.995), d / "normal.keras", "classifier"),
        "seg": th.save(th.bright_segmenter(), d / "seg.keras", "segmenter"),
    }


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arch") / "kaggle"
    return write_synthetic_archive(root, patients=4, fmt="kaggle", seed=1, slices=8, image_size=64)


def _run(archive: Path, out: Path, models: dict[str, str], **kw: object) -> dict:
    kw.setdefault("track", False)
    return triage_flow(
        str(archive), str(out), classifier=models["bright"], segmenter=models["seg"], **kw
    )


def test_outputs_kaggle_and_mlflow(kaggle: Path, models: dict, tmp_path: Path, mlflow_uri: str):
    from pipeline.tracking import EXPERIMENTS, get_run, list_artifacts

    out = tmp_path / "out"
    result = _run(kaggle, out, models, track=True, log_outputs=True)
    assert result["exit_code"] == 0
    patients = sorted(p.name for p in kaggle.iterdir() if p.is_dir())
    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert sorted(r["patient"] for r in rows) == patients
    for p in patients:
        rep = json.loads((out / p / "report.json").read_text())
        assert len(rep["slices"]) == 8 and "research use only" in rep["disclaimer"].lower()
        preds = sorted((out / p).glob(f"{p}_*_pred.tif"))
        assert len(preds) == 8
        for f in preds:
            m = tifffile.imread(f)
            assert m.shape == (64, 64) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        k = rep["summary"]["largest_slice"]
        if k is not None:
            assert tifffile.imread(out / p / f"{p}_{k}_pred.tif").any()
        assert 'id="viewer-data"' in (out / p / "report.html").read_text()  # every slice
    m = result["metrics"]
    assert m["patients"] == 4 and m["failures"] == 0 and m["slices"] == 32
    assert m["slices_segmented"] + m["segmenter_calls_saved"] == 32
    # The bright-FLAIR gate catches the synthetic tumours, and the masks overlap them.
    assert m["gate_sensitivity_slice"] > 0.8 and m["dice_patient_mean"] > 0.5
    # Worklist: every tumour-found patient comes before every other.
    found = [r["tumour_found"] == "True" for r in rows]
    assert found == sorted(found, reverse=True)

    run = get_run(result["run_id"])
    assert run["experiment"] == EXPERIMENTS["triage"] and run["status"] == "FINISHED"
    assert run["params"]["threshold"] == "0.99" and run["params"]["classifier_version"]
    assert run["metrics"]["patients"] == 4
    blob = json.dumps([run["name"], run["params"], list(run["metrics"]), run["tags"]])
    assert not any(p in blob for p in patients)  # no patient keys in MLflow's searchable fields
    arts = list_artifacts(result["run_id"], "triage")
    assert any(a.endswith("summary.csv") for a in arts)


def test_nifti_mask_matches_input_geometry(models: dict, tmp_path: Path) -> None:
    archive = write_synthetic_archive(tmp_path / "nii", 2, "nifti", seed=3, slices=8, image_size=64)
    out = tmp_path / "out"
    assert _run(archive, out, models)["exit_code"] == 0
    for case in sorted(p for p in archive.iterdir() if p.is_dir()):
        src = nib.load(next(case.glob("*_flair.nii.gz")))
        pred = nib.load(out / case.name / f"{case.name}_pred.nii.gz")
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
        rep = json.loads((out / case.name / "report.json").read_text())
        assert rep["summary"]["volume_ml"] is not None  # NIfTI spacing is known


def test_routing_follows_hand_set_probabilities(kaggle: Path, models: dict, tmp_path: Path):
    normal = {**models, "bright": models["normal"]}  # P(normal) = 0.995 on every slice
    low = _run(kaggle, tmp_path / "a", normal, threshold=0.99)["metrics"]
    assert low["slices_segmented"] == 0 and low["segmenter_calls_saved"] == 32
    high = _run(kaggle, tmp_path / "b", normal, threshold=0.999)["metrics"]
    assert high["slices_segmented"] == 32
    rep = json.loads(next((tmp_path / "a").glob("*/report.json")).read_text())
    assert {s["route"] for s in rep["slices"]} == {"normal"}
    assert all(abs(s["p_tumour"] - 0.005) < 1e-4 for s in rep["slices"])


def test_corrupt_patients_mid_archive(kaggle: Path, models: dict, tmp_path: Path) -> None:
    archive = tmp_path / "arch"
    shutil.copytree(kaggle, archive)
    names = sorted(p.name for p in archive.iterdir() if p.is_dir())
    lost, broken = archive / names[1], archive / names[2]
    tifffile.imwrite(lost / f"{lost.name}_3.tif", np.zeros((32, 32, 3), np.uint8))  # wrong shape
    for f in broken.glob("*.tif"):
        f.write_bytes(b"not a tif")  # nothing readable left
    out = tmp_path / "out"
    argv = ["triage", str(archive), "--out", str(out), "--classifier", models["bright"],
            "--segmenter", models["seg"], "--no-mlflow"]  # fmt: skip
    assert cli.main(argv) == 1
    rows = {r["patient"]: r for r in csv.DictReader(io.StringIO((out / "summary.csv").read_text()))}
    assert set(rows) == set(names)
    assert rows[broken.name]["status"] == "failed" and rows[broken.name]["reason"]
    assert not (out / broken.name).exists() and broken.name not in load_manifest(out)
    # The patient that lost one slice is processed from the rest and says what was skipped.
    assert rows[lost.name]["status"] == "done" and f"{lost.name}_3.tif" in rows[lost.name]["reason"]
    assert rows[lost.name]["slices"] == "7"
    for p in (names[0], names[3]):
        assert rows[p]["status"] == "done" and (out / p / "report.json").exists()
    assert broken.name in (out / "index.html").read_text()


def test_unreadable_at_load_time_is_a_failed_record(kaggle: Path, models: dict, tmp_path: Path):
    from pipeline.io.index import build_index
    from pipeline.triage.inference import TriageSettings, load_triage_models, process_patient

    archive = tmp_path / "arch"
    shutil.copytree(kaggle, archive)
    table = build_index(archive).table
    patient = table["patient"].iloc[0]
    rows = table[table["patient"] == patient]
    Path(rows["image_path"].iloc[2]).unlink()  # gone between indexing and loading
    loaded = load_triage_models(models["bright"], models["seg"])
    rec = process_patient(rows, tmp_path / "out", loaded, TriageSettings())
    assert rec.status == "failed" and rec.patient == patient and rec.reason
    assert not (tmp_path / "out" / patient).exists()


def test_resume_skips_finished_and_force_redoes(kaggle: Path, models: dict, tmp_path: Path):
    archive = tmp_path / "arch"
    shutil.copytree(kaggle, archive)
    out = tmp_path / "out"
    first = _run(archive, out, models)["metrics"]
    assert first["patients_done"] == 4
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")}
    again = _run(archive, out, models)["metrics"]
    assert again["patients_skipped"] == 4 and again["patients_done"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")} == stamps
    # A changed input redoes that patient only; a different threshold or --force redoes all.
    changed = sorted(p for p in archive.iterdir() if p.is_dir())[0]
    img = tifffile.imread(changed / f"{changed.name}_1.tif")
    tifffile.imwrite(changed / f"{changed.name}_1.tif", 255 - img)
    third = _run(archive, out, models)["metrics"]
    assert third["patients_done"] == 1 and third["patients_skipped"] == 3
    assert _run(archive, out, models, force=True)["metrics"]["patients_done"] == 4
    assert _run(archive, out, models, threshold=0.5)["metrics"]["patients_done"] == 4
    assert len(json.loads((out / MANIFEST_NAME).read_text())["patients"]) == 4
    assert not list((out / ".staging").glob("*"))  # nothing half-written left behind


def test_second_run_on_same_output_is_refused(kaggle: Path, models: dict, tmp_path: Path):
    out = tmp_path / "out"
    argv = ["triage", str(kaggle), "--out", str(out), "--classifier", models["bright"],
            "--segmenter", models["seg"], "--no-mlflow"]  # fmt: skip
    with output_lock(out):
        assert cli.main(argv) == 2
    assert not (out / "summary.csv").exists()
