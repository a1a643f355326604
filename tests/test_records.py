"""Typed run records: JSON and pickle round trips, the run's files rendered from them, and an
earlier run's files read back (report.json, summary.csv and manifest formats unchanged)."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import triage_helpers as th

from pipeline.io.manifest import MANIFEST_NAME, output_hashes
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage.outcomes import merge_index_errors
from pipeline.triage.records import (
    DONE,
    FAILED,
    NEW,
    SKIPPED,
    Findings,
    PatientResult,
    RunSummary,
    SliceRecord,
    TruthMetrics,
)
from pipeline.triage.report import SUMMARY_COLUMNS, summary_csv, worklist_js
from pipeline.triage.run import RunOptions, run_triage, serial_map

#: A patient's report.json as the previous version wrote it (commit 30e9313, synthetic SYN_0001).
LEGACY_REPORT = {
    "patient": "SYN_0001", "status": "done", "format": "kaggle", "spacing_mm": [None] * 3,
    "threshold": 0.99, "settings": {"threshold": 0.99, "min_component": 10, "batch": 16},
    "models": {"classifier": {"uri": "/tmp/c.keras", "version": "c.keras#0de49ea5d8fa",
                              "runtime": "tf-float32"}},
    "slices": [
        {"slice": 1, "p_tumour": 0.9994632601737976, "route": "segmented", "tumour": True,
         "mask_pixels": 87, "mask_mm2": None, "gt_pixels": 87},
        {"slice": 2, "p_tumour": 0.9958899617195129, "route": "segmented", "tumour": True,
         "mask_pixels": 60, "mask_mm2": None, "gt_pixels": 60},
        {"slice": 3, "p_tumour": 0.973605215549469, "route": "segmented", "tumour": False,
         "mask_pixels": 0, "mask_mm2": None, "gt_pixels": 7},
        {"slice": 4, "p_tumour": 0.00017911195755004883, "route": "normal", "tumour": False,
         "mask_pixels": 0, "mask_mm2": None, "gt_pixels": 0},
    ],
    "summary": {"slices": 4, "flagged_slices": [1, 2, 3], "tumour_slices": [1, 2],
                "tumour_found": True, "tumour_pixels": 147, "volume_ml": None, "largest_slice": 1,
                "max_p_tumour": 0.9994632601737976, "uncertainty": 0.05278956890106201},
    "disclaimer": "Research use only, not a medical device.",
    "metrics": {"gt_tumour_slices": 3, "gate_caught_slices": 3, "gate_missed_slices": 0,
                "gate_sensitivity": 1.0, "dice": 0.9767441860465116,
                "dice_tumour_slices": 0.9767441860465116, "hd95": 0.0},
    "output": "SYN_0001",
    "masks": ["SYN_0001_1_pred.tif"],
    "timings_s": {"load": 0.0027, "classify": 0.179, "segment": 0.0316, "write": 0.0133,
                  "total": 0.2265},
}  # fmt: skip
#: Its summary.csv as that version wrote it (header and row).
LEGACY_CSV = (
    "priority,patient,status,reason,tumour_found,volume_ml,tumour_pixels,slices,flagged_slices,"
    "tumour_slices,largest_slice,uncertainty,max_p_tumour,gate_sensitivity,dice,seconds\r\n"
    "1,SYN_0001,done,,True,,147,4,3,2,1,0.05278956890106201,0.9994632601737976,1.0,"
    "0.9767441860465116,0.2265\r\n"
)


def _json(data: object) -> Any:
    return json.loads(json.dumps(data))


def _done(patient: str, slices: int, flagged: int, truth: TruthMetrics | None) -> PatientResult:
    found = Findings(slices, tuple(range(flagged)), (0,) if flagged else (), flagged > 0,
                     10 * flagged, None, 0 if flagged else None, 0.9, 0.2)  # fmt: skip
    return PatientResult(patient, patient, DONE, key="k", change=NEW, findings=found, truth=truth)


def test_every_record_survives_json_and_pickle() -> None:
    s = SliceRecord(3, 0.25, "segmented", True, 40, 10.0, 38)
    found = Findings(4, (1, 3), (3,), True, 40, 0.02, 3, 0.97, 0.1)
    truth = TruthMetrics(2, 1, 1, 0.5, 0.7, 0.8, 3.5)
    result = PatientResult("P/1", "P_1", DONE, "", "abc", NEW, found, truth, 1.25)
    failed = PatientResult("P2", "P2", FAILED, "unreadable")
    summary = RunSummary.of([result, failed], 2.0, files_skipped=1)
    for rec in (s, found, truth, result, failed, summary):
        back = type(rec).from_dict(_json(rec.to_dict()))
        assert back == rec and pickle.loads(pickle.dumps(rec)) == rec
    assert SliceRecord(1, None, "normal", False, 0).to_dict().keys() == {
        "slice", "p_tumour", "route", "tumour", "mask_pixels", "mask_mm2",
    }  # fmt: skip


def test_unknown_keys_are_ignored_and_missing_optional_ones_defaulted() -> None:
    newer = {**LEGACY_REPORT["slices"][0], "attention": 0.3}  # a field of a later version
    assert SliceRecord.from_dict(newer).gt_pixels == 87
    assert TruthMetrics.from_dict({"gt_tumour_slices": 0, "gate_caught_slices": 0,
                                   "gate_missed_slices": 0}).dice is None  # fmt: skip
    older = {k: v for k, v in LEGACY_REPORT.items() if k != "output"}  # before safe folder names
    assert (
        PatientResult.from_report({"output": "SYN_0001", **older}, SKIPPED, "k").seconds == 0.2265
    )
    with pytest.raises(TypeError):  # a required field missing is an error, not a silent zero
        SliceRecord.from_dict({"slice": 1})


def test_an_earlier_report_renders_the_same_summary_row() -> None:
    result = PatientResult.from_report(_json(LEGACY_REPORT), DONE, "k", NEW)
    assert summary_csv([result]) == LEGACY_CSV
    assert LEGACY_CSV.split("\r\n")[0].split(",") == SUMMARY_COLUMNS
    assert result.findings is not None and result.findings.flagged_slices == (1, 2, 3)
    assert "SYN_0001" in worklist_js([result], {"threshold": 0.99})


def test_run_summary_from_a_table_of_results() -> None:
    gt_hit = TruthMetrics(4, 3, 1, 0.75, 0.8)
    gt_miss = TruthMetrics(2, 0, 2, 0.0, 0.0)
    gt_free = TruthMetrics(0, 0, 0, None, 1.0)
    results = [
        _done("a", 10, 4, gt_hit),
        _done("b", 6, 0, gt_miss),
        PatientResult(
            "c", "c", SKIPPED, findings=_done("c", 8, 2, gt_free).findings, truth=gt_free
        ),
        PatientResult("d", "d", FAILED, "unreadable"),
        _done("e", 5, 1, None),  # no ground truth
    ]
    s = RunSummary.of(results, seconds=3.0, files_skipped=2)
    assert (s.patients, s.patients_done, s.patients_skipped, s.failures) == (5, 3, 1, 1)
    assert (s.slices, s.slices_segmented, s.segmenter_calls_saved) == (29, 7, 22)
    assert s.slices_per_s == pytest.approx(21 / 3.0)  # slices triaged now only
    assert s.tumour_patients_found == 3 and s.files_skipped == 2
    assert s.gate_sensitivity_slice == pytest.approx(3 / 6)
    assert s.gate_sensitivity_patient == pytest.approx(1 / 2)  # a: caught, b: missed
    assert s.gate_missed_slices == 3
    assert s.dice_patient_mean == pytest.approx(0.6) and s.dice_patient_min == 0.0
    metrics = s.metrics()
    assert all(isinstance(v, float) for v in metrics.values())
    assert RunSummary.from_dict(metrics) == s
    bare = RunSummary.of([_done("e", 5, 1, None)], 0.0)
    assert "gate_sensitivity_slice" not in bare.metrics() and bare.truth_figures() == {}
    assert bare.slices_per_s == 0.0


def test_index_errors_fold_into_results() -> None:
    errors = [
        {"path": "/a/P1/P1_3.tif", "reason": "unreadable", "patient": "P1"},
        {"path": "/a/P9/P9_1.tif", "reason": "all zero", "patient": "P9"},
        {"path": "/a/stray.tif", "reason": "at the archive root", "patient": None},
    ]
    results, skipped = merge_index_errors([_done("P1", 4, 1, None)], errors)
    by = {r.patient: r for r in results}
    assert by["P1"].status == DONE and "P1_3.tif: unreadable" in by["P1"].reason
    assert by["P9"].status == FAILED and by["P9"].findings is None and "all zero" in by["P9"].reason
    assert skipped == [{"path": "/a/stray.tif", "reason": "at the archive root"}]


def test_a_run_resumes_from_an_earlier_runs_manifest(tmp_path: Path) -> None:
    archive = write_synthetic_archive(tmp_path / "a", 2, "kaggle", seed=6, slices=4, image_size=64)
    clf = th.save(th.bright_classifier(), tmp_path / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), tmp_path / "s.keras", "segmenter")
    options = RunOptions(clf, seg, threshold=0.99, track=False)
    out = tmp_path / "out"
    first = run_triage(archive, out, options, serial_map)
    before = (out / "summary.csv").read_text()
    # Leave the folder as the earlier version did: its manifest (version 1, written field by
    # field here) and reports without the `output` key (older than safe folder names).
    written = json.loads((out / MANIFEST_NAME).read_text())["patients"]
    patients = {}
    for patient, entry in written.items():
        report = out / entry["folder"] / "report.json"
        old = {k: v for k, v in json.loads(report.read_text()).items() if k != "output"}
        report.write_text(json.dumps(old, indent=1))
        patients[patient] = {"key": entry["key"], "status": "done", "models": entry["models"],
                             "folder": entry["folder"],
                             "outputs": output_hashes(out / entry["folder"])}  # fmt: skip
    (out / MANIFEST_NAME).write_text(json.dumps({"version": 1, "patients": patients}))
    again = run_triage(archive, out, options, serial_map)
    assert again.summary.patients_skipped == 2 and again.summary.patients_done == 0
    assert again.summary.slices == first.summary.slices == 8
    assert again.summary.dice_patient_mean == first.summary.dice_patient_mean
    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert {r["status"] for r in rows} == {SKIPPED}
    same = [{**r, "status": SKIPPED} for r in csv.DictReader(io.StringIO(before))]
    assert rows == same  # the same table, read back from the earlier reports
    assert again.as_dict()["metrics"] == again.summary.metrics()
