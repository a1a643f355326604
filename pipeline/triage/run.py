"""One triage run, start to finish: `run_triage` owns it, whatever schedules the patients.

Input checks (`pipeline.triage.preflight`), the models (checked before anything is written), the
output lock, the index, the manifest, the per-patient work, run metrics, the reports and the MLflow
run all happen here, in this order. Patients are handed to `map_fn`: the Prefect flow passes one
that submits one worker task on its threads (or a task per patient on Dask); tests and scripts use
`serial_map`, one worker in this process. A worker reads the next patients and writes the previous
ones while its models run (`pipeline.triage.worker`, `RunOptions.prefetch`). Nothing here imports
Prefect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io import manifest
from pipeline.io.safety import display_text
from pipeline.triage.inference import process_patient
from pipeline.triage.outcomes import done_entry, merge_index_errors, own_outputs
from pipeline.triage.preflight import check_run_paths
from pipeline.triage.progress import Progress
from pipeline.triage.records import DONE, FAILED, PatientResult, RunSummary
from pipeline.triage.report import DISCLAIMER, write_run_reports
from pipeline.triage.rule import bypass_warning, resolve_gate_context, resolve_threshold
from pipeline.triage.settings import RunOptions, TriageSettings

if TYPE_CHECKING:
    import pandas as pd

EXIT_OK, EXIT_FAILURES, EXIT_CANNOT_RUN = 0, 1, 2
DEFAULT_OPTIONS = RunOptions()


@dataclass(frozen=True)
class PatientJob:
    """One patient's work: small, picklable, no pixels (what a task or Dask worker receives).

    `label` is how logs and Prefect task run names call the patient: its position in the run
    (`3`), or its key when the user opted in (`RunOptions.log_patient_ids`).
    """

    rows: list[dict[str, Any]]
    out: str
    uris: dict[str, str | None]
    settings: dict[str, Any]
    previous: dict[str, Any] | None
    force: bool
    label: str = ""

    @classmethod
    def of(
        cls,
        rows: pd.DataFrame,
        out: str | Path,
        uris: dict[str, str | None],
        settings: TriageSettings,
        previous: dict[str, Any] | None = None,
        force: bool = False,
        label: str = "",
    ) -> PatientJob:
        """A patient's job from its index rows (plain values only, so it pickles to Dask)."""
        records = [{str(k): v for k, v in r.items()} for r in rows.to_dict("records")]
        return cls(records, str(out), dict(uris), dict(settings.__dict__), previous, force, label)


@dataclass(frozen=True)
class RunResult:
    """What a run returns (`as_dict()` is the flow's return value)."""

    exit_code: int
    summary: RunSummary
    out: str
    summary_csv: str
    index_html: str
    run_id: str | None
    threshold: float
    threshold_source: str
    warnings: list[str] = field(default_factory=list)
    gate_context: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: the fields, with the summary as `metrics` (`RunSummary.metrics()`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "summary"}
        return {**out, "metrics": self.summary.metrics(), "warnings": list(self.warnings)}


MapFn = Callable[[Sequence[PatientJob]], Iterable[PatientResult]]


def run_patient_job(job: PatientJob) -> PatientResult:
    """One patient: its index rows in, its small result out (models cached per process)."""
    import pandas as pd

    s = TriageSettings(**job.settings)
    models = s.load_models(job.uris["classifier"], job.uris["segmenter"])
    return process_patient(
        pd.DataFrame(job.rows), Path(job.out), models, s, job.previous, job.force
    )


def serial_map(jobs: Sequence[PatientJob]) -> Iterator[PatientResult]:
    """Patients in order in this process, as one worker (`pipeline.triage.worker.work_through`: the
    next patients are read and the previous written while the models run; `prefetch=0`: in turn)."""
    from pipeline.triage.worker import work_through

    yield from work_through(jobs)


def _log_patient(
    log: logging.Logger | logging.LoggerAdapter,
    rec: PatientResult,
    label: str,
    total: int,
    named: bool,
) -> None:
    """One line per finished patient: `patient 3/10: done`, or with its key and failure reason
    when the user opted in (a reason names files, and file names hold patient keys)."""
    if named:
        why = f": {rec.reason}" if rec.status == FAILED else ""
        log.info("patient %s: %s%s", label, rec.status, why)
    else:
        log.info("patient %s/%d: %s", label, total, rec.status)


def _mlflow_params(options: RunOptions, models: Any, threshold: float, source: str, table: Any):
    from pipeline.io.index import fingerprint

    return {
        "classifier_version": models.versions()["classifier"],
        "segmenter_version": models.versions()["segmenter"],
        "threshold": threshold,
        "threshold_source": source,
        "min_component": options.min_component,
        "precision": models.precision,
        "runtime_classifier": models.runtimes.get("classifier", "tf"),
        "runtime_segmenter": models.runtimes.get("segmenter", "tf"),
        "batch": options.batch,
        "archive_fingerprint": fingerprint(table),
    }


