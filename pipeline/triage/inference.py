"""Batched inference and the per-patient triage pipeline.

One patient in three stages: `read_patient` (read its slices, preprocess with each model's own
logged config) → `predict_patient` (the models only: classify in batches through a compiled
`tf.function`, route with `pipeline.triage.rule`, segment the flagged slices) → `write_patient`
(post-process at native size, write masks and reports into a staging folder that is moved into place
in one rename). `pipeline.triage.worker` overlaps the stages of consecutive patients;
`process_patient` runs them in turn. Nothing here knows about Prefect; the flow and the benchmark
run these stages.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io import manifest
from pipeline.io.safety import clean_reason, output_name
from pipeline.triage import report, viewer
from pipeline.triage.calibration import gate_p_normal, model_temperature
from pipeline.triage.metrics import slice_counts
from pipeline.triage.postprocess import fill_holes, remove_isolated_3d, remove_small_components
from pipeline.triage.postprocess import threshold_probabilities as binarise
from pipeline.triage.predictor import BatchPredictor
from pipeline.triage.records import CHANGED, DONE, FAILED, NEW, SKIPPED, PatientResult, TruthMetrics
from pipeline.triage.rule import context_p_normal, resolve_gate_context, route_slices
from pipeline.triage.settings import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER, TriageSettings

#: Pixels of the slice size the 3-D post-processing areas are given for (256 x 256).
REFERENCE_PIXELS = 256 * 256


@dataclass
class TriageModels:
    """The two loaded models (`pipeline.tracking.LoadedModel`) and their compiled predictors."""

    classifier: Any
    segmenter: Any
    classify: BatchPredictor
    segment: BatchPredictor
    uris: dict[str, str] = field(default_factory=dict)
    precision: str = "float32"
    runtimes: dict[str, str] = field(default_factory=dict)  # kind -> "tf-float32", "openvino-int8"
    notes: list[str] = field(default_factory=list)  # why a model did not run on OpenVINO
    parity: dict[str, Any] = field(default_factory=dict)  # kind -> parity figures (OpenVINO)

    def versions(self) -> dict[str, str]:
        """`{"classifier": version, "segmenter": version}` (no patient data)."""
        return {"classifier": self.classifier.version, "segmenter": self.segmenter.version}


_cache: dict[tuple, TriageModels] = {}
_cache_lock = threading.Lock()


def _file_digest(uri: str) -> str:
    """Short SHA-256 of a local model file and its sidecar; "" for registry/run URIs."""
    path = Path(uri)
    if not path.is_file():
        return ""
    files = [path, *[p for p in [path.with_suffix(".json")] if p.is_file()]]
    # Once per unchanged file, not once per patient (hashing a 300 MB model takes ~0.5 s).
    return manifest.remembered_digest(
        files, lambda: manifest.files_digest(files)[:12], kind="model-short"
    )


def _identity(uri: str) -> tuple[str, str, bool]:
    """`(what to load, what it is, whether it is a local file)` for the model cache.

    A local file is loaded as given and is its content digest. A registry or run URI is resolved
    now, alias -> version -> digest of that version's MLmodel file (`pipeline.triage.runtime.
    model_digest`), and the resolved version is what gets loaded, so the cache never keys on an
    alias string and a long-lived worker follows a moved `champion`.
    """
    from pipeline.triage.runtime import _is_local, model_digest

    if _is_local(uri):
        return uri, _file_digest(uri), True
    version, digest = model_digest(uri)
    return (f"models:/{version}" if uri.startswith("models:/") else uri), digest, False


def load_triage_models(
    classifier: str | None,
    segmenter: str | None,
    batch: int = TriageSettings.batch,
    precision: str = TriageSettings.precision,
    xla: str = TriageSettings.xla,
) -> TriageModels:
    """Load (once per process and model version) the classifier and segmenter and compile them.

    Args:
        classifier, segmenter: MLflow model URIs or `.keras` files; None = registered champion.
        batch: slices per model call.
        precision: "float32", "mixed_bfloat16", "mixed_float16" or "auto" (`mixed_float16` on a
            GPU, see `models.precision.inference_plan`).
        xla: "auto" (XLA on a GPU only), "on" or "off".

    Raises:
        ValueError: a model is not of the expected kind, or cannot be resolved
            (`IncompatibleModelError` for wrong shapes or outputs that are not probabilities).
    """
    from pipeline.tracking import load_model
    from pipeline.triage.preflight import check_model

    uris = {
        "classifier": classifier or DEFAULT_CLASSIFIER,
        "segmenter": segmenter or DEFAULT_SEGMENTER,
    }
    # Keyed on what each model is now (a file's bytes, an alias's version and its digest): a model
    # replaced in place or a moved `champion` is never served stale from the cache.
    found = {kind: _identity(uri) for kind, uri in uris.items()}
    key = (*uris.values(), *(d for _, d, _ in found.values()), int(batch), precision, xla)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        from models.precision import cpu_flags, has_gpu, inference_plan
        from models.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()  # TF loads here, not before: an OpenVINO run never needs it
        policy, jit = inference_plan(precision, xla, has_gpu(), cpu_flags())
        loaded = {}
        for kind, uri in uris.items():
            source, digest, local = found[kind]
            lm = load_model(source)  # the resolved version, never the alias again
            check_model(lm, kind, uri)  # shapes, sizes, probabilities: before any patient work
            if local and digest:  # the manifest key then changes with the file's content
                lm.version = f"{lm.version}#{digest}"
            if policy != "float32":
                from models.precision import rebuild_with_policy

                lm.model = rebuild_with_policy(lm.model, policy)
            loaded[kind] = lm
        compute = threading.Lock()  # one model call at a time in this process (see BatchPredictor)
        models = TriageModels(
            classifier=loaded["classifier"],
            segmenter=loaded["segmenter"],
            classify=BatchPredictor(loaded["classifier"].model, batch, compute, jit),
            segment=BatchPredictor(loaded["segmenter"].model, batch, compute, jit),
            uris=uris,
            precision=policy,
            runtimes={k: f"tf-{policy}{'-xla' if jit else ''}" for k in loaded},
        )
        _cache[key] = models
        return models


def input_files(rows: pd.DataFrame) -> list[str]:
    """Every file one patient's outputs depend on (images, masks, the rest of a NIfTI folder,
    every file under a DICOM series' folder)."""
    paths = [p for col in ("image_path", "mask_path") for p in rows[col] if p]
    for src in rows.get("source", pd.Series(dtype=str)).unique():
        if os.path.isdir(src) and (rows["format"] == "nifti").any():
            paths.extend(str(p) for p in sorted(Path(src).iterdir()) if p.is_file())
        elif os.path.isdir(src) and (rows["format"] == "dicom").any():
            paths.extend(str(p) for p in sorted(Path(src).rglob("*")) if p.is_file())
    return list(dict.fromkeys(paths))


def _gt_metrics(
    gt: np.ndarray,
    usable: np.ndarray,
    flagged: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float] = (float("nan"),) * 3,
) -> TruthMetrics:
    """End-to-end figures against ground truth over the labelled slices (`usable`).

    `dice` pools every labelled slice (tumour on a slice the gate dropped counts as missed),
    `dice_tumour_slices` only the slices with true tumour, `hd95` is the 3-D 95% Hausdorff
    distance in mm (pixels where the spacing is unknown; None when only one mask is empty),
    `recall` / `precision` the shares of the true tumour drawn / of the drawing that is tumour.
    """
    from pipeline.triage.metrics import hd95, per_patient

    if usable.all():  # the usual case: no copies of the patient's masks
        t, f, p = gt, flagged, pred
    else:
        t, f, p = gt[usable], flagged[usable], pred[usable]
    tumour = t.any(axis=(1, 2))
    caught = int((tumour & f).sum())
    sx, sy, sz = (float(v) for v in spacing)
    dist = hd95(t, p, (sz, sy, sx)) if len(t) else float("nan")
    whole = per_patient(t, p, ["p"] * len(t))["p"] if len(t) else {}

    def finite(key: str) -> float | None:
        value = whole.get(key)
        return None if value is None or not np.isfinite(value) else float(value)

    return TruthMetrics(
        gt_tumour_slices=int(tumour.sum()),
        gate_caught_slices=caught,
        gate_missed_slices=int(tumour.sum()) - caught,
        gate_sensitivity=caught / int(tumour.sum()) if tumour.any() else None,
        # Over ALL labelled slices: tumour on a slice the gate dropped counts against Dice.
        dice=finite("dice"),
        dice_tumour_slices=(
            per_patient(t[tumour], p[tumour], ["p"] * int(tumour.sum()))["p"]["dice"]
            if tumour.any()
            else None
        ),
        hd95=dist if np.isfinite(dist) else None,
        recall=finite("recall"),
        precision=finite("precision"),
    )


@dataclass
class PatientWork:
    """One patient between the stages of `triage_patient` (pixels: never leaves this process).

    Attributes:
        ps: the loaded patient (`pipeline.io.slices.load_patient`).
        x: classifier input `(N, S, S, 3)` float32; None once the models are done with it.
        xs: segmenter input of every slice as `compact_inputs` gives it (one FLAIR plane for the
            FLAIR modes), None when it is `x` (same preprocessing) or spent.
        timings: seconds each stage took so far ("load", "classify", "segment", ...).
        key: manifest key of this work; change: `NEW` or `CHANGED` (`start_patient`).
        p_normal: calibrated P(normal) per slice; flagged: slices routed to the segmenter.
        prob: the segmenter's masks of the flagged slices at model size, `(F, S, S)` bool
            (P(tumour) >= 0.5; binarised as each batch comes out, a quarter of the float maps).
        flair: `(N, H, W)` uint8 FLAIR grey levels at native size (`viewer.gray_u8`; a Kaggle
            TIF's own FLAIR grey levels), all the writer needs of the pixels (`ps.images` keeps
            no channels once the model inputs are made).
    """

    ps: Any
    x: np.ndarray | None
    xs: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    key: str = ""
    change: str = NEW
    p_normal: np.ndarray | None = None
    flagged: np.ndarray | None = None
    prob: np.ndarray | None = None
    flair: np.ndarray | None = None


def read_patient(rows: pd.DataFrame, models: TriageModels, settings: TriageSettings) -> PatientWork:
    """Stage 1: read one patient's slices and preprocess them for both models (no model call).

    Raises:
        ArchiveError, ValueError: unreadable or inconsistent input.
    """
    from pipeline.io.preprocess import compact_inputs, expand_inputs, model_inputs
    from pipeline.io.slices import load_patient

    start = time.perf_counter()
    clf, seg = models.classifier.preprocess, models.segmenter.preprocess
    # Models that read FLAIR alone never need the other channels' pixels in memory.
    flair_only = clf.reads_flair_only and seg.reads_flair_only
    # Kaggle slices stay uint8 until normalised a few at a time (no float copy of the patient).
    ps = load_patient(rows, clf, settings.limits, flair_only=flair_only, as_uint8=True)
    # The classifier sees every slice: its channels are built now. The segmenter sees the flagged
    # slices only: its input stays compact (one FLAIR plane for the FLAIR modes) until then.
    if seg == clf:
        x, xs = model_inputs(ps.images, (clf,))[0], None
    else:  # one normalisation for both models when they normalise alike
        planes, xs = compact_inputs(ps.images, (clf, seg))
        x = expand_inputs(planes, clf.input_mode)
        del planes
    # The writer needs FLAIR alone, as display grey levels (viewer, thumbnail): keep those and let
    # the float pixels go, so a patient waiting for its models or its writer holds a quarter of
    # one channel.
    flair = np.ascontiguousarray(viewer.gray_u8(ps.images[..., 1]))  # not a view of all channels
    ps = replace(ps, images=np.empty((*ps.images.shape[:3], 0), np.float32))
    return PatientWork(ps, x, xs, {"load": time.perf_counter() - start}, flair=flair)


def predict_patient(
    work: PatientWork, models: TriageModels, settings: TriageSettings
) -> PatientWork:
    """Stage 2, the models only: classify every slice, route, segment the flagged ones.

    With `settings.tta` each flagged slice and its left-right mirror go through the segmenter in
    one call (fewer part-filled batches than two calls) and their probabilities are averaged.
    The model inputs are released afterwards.
    """
    start = time.perf_counter()
    assert work.x is not None, "predict_patient needs read_patient's inputs"
    # The classifier's validation temperature (1 when none was fitted) gives calibrated P(tumour).
    temperature = model_temperature(models.classifier.info)
    work.p_normal = gate_p_normal(models.classify(work.x)[:, 1], temperature)
    # Route on the least P(normal) within the z context the classifier logged (or the run's).
    reach = resolve_gate_context(settings.gate_context, models.classifier.info)[0]
    work.flagged = route_slices(context_p_normal(work.p_normal, reach), settings.threshold)
    mid = time.perf_counter()
    if work.flagged.any():
        work.prob = _segment_flagged(work, models, settings.tta)
    work.x = work.xs = None  # the writer needs the native images only
    work.timings.update(classify=mid - start, segment=time.perf_counter() - mid)
    return work


def _segment_flagged(work: PatientWork, models: TriageModels, tta: bool) -> np.ndarray:
    """Segmenter masks `(F, S, S)` bool (P(tumour) >= 0.5) of the flagged slices, one model batch
    at a time.

    Each batch's inputs are built from the compact segmenter input just before the call (with
    `tta`, half a batch of slices and their left-right mirrors, averaged after mirroring back),
    so a large patient never holds all its flagged inputs, or their mirrors, at once.
    """
    from pipeline.io.preprocess import expand_inputs

    assert work.flagged is not None and work.x is not None
    src, mode = work.xs, models.segmenter.preprocess.input_mode
    if src is None:  # the segmenter shares the classifier's (already expanded) input
        src, mode = work.x, "rgb"
    index = np.flatnonzero(work.flagged)
    batch = int(getattr(models.segment, "batch", 16))
    step = max(batch // 2, 1) if tta else batch
    prob: np.ndarray | None = None
    for start in range(0, len(index), step):
        part = expand_inputs(src, mode, index[start : start + step])
        n = len(part)
        if tta:  # mirror left-right (axis 2 = width), segment, mirror back, average
            both = models.segment(np.concatenate([part, part[:, :, ::-1]]))
            out = (both[:n] + both[n:, :, ::-1]) / 2.0
        else:
            out = models.segment(part)
        if prob is None:
            prob = np.empty((len(index), *out.shape[1:3]), bool)
        prob[start : start + n] = binarise(out)
    assert prob is not None
    return prob


def _postprocess(work: PatientWork, settings: TriageSettings) -> np.ndarray:
    """The final `(N, H, W)` bool masks at native size from the segmenter's probabilities."""
    from pipeline.io.preprocess import restore_masks

    n, (h, w) = len(work.ps.slices), work.ps.native_hw
    pred = np.zeros((n, h, w), dtype=bool)
    if work.prob is None or work.flagged is None:
        return pred
    masks = restore_masks(work.prob, (h, w))
    masks = remove_small_components(masks, settings.min_component)
    pred[work.flagged] = fill_holes(masks) if settings.fill_holes else masks
    scale = h * w / REFERENCE_PIXELS
    return remove_isolated_3d(
        pred, round(settings.lone_slice_area * scale), round(settings.min_volume * scale)
    )


def write_patient(
    work: PatientWork, out_dir: Path, models: TriageModels, settings: TriageSettings
) -> dict[str, Any]:
    """Stage 3: post-process, write masks, viewer and reports into a staging folder, move it in.

    Returns:
        The patient's `report.json` content (see `triage_patient`).
    """
    start = time.perf_counter()
    ps, p_normal, flagged = work.ps, work.p_normal, work.flagged
    assert p_normal is not None and flagged is not None, "write_patient needs predict_patient's"
    pred = _postprocess(work, settings)
    post = time.perf_counter()
    n = len(ps.slices)
    gt_px = None if ps.masks is None else slice_counts(ps.masks)
    px = slice_counts(pred)
    recs = report.slice_records(ps.slices, p_normal, flagged, px, ps.spacing, gt_px)
    findings = report.patient_summary(recs, ps.spacing)
    rep: dict[str, Any] = {
        "patient": ps.patient,
        "status": "done",
        "format": ps.format,
        "spacing_mm": [None if not np.isfinite(s) else float(s) for s in ps.spacing],
        "threshold": settings.threshold,
        "settings": asdict(settings),
        "models": {
            k: {"uri": models.uris[k], "version": v, "runtime": models.runtimes.get(k, "tf")}
            for k, v in models.versions().items()
        },
        "slices": [r.to_dict() for r in recs],
        "summary": findings.to_dict(),
        "disclaimer": report.DISCLAIMER,
    }
    if ps.dicom is not None:  # which series was read and why (no identities, UIDs or dates)
        rep["series"] = ps.dicom.describe()
    if ps.masks is not None:
        truth = _gt_metrics(ps.masks, np.asarray(ps.has_mask, bool), flagged, pred, ps.spacing)
        rep["metrics"] = truth.to_dict()
    name = output_name(ps.patient)  # keys are data: never a path (pipeline.io.safety)
    rep["output"] = name
    stage = manifest.staging_dir(out_dir, name)
    rep["masks"] = [p.name for p in ps.write_masks(pred, stage, name, staged=True)]
    flair = work.flair  # every slice goes into the viewer
    assert flair is not None, "write_patient needs read_patient's FLAIR"
    view = viewer.viewer_data(flair, pred, ps.masks, recs)
    big = findings.largest_slice
    i = next(j for j, r in enumerate(recs) if r.slice == big) if big is not None else n // 2
    gt_i = None if ps.masks is None else ps.masks[i]
    (stage / viewer.THUMB_NAME).write_bytes(viewer.thumbnail(flair[i], pred[i], gt_i))
    timings = {**work.timings, "postprocess": post - start, "write": time.perf_counter() - post}
    rep["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    rep["timings_s"]["total"] = round(sum(timings.values()), 4)  # work, not waiting in queues
    (stage / "report.json").write_text(json.dumps(rep, indent=1), encoding="utf-8")
    page = report.render_patient_html(rep, None, view)
    (stage / "report.html").write_text(page, encoding="utf-8")
    manifest.commit_dir(stage, out_dir / name)
    return rep


def triage_patient(
    rows: pd.DataFrame, out_dir: Path, models: TriageModels, settings: TriageSettings
) -> dict[str, Any]:
    """Run the whole pipeline on one patient and move its outputs into `out_dir/<patient>/`.

    The three stages in turn: `read_patient`, `predict_patient`, `write_patient`
    (`pipeline.triage.worker` overlaps them across patients).

    Returns:
        The patient's `report.json` content: `slices` (`SliceRecord.to_dict()` each), `summary`
        (`Findings`), `metrics` (`TruthMetrics`, with ground truth only), timings and settings.

    Raises:
        ArchiveError, ValueError: unreadable or inconsistent input (nothing is written then).
    """
    work = predict_patient(read_patient(rows, models, settings), models, settings)
    return write_patient(work, out_dir, models, settings)


def start_patient(
    rows: pd.DataFrame,
    out_dir: Path,
    models: TriageModels,
    settings: TriageSettings,
    previous: Mapping[str, Any] | None = None,
    force: bool = False,
) -> PatientResult | PatientWork:
    """The first stage of `process_patient`: the manifest key of this patient's work, then its
    earlier result when it is already done (same inputs, models and settings), else its inputs.

    Raises:
        ArchiveError, ValueError, OSError: unreadable input.
    """
    patient = str(rows["patient"].iloc[0])
    name = output_name(patient)
    key = manifest.run_key(
        manifest.files_digest(input_files(rows)), models.versions(), settings.key_part()
    )
    prev = {patient: previous} if previous else {}
    if not force and manifest.is_done(prev, out_dir, patient, key, name):
        rep = json.loads((out_dir / name / "report.json").read_text(encoding="utf-8"))
        return PatientResult.from_report({"output": name, **rep}, SKIPPED, key)
    work = read_patient(rows, models, settings)
    work.key, work.change = key, CHANGED if previous else NEW
    return work


def finish_patient(
    work: PatientWork, out_dir: Path, models: TriageModels, settings: TriageSettings
) -> PatientResult:
    """The last stage of `process_patient`: `write_patient`, as the patient's `DONE` result."""
    rep = write_patient(work, out_dir, models, settings)
    return PatientResult.from_report(rep, DONE, work.key, work.change)


def failed_patient(patient: str, exc: Exception) -> PatientResult:
    """The `FAILED` result of a patient whose work raised `exc` (a reason safe to show)."""
    return PatientResult(patient, output_name(patient), FAILED, clean_reason(exc))


def process_patient(
    rows: pd.DataFrame,
    out_dir: Path,
    models: TriageModels,
    settings: TriageSettings,
    previous: Mapping[str, Any] | None = None,
    force: bool = False,
) -> PatientResult:
    """Triage one patient unless it is already done with the same inputs, models and settings.

    `start_patient`, `predict_patient`, `finish_patient` in turn
    (`pipeline.triage.worker.work_through` runs the same stages overlapped across patients). Never
    raises for bad input: a failure comes back as a `FAILED` result with its reason, so the rest of
    the archive is processed.

    Returns:
        Its `PatientResult`: `DONE` (with `change` `NEW` or `CHANGED`), `SKIPPED` (read back from
        the earlier run's `report.json`) or `FAILED`; `key` is the manifest key of its work.
    """
    try:
        work = start_patient(rows, out_dir, models, settings, previous, force)
        if isinstance(work, PatientResult):
            return work
        return finish_patient(predict_patient(work, models, settings), out_dir, models, settings)
    except Exception as exc:  # one bad patient must not stop the archive
        return failed_patient(str(rows["patient"].iloc[0]), exc)
