"""Reports a reader can open: per patient `report.json` + `report.html`, per run `summary.csv` +
`index.html` (a worklist, tumour found first, then by volume, then by uncertainty).

Everything here is pure (records and arrays in, strings and bytes out) except the `write_*` helpers,
which write atomically. The run's files are rendered from `pipeline.triage.records` (`PatientResult`
per patient); a patient page from its `report.json` content, read through the same records. Patient
keys appear in these files: they are the user's own outputs.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
from PIL import Image

from pipeline.io.manifest import INDEX_NAME, SUMMARY_NAME, WORKLIST_NAME, atomic_write_text
from pipeline.io.safety import csv_cell, display_text
from pipeline.triage.records import (
    FAILED,
    ROW_COLUMNS,
    SKIPPED,
    Findings,
    PatientResult,
    SliceRecord,
    TruthMetrics,
)
from pipeline.triage.rule import ROUTE_SEGMENTED, final_labels, route_names, uncertainty

DISCLAIMER = (
    "Research use only, not a medical device. Findings must be reviewed by a qualified reader."
)
SUMMARY_COLUMNS = ["priority", *ROW_COLUMNS]
_GRAY_LEVELS = 254  # palette entries 0-253: gray; 254: outline; 255: caption
_OUTLINE, _CAPTION = 254, 255
_GRAYS = [v for g in range(_GRAY_LEVELS) for v in (g * 255 // (_GRAY_LEVELS - 1),) * 3]
_PALETTE = [*_GRAYS, 255, 48, 48, 255, 255, 0]  # RGB triplets
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)  # scipy's default


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def slice_records(
    slices: Sequence[int],
    p_normal: np.ndarray,
    flagged: np.ndarray,
    mask_pixels: np.ndarray,
    spacing: Sequence[float],
    gt_pixels: np.ndarray | None = None,
) -> list[SliceRecord]:
    """One record per slice for `report.json`.

    Args:
        slices: slice numbers as in the archive (Kaggle k, or NIfTI axial index).
        p_normal: `(N,)` classifier P(normal).
        flagged: `(N,)` bool, sent to the segmenter.
        mask_pixels: `(N,)` post-processed mask area in native pixels.
        spacing: `(sx, sy, sz)` in mm, NaN where unknown.
        gt_pixels: `(N,)` ground-truth tumour pixels, or None without masks.

    Returns:
        `SliceRecord`s (`mask_mm2` None when the in-plane spacing is unknown, `gt_pixels` None
        without ground truth).
    """
    pixel_mm2 = _finite(float(spacing[0]) * float(spacing[1]))
    routes = route_names(flagged)  # the rule lives in pipeline.triage.rule, not here
    tumour = final_labels(flagged, mask_pixels)
    out = []
    for i, k in enumerate(slices):
        px = int(mask_pixels[i])
        out.append(
            SliceRecord(
                slice=int(k),
                p_tumour=_finite(1.0 - float(p_normal[i])),
                route=routes[i],
                tumour=bool(tumour[i]),
                mask_pixels=px,
                mask_mm2=None if pixel_mm2 is None else round(px * pixel_mm2, 3),
                gt_pixels=None if gt_pixels is None else int(gt_pixels[i]),
            )
        )
    return out


def patient_summary(records: Sequence[SliceRecord], spacing: Sequence[float]) -> Findings:
    """A patient's `Findings` from its slice records and voxel spacing `(sx, sy, sz)` in mm.

    `volume_ml` is None unless all three spacings are known; `uncertainty` is the max over slices
    of 1 - |2p - 1| (1 = a coin toss).
    """
    voxel_ml = _finite(float(np.prod([float(s) for s in spacing])) / 1000.0)
    tumour = [r for r in records if r.tumour]
    pixels = int(sum(r.mask_pixels for r in tumour))
    p = [r.p_tumour for r in records if r.p_tumour is not None]
    largest = max(tumour, key=lambda r: r.mask_pixels) if tumour else None
    return Findings(
        slices=len(records),
        flagged_slices=tuple(r.slice for r in records if r.route == ROUTE_SEGMENTED),
        tumour_slices=tuple(r.slice for r in tumour),
        tumour_found=bool(tumour),
        tumour_pixels=pixels,
        volume_ml=None if voxel_ml is None else round(pixels * voxel_ml, 3),
        largest_slice=None if largest is None else largest.slice,
        max_p_tumour=max(p) if p else None,
        uncertainty=uncertainty(np.asarray(p, dtype=np.float64)),  # symmetric in p
    )


def overlay_montage(
    flair: np.ndarray,
    masks: np.ndarray,
    captions: Sequence[str],
    *,
    tile: int = 192,
    cols: int = 6,
    compress_level: int = 1,
) -> bytes:
    """PNG montage of slices with the mask outline drawn over FLAIR.

    A palette PNG (gray levels 0-253, then the outline and caption colours): one byte per pixel,
    a third of what RGB costs to build and compress. OpenCV does the morphology, resizing and text
    (~1 ms per tile) and zlib the compression, all without the GIL, so a report renders while
    another thread runs the models.

    Args:
        flair: `(n, H, W)` float in [0, 1] (channel 1 of the images).
        masks: `(n, H, W)` bool, native grid.
        captions: one short ASCII caption per tile.
        tile: tile edge in pixels.
        cols: tiles per row.
        compress_level: zlib level 0-9 (1: fast; ~0.5 MB for 48 tiles of real FLAIR).

    Returns:
        PNG bytes (an empty 1×1 image when `n == 0`).
    """
    n = len(flair)
    cols = max(min(cols, n), 1)
    rows = max(math.ceil(n / cols), 1)
    sheet = np.zeros((rows * tile, cols * tile) if n else (1, 1), dtype=np.uint8)
    for i in range(n):
        gray = np.nan_to_num(np.asarray(flair[i], dtype=np.float32)) * float(_GRAY_LEVELS - 1)
        gray = np.clip(gray, 0, _GRAY_LEVELS - 1).astype(np.uint8)
        y, x = (i // cols) * tile, (i % cols) * tile
        view = sheet[y : y + tile, x : x + tile]
        view[...] = cv2.resize(gray, (tile, tile), interpolation=cv2.INTER_NEAREST)
        m = np.asarray(masks[i], dtype=np.uint8)
        if m.any():  # outline = mask minus its erosion (outside counts as background), thickened
            inner = cv2.erode(m, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            outline = (m > inner).astype(np.uint8)  # in the mask, not in its erosion
            ring = cv2.dilate(outline, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            ring = cv2.resize(ring, (tile, tile), interpolation=cv2.INTER_NEAREST)
            view[ring > 0] = _OUTLINE
        cv2.putText(view, captions[i], (4, 14), cv2.FONT_HERSHEY_PLAIN, 0.9, _CAPTION, 1)
    img = Image.fromarray(sheet)  # "L"; putpalette makes it "P"
    img.putpalette(_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or isinstance(x, jinja2.Undefined):
        return "—"
    if isinstance(x, float):
        return "—" if not math.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


@functools.cache
def _templates() -> jinja2.Environment:
    """The page templates (`pipeline/triage/templates/`), autoescaped: user strings are always
    text."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.triage", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["key"] = display_text
    return env


