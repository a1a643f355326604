"""`mri-triage demo`: the main job end to end on a generated archive, needing no data of the user's.

1. write a synthetic Kaggle-layout training archive (brain phantoms, FLAIR-bright tumours, ground
   truth) and a second, held-out "nightly" archive drawn with another seed;
2. train a small ResNet50 classifier (no ImageNet weights) and a ResUNet segmenter through the
   training flows, tracked and registered in the demo's own MLflow store (`OUT/mlflow/`, unless
   `MLFLOW_TRACKING_URI` is set), so the demo never moves the `champion` alias of real models;
3. run the triage flow over the held-out archive with those exact model versions, at the
   classifier's logged operating point (the P(normal) threshold that kept validation sensitivity
   >= 0.98), so the end-to-end figures are out of sample;
4. print where the worklist and reports are and how to open the MLflow UI.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: Small enough for a few minutes on 2 CPU cores, big enough for the models to learn the phantoms.
#: ResNet50 trained from scratch needs enough steps for its batch-norm statistics to settle, and the
#: ResUNet learns far better from many small batches at 64 px than from a few big ones at 128 px.
DEMO: dict[str, Any] = {
    "patients": 10,
    "nightly_patients": 6,
    "slices": 20,
    "native_size": 128,
    "seed": 0,
    "classifier": {"image_size": 128, "batch": 16, "epochs": 6, "lr": 1e-3},
    "segmenter": {"image_size": 64, "batch": 4, "epochs": 12, "lr": 1e-3},
}


def run_demo(out: Path, cfg: dict[str, Any] = DEMO) -> dict[str, Any]:
    """Synthesise, train, register and triage; returns paths, model URIs, metrics and timings."""
    from flows.train import train_classifier_flow, train_segmenter_flow
    from flows.triage import triage_flow
    from pipeline.io.synthetic import write_synthetic_archive
    from pipeline.tracking import store_uri

    t0 = time.perf_counter()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        (out / "mlflow").mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"
    archive, nightly = out / "archive", out / "nightly"
    for path, n, seed, prefix in (
        (archive, cfg["patients"], cfg["seed"], "TRAIN"),
        (nightly, cfg["nightly_patients"], cfg["seed"] + 1000, "NIGHT"),
    ):
        if not path.exists():
            size = cfg["native_size"]
            write_synthetic_archive(path, n, "kaggle", seed, cfg["slices"], size, prefix)
    t1 = time.perf_counter()
    seed = cfg["seed"]
    clf = train_classifier_flow(
        str(archive), "resnet50", weights="none", seed=seed, **cfg["classifier"]
    )
    t2 = time.perf_counter()
    seg = train_segmenter_flow(str(archive), "resunet", seed=seed, **cfg["segmenter"])
    t3 = time.perf_counter()
    uris = {k: f"models:/{r['version']}" for k, r in (("classifier", clf), ("segmenter", seg))}
    # No threshold: the run takes the classifier's operating point (`resolve_threshold`).
    result = triage_flow(
        str(nightly), str(out / "triage"), uris["classifier"], uris["segmenter"], force=True
    )
    t4 = time.perf_counter()
    return {
        **result,
        "archive": str(archive),
        "nightly": str(nightly),
        "models": uris,
        "tracking_uri": store_uri(),
        "seconds": {
            "synth": t1 - t0,
            "classifier": t2 - t1,
            "segmenter": t3 - t2,
            "triage": t4 - t3,
            "total": t4 - t0,
        },
    }


def cli_demo(args: argparse.Namespace | SimpleNamespace) -> int:
    """`mri-triage demo [--out data/demo]`."""
    out = Path(args.out).absolute()
    r = run_demo(out)
    m, s = r["metrics"], r["seconds"]
    lines = [
        "",
        "mri-triage demo — research use only, not a medical device",
        f"trained on:  {r['archive']} (synthetic, with ground truth)",
        f"triaged:     {r['nightly']} (held-out synthetic patients, with ground truth)",
        f"models:      {r['models']['classifier']} + {r['models']['segmenter']}",
        f"threshold:   P(normal) >= {r['threshold']:.4g} is normal (classifier's operating point)",
        f"triage:      {int(m['patients'])} patients, {int(m['slices'])} slices, "
        f"{int(m['slices_segmented'])} segmented "
        f"({int(m['segmenter_calls_saved'])} segmenter calls saved), {int(m['failures'])} failed",
    ]
    for key in ("gate_sensitivity_slice", "gate_sensitivity_patient", "dice_patient_mean"):
        if key in m:
            lines.append(f"{key + ':':<29}{m[key]:.3f}")
    lines += [
        f"worklist:    {r['index_html']}",
        f"reports:     {Path(r['out'])}/<patient>/report.html",
        f"time:        {s['total']:.0f} s (classifier {s['classifier']:.0f} s, "
        f"segmenter {s['segmenter']:.0f} s, triage {s['triage']:.0f} s)",
        f"MLflow UI:   mlflow ui --backend-store-uri {r['tracking_uri']}",
    ]
    print("\n".join(lines))
    return int(r["exit_code"])
