"""Export a model once per version to OpenVINO IR (fp32, bf16, int8) with a parity record.

Keras `model.export` (SavedModel) → `openvino.convert_model` → IR saved with
`compress_to_fp16=False` (fp16 weight compression changes outputs by up to ~0.05). The int8 copy is
NNCF post-training quantisation calibrated on training slices of the model's own data set (kept
beside it as `calibration.npz`). Each copy is compiled at its precision and compared with TF fp32
on held-out slices; the `ParityRecord` goes into its `export.json`, and `pipeline.triage.runtime`
refuses a copy whose parity fails. `mri-triage export TRAIN ...` is the command.

This module imports TensorFlow (it needs the Keras model); triage on OpenVINO never imports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.triage.rule import resolve_threshold
from pipeline.triage.runtime import (
    EXPORT_FORMAT,
    EXPORT_RECORD,
    ParityPolicy,
    ParityRecord,
    compile_ir,
    export_dir,
    measure_speed,
    model_digest,
    model_temperature,
    read_export,
    read_speed,
    supported_precisions,
    write_speed,
)
from pipeline.triage.settings import OV_PRECISIONS, TriageSettings

#: (Keras model, folder) -> an `openvino.Model`; tests pass a deliberately broken one.
Converter = Callable[[Any, Path], Any]


@dataclass(frozen=True)
class SliceSets:
    """Model inputs `(N, S, S, 3)` float32 in [0, 1] for calibration (training patients) and
    parity (held-out patients)."""

    calibration: np.ndarray
    parity: np.ndarray


def convert_keras(model: Any, work: Path) -> Any:
    """Keras model → `openvino.Model` through a SavedModel in `work` (dynamic batch).

    Nearest upsampling is exported as one resize (`models.layers.for_export`: the same outputs;
    Keras' repeats ran as tiles and transposes, a third of the ResUNet's OpenVINO time)."""
    import openvino as ov

    from models.layers import for_export

    saved = work / "saved_model"
    for_export(model).export(str(saved), format="tf_saved_model", verbose=False)
    return ov.convert_model(str(saved))


#: How far an int8 copy may drift from TF fp32 on its calibration slices (training patients) before
#: NNCF's accuracy control puts the quantisers that cost most back to float: segmenter = pooled
#: mask Dice, classifier = 1 - mean |ΔP(tumour)|. Tighter than `ParityPolicy`, which then judges the
#: copy on held-out slices it never saw.
INT8_MAX_DROP = {"segmenter": 0.004, "classifier": 0.002}
#: Most quantiser groups accuracy control puts back to float (bounds the export time).
INT8_MAX_REVERTS = 24


def _agreement(kind: str, ref: np.ndarray, out: np.ndarray) -> float:
    """How closely `out` follows TF fp32's `ref`: mask Dice, or 1 - mean |ΔP| for a classifier."""
    if kind == "segmenter":
        return _dice(ref > 0.5, out > 0.5)
    return 1.0 - float(np.mean(np.abs(out[:, 1] - ref[:, 1])))


def _quantize(
    ov_model: Any, calibration: np.ndarray, reference: np.ndarray, kind: str, batch: int
) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training int8 with accuracy control against TF fp32 on the calibration slices.

    Plain post-training quantisation of these models moved the classifier's gate on 3 of 200
    held-out slices and the segmenter's masks to Dice 0.987, so NNCF's accuracy control ranks the
    quantisers by what they cost and keeps the worst in float until the agreement with TF fp32
    drops by at most `INT8_MAX_DROP[kind]`.

    Returns:
        The quantised `openvino.Model` and what accuracy control did (for the export record).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    items = [
        (calibration[i : i + batch], reference[i : i + batch])
        for i in range(0, len(calibration), batch)
    ]

    def validate(compiled: Any, data: Any) -> tuple[float, list[float]]:
        refs, outs = [], []
        for x, ref in data:
            refs.append(ref)
            outs.append(np.asarray(compiled(x)[0], dtype=np.float32))
        per_item = [_agreement(kind, r, o) for r, o in zip(refs, outs, strict=True)]
        return _agreement(kind, np.concatenate(refs), np.concatenate(outs)), per_item

    dataset = nncf.Dataset(items, lambda item: item[0])
    quantized = nncf.quantize_with_accuracy_control(
        ov_model,
        dataset,
        dataset,
        validate,
        max_drop=INT8_MAX_DROP[kind],
        subset_size=len(items),  # NNCF counts dataset items (batches here), not slices
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=INT8_MAX_REVERTS, num_ranking_workers=1
        ),
    )
    return quantized, {
        "max_drop": INT8_MAX_DROP[kind],
        "metric": "mask Dice" if kind == "segmenter" else "1 - mean |dP(tumour)|",
        "int8_quantisers": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()),
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def parity_record(kind: str, precision: str, ref: np.ndarray, out: np.ndarray) -> ParityRecord:
    """Compare an optimised model's outputs `out` with TF fp32's `ref` on the same slices.

    Args:
        kind: "classifier" (outputs `(N, 2)`: P(normal), P(tumour)) or "segmenter" (`(N, S, S, 1)`
            P(tumour) per pixel, masks at 0.5 as `pipeline.triage.postprocess` makes them).
    """
    diff = float(np.max(np.abs(out - ref))) if len(ref) else float("nan")
    if kind == "classifier":
        return ParityRecord(
            kind, precision, len(ref), float(np.max(np.abs(out[:, 1] - ref[:, 1]))),
            p_tumour_tf=tuple(float(v) for v in ref[:, 1]),
            p_tumour_ov=tuple(float(v) for v in out[:, 1]),
        )  # fmt: skip
    ma, mb = ref > 0.5, out > 0.5
    return ParityRecord(
        kind, precision, len(ref), diff, dice=_dice(ma, mb), mask_pixels_tf=int(ma.sum())
    )


