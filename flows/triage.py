"""The triage flow: screen every slice of an archive, segment the flagged ones, report per patient.

Thin Prefect layer over `pipeline.inference.process_patient`: one task per patient, paths and small
records in and out (never pixel arrays), threads by default or Dask with `--dask-address`. The flow
holds the output folder's lock, skips patients the manifest says are done, writes the run's
`summary.csv` / `index.html`, and logs one MLflow run (no patient keys in params, names or metrics).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import manifest
from pipeline.inference import TriageSettings, process_patient, run_metrics
from pipeline.outcomes import done_entry, merge_index_errors, own_outputs
from pipeline.preflight import check_dask_address, check_run_paths
from pipeline.quality import DEFAULT_LIMITS, Limits
from pipeline.report import DISCLAIMER, write_run_reports
from pipeline.runtime import load_triage_runtime
from pipeline.triage import bypass_warning, resolve_threshold

EXIT_OK, EXIT_FAILURES, EXIT_CANNOT_RUN = 0, 1, 2


@task(name="triage-patient", cache_policy=NO_CACHE, retries=0)
def triage_patient_task(
    rows: list[dict[str, Any]],
    out: str,
    uris: dict[str, str | None],
    settings: dict[str, Any],
    previous: dict[str, Any] | None,
    force: bool,
) -> dict[str, Any]:
    """One patient: its index rows in, its small summary record out (models cached per process)."""
    import pandas as pd

    s = TriageSettings(**settings)
    models = s.load_models(uris["classifier"], uris["segmenter"])
    return process_patient(pd.DataFrame(rows), Path(out), models, s, previous, force)


def _log_mlflow(params: dict, metrics: dict, out_dir: Path, include: list[str]) -> str:
    from pipeline.tracking import log_triage_run

    return log_triage_run(params, metrics, out_dir, include=include)


_DEFAULT_RUNNER: Any = ThreadPoolTaskRunner(max_workers=2)


@flow(name="mri-triage", log_prints=False, task_runner=_DEFAULT_RUNNER)
def triage_flow(
    archive: str,
    out: str,
    classifier: str | None = None,
    segmenter: str | None = None,
    threshold: float | None = None,
    force: bool = False,
    min_component: int = 10,
    batch: int = 16,
    precision: str = "float32",
    track: bool = True,
    runtime: str = "tf",
    ov_precision: str = "auto",
    series_pattern: str | None = None,
    key_map: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Triage every patient of `archive` into `out`.

    `threshold` None takes the classifier's logged operating point (`resolve_threshold`).

    Returns:
        `{"exit_code", "metrics", "out", "summary_csv", "index_html", "run_id", "threshold",
        "threshold_source", "warnings"}`.

    Raises:
        OutputLockedError: another run holds `out`.
        ArchiveError, ValueError: the archive or a model cannot be opened at all.
    """
    from pipeline.index import build_index, fingerprint

    log = get_run_logger()
    out_dir = check_run_paths(archive, out)  # before anything is written (pipeline.preflight)
    with manifest.output_lock(out_dir):
        manifest.clean_staging(out_dir)
        index = build_index(archive, series_pattern, limits)
        models = load_triage_runtime(
            classifier, segmenter, batch, precision, runtime, ov_precision, threshold
        )  # fail early
        for note in models.notes:  # why a model did not run on OpenVINO
            log.warning("%s", note)
        threshold, source = resolve_threshold(threshold, models.classifier.info)
        settings = TriageSettings(
            threshold, min_component, batch, precision, runtime=runtime, ov_precision=ov_precision,
            limits=limits,
        )  # fmt: skip
        log.info("threshold P(normal) >= %.4g (%s)", threshold, source)
        previous = manifest.load_manifest(out_dir)
        start = time.perf_counter()  # slices/s: patients' work, not model loading or indexing
        groups = list(index.table.groupby("patient", sort=True))
        log.info("triaging %d patients, %d slices", len(groups), len(index.table))
        futures = [
            triage_patient_task.submit(
                [{str(k): v for k, v in r.items()} for r in rows.to_dict("records")],
                str(out_dir),
                {"classifier": classifier, "segmenter": segmenter},
                settings.__dict__,
                previous.get(str(patient)),
                force,
            )
            for patient, rows in groups
        ]
        records = []
        for fut in as_completed(futures):
            rec = fut.result()
            records.append(rec)
            if rec["status"] == "done":
                entry = done_entry(out_dir, rec, models.versions())
                manifest.record_patient(out_dir, rec["patient"], entry)
        seconds = time.perf_counter() - start
        records, skipped = merge_index_errors(records, index.errors)
        metrics = run_metrics(records, seconds)
        metrics["files_skipped"] = float(len(index.errors))
        warnings = [
            w
            for w in [bypass_warning(int(metrics["slices_segmented"]), int(metrics["slices"]))]
            if w
        ]
        for warning in warnings:
            log.warning(warning)
        info = {
            "threshold": threshold,
            "threshold_source": source,
            "models": models.versions(),
            "notice": DISCLAIMER,
        }
        csv_path, index_path = write_run_reports(out_dir, records, info, skipped)
        if key_map:  # DICOM pseudonym -> StudyInstanceUID, only on request, only in `out`
            from pipeline.dicom_case import write_key_map

            write_key_map(out_dir, index.table)
    failed = int(metrics["failures"]) + len(index.errors)
    log.info(
        "%d patients (%d done, %d skipped as already done, %d failed), %.1f slices/s",
        int(metrics["patients"]), int(metrics["patients_done"]),
        int(metrics["patients_skipped"]), int(metrics["failures"]), metrics["slices_per_s"],
    )  # fmt: skip
    run_id = None
    if track:
        params = {
            "classifier_version": models.versions()["classifier"],
            "segmenter_version": models.versions()["segmenter"],
            "threshold": threshold,
            "threshold_source": source,
            "min_component": min_component,
            "precision": models.precision,
            "runtime_classifier": models.runtimes.get("classifier", "tf"),
            "runtime_segmenter": models.runtimes.get("segmenter", "tf"),
            "batch": batch,
            "archive_fingerprint": fingerprint(index.table),
        }
        run_id = _log_mlflow(params, metrics, out_dir, own_outputs(records))
    return {
        "exit_code": EXIT_FAILURES if failed else EXIT_OK,
        "metrics": metrics,
        "out": str(out_dir),
        "summary_csv": str(csv_path),
        "index_html": str(index_path),
        "run_id": run_id,
        "threshold": threshold,
        "threshold_source": source,
        "warnings": warnings,
    }


