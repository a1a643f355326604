"""Typed records of a triage run, from one slice to the whole run: each field is named here once.

- `SliceRecord`: one slice of a patient's `report.json` ("slices").
- `Findings` and `TruthMetrics`: that report's "summary" (figures from the slice records) and
  "metrics" (figures against ground-truth masks, when the archive has them).
- `PatientResult`: what one patient's work returns: a Prefect task's result, a `summary.csv` row,
  a worklist entry, the source of its manifest entry.
- `RunSummary`: the run's aggregate figures (MLflow metrics, the flow's result), no patient keys.

All are frozen and small (no pixels), so they pickle to Dask workers and back. `to_dict()` gives
the JSON form and `from_dict()` reads it back; `from_dict()` ignores keys it does not know (a newer
version's) and gives optional fields their defaults (an older one's), so an earlier run's reports
still resume. Pure: no I/O, no numpy.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

DONE, SKIPPED, FAILED = "done", "skipped", "failed"  # PatientResult.status
NEW, CHANGED = "new", "changed"  # PatientResult.change of a patient done in this run

_R = TypeVar("_R")


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of the dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _optional(cls: type[_R], data: Mapping[str, Any] | None) -> _R | None:
    return None if data is None else cls.from_dict(data)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SliceRecord:
    """One slice of a patient's report.

    Attributes:
        slice: slice number as in the archive (Kaggle k, or NIfTI axial index).
        p_tumour: calibrated P(tumour), None when not finite.
        route: `pipeline.triage.rule` route name ("segmented" or "normal").
        tumour: the final label (segmented and a non-empty mask).
        mask_pixels: post-processed mask area in native pixels.
        mask_mm2: that area in mm², None when the in-plane spacing is unknown.
        gt_pixels: ground-truth tumour pixels, None without masks.
    """

    slice: int
    p_tumour: float | None
    route: str
    tumour: bool
    mask_pixels: int
    mask_mm2: float | None = None
    gt_pixels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form; `gt_pixels` only with ground truth (as report.json has always had it)."""
        out = dataclasses.asdict(self)
        if self.gt_pixels is None:
            del out["gt_pixels"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceRecord:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Findings:
    """A patient's figures from its slice records (`pipeline.triage.report.patient_summary`).

    Attributes:
        slices: number of slices.
        flagged_slices: slice numbers sent to the segmenter.
        tumour_slices: slice numbers with tumour found.
        tumour_found: any tumour slice.
        tumour_pixels: total tumour area in native pixels.
        volume_ml: tumour volume in mL, None unless all three spacings are known.
        largest_slice: slice number with the largest tumour area, None without tumour.
        max_p_tumour: highest P(tumour), None when no slice has one.
        uncertainty: max over slices of 1 - |2p - 1| (1 = a coin toss).
    """

    slices: int
    flagged_slices: tuple[int, ...]
    tumour_slices: tuple[int, ...]
    tumour_found: bool
    tumour_pixels: int
    volume_ml: float | None
    largest_slice: int | None
    max_p_tumour: float | None
    uncertainty: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "flagged_slices": list(self.flagged_slices),
                "tumour_slices": list(self.tumour_slices)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Findings:
        d = _known(cls, data)
        d["flagged_slices"] = tuple(d["flagged_slices"])
        d["tumour_slices"] = tuple(d["tumour_slices"])
        return cls(**d)


@dataclass(frozen=True)
class TruthMetrics:
    """A patient's figures against its ground-truth masks, over the labelled slices.

    Attributes:
        gt_tumour_slices: slices with tumour in the ground truth.
        gate_caught_slices: of them, sent to the segmenter.
        gate_missed_slices: of them, called normal by the classifier.
        gate_sensitivity: caught / tumour slices, None for a tumour-free patient.
        dice: Dice over every labelled slice (tumour on a slice the gate dropped counts as missed).
        dice_tumour_slices: Dice over the true tumour slices only.
        hd95: 3-D 95% Hausdorff distance in mm (pixels where the spacing is unknown), None when
            one of the masks is empty.
        recall: share of the true tumour's pixels drawn, over every labelled slice (None for a
            tumour-free patient); precision: share of the drawn pixels inside the true tumour
            (None when nothing is drawn). Dice lost to under-drawing shows in the first, to false
            masks in the second.
    """

    gt_tumour_slices: int
    gate_caught_slices: int
    gate_missed_slices: int
    gate_sensitivity: float | None = None
    dice: float | None = None
    dice_tumour_slices: float | None = None
    hd95: float | None = None
    recall: float | None = None
    precision: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TruthMetrics:
        return cls(**_known(cls, data))


#: `summary.csv` columns after `priority`: the patient, its outcome, its findings (slice lists as
#: counts), its ground-truth figures and its time.
ROW_COLUMNS = (
    "patient", "status", "reason", "tumour_found", "volume_ml", "tumour_pixels", "slices",
    "flagged_slices", "tumour_slices", "largest_slice", "uncertainty", "max_p_tumour",
    "gate_sensitivity", "dice", "seconds",
)  # fmt: skip


@dataclass(frozen=True)
class PatientResult:
    """One patient's outcome in a run (a task's result; a `summary.csv` row and worklist entry).

    Attributes:
        patient: the patient key (data, never a path).
        output: the patient's folder name in `OUT/` (`pipeline.io.safety.output_name`).
        status: `DONE` (triaged now), `SKIPPED` (done before, unchanged) or `FAILED`.
        reason: why it failed, or which of its files were skipped ("" when none).
        key: the manifest key of its work (None when it failed before that was known).
        change: `NEW` or `CHANGED` for a patient done in this run, else None.
        findings: its figures (None when failed).
        truth: its figures against ground truth (None without masks, or failed).
        seconds: wall time of its triage (None when failed).
    """

    patient: str
    output: str
    status: str
    reason: str = ""
    key: str | None = None
    change: str | None = None
    findings: Findings | None = None
    truth: TruthMetrics | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        """Triaged, now or in an earlier run (its outputs are in `OUT/`)."""
        return self.status in (DONE, SKIPPED)

    @property
    def slice_count(self) -> int:
        return 0 if self.findings is None else self.findings.slices

    @classmethod
    def from_report(
        cls, report: Mapping[str, Any], status: str, key: str | None, change: str | None = None
    ) -> PatientResult:
        """The result of a patient from its `report.json` content (just written or read back)."""
        metrics = report.get("metrics")
        return cls(
            patient=str(report["patient"]),
            output=str(report["output"]),
            status=status,
            key=key,
            change=change,
            findings=Findings.from_dict(report["summary"]),
            truth=_optional(TruthMetrics, metrics),
            seconds=report.get("timings_s", {}).get("total"),
        )

    def with_reason(self, text: str, limit: int = 2000) -> PatientResult:
        """This result with `text` appended to its reason (cut at `limit` characters)."""
        reason = "; ".join(filter(None, [self.reason, text]))[:limit]
        return dataclasses.replace(self, reason=reason)

    def row(self) -> dict[str, Any]:
        """Its `summary.csv` cells by `ROW_COLUMNS` (None where unknown, e.g. a failed patient)."""
        cells: dict[str, Any] = {**(self.truth.to_dict() if self.truth else {})}
        if self.findings is not None:
            for name, value in dataclasses.asdict(self.findings).items():
                cells[name] = len(value) if isinstance(value, tuple) else value
        cells.update(patient=self.patient, status=self.status, reason=self.reason)
        cells["seconds"] = self.seconds
        return {c: cells.get(c) for c in ROW_COLUMNS}

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "findings": None if self.findings is None else self.findings.to_dict(),
            "truth": None if self.truth is None else self.truth.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatientResult:
        d = _known(cls, data)
        d["findings"] = _optional(Findings, d.get("findings"))
        d["truth"] = _optional(TruthMetrics, d.get("truth"))
        return cls(**d)


@dataclass(frozen=True)
class RunSummary:
    """A run's aggregate figures: counts, throughput and end-to-end metrics, no patient keys.

    Attributes:
        patients, patients_done, patients_skipped, failures: patients in the run, triaged now,
            unchanged since an earlier run, failed (with index errors of their own).
        slices, slices_segmented, segmenter_calls_saved: slices of the triaged patients, those
            sent to the segmenter, and the rest.
        slices_per_s: slices triaged now per second of patient work.
        tumour_patients_found: triaged patients with tumour found.
        files_skipped: index errors (files not read) in the whole archive.
        gate_sensitivity_slice, gate_sensitivity_patient, gate_missed_slices: the gate against
            ground truth (None unless some patient has tumour in its masks).
        dice_patient_mean, dice_patient_min: per-patient Dice (None without ground truth).
    """

    patients: int
    patients_done: int
    patients_skipped: int
    failures: int
    slices: int
    slices_segmented: int
    segmenter_calls_saved: int
    slices_per_s: float
    tumour_patients_found: int
    files_skipped: int = 0
    gate_sensitivity_slice: float | None = None
    gate_sensitivity_patient: float | None = None
    gate_missed_slices: int | None = None
    dice_patient_mean: float | None = None
    dice_patient_min: float | None = None

    @classmethod
    def of(
        cls, results: Sequence[PatientResult], seconds: float, files_skipped: int = 0
    ) -> RunSummary:
        """Aggregate the patients' results; `seconds` is the patients' work (for slices/s)."""
        ok = [r for r in results if r.ok and r.findings is not None]
        found = [r.findings for r in ok if r.findings is not None]
        slices = sum(f.slices for f in found)
        calls = sum(len(f.flagged_slices) for f in found)
        fresh = sum(r.slice_count for r in ok if r.status == DONE)
        truth = [r.truth for r in ok if r.truth is not None]
        tumour_slices = sum(t.gt_tumour_slices for t in truth)
        gate: dict[str, Any] = {}
        if tumour_slices:
            positive = [t for t in truth if t.gt_tumour_slices > 0]
            gate = {
                "gate_sensitivity_slice": sum(t.gate_caught_slices for t in truth) / tumour_slices,
                "gate_sensitivity_patient": sum(t.gate_caught_slices > 0 for t in positive)
                / len(positive),
                "gate_missed_slices": sum(t.gate_missed_slices for t in truth),
            }
        dice = [float(t.dice) for t in truth if t.dice is not None]
        if dice:
            gate.update(dice_patient_mean=statistics.fmean(dice), dice_patient_min=min(dice))
        return cls(
            patients=len(results),
            patients_done=sum(r.status == DONE for r in results),
            patients_skipped=sum(r.status == SKIPPED for r in results),
            failures=sum(r.status == FAILED for r in results),
            slices=slices,
            slices_segmented=calls,
            segmenter_calls_saved=slices - calls,
            slices_per_s=fresh / seconds if seconds > 0 else 0.0,
            tumour_patients_found=sum(f.tumour_found for f in found),
            files_skipped=files_skipped,
            **gate,
        )

    def truth_figures(self) -> dict[str, float]:
        """The headline figures against ground truth that this run has (what a summary prints)."""
        names = ("gate_sensitivity_slice", "gate_sensitivity_patient", "dice_patient_mean")
        return {n: float(v) for n in names if (v := getattr(self, n)) is not None}

    def metrics(self) -> dict[str, float]:
        """MLflow metrics (and the flow's `metrics`): every known figure as a float."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_dict(self) -> dict[str, float]:
        return self.metrics()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """From `metrics()` (floats), with the counts made integers again."""
        d = _known(cls, data)
        for f in dataclasses.fields(cls):
            if f.type in ("int", "int | None") and d.get(f.name) is not None:
                d[f.name] = int(d[f.name])
        return cls(**d)