def _save_ir(ov_model: Any, folder: Path) -> Path:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    return xml


def _predict_ov(xml: Path, precision: str, x: np.ndarray, batch: int) -> np.ndarray:
    from pipeline.triage.runtime import OvPredictor

    return OvPredictor(compile_ir(xml, precision, batch), batch)(x)


def export_model(
    uri: str,
    slices: SliceSets,
    precisions: tuple[str, ...] = OV_PRECISIONS,
    *,
    batch: int = TriageSettings.batch,
    threshold: float | None = None,
    root: Path | None = None,
    force: bool = False,
    converter: Converter = convert_keras,
) -> list[dict[str, Any]]:
    """Export `uri` at each precision (unless already exported) and measure parity.

    Args:
        uri: MLflow model URI or local `.keras` file.
        slices: calibration and parity inputs, preprocessed as this model expects.
        precisions: subset of `OV_PRECISIONS`; ones this CPU lacks are skipped.
        batch: the batch parity is measured at.
        threshold: operating point the classifier's gate flips are judged at (default: the
            model's logged operating point, else the triage default).
        root: export folder root (default `pipeline.triage.runtime.export_root()`).
        force: export again even when an export exists.
        converter: Keras model → `openvino.Model` (tests inject a broken one).

    Returns:
        One row per precision: `precision`, `status` ("exported", "cached", "unsupported"),
        `refused` (reason or None), `folder`, parity summary, `seconds`.
    """
    from pipeline.tracking import load_model

    version, digest = model_digest(uri)
    lm = load_model(uri)
    if threshold is None:
        threshold = resolve_threshold(None, lm.info)[0]  # as a triage run resolves it
    native = supported_precisions()
    rows: list[dict[str, Any]] = []
    todo = []
    for p in precisions:
        folder = export_dir(digest, p, root)
        record = None if force else read_export(folder)
        if record is not None and int(record.get("format", 1)) < EXPORT_FORMAT:
            record = None  # an older export recipe: made again (triage serves it until then)
        if p not in native:
            rows.append({"precision": p, "status": "unsupported", "refused": "not on this CPU"})
        elif record is not None:
            rows.append(_row(p, "cached", folder, record, threshold, 0.0))
        else:
            todo.append(p)
    if not todo:
        return _timed(rows, slices.parity, batch, force)
    ref = lm.model.predict(slices.parity, batch_size=batch, verbose=0).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        base = converter(lm.model, Path(tmp))
        for p in todo:
            start = time.perf_counter()
            control: dict[str, Any] = {}
            if p == "int8":
                cal_ref = lm.model.predict(slices.calibration, batch_size=batch, verbose=0)
                ov_model, control = _quantize(base, slices.calibration, cal_ref, lm.kind, batch)
            else:
                ov_model = base
            work = Path(tmp) / p
            xml = _save_ir(ov_model, work)
            out = _predict_ov(xml, p, slices.parity, batch)
            parity = parity_record(lm.kind, p, ref, out)
            record = {
                "kind": lm.kind,
                "preprocess": lm.preprocess.to_dict(),
                "info": json.loads(json.dumps(lm.info, default=str)),
                "version": version,
                "digest": digest,
                "precision": p,
                "format": EXPORT_FORMAT,
                "parity": parity.to_dict(),
                "export_threshold": threshold,
                "openvino": _ov_version(),
                "calibration_slices": len(slices.calibration) if p == "int8" else 0,
                "accuracy_control": control or None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            if p == "int8":  # the calibration set travels with the version (uint8 = TIF levels)
                cal = np.round(np.clip(slices.calibration, 0, 1) * 255).astype(np.uint8)
                np.savez_compressed(work / "calibration.npz", x=cal)
            (work / EXPORT_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
            folder = export_dir(digest, p, root)
            if folder.exists():
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work), str(folder))  # the record is in place only when complete
            rows.append(_row(p, "exported", folder, record, threshold, time.perf_counter() - start))
    rows = sorted(rows, key=lambda r: OV_PRECISIONS.index(r["precision"]))
    return _timed(rows, slices.parity, batch, force)