def make_task_runner(dask_address: str | None, workers: int = 2, processes: bool = True) -> Any:
    """Threads by default; `prefect-dask` on a scheduler (`tcp://...`) or a local cluster."""
    if not dask_address:
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address == "local":
        kwargs = {"n_workers": workers, "threads_per_worker": 1, "processes": processes}
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)
    return DaskTaskRunner(address=dask_address)


def _flow_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.index import limits_of

    return {
        "archive": str(Path(args.archive).absolute()),
        "out": str(Path(args.out).absolute()),
        "classifier": args.classifier,
        "segmenter": args.segmenter,
        "threshold": args.threshold,
        "min_component": getattr(args, "min_component", 10),
        "batch": getattr(args, "batch", 16),
        "precision": getattr(args, "precision", "float32"),
        "runtime": getattr(args, "runtime", "tf"),
        "ov_precision": getattr(args, "ov_precision", "auto"),
        "series_pattern": getattr(args, "series_pattern", None),
        "key_map": getattr(args, "write_key_map", False),
        "limits": limits_of(args),
    }


def cli_triage(args: argparse.Namespace) -> int:
    """`mri-triage triage ARCHIVE --out DIR`: 0 all done, 1 some patient failed, 2 cannot run."""
    from pipeline.errors import ArchiveError

    try:
        check_run_paths(args.archive, args.out)  # one line, before Prefect starts anything
        check_dask_address(args.dask_address)
        runner = make_task_runner(args.dask_address, getattr(args, "workers", 2))
        result = triage_flow.with_options(task_runner=runner)(
            **_flow_kwargs(args), force=args.force, track=not getattr(args, "no_mlflow", False)
        )
    except (
        manifest.OutputLockedError,
        manifest.OutputStateError,
        ArchiveError,
        ValueError,
        OSError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    m = result["metrics"]
    print(f"threshold: P(normal) >= {result['threshold']:.4g} ({result['threshold_source']})")
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{int(m['patients'])} patients, {int(m['slices'])} slices, "
        f"{int(m['slices_segmented'])} segmented, {int(m['failures'])} failed; "
        f"{m['slices_per_s']:.1f} slices/s"
    )
    for key in ("gate_sensitivity_slice", "gate_sensitivity_patient", "dice_patient_mean"):
        if key in m:
            print(f"{key}: {m[key]:.3f}")
    print(f"worklist: {result['index_html']}\nsummary:  {result['summary_csv']}")
    if result["exit_code"]:
        print("some patients failed or lost files: see the summary", file=sys.stderr)
    return int(result["exit_code"])


def build_deployment(args: argparse.Namespace) -> Any:
    """The nightly deployment `mri-triage/nightly` with `args.cron` as its schedule."""
    return triage_flow.to_deployment(
        name="nightly",
        cron=args.cron,
        parameters=_flow_kwargs(args),
        description="Nightly triage of an MRI archive (research use only).",
        tags=["mri-triage"],
    )


def cli_serve(args: argparse.Namespace) -> int:
    """`mri-triage serve ARCHIVE --out DIR --cron "0 2 * * *"`: serve until interrupted."""
    from prefect import serve

    deployment = build_deployment(args)
    print(f"serving deployment mri-triage/nightly on cron {args.cron!r}; Ctrl-C stops")
    serve(deployment)
    return EXIT_OK
