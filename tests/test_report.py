"""Per-patient and run-level reports: JSON fields, self-contained HTML, worklist order."""

from __future__ import annotations

import base64
import csv
import io
import re

import numpy as np
from PIL import Image

from pipeline.triage.records import FAILED, Findings, PatientResult
from pipeline.triage.report import (
    DISCLAIMER,
    overlay_montage,
    patient_summary,
    priority_order,
    render_index_html,
    render_patient_html,
    slice_records,
    summary_csv,
)


def _report() -> dict:
    p_normal = np.array([0.999, 0.2, 0.6, 0.995])
    flagged = np.array([False, True, True, False])
    pixels = np.array([0, 120, 0, 0])
    spacing = (0.5, 0.5, 2.0)
    slices = slice_records(
        [1, 2, 3, 4], p_normal, flagged, pixels, spacing, np.array([0, 100, 5, 0])
    )
    metrics = {"gt_tumour_slices": 1, "gate_caught_slices": 1, "gate_missed_slices": 0,
               "gate_sensitivity": 1.0, "dice": 0.8}  # fmt: skip
    return {
        "patient": "P<1>",
        "output": "P_1",
        "status": "done",
        "threshold": 0.99,
        "models": {"classifier": {"uri": "x.keras", "version": "1"}},
        "slices": [s.to_dict() for s in slices],
        "summary": patient_summary(slices, spacing).to_dict(),
        "metrics": metrics,
        "timings_s": {"total": 1.5},
    }


def test_slice_records_and_summary() -> None:
    rep = _report()
    s = rep["slices"]
    assert [r["route"] for r in s] == ["normal", "segmented", "segmented", "normal"]
    assert [r["tumour"] for r in s] == [False, True, False, False]  # empty mask: normal after all
    assert s[1]["mask_mm2"] == 30.0  # 120 px * 0.25 mm²
    assert s[1]["p_tumour"] == 0.8
    summ = rep["summary"]
    assert summ["flagged_slices"] == [2, 3]
    assert summ["tumour_slices"] == [2]
    assert summ["largest_slice"] == 2
    assert summ["volume_ml"] == 0.06  # 120 px * 0.5 mm³ / 1000
    assert summ["uncertainty"] == 0.8  # slice 3, P(normal) 0.6


def test_unknown_spacing_gives_no_volume() -> None:
    nan = float("nan")
    recs = slice_records([1], np.array([0.1]), np.array([True]), np.array([7]), (nan, nan, nan))
    assert recs[0].mask_mm2 is None and recs[0].gt_pixels is None
    assert "gt_pixels" not in recs[0].to_dict()  # no ground truth: no key, as report.json had
    assert patient_summary(recs, (nan, nan, nan)).volume_ml is None


def test_montage_outlines_mask() -> None:
    flair = np.full((3, 64, 64), 0.5, dtype=np.float32)
    masks = np.zeros((3, 64, 64), dtype=bool)
    masks[0, 20:40, 20:40] = True
    png = overlay_montage(flair, masks, ["a", "b", "c"], tile=64, cols=2)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape == (128, 128, 3)
    red = (img[..., 0] > 200) & (img[..., 1] < 100)
    assert red[:64, :64].sum() > 40  # outline on the first tile
    assert red[30, 30] == 0  # the inside is not filled
    assert red[:, 64:].sum() == 0 and red[64:, :].sum() == 0  # no mask, no outline


def test_patient_html_is_self_contained() -> None:
    rep = _report()
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 5:15, 5:15] = True
    png = overlay_montage(np.zeros((2, 32, 32)), masks, ["2", "3"], tile=32)
    page = render_patient_html(rep, png)
    assert DISCLAIMER in page
    assert "P&lt;1&gt;" in page  # escaped
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert m is not None and base64.b64decode(m.group(1)) == png
    # Nothing external: only the run's own worklist (back link, optional navigation script).
    assert not re.search(r"(src|href)=['\"](?!data:|\.\./index\.html|\.\./worklist\.js)", page)


def _done(patient: str, found: bool, volume: float | None = None, unsure: float = 0.0):
    f = Findings(4, (1,), (1,) if found else (), found, 50 if found else 0, volume,
                 1 if found else None, 0.9, unsure)  # fmt: skip
    return PatientResult(patient, patient, "done", findings=f)


def test_worklist_order_and_csv() -> None:
    recs = [
        _done("none", False, unsure=0.1),
        _done("small", True, 1.0),
        PatientResult("bad", "bad", FAILED, "unreadable file"),
        _done("big", True, 9.0),
        _done("unsure", False, unsure=0.9),
    ]
    assert [r.patient for r in priority_order(recs)] == ["big", "small", "unsure", "none", "bad"]
    rows = list(csv.DictReader(io.StringIO(summary_csv(recs))))
    assert [r["patient"] for r in rows] == ["big", "small", "unsure", "none", "bad"]
    assert rows[-1]["reason"] == "unreadable file" and rows[0]["priority"] == "1"
    assert rows[-1]["slices"] == "" and rows[0]["flagged_slices"] == "1"  # a count, not a list
    page = render_index_html(recs, {"threshold": 0.99})
    assert page.index("big/report.html") < page.index("small/report.html")
    assert "unreadable file" in page and DISCLAIMER in page


def test_patient_result_from_report() -> None:
    rec = PatientResult.from_report(_report(), "done", "k")
    assert rec.findings is not None and rec.findings.tumour_found is True
    assert rec.row()["flagged_slices"] == 2 and rec.row()["dice"] == 0.8
    assert rec.seconds == 1.5 and rec.output == "P_1" and rec.key == "k"