def run_triage(
    archive: str | Path,
    out: str | Path,
    options: RunOptions = DEFAULT_OPTIONS,
    map_fn: MapFn = serial_map,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    track_fn: Callable[..., str] | None = None,
) -> RunResult:
    """Triage every patient of `archive` into `out`.

    Args:
        archive: the archive root (never written).
        out: the output folder (must not overlap the archive).
        options: models, threshold and settings.
        map_fn: runs the patients' jobs and yields their `PatientResult`s as they finish.
        log: where progress goes; patients are named by their position in the run, by their
            keys only with `options.log_patient_ids`.
        track_fn: logs the MLflow run (default `pipeline.tracking.log_triage_run`; the flow passes
            a task that retries it, a tracking server being the one transient failure here).

    Raises:
        UnsafeOutputError, CannotRunError: `--out` overlaps the archive or is unusable, or a
            model is incompatible (raised before anything is written).
        OutputLockedError, OutputStateError: another run holds `out`, or its files are not ours.
        ArchiveError, ValueError: the archive or a model cannot be opened at all.
    """
    from pipeline.io.index import build_index
    from pipeline.triage.runtime import load_triage_runtime

    log = log or logging.getLogger(__name__)
    o = options
    began = time.time()  # the MLflow run spans the work, models and index included
    out_dir = check_run_paths(archive, out)
    models = load_triage_runtime(
        o.classifier,
        o.segmenter,
        o.batch,
        o.precision,
        o.runtime,
        o.ov_precision,
        o.threshold,
        o.xla,
    )  # before the lock: an incompatible model leaves no trace
    for note in models.notes:  # why a model did not run on OpenVINO
        log.warning("%s", note)
    threshold, source = resolve_threshold(o.threshold, models.classifier.info)
    settings = TriageSettings(
        threshold, o.min_component, o.batch, o.precision, runtime=o.runtime,
        ov_precision=o.ov_precision, limits=o.limits, prefetch=o.prefetch, xla=o.xla,
        **o.postprocess,
    )  # fmt: skip
    reach, reach_source = resolve_gate_context(settings.gate_context, models.classifier.info)
    log.info("threshold P(normal) >= %.4g (%s)", threshold, source)
    if reach:  # a slice is normal only when its neighbours within `reach` are too
        log.info("gate context: %d slice(s) either side (%s)", reach, reach_source)
    with manifest.output_lock(out_dir):
        manifest.clean_staging(out_dir)
        index = build_index(archive, o.series_pattern, o.limits)
        previous = manifest.load_manifest(out_dir)
        start = time.perf_counter()  # slices/s: patients' work, not model loading or indexing
        groups = list(index.table.groupby("patient", sort=True))
        log.info("triaging %d patients, %d slices", len(groups), len(index.table))
        uris = {"classifier": o.classifier, "segmenter": o.segmenter}
        names = [display_text(str(p)) if o.log_patient_ids else str(i) for i, (p, _) in
                 enumerate(groups, start=1)]  # fmt: skip
        jobs = [
            PatientJob.of(rows, out_dir, uris, settings, previous.get(str(p)), o.force, name)
            for (p, rows), name in zip(groups, names, strict=True)
        ]
        labels = {job.rows[0]["patient"]: job.label for job in jobs}
        records: list[PatientResult] = []
        progress = Progress(len(jobs), len(index.table))  # a terminal only
        for rec in map_fn(jobs):
            records.append(rec)
            progress.update(rec.slice_count)
            _log_patient(log, rec, labels.get(rec.patient, "?"), len(jobs), o.log_patient_ids)
            if rec.status == DONE:
                entry = done_entry(out_dir, rec, models.versions())
                manifest.record_patient(out_dir, rec.patient, entry)
        progress.close()
        seconds = time.perf_counter() - start
        records, skipped = merge_index_errors(records, index.errors)
        summary = RunSummary.of(records, seconds, files_skipped=len(index.errors))
        bypass = bypass_warning(summary.slices_segmented, summary.slices)
        warnings = [bypass] if bypass else []
        for warning in warnings:
            log.warning(warning)
        info = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "archive": Path(archive).resolve().name,
            "threshold": threshold,
            "threshold_source": source,
            "gate_context": reach,
            "models": models.versions(),
            "notice": DISCLAIMER,
        }
        csv_path, index_path = write_run_reports(out_dir, records, info, skipped)
        manifest.compact_manifest(out_dir)
        if o.key_map:  # DICOM pseudonym -> StudyInstanceUID, only on request, only in `out`
            from pipeline.io.dicom_case import write_key_map

            write_key_map(out_dir, index.table)
    failed = summary.failures + len(index.errors)
    log.info(
        "%d patients (%d done, %d skipped as already done, %d failed), %.1f slices/s",
        summary.patients, summary.patients_done, summary.patients_skipped, summary.failures,
        summary.slices_per_s,
    )  # fmt: skip
    run_id = None
    if o.track:
        from pipeline.tracking import log_triage_run

        params = _mlflow_params(o, models, threshold, source, index.table)
        params["gate_context"] = reach
        shared = own_outputs(records) if o.log_outputs else []  # patient-keyed files: opt-in
        track = track_fn or log_triage_run
        run_id = track(params, summary.metrics(), out_dir, include=shared, started=began)
    return RunResult(
        exit_code=EXIT_FAILURES if failed else EXIT_OK,
        summary=summary,
        out=str(out_dir),
        summary_csv=str(csv_path),
        index_html=str(index_path),
        run_id=run_id,
        threshold=threshold,
        threshold_source=source,
        warnings=warnings,
        gate_context=reach,
    )
