"""`mri-triage bench triage ARCHIVE`: end-to-end triage against the models' own batched time.

On the same slices in one process: (1) the whole per-patient pipeline (manifest key, read,
preprocess, classify, route, segment, post-process, write masks and reports) through the run's own
per-worker code as the flow's threads run it: one worker reading `prefetch` patients ahead of its
models and writing behind them (`pipeline.triage.worker`), or with `prefetch=0` `workers` patients
at once; (2) the models alone: the same model stage (`pipeline.triage.inference.predict_patient`,
the mirror included) on the same inputs, read beforehand; (3) a per-slice `model.predict` loop as
the public notebooks write it, timed on a subset and extrapolated to the same model work. Also the
segmenter calls the gate saved, and memory (RSS after each patient and its peak, sampled every 10
ms) to show it does not grow with the number of patients. `tracemalloc` is not used: it slows every
allocation and would bill its own cost to the pipeline. Figures are printed, never asserted.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from pipeline.triage.settings import WORKERS, TriageSettings

_MB = 1024.0 * 1024.0


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / _MB


class _PeakRss:
    """Context manager sampling this process's RSS every `interval` seconds; `.mb` is the peak."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.mb = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.mb = max(self.mb, _rss_mb())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, _rss_mb())


def _per_slice_seconds(model: Any, x: np.ndarray) -> float:
    """Mean seconds of `model.predict` on one slice at a time (the public notebooks' loop)."""
    model.predict(x[:1], verbose=0)  # Keras builds its predict function on the first call
    start = time.perf_counter()
    for i in range(len(x)):
        model.predict(x[i : i + 1], verbose=0)
    return (time.perf_counter() - start) / max(len(x), 1)


def _warm_up(models: Any, first: Any, batch: int) -> None:
    """Run every batch shape the predictors use once (kernels are built, XLA compiles, per
    shape), so no measurement pays for it. `first` is a patient's `PatientWork`."""
    from pipeline.io.preprocess import expand_inputs
    from pipeline.triage.predictor import batch_buckets

    x = first.x
    xs = x if first.xs is None else expand_inputs(first.xs, models.segmenter.preprocess.input_mode)
    for b in batch_buckets(batch):
        models.classify(np.resize(x, (b, *x.shape[1:])))
        models.segment(np.resize(xs, (b, *xs.shape[1:])))


def _end_to_end(jobs: list[Any], workers: int, prefetch: int) -> dict[str, Any]:
    """The run's own per-worker code (`pipeline.triage.worker`) as the flow's threads run it: one
    worker reading ahead and writing behind (`prefetch` > 0), or `workers` patients at once each
    start to finish (`prefetch=0`). Its results, seconds, RSS after each patient and peak RSS."""
    from pipeline.triage.worker import lanes, work_through

    results: list[Any] = []
    rss: list[float] = []
    lock = threading.Lock()

    def run(share: list[Any]) -> None:
        for result in work_through(share):
            with lock:
                results.append(result)
                rss.append(_rss_mb())

    shares = lanes(jobs, workers if prefetch == 0 else 1)
    peak = _PeakRss()
    with peak, ThreadPoolExecutor(len(shares)) as pool:
        start, cpu = time.perf_counter(), time.process_time()
        list(pool.map(run, shares))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"results": results, "seconds": seconds, "cpu": cpu, "rss": rss, "peak": peak.mb}


def _models_alone(
    groups: list[pd.DataFrame], models: Any, settings: TriageSettings, keep: int
) -> tuple[float, float, float, np.ndarray]:
    """`predict_patient` (the models' whole share of triage: classify, route, segment with the
    mirror) on each patient, read beforehand: classifier and segmenter seconds, the process CPU
    seconds they took (every thread's: the runtimes' own included), and the first `keep`
    classifier inputs (for the per-slice loop)."""
    from pipeline.triage.inference import predict_patient, read_patient

    clf = seg = cpu = 0.0
    kept: list[np.ndarray] = []
    for rows in groups:
        work = read_patient(rows, models, settings)
        if sum(len(a) for a in kept) < keep and work.x is not None:
            kept.append(work.x)
        start = time.process_time()
        work = predict_patient(work, models, settings)
        cpu += time.process_time() - start
        clf += work.timings["classify"]
        seg += work.timings["segment"]
    return clf, seg, cpu, np.concatenate(kept)[:keep] if kept else np.zeros((0,))