def _render(template: str, title: str, **context: Any) -> str:
    page = _templates().get_template(template)
    return page.render(title=display_text(title), disclaimer=DISCLAIMER, **context)


def _model_name(m: Mapping[str, Any]) -> str:
    """`mri-triage-classifier v3 (champion)` from a report's model entry, else its file name."""
    uri, version = str(m.get("uri") or ""), str(m.get("version", "?"))
    if uri.startswith("models:/"):
        name, _, alias = uri[len("models:/") :].partition("@")
        name = name.split("/")[0]
        return f"{name} v{version}" + (f" ({alias})" if alias else "")
    return f"{Path(uri).name or 'champion'} (version {version})"


def _ground_truth_facts(truth: TruthMetrics | None, found: Findings) -> list[tuple[str, Any]]:
    """Figures against the archive's masks; a tumour-free patient gets words, not "Dice 1.000"."""
    if truth is None:
        return []
    if not truth.gt_tumour_slices:
        n = len(found.tumour_slices)
        verdict = f"found tumour on {n} slices (false positive)" if n else "found none"
        return [("vs ground truth", f"no tumour in the ground-truth masks; the pipeline {verdict}")]
    return [
        (f"vs ground truth: {_METRIC_LABELS.get(k, k)}", _fmt(v))
        for k, v in truth.to_dict().items()
    ]


