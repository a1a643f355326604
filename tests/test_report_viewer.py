"""Reports a reader opens: every slice in the viewer, ground-truth outlines, the worklist's
navigation and change column, escaping, file modes, and a headless-browser load."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import triage_helpers as th

from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage.records import PatientResult, SliceRecord
from pipeline.triage.report import render_index_html, render_patient_html
from pipeline.triage.run import RunOptions, run_triage, serial_map
from pipeline.triage.viewer import (
    gray_u8,
    outline_polygons,
    review_lists,
    thumbnail,
    viewer_data,
)

HOSTILE = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"


def _viewer_json(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("viewer")
    archive = write_synthetic_archive(tmp / "a", 2, "kaggle", seed=3, slices=5, image_size=64)
    clf = th.save(th.bright_classifier(), tmp / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), tmp / "s.keras", "segmenter")
    options = RunOptions(clf, seg, threshold=0.5, track=False)
    run_triage(archive, tmp / "out", options, serial_map)
    run_triage(archive, tmp / "out", options, serial_map)  # second run: unchanged patients
    return tmp / "out"


def test_report_has_every_slice_and_ground_truth_outlines(run_out: Path) -> None:
    folders = sorted(p.parent for p in run_out.glob("*/report.json"))
    assert len(folders) == 2
    any_gt = False
    for folder in folders:
        rep = json.loads((folder / "report.json").read_text())
        data = _viewer_json((folder / "report.html").read_text())
        n = rep["summary"]["slices"]
        assert len(data["images"]) == len(data["pred"]) == len(data["slices"]) == n == 5
        assert data["gt"] is not None and len(data["gt"]) == n  # the archive has masks
        any_gt |= any(data["gt"])
        assert [s["slice"] for s in data["slices"]] == [s["slice"] for s in rep["slices"]]
        assert (folder / "thumb.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG thumbnail
    assert any_gt


def test_worklist_navigation_and_changes(run_out: Path) -> None:
    page = (run_out / "index.html").read_text()
    assert 'href="summary.csv"' in page and "thumb.jpg" in page and "unchanged" in page
    assert page.count("Research use only") == 1  # one notice
    js = (run_out / "worklist.js").read_text()
    run = json.loads(js.removeprefix("window.TRIAGE_RUN = ").rstrip().removesuffix(";"))
    assert sorted(run["order"]) == ["SYN_0001", "SYN_0002"] and run["p_tumour_cut"] == 0.5
    assert run["threshold_source"] == "--threshold" and run["archive"] == "a"


def test_outputs_follow_the_umask(run_out: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    files = [p for p in run_out.rglob("*") if p.is_file() and ".triage.lock" not in p.name]
    assert any(p.suffix == ".tif" for p in files)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {want}


def _report(patient: str, gt_slices: int, dice: float | None) -> dict:
    slices = [
        {"slice": k, "p_tumour": p, "route": r, "tumour": False, "mask_pixels": 0,
         "mask_mm2": None, "gt_pixels": g}
        for k, p, r, g in ((1, 0.1, "normal", 9), (2, 0.9, "segmented", 0))
    ]  # fmt: skip
    summary = {
        "slices": 2, "flagged_slices": [2], "tumour_slices": [], "tumour_found": False,
        "tumour_pixels": 0, "volume_ml": None, "largest_slice": None, "max_p_tumour": 0.9,
        "uncertainty": 0.2,
    }  # fmt: skip
    metrics = {"gt_tumour_slices": gt_slices, "gate_caught_slices": gt_slices,
               "gate_missed_slices": 0, "dice": dice}  # fmt: skip
    models = {"classifier": {"uri": "models:/mri-triage-classifier@champion", "version": "4"}}
    return {"patient": patient, "threshold": 0.5, "models": models, "slices": slices,
            "summary": summary, "metrics": metrics}  # fmt: skip


def test_tumour_free_patient_has_no_dice_of_one() -> None:
    page = render_patient_html(_report("P1", 0, 1.0), None)
    assert "no tumour in the ground-truth masks" in page and "1.000" not in page
    assert "mri-triage-classifier v4 (champion)" in page  # a readable model name


def test_review_lists_dropped_and_disagreeing_slices() -> None:
    lists = review_lists([SliceRecord.from_dict(s) for s in _report("P1", 1, 0.0)["slices"]])
    assert lists == {"gate_dropped": [1], "disagree": [2]}


def test_hostile_keys_are_escaped_everywhere() -> None:
    rep = _report(HOSTILE, 1, 0.5)
    mask = np.zeros((2, 8, 8), bool)
    mask[1, 2:5, 2:5] = True
    view = viewer_data(
        np.zeros((2, 8, 8)), mask, mask, [SliceRecord.from_dict(s) for s in rep["slices"]]
    )
    page = render_patient_html(rep, None, view)
    index = render_index_html([PatientResult.from_report({**rep, "output": "x"}, "done", None)], {})
    for html in (page, index):
        assert "<script>alert" not in html and "<img src=x" not in html
    assert len(re.findall(r"</script>", page)) == page.count("<script")  # no early close
    assert outline_polygons(mask[1]) and view["gt"][1] == view["pred"][1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_pages_load_in_headless_chromium_without_console_errors(run_out: Path) -> None:
    report = next(run_out.glob("*/report.html"))
    for page in (run_out / "index.html", report):
        done = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             "--v=0", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        assert "CONSOLE" not in done.stderr, done.stderr[-2000:]
        if page == report:  # the viewer's script ran: a caption and previous/next navigation
            assert re.search(r'id="v-caption"[^>]*>slice \d', done.stdout)
            assert re.search(r'/report\.html">(\u2190 previous|next) patient', done.stdout)
            assert "archive a" in done.stdout  # run details from worklist.js


def test_grey_levels_kept_for_the_writer_draw_the_same_pages() -> None:
    """Triage keeps FLAIR as uint8 grey levels for its writer: same images as from floats."""
    rng = np.random.default_rng(3)
    flair = rng.random((4, 20, 24), dtype=np.float32)
    flair[0, 0, :3] = [np.nan, -0.5, 1.5]  # out-of-range and NaN pixels clip as before
    grey = gray_u8(flair)
    assert grey.dtype == np.uint8 and gray_u8(grey) is grey
    expected = np.clip(np.nan_to_num(flair) * 255.0, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(grey, expected)
    pred = np.zeros(flair.shape, bool)
    pred[1, 5:9, 5:9] = True
    assert thumbnail(grey[1], pred[1]) == thumbnail(flair[1], pred[1])