def bench_triage(
    archive: str,
    classifier: str | None,
    segmenter: str | None,
    threshold: float | None = None,
    batch: int = TriageSettings.batch,
    precision: str = TriageSettings.precision,
    loop_slices: int = 64,
    workers: int = WORKERS,
    runtime: str = TriageSettings.runtime,
    ov_precision: str = TriageSettings.ov_precision,
    prefetch: int = TriageSettings.prefetch,
    xla: str = TriageSettings.xla,
    patients: int | None = None,
    largest: bool = False,
) -> dict[str, Any]:
    """Run the three measurements and return the figures (no patient keys).

    `threshold` None = the classifier's operating point. `runtime` / `ov_precision` choose the
    models' runtime (`pipeline.triage.runtime`); the per-slice loop is TF's `model.predict` (skipped
    with `loop_slices=0`, or when a model is not on TF). `prefetch` and `xla` as a triage run's
    (`workers`: patients at once with `prefetch=0`); `patients` = only the first N (None: all);
    `largest` = only the patient with the most slices (memory grows with a patient's size, so the
    whole archive's peak is judged against that patient's alone).

    Returns:
        `patients`, `slices`, `flagged`, `end_to_end_s`, `end_to_end_slices_per_s`, `model_s`,
        `ratio_end_to_end_to_model`, `per_slice_loop_s` (extrapolated) and `loop_slices_timed`,
        `speedup_vs_per_slice_loop`, `segmenter_calls_saved`, `segmenter_inputs` (flagged slices,
        twice with the mirror), `rss_mb_after_patient` (list),
        `rss_peak_mb` (sampled), `model_s_in_end_to_end` (model time inside the end-to-end run),
        `model_s_classify` / `model_s_segment`, `failures`, `runtimes`, `parity`, `notes`,
        versions and settings.
    """
    from pipeline.io.index import build_index
    from pipeline.triage.inference import read_patient
    from pipeline.triage.rule import resolve_threshold
    from pipeline.triage.run import PatientJob
    from pipeline.triage.runtime import load_triage_runtime

    models = load_triage_runtime(
        classifier, segmenter, batch, precision, runtime, ov_precision, threshold, xla
    )
    threshold = resolve_threshold(threshold, models.classifier.info)[0]  # as a triage run does
    settings = TriageSettings(threshold, batch=batch, precision=precision, runtime=runtime,
                              ov_precision=ov_precision, prefetch=prefetch, xla=xla)  # fmt: skip
    uris = {"classifier": classifier, "segmenter": segmenter}
    rss_start = _rss_mb()
    table = build_index(archive).table
    groups = [rows for _, rows in table.groupby("patient", sort=True)][:patients]
    if largest:
        groups = [max(groups, key=len)]
    n = sum(len(rows) for rows in groups)
    _warm_up(models, read_patient(groups[0], models, settings), batch)

    models.classify.seconds = models.segment.seconds = 0.0
    models.classify.computed = models.segment.computed = 0
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [PatientJob.of(rows, tmp, uris, settings, force=True) for rows in groups]
        e2e = _end_to_end(jobs, workers, prefetch)
    inside = models.classify.seconds + models.segment.seconds
    computed = (models.classify.computed, models.segment.computed)
    done = [r for r in e2e["results"] if r.findings is not None]
    flagged = sum(len(r.findings.flagged_slices) for r in done)
    clf_s, seg_s, model_cpu, loop_x = _models_alone(groups, models, settings, loop_slices)
    seconds = e2e["seconds"]
    loop = {"per_slice_loop_s": None, "loop_slices_timed": 0, "speedup_vs_per_slice_loop": None}
    on_tf = models.classifier.model is not None and models.segmenter.model is not None
    segmented = flagged * (2 if settings.tta else 1)  # segmenter inputs: the mirror too
    if loop_slices > 0 and on_tf:  # the same model work as triage
        loop = per_slice_loop(models, loop_x, n, segmented, seconds)
    return {
        "patients": len(groups),
        "slices": n,
        "flagged": flagged,
        "segmenter_inputs": segmented,
        "computed_classifier": computed[0],
        "computed_segmenter": computed[1],
        "failures": len(e2e["results"]) - len(done),
        "segmenter_calls_saved": n - flagged,
        "end_to_end_s": seconds,
        "end_to_end_slices_per_s": n / seconds,
        "model_s": clf_s + seg_s,
        "model_s_classify": clf_s,
        "model_s_segment": seg_s,
        "ratio_end_to_end_to_model": seconds / (clf_s + seg_s),
        **loop,
        "model_s_in_end_to_end": inside,
        **cpu_budget(e2e["cpu"], model_cpu, clf_s + seg_s, n),
        "rss_mb_at_start": round(rss_start, 1),
        "rss_mb_after_patient": [round(r, 1) for r in e2e["rss"]],
        "rss_peak_mb": round(e2e["peak"], 1),
        "models": models.versions(),
        "runtimes": models.runtimes,
        "parity": models.parity,
        "notes": models.notes,
        "threshold": threshold,
        "batch": batch,
        "workers": workers,
        "prefetch": prefetch,
        "precision": models.precision,
    }