_METRIC_LABELS = {
    "gt_tumour_slices": "tumour slices",
    "gate_caught_slices": "of them segmented (gate passed)",
    "gate_missed_slices": "of them dropped by the gate",
    "gate_sensitivity": "gate sensitivity",
    "dice": "Dice (all labelled slices)",
    "dice_tumour_slices": "Dice (tumour slices)",
    "hd95": "HD95 (mm, px when the spacing is unknown)",
    "recall": "recall (share of the true tumour drawn)",
    "precision": "precision (share of the drawing inside the true tumour)",
}


def render_patient_html(
    report: Mapping[str, Any],
    montage_png: bytes | None,
    viewer: Mapping[str, Any] | None = None,
) -> str:
    """Self-contained HTML page for one patient.

    Args:
        report: the `report.json` content (its slices, summary and metrics are read as
            `SliceRecord`, `Findings` and `TruthMetrics`).
        montage_png: flagged-slice montage, shown only when there is no `viewer`.
        viewer: `pipeline.triage.viewer.viewer_data` (every slice, outlines), embedded as JSON.
    """
    from pipeline.triage.viewer import review_lists

    s = Findings.from_dict(report["summary"])
    slices = [SliceRecord.from_dict(r) for r in report["slices"]]
    truth = None if report.get("metrics") is None else TruthMetrics.from_dict(report["metrics"])
    threshold = float(report["threshold"])
    facts: list[tuple[str, Any]] = [
        ("Tumour found", "yes" if s.tumour_found else "no"),
        ("Tumour volume (mL)", _fmt(s.volume_ml)),
        ("Slices with tumour", ", ".join(map(str, s.tumour_slices)) or "none"),
        ("Largest slice", _fmt(s.largest_slice)),
        ("Highest P(tumour)", _fmt(s.max_p_tumour)),
        ("Slices", s.slices),
        ("Segmented (P(tumour) above the cut)", len(s.flagged_slices)),
        ("Tumour area (pixels)", s.tumour_pixels),
        ("Uncertainty (1 = coin toss)", _fmt(s.uncertainty)),
        ("Slices segmented above P(tumour)", _fmt(1.0 - threshold, 4)),
    ]
    if "series" in report:  # DICOM: which series was read, and why
        series = report["series"]
        facts.append(("DICOM series", f"{series['series_number']} {series['description']!r}"))
        facts.append(("Series chosen by", series["selection"]))
    for stage, m in report["models"].items():
        facts.append((f"{stage.capitalize()} model", _model_name(m)))
    facts.extend(_ground_truth_facts(truth, s))
    b64 = None
    if viewer is None and montage_png is not None and s.flagged_slices:
        b64 = base64.b64encode(montage_png).decode("ascii")
    return _render(
        "report.html",
        f"Triage report: {report['patient']}",
        facts=[(display_text(str(k)), display_text(str(v))) for k, v in facts],
        montage_b64=b64,
        viewer=viewer,
        review=review_lists(slices),
        has_gt=truth is not None,
        gt_tumour=bool(truth and truth.gt_tumour_slices),
        slices=slices,
    )


