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

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    threshold: float = 0.99,
    batch: int = 16,
    precision: str = "float32",
    loop_slices: int = 64,
    workers: int = 2,
) -> dict[str, Any]:
    """Run the three measurements and return the figures (no patient keys).

    Returns:
        `patients`, `slices`, `flagged`, `end_to_end_s`, `end_to_end_slices_per_s`, `model_s`,
        `ratio_end_to_end_to_model`, `per_slice_loop_s` (extrapolated) and `loop_slices_timed`,
        `speedup_vs_per_slice_loop`, `segmenter_calls_saved`, `rss_mb_after_patient` (list),
        `rss_peak_mb` (sampled), `model_s_in_end_to_end` (model time inside the end-to-end run),
        versions and settings.
    """
    from pipeline.index import build_index
    from pipeline.inference import TriageSettings, load_triage_models, triage_patient
    from pipeline.io import load_patient
    from pipeline.preprocess import patient_inputs, prepare_batch
    from pipeline.triage import route_slices

    settings = TriageSettings(threshold=threshold, batch=batch, precision=precision)
    models = load_triage_models(classifier, segmenter, batch, precision)
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
    model_s = 0.0
    loop_x: list[np.ndarray] = []
    for rows in groups:
        ps = load_patient(rows, models.classifier.preprocess)
        x = patient_inputs(ps.images, models.classifier.preprocess)
        start = time.perf_counter()
        flagged = route_slices(models.classify(x)[:, 0], threshold)
        model_s += time.perf_counter() - start
        if flagged.any():  # the segmenter's input is prepared outside the timed region
            pre = models.segmenter.preprocess
            xs = x[flagged] if same_size else patient_inputs(ps.images, pre)[flagged]
            start = time.perf_counter()
            models.segment(xs)
            model_s += time.perf_counter() - start
        if sum(len(a) for a in loop_x) < loop_slices:
            loop_x.append(x)
    n = len(table)
    lx = np.concatenate(loop_x)[:loop_slices]
    # Per stage, extrapolated: classifier calls scale with slices, segmenter calls with flagged.
    per_clf = _per_slice_seconds(models.classifier.model, lx)
    seg_x = lx if same_size else prepare_batch(lx, models.segmenter.preprocess)
    per_seg = _per_slice_seconds(models.segmenter.model, seg_x[: max(loop_slices // 2, 1)])
    loop_total = per_clf * n + per_seg * flagged_total
    return {
        "patients": len(groups),
        "slices": n,
        "flagged": flagged_total,
        "segmenter_calls_saved": n - flagged_total,
        "end_to_end_s": e2e,
        "end_to_end_slices_per_s": n / e2e,
        "model_s": model_s,
        "ratio_end_to_end_to_model": e2e / model_s,
        "per_slice_loop_s": loop_total,
        "loop_slices_timed": len(lx),
        "speedup_vs_per_slice_loop": loop_total / e2e,
        "model_s_in_end_to_end": inside,
        "rss_mb_after_patient": [round(r, 1) for r in rss],
        "rss_peak_mb": round(peak.mb, 1),
        "models": models.versions(),
        "threshold": threshold,
        "batch": batch,
        "workers": workers,
        "precision": models.precision,
    }


def format_table(r: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rss = r["rss_mb_after_patient"]
    rows = [
        ("patients / slices / flagged", f"{r['patients']} / {r['slices']} / {r['flagged']}"),
        ("end-to-end", f"{r['end_to_end_s']:.2f} s = {r['end_to_end_slices_per_s']:.1f} slices/s"),
        ("models alone (batched)", f"{r['model_s']:.2f} s"),
        ("model time inside end-to-end", f"{r['model_s_in_end_to_end']:.2f} s"),
        ("ratio end-to-end / models", f"{r['ratio_end_to_end_to_model']:.2f} (goal <= 1.15)"),
        (
            "per-slice predict loop",
            f"{r['per_slice_loop_s']:.1f} s (extrapolated from {r['loop_slices_timed']} slices)",
        ),
        ("speed-up vs per-slice loop", f"{r['speedup_vs_per_slice_loop']:.1f}x (goal >= 10x)"),
        ("segmenter calls saved by the gate", f"{r['segmenter_calls_saved']}"),
        ("RSS after first / last patient", f"{rss[0]:.0f} / {rss[-1]:.0f} MB (max {max(rss):.0f})"),
        ("RSS peak during end-to-end (sampled)", f"{r['rss_peak_mb']:.0f} MB"),
        ("patients at once (threads, as the flow)", f"{r['workers']}"),
        ("models", f"{r['models']['classifier']} + {r['models']['segmenter']} ({r['precision']})"),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def cli_bench_triage(args: argparse.Namespace) -> int:
    """`mri-triage bench triage ARCHIVE [--classifier URI] [--segmenter URI] [--json]`."""
    result = bench_triage(
        args.archive,
        args.classifier,
        args.segmenter,
        args.threshold,
        args.batch,
        getattr(args, "precision", "float32"),
        getattr(args, "loop_slices", 64),
        getattr(args, "workers", 2),
    )
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0