def cpu_budget(e2e_cpu: float, model_cpu: float, model_s: float, slices: int) -> dict[str, Any]:
    """Where the end-to-end run's CPU goes, and the ratio the machine's cores allow.

    When the models alone keep every core busy, work outside them (reading, writing, bookkeeping)
    cannot hide behind them however well the stages overlap: the end-to-end run then needs at
    least its CPU seconds shared over the cores. `ratio_floor` is that bound over the models'
    time (`end_to_end / models` cannot go below it on this machine); a measured ratio near it
    means the overlap works and only less CPU outside the models would lower it.

    Args:
        e2e_cpu: process CPU seconds of the end-to-end run (every thread).
        model_cpu: process CPU seconds of the models alone.
        model_s: wall seconds of the models alone.
        slices: slices in the run.
    """
    cores = os.cpu_count() or 1
    outside = max(e2e_cpu - model_cpu, 0.0)
    return {
        "cpu_s_end_to_end": e2e_cpu,
        "cpu_s_models": model_cpu,
        "cpu_ms_outside_models_per_slice": 1e3 * outside / max(slices, 1),
        "cores_busy_in_models": model_cpu / model_s if model_s > 0 else None,
        "cores": cores,
        "ratio_floor": max(1.0, e2e_cpu / cores / model_s) if model_s > 0 else None,
    }


def per_slice_loop(
    models: Any, x: np.ndarray, slices: int, flagged: int, e2e: float
) -> dict[str, Any]:
    """The public notebooks' per-slice `model.predict` loop (TF models), timed on `x` and
    extrapolated: classifier calls scale with `slices`, segmenter calls with `flagged`."""
    from pipeline.io.preprocess import prepare_batch

    per_clf = _per_slice_seconds(models.classifier.model, x)
    same_size = models.segmenter.preprocess == models.classifier.preprocess
    seg_x = x if same_size else prepare_batch(x, models.segmenter.preprocess)
    per_seg = _per_slice_seconds(models.segmenter.model, seg_x[: max(len(x) // 2, 1)])
    total = per_clf * slices + per_seg * flagged
    return {
        "per_slice_loop_s": total,
        "loop_slices_timed": len(x),
        "speedup_vs_per_slice_loop": total / e2e,
        "per_slice_s": {"classifier": per_clf, "segmenter": per_seg},
    }