def _timed(
    rows: list[dict[str, Any]], x: np.ndarray, batch: int, force: bool
) -> list[dict[str, Any]]:
    """Add each usable export's speed on this CPU (`ms_per_slice`), measured once per CPU and
    export (again with `force` or after a new export) and kept beside it for `choose_export`."""
    for row in rows:
        if row["status"] not in ("exported", "cached"):
            continue
        folder = Path(row["folder"])
        ms = None if force or row["status"] == "exported" else read_speed(folder)
        if ms is None:
            ms = measure_speed(folder / "model.xml", row["precision"], x, batch)
            write_speed(folder, ms, batch)
        row["ms_per_slice"] = round(ms, 4)
    return rows


def _ov_version() -> str:
    import openvino as ov

    return str(ov.get_version())


def _row(
    precision: str, status: str, folder: Path, record: dict, threshold: float, seconds: float
) -> dict[str, Any]:
    parity = ParityRecord.from_dict(record["parity"])
    temp = model_temperature(record.get("info"))
    return {
        "precision": precision,
        "status": status,
        "refused": parity.refusal(threshold, ParityPolicy(), temp),
        "folder": str(folder),
        "seconds": round(seconds, 1),
        **parity.summary(threshold, temp),
    }


def sample_slices(
    archive: str, preprocess: Any, calibration: int, parity: int, seed: int = 0
) -> SliceSets:
    """Calibration slices from training patients, parity slices from held-out ones.

    Patients are split as training splits them (`pipeline.io.splits.split_patients`, same seed);
    half the parity slices are tumour slices when the archive has ground truth, so the segmenter's
    parity is measured where it matters.
    """
    from pipeline.io.index import build_index
    from pipeline.io.preprocess import patient_inputs
    from pipeline.io.slices import load_patient
    from pipeline.io.splits import split_patients

    table = build_index(archive).table
    split = split_patients(table, seed=seed)
    rng = np.random.default_rng(seed)

    def pick(patients: list[str], n: int, tumour_share: float) -> np.ndarray:
        rows = table[table["patient"].isin(patients)].reset_index(drop=True)
        tumour = np.flatnonzero(rows["tumour_pixels"].to_numpy() > 0)
        other = np.setdiff1d(np.arange(len(rows)), tumour)
        n_t = min(len(tumour), int(n * tumour_share))
        chosen = np.concatenate([
            rng.choice(tumour, n_t, replace=False),
            rng.choice(other, min(len(other), n - n_t), replace=False),
        ]).astype(int)  # fmt: skip
        picked = rows.iloc[np.sort(chosen)]
        out = []
        for patient, sub in picked.groupby("patient", sort=True):
            whole = rows[rows["patient"] == patient]
            x = patient_inputs(load_patient(whole, preprocess).images, preprocess)
            positions = np.flatnonzero(whole.index.isin(sub.index))
            out.append(x[positions])
        return np.concatenate(out).astype(np.float32)

    held_out = split["val"] + split["test"]
    return SliceSets(pick(split["train"], calibration, 0.3), pick(held_out, parity, 0.5))


def format_rows(model: str, rows: list[dict[str, Any]]) -> str:
    """Markdown table of `export_model` rows."""
    head = (
        "| model | precision | status | max abs dP | gate flips | mask Dice | parity | ms a slice |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = f"refused: {r['refused']}" if r["refused"] else "passed"
        if r["status"] == "unsupported":
            verdict = "n/a"
        lines.append(
            f"| {model} | {r['precision']} | {r['status']} | {r.get('max_abs_diff', '')} | "
            f"{r.get('gate_flips', '')} | {r.get('dice', '')} | {verdict} | "
            f"{r.get('ms_per_slice', '')} |"
        )
    return "\n".join(lines)


def cli_export(args: argparse.Namespace) -> int:
    """`mri-triage export TRAIN [--classifier URI] [--segmenter URI] [--precision P]`."""
    from pipeline.tracking import load_model
    from pipeline.triage.settings import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER

    uris = {
        "classifier": args.classifier or DEFAULT_CLASSIFIER,
        "segmenter": args.segmenter or DEFAULT_SEGMENTER,
    }
    results = {}
    for kind, uri in uris.items():
        pre = load_model(uri).preprocess
        sets = sample_slices(args.archive, pre, args.calibration_slices, args.parity_slices,
                             args.seed)  # fmt: skip
        rows = export_model(uri, sets, tuple(args.precision), batch=args.batch, force=args.force)
        results[kind] = rows
        if not args.json:
            print(format_rows(kind, rows) + "\n")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0
