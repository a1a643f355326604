"""`mri-triage bench triage ARCHIVE`: end-to-end triage against the models' own batched time.

On the same slices in one process: (1) the whole per-patient pipeline (read, preprocess, classify,
route, segment, post-process, write masks and reports), `workers` patients at once as the flow runs
them (model calls serialised, reading and writing overlapped with them); (2) the models alone,
batched, on the same preprocessed inputs; (3) a per-slice `model.predict` loop as the public
notebooks write it, timed on a subset and extrapolated to all slices. Also the segmenter calls the
gate saved, and memory (RSS after each patient and its peak, sampled every 10 ms) to show it does
not grow with the number of patients. `tracemalloc` is not used: it slows every allocation and would
bill its own cost to the pipeline. Figures are printed, never asserted.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.settings import WORKERS, TriageSettings

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
) -> dict[str, Any]:
    """Run the three measurements and return the figures (no patient keys).

    `threshold` None = the classifier's operating point. `runtime` / `ov_precision` choose the
    models' runtime (`pipeline.runtime`); the per-slice loop is TF's `model.predict` (skipped
    with `loop_slices=0`, or when a model is not on TF).

    Returns:
        `patients`, `slices`, `flagged`, `end_to_end_s`, `end_to_end_slices_per_s`, `model_s`,
        `ratio_end_to_end_to_model`, `per_slice_loop_s` (extrapolated) and `loop_slices_timed`,
        `speedup_vs_per_slice_loop`, `segmenter_calls_saved`, `rss_mb_after_patient` (list),
        `rss_peak_mb` (sampled), `model_s_in_end_to_end` (model time inside the end-to-end run),
        `model_s_classify` / `model_s_segment`, `runtimes`, `parity`, `notes`, versions and
        settings.
    """
    from pipeline.calibration import gate_p_normal, model_temperature
    from pipeline.index import build_index
    from pipeline.inference import triage_patient
    from pipeline.io import load_patient
    from pipeline.preprocess import patient_inputs, prepare_batch
    from pipeline.runtime import load_triage_runtime
    from pipeline.triage import resolve_threshold, route_slices

    models = load_triage_runtime(
        classifier, segmenter, batch, precision, runtime, ov_precision, threshold
    )
    threshold = resolve_threshold(threshold, models.classifier.info)[0]  # as a triage run does
    temperature = model_temperature(models.classifier.info)
    settings = TriageSettings(threshold, batch=batch, precision=precision, runtime=runtime,
                              ov_precision=ov_precision)  # fmt: skip
    rss_start = _rss_mb()
    table = build_index(archive).table
    groups = [rows for _, rows in table.groupby("patient", sort=True)]
    same_size = models.segmenter.preprocess == models.classifier.preprocess
    # Warm-up: trace both compiled functions once so no measurement pays for tracing.
    first = prepare_batch(load_patient(groups[0], models.classifier.preprocess).images[:2],
                          models.classifier.preprocess)  # fmt: skip
    models.classify(first)
    models.segment(first if same_size else prepare_batch(first, models.segmenter.preprocess))

    rss: list[float] = []
    flagged_total = 0
    lock = threading.Lock()

    def one(rows: pd.DataFrame) -> None:
        nonlocal flagged_total
        rep = triage_patient(rows, out, models, settings)
        with lock:
            flagged_total += len(rep["summary"]["flagged_slices"])
            rss.append(_rss_mb())

    models.classify.seconds = models.segment.seconds = 0.0
    peak = _PeakRss()
    with peak, tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        out = Path(tmp)
        start = time.perf_counter()
        list(pool.map(one, groups))  # as the flow's default runner: `workers` patients at once
        e2e = time.perf_counter() - start
    inside = models.classify.seconds + models.segment.seconds

    # The models alone, batched, on the same preprocessed slices (preparation not timed).
    model_s = clf_s = 0.0
    loop_x: list[np.ndarray] = []
    for rows in groups:
        ps = load_patient(rows, models.classifier.preprocess)
        x = patient_inputs(ps.images, models.classifier.preprocess)
        start = time.perf_counter()
        p_normal = gate_p_normal(models.classify(x)[:, 1], temperature)  # as triage routes
        flagged = route_slices(p_normal, threshold)
        clf_s += time.perf_counter() - start
        if flagged.any():  # the segmenter's input is prepared outside the timed region
            pre = models.segmenter.preprocess
            xs = x[flagged] if same_size else patient_inputs(ps.images, pre)[flagged]
            start = time.perf_counter()
            models.segment(xs)
            model_s += time.perf_counter() - start
        if sum(len(a) for a in loop_x) < loop_slices:
            loop_x.append(x)
    n = len(table)
    loop = {"per_slice_loop_s": None, "loop_slices_timed": 0, "speedup_vs_per_slice_loop": None}
    on_tf = models.classifier.model is not None and models.segmenter.model is not None
    if loop_slices > 0 and on_tf:
        lx = np.concatenate(loop_x)[:loop_slices]
        loop = per_slice_loop(models, lx, n, flagged_total, e2e)
    return {
        "patients": len(groups),
        "slices": n,
        "flagged": flagged_total,
        "segmenter_calls_saved": n - flagged_total,
        "end_to_end_s": e2e,
        "end_to_end_slices_per_s": n / e2e,
        "model_s": clf_s + model_s,
        "model_s_classify": clf_s,
        "model_s_segment": model_s,
        "ratio_end_to_end_to_model": e2e / (clf_s + model_s),
        **loop,
        "model_s_in_end_to_end": inside,
        "rss_mb_at_start": round(rss_start, 1),
        "rss_mb_after_patient": [round(r, 1) for r in rss],
        "rss_peak_mb": round(peak.mb, 1),
        "models": models.versions(),
        "runtimes": models.runtimes,
        "parity": models.parity,
        "notes": models.notes,
        "threshold": threshold,
        "batch": batch,
        "workers": workers,
        "precision": models.precision,
    }


def per_slice_loop(
    models: Any, x: np.ndarray, slices: int, flagged: int, e2e: float
) -> dict[str, Any]:
    """The public notebooks' per-slice `model.predict` loop (TF models), timed on `x` and
    extrapolated: classifier calls scale with `slices`, segmenter calls with `flagged`."""
    from pipeline.preprocess import prepare_batch

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