def priority_order(results: Sequence[PatientResult]) -> list[PatientResult]:
    """Worklist order: tumour found first, then by volume (tumour pixels when volume is unknown),
    then by uncertainty; failed patients last (they are listed separately with their reason)."""

    def key(r: PatientResult) -> tuple:
        f = r.findings
        if f is None:
            return (r.status == FAILED, True, 0.0, 0.0)
        size = float(f.tumour_pixels) if f.volume_ml is None else float(f.volume_ml)
        return (r.status == FAILED, not f.tumour_found, -size, -float(f.uncertainty or 0))

    return sorted(results, key=key)


def summary_csv(results: Sequence[PatientResult]) -> str:
    """`summary.csv` text: one row per patient in worklist order, with a `priority` column."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for rank, result in enumerate(priority_order(results), start=1):
        cells = {k: "" if v is None else csv_cell(v) for k, v in result.row().items()}
        writer.writerow({"priority": rank, **cells})
    return buf.getvalue()


def _since(result: PatientResult) -> str:
    """The worklist's "since last run" cell: new, changed or unchanged."""
    return "unchanged" if result.status == SKIPPED else str(result.change or "")


def _run_lines(run_info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Readable `label: value` lines for the top of the worklist (the notice is shown once)."""
    labels = {
        "date": "Run date",
        "archive": "Archive",
        "threshold_source": "Threshold source",
        "gate_context": "Gate context (slices either side)",
    }
    lines: list[tuple[str, str]] = []
    for key, value in run_info.items():
        if key == "notice":
            continue
        if key == "threshold":
            lines.append(("Slices segmented above P(tumour)", _fmt(1.0 - float(value), 4)))
        elif key == "models" and isinstance(value, Mapping):
            lines.extend((f"{k.capitalize()} model", str(v)) for k, v in value.items())
        else:
            lines.append((labels.get(key, key.replace("_", " ").capitalize()), _fmt(value)))
    return [(display_text(k), display_text(v)) for k, v in lines]


def render_index_html(
    results: Sequence[PatientResult],
    run_info: Mapping[str, Any],
    skipped: Sequence[Mapping[str, str]] = (),
) -> str:
    """The run's worklist page, linking each patient's `report.html` (by its safe folder name).

    Args:
        results: one per patient (failed ones are listed apart, with their reason).
        run_info: `date`, `archive`, `threshold`, `threshold_source`, `models` (stage -> version)
            and any further label -> value lines shown above the worklist.
        skipped: `{path, reason}` of files that belong to no patient (stray files, links).
    """
    ordered = priority_order(results)
    return _render(
        "index.html",
        "Triage worklist",
        run_info=_run_lines(run_info),
        worklist=[(r.row(), r.output, _since(r)) for r in ordered if r.status != FAILED],
        failed=[r for r in ordered if r.status == FAILED],
        skipped=list(skipped),
        summary_name=SUMMARY_NAME,
    )


def worklist_js(results: Sequence[PatientResult], run_info: Mapping[str, Any]) -> str:
    """`worklist.js`: what a patient page needs from its run (worklist order, run details)."""
    order = [r.output for r in priority_order(results) if r.status != FAILED]
    threshold = run_info.get("threshold")
    data = {
        "order": order,
        "date": str(run_info.get("date", "")),
        "archive": display_text(str(run_info.get("archive", ""))),
        "threshold_source": str(run_info.get("threshold_source", "")),
        "p_tumour_cut": None if threshold is None else round(1.0 - float(threshold), 4),
    }
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e")
    return f"window.TRIAGE_RUN = {text};\n"


def write_run_reports(
    out_dir: Path,
    results: Sequence[PatientResult],
    run_info: Mapping[str, Any],
    skipped: Sequence[Mapping[str, str]] = (),
) -> tuple[Path, Path]:
    """Write `summary.csv`, `index.html` and `worklist.js` atomically; returns the first two."""
    csv_path, index_path = out_dir / SUMMARY_NAME, out_dir / INDEX_NAME
    atomic_write_text(csv_path, summary_csv(results))
    atomic_write_text(index_path, render_index_html(results, run_info, skipped))
    atomic_write_text(out_dir / WORKLIST_NAME, worklist_js(results, run_info))
    return csv_path, index_path
