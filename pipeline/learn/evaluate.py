"""Patient-level k-fold cross-validation of the whole cascade (`mri-triage evaluate`).

Each fold trains both stages on the other folds' patients (a seeded share of them for validation:
early stopping, temperature, operating point), then triages its held-out patients with those exact
models through `pipeline.triage.inference.triage_patient`, the code `mri-triage triage` runs. The
figures come from the patients' `report.json` files: classifier ROC AUC, the gate's sensitivity per
slice and per patient at the operating point, the share of segmenter calls saved, per-patient Dice
over all slices (tumour on a slice the gate dropped counts as missed) and on tumour slices only,
HD95, and the share of tumour patients whose tumour was found; each with a 95% bootstrap interval
over patients. `--no-train` scores given models on a labelled archive instead.

MLflow: one parent run in `mri-triage-evaluate`, a nested run per fold (with its two training
runs nested below it, kept out of the model registry), per-patient rows as a CSV artifact with
pseudonyms (`fold-patient number`), never patient keys; the keys stay in the local output folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.io.splits import assign_folds, fold_splits, tumour_patient_set
from pipeline.learn.datasets import split_hash
from pipeline.triage import metrics
from pipeline.triage.calibration import model_temperature

EXPERIMENT = "mri-triage-evaluate"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: which archive, folds, recipe, and where the fold models and reports go."""

    archive: str
    out: str
    folds: int = 5
    fold: int | None = None
    preset: str = "cpu"
    seed: int = 0
    backbone: str = "resnet50"
    arch: str = "resunet"
    weights: str = "auto"
    threshold: float | None = None
    train: bool = True
    classifier: str | None = None
    segmenter: str | None = None
    n_boot: int = 2000
    classifier_options: Mapping[str, Any] = field(default_factory=dict)
    segmenter_options: Mapping[str, Any] = field(default_factory=dict)
    triage_options: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False


@dataclass(frozen=True)
class PatientEval:
    """One held-out patient's figures, read back from its `report.json`.

    Attributes:
        labels: `(N,)` int, 1 = ground-truth tumour slice (labelled slices only).
        p_tumour: `(N,)` calibrated P(tumour) per slice.
        flagged: `(N,)` bool, sent to the segmenter.
        found: a predicted mask on at least one true tumour slice (None: tumour-free patient).
        recall, precision: the share of the true tumour drawn and of the drawing that is tumour,
            over all labelled slices (NaN where undefined: no true tumour / nothing drawn).
    """

    fold: int
    patient: str
    labels: np.ndarray
    p_tumour: np.ndarray
    flagged: np.ndarray
    dice_all: float
    dice_tumour: float
    hd95: float
    found: bool | None
    recall: float = float("nan")
    precision: float = float("nan")


def patient_eval(rep: Mapping[str, Any], fold: int) -> PatientEval:
    """A `PatientEval` from a triage `report.json` (slices without ground truth are left out)."""
    recs = [r for r in rep["slices"] if r.get("gt_pixels") is not None]
    labels = np.array([int(r["gt_pixels"] > 0) for r in recs], dtype=int)
    p = np.array([np.nan if r["p_tumour"] is None else r["p_tumour"] for r in recs], float)
    flagged = np.array([r["route"] == "segmented" for r in recs], dtype=bool)
    m = rep.get("metrics", {})
    hit = any(r["tumour"] and r["gt_pixels"] > 0 for r in recs)

    def num(key: str) -> float:
        return float("nan") if m.get(key) is None else float(m[key])

    return PatientEval(
        fold=fold,
        patient=str(rep["patient"]),
        labels=labels,
        p_tumour=p,
        flagged=flagged,
        dice_all=num("dice"),
        dice_tumour=num("dice_tumour_slices"),
        hd95=num("hd95"),
        found=bool(hit) if labels.any() else None,
        recall=num("recall"),
        precision=num("precision"),
    )


def _pooled(ps: Sequence[PatientEval], fn: Callable[..., float]) -> float:
    if not ps:
        return float("nan")
    return fn(
        np.concatenate([p.labels for p in ps]),
        np.concatenate([p.p_tumour for p in ps]),
        np.concatenate([p.flagged for p in ps]),
    )


def _mean(values: Sequence[float], median: bool = False) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not v.size:
        return float("nan")
    return float(np.median(v) if median else np.mean(v))


def _share(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


#: name -> statistic of a list of patients (each resampled by the bootstrap).
STATISTICS: dict[str, Callable[[Sequence[PatientEval]], float]] = {
    "classifier_roc_auc": lambda ps: _pooled(ps, lambda y, p, f: metrics.roc_auc(y, p)),
    "gate_sensitivity_slice": lambda ps: _pooled(
        ps, lambda y, p, f: _share(float((f & (y == 1)).sum()), float((y == 1).sum()))
    ),
    "gate_sensitivity_patient": lambda ps: _mean(
        [float((p.flagged & (p.labels == 1)).any()) for p in ps if p.labels.any()]
    ),
    "segmenter_calls_saved": lambda ps: _pooled(
        ps, lambda y, p, f: _share(float((~f).sum()), float(f.size))
    ),
    "tumour_patients_found": lambda ps: _mean([float(p.found) for p in ps if p.found is not None]),
    "dice_all_mean": lambda ps: _mean([p.dice_all for p in ps]),
    "dice_all_median": lambda ps: _mean([p.dice_all for p in ps], median=True),
    "dice_tumour_mean": lambda ps: _mean([p.dice_tumour for p in ps]),
    "dice_tumour_median": lambda ps: _mean([p.dice_tumour for p in ps], median=True),
    "hd95_mean": lambda ps: _mean([p.hd95 for p in ps]),
    "hd95_median": lambda ps: _mean([p.hd95 for p in ps], median=True),
    # Where Dice goes: under-drawing (recall) or false masks (precision), patient means.
    "recall_mean": lambda ps: _mean([p.recall for p in ps]),
    "precision_mean": lambda ps: _mean([p.precision for p in ps]),
}


def cascade_metrics(
    patients: Sequence[PatientEval], n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Every statistic with its 95% bootstrap interval over patients.

    Returns:
        `{name: value, name_low: ..., name_high: ..., "patients": n, "slices": n}`.
    """
    out: dict[str, float] = {"patients": float(len(patients))}
    out["slices"] = float(sum(len(p.labels) for p in patients))
    for name, stat in STATISTICS.items():
        out[name] = float(stat(patients))
        lo, hi = metrics.bootstrap_ci(list(patients), stat, n_boot=n_boot, seed=seed)
        out[f"{name}_low"], out[f"{name}_high"] = lo, hi
    return out


def triage_held_out(
    table: pd.DataFrame,
    patients: Sequence[str],
    classifier: str,
    segmenter: str,
    out_dir: Path,
    threshold: float | None,
    fold: int,
    options: Mapping[str, Any] | None = None,
) -> tuple[list[PatientEval], dict[str, Any]]:
    """Triage `patients` with the given models as `mri-triage triage` does; read back the figures.

    A patient whose triage fails counts with Dice 0 and its tumour not found (never dropped).
    """
    from pipeline.triage.inference import TriageSettings, triage_patient
    from pipeline.triage.rule import resolve_gate_context, resolve_threshold
    from pipeline.triage.runtime import load_triage_runtime

    opts = dict(options or {})
    runtime = opts.get("runtime", TriageSettings.runtime)
    ov_precision = opts.get("ov_precision", TriageSettings.ov_precision)
    # The runtime `triage` would use: OpenVINO only for a model with a verified export (parity
    # judged at this run's threshold), TensorFlow for the rest, each model's choice recorded.
    models = load_triage_runtime(
        classifier, segmenter, 16, "float32", runtime, ov_precision, threshold
    )
    thr, source = resolve_threshold(threshold, models.classifier.info)
    settings = TriageSettings(threshold=thr, **opts)
    reach = resolve_gate_context(settings.gate_context, models.classifier.info)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    evals, failed, started = [], 0, time.perf_counter()
    for patient in patients:
        rows = table[table["patient"] == patient]
        try:
            rep = triage_patient(rows, out_dir, models, settings)
        except Exception:  # counted as a miss below; the rest of the fold goes on
            failed += 1
            labels = (rows["tumour_pixels"].to_numpy() > 0).astype(int)
            nan = np.full(len(rows), np.nan)
            found = False if labels.any() else None
            zero = 0.0 if labels.any() else float("nan")
            evals.append(
                PatientEval(
                    fold,
                    str(patient),
                    labels,
                    nan,
                    np.ones(len(rows), bool),
                    zero,
                    zero,
                    float("nan"),
                    found,
                    recall=zero,
                )
            )
            continue
        evals.append(patient_eval(rep, fold))
    info = {
        "threshold": thr,
        "threshold_source": source,
        "gate_context": reach,
        "failed_patients": failed,
        "triage_seconds": time.perf_counter() - started,
        "temperature": model_temperature(models.classifier.info),
        "runtimes": dict(models.runtimes),
    }
    return evals, info


#: P(normal) thresholds of the held-out gate curve (`gate_curve`).
CURVE_THRESHOLDS: tuple[float, ...] = (
    *(round(0.05 * k, 2) for k in range(1, 20)),
    0.99,
    0.995,
    0.999,
)


def gate_curve(
    evals: Sequence[PatientEval], reach: int, thresholds: Sequence[float] = CURVE_THRESHOLDS
) -> pd.DataFrame:
    """The gate's trade-off on held-out patients: what each P(normal) threshold would have done.

    From the calibrated P(tumour) each slice was routed with (its `report.json`) and the run's z
    context: slice and patient sensitivity, the share of segmenter calls saved, and the tumour
    patients whose every tumour slice the gate would have dropped. A reading aid for choosing a
    threshold for one's own data (`triage --threshold`); the run's own operating point was chosen
    on validation patients, and picking it off this table would be choosing it on the test
    patients, so this table is logged beside the results, never used by them.

    Args:
        evals: held-out patients (`PatientEval`); slices whose prediction failed (NaN) are
            always segmented, as in triage.
        reach: the gate's z context (`pipeline.triage.rule.context_p_normal`).
        thresholds: P(normal) thresholds, one row each.

    Returns:
        One row per threshold: `threshold`, `gate_sensitivity_slice`, `gate_sensitivity_patient`
        (mean over tumour patients of "any tumour slice segmented"), `segmenter_calls_saved`,
        `tumour_patients_lost` (count).
    """
    from pipeline.triage.rule import context_p_normal, route_slices

    gate = [context_p_normal(1.0 - p.p_tumour, reach) for p in evals]
    labels = [p.labels == 1 for p in evals]
    slices = sum(len(g) for g in gate)
    tumour = sum(int(y.sum()) for y in labels)
    rows = []
    for thr in thresholds:
        flagged = [route_slices(g, thr) for g in gate]  # triage's own rule (NaN: segmented)
        caught = sum(int((f & y).sum()) for f, y in zip(flagged, labels, strict=True))
        hit = [bool((f & y).any()) for f, y in zip(flagged, labels, strict=True) if y.any()]
        rows.append(
            {
                "threshold": float(thr),
                "gate_sensitivity_slice": _share(caught, tumour),
                "gate_sensitivity_patient": _mean([float(h) for h in hit]),
                "segmenter_calls_saved": _share(
                    slices - sum(int(f.sum()) for f in flagged), slices
                ),
                "tumour_patients_lost": int(len(hit) - sum(hit)),
            }
        )
    return pd.DataFrame(rows)


#: `TrainConfig` fields that do not change what a fold model learns (where it is saved, logged).
_NOT_RECIPE = ("archive", "save", "promote", "register", "experiment", "parent_run_id")


def stage_recipe(
    config: EvalConfig,
    plan: Any,
    stage: str,
    model: str,
    options: Mapping[str, Any],
    data: str,
    resolved: Any,
) -> dict[str, Any]:
    """What decides a fold model: the data and its split, the stage's model, preset and options,
    and (`resolved`, the stage's `TrainConfig`) every value training resolved from them.

    Two runs whose recipes are equal train the same model (up to run-to-run noise), so
    `--resume` may reuse the first one's; anything else (a new split, archive, option, or a
    preset whose values changed since) retrains. `options` (what was given explicitly) is
    recorded but not compared: an option given with the value a preset now holds trains the same
    model as the preset alone (`_reusable`).
    """
    values = dataclasses.asdict(resolved)
    return {
        "stage": stage,
        "model": model,
        "preset": config.preset,
        "seed": config.seed,
        "folds": config.folds,
        "weights": config.weights if stage == "classifier" else None,
        "options": {k: options[k] for k in sorted(options)},
        "dataset_fingerprint": data,
        "split_hash": split_hash(plan.splits),
        "resolved": {k: values[k] for k in sorted(values) if k not in _NOT_RECIPE},
    }


def _reusable(fold_dir: Path, stage: str, recipe: Mapping[str, Any]) -> float | None:
    """The training seconds of a fold model in `fold_dir` trained with `recipe`, or None."""
    record = fold_dir / f"{stage}.recipe.json"
    model = fold_dir / f"{stage}.keras"
    if not (record.is_file() and model.is_file() and model.with_suffix(".json").is_file()):
        return None
    try:
        saved = json.loads(record.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    written = json.loads(json.dumps(recipe, default=str))  # as the record holds it
    if not isinstance(saved, dict) or not isinstance(saved.get("recipe"), dict):
        return None
    _drop_new_defaults(written, saved["recipe"])
    # The values training resolved decide the model, not which of them were given explicitly.
    if {k: v for k, v in saved["recipe"].items() if k != "options"} != {
        k: v for k, v in written.items() if k != "options"
    }:
        return None
    return float(saved.get("seconds", 0.0))


def _drop_new_defaults(written: dict[str, Any], saved: Mapping[str, Any]) -> None:
    """Forget `TrainConfig` fields added since `saved` was recorded that still hold their built-in
    default: a new option defaults to the old behaviour, so it alone retrains nothing."""
    from pipeline.learn.training import TrainConfig

    old, new = saved.get("resolved"), written.get("resolved")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
    for key in [k for k in new if k not in old]:
        if key in defaults and new[key] == json.loads(json.dumps(defaults[key], default=str)):
            del new[key]


def train_fold(
    config: EvalConfig, plan: Any, fold_dir: Path, parent_run_id: str, data: str = ""
) -> tuple[str, str, dict[str, float]]:
    """Train the classifier and the segmenter of one fold (runs nested under the fold's run).

    Each trained model's recipe (`stage_recipe`) is written beside it; with `config.resume`, a
    stage whose model is already in `fold_dir` with the same recipe is reused, not retrained (an
    interrupted evaluation goes on where it stopped; a changed segmenter option keeps the
    classifier). `data` is the archive's fingerprint.

    Returns:
        `(classifier_path, segmenter_path, {"classifier_s", "segmenter_s", ...})` (local `.keras`
        files with their sidecars; nothing is registered). A reused stage reports the seconds
        its model took to train and `{stage}_reused = 1`.
    """
    from pipeline.io.manifest import atomic_write_text
    from pipeline.learn.training import TrainConfig, train_and_log

    paths, seconds = {}, {}
    for stage, model, options in (
        ("classifier", config.backbone, config.classifier_options),
        ("segmenter", config.arch, config.segmenter_options),
    ):
        extra = {"weights": config.weights} if stage == "classifier" else {}
        train_config = TrainConfig.create(
            stage,
            config.archive,
            model,
            preset=config.preset,
            register=False,
            experiment=EXPERIMENT,
            parent_run_id=parent_run_id,
            save=str(fold_dir / stage),
            # The folds' split is fixed by `config.seed`; a stage's own `seed` option (weights,
            # shuffling, augmentation) trains the same recipe again for its run-to-run spread.
            **{"seed": config.seed, **extra, **dict(options)},
        )
        recipe = stage_recipe(config, plan, stage, model, options, data, train_config)
        reused = _reusable(fold_dir, stage, recipe) if config.resume else None
        if reused is not None:
            log.info("evaluate: reusing the %s in %s (same split and recipe)", stage, fold_dir)
            paths[stage] = str(fold_dir / f"{stage}.keras")
            seconds[f"{stage}_s"], seconds[f"{stage}_reused"] = reused, 1.0
            continue
        started = time.perf_counter()
        result = train_and_log(train_config, plan)
        seconds[f"{stage}_s"] = time.perf_counter() - started
        paths[stage] = str(result.saved)
        record = {"recipe": recipe, "seconds": seconds[f"{stage}_s"]}
        atomic_write_text(
            fold_dir / f"{stage}.recipe.json", json.dumps(record, indent=1, default=str)
        )
    return paths["classifier"], paths["segmenter"], seconds


def _fold_row(fold: int | str, m: Mapping[str, float], extra: Mapping[str, Any]) -> dict:
    return {"fold": fold, **{k: m[k] for k in m}, **extra}


def _patient_rows(evals: Sequence[PatientEval], keys: bool) -> pd.DataFrame:
    rows = []
    for i, p in enumerate(evals):
        rows.append(
            {
                "fold": p.fold,
                "patient": p.patient if keys else f"{p.fold}-{i + 1:03d}",
                "slices": len(p.labels),
                "tumour_slices": int(p.labels.sum()),
                "segmented": int(p.flagged.sum()),
                "gate_missed": int(((p.labels == 1) & ~p.flagged).sum()),
                "found": p.found,
                "dice_all": p.dice_all,
                "dice_tumour": p.dice_tumour,
                "hd95": p.hd95,
                "recall": p.recall,
                "precision": p.precision,
            }
        )
    return pd.DataFrame(rows)


#: The fold number of `--no-train`'s one "fold": the given models on every patient.
GIVEN_MODELS_FOLD = -1


def _fold_label(fold: int | str, prefix: str = "") -> str:
    """How a fold is named: "given models" for `--no-train`'s, else `prefix` and its number."""
    return "given models" if fold == GIVEN_MODELS_FOLD else f"{prefix}{fold}"


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Cross-validate (or, without training, score given models) and log to MLflow.

    Returns:
        `{"folds": [row per fold], "overall": metrics, "run_id", "out", "patients_csv"}`.
    """
    from pipeline.io.index import fingerprint
    from pipeline.learn.training import labelled_table, plan_from_splits

    table, skipped = labelled_table(config.archive)
    out = Path(config.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if config.train:
        assignment = assign_folds(table, config.folds, config.seed)
        todo = list(range(config.folds)) if config.fold is None else [config.fold]
    else:
        if not (config.classifier and config.segmenter):
            raise ValueError("--no-train needs --classifier and --segmenter model URIs")
        assignment = {str(p): GIVEN_MODELS_FOLD for p in table["patient"].unique()}
        todo = [GIVEN_MODELS_FOLD]
    params = {
        "mode": "cross-validation" if config.train else "score-models",
        "folds": config.folds if config.train else 0,
        "folds_run": ",".join(map(str, todo)),
        "preset": config.preset if config.train else "none",
        "seed": config.seed,
        "backbone": config.backbone,
        "arch": config.arch,
        "patients": len(assignment),
        "slices": len(table),
        "skipped_files": skipped,
        "n_boot": config.n_boot,
        **{f"triage_{k}": v for k, v in config.triage_options.items()},
        "dataset_fingerprint": fingerprint(table),
    }
    every: list[PatientEval] = []
    rows = []
    name = tracking.run_name("evaluate")
    with tracking.start_run(EXPERIMENT, name, params, {"stage": "evaluate"}) as parent:
        for fold in todo:
            label = f"fold-{fold}" if fold >= 0 else "given-models"
            with tracking.start_run(
                EXPERIMENT, f"{name}-{label}", {"fold": fold}, parent_run_id=parent
            ) as fold_run:
                fold_dir = out / label
                extra: dict[str, Any] = {}
                if config.train:
                    splits = fold_splits(
                        assignment,
                        fold,
                        seed=config.seed,
                        tumour_patients=tumour_patient_set(table),
                    )
                    plan = plan_from_splits(config.archive, table, splits, skipped)
                    clf, seg, seconds = train_fold(
                        config, plan, fold_dir, fold_run, params["dataset_fingerprint"]
                    )
                    extra.update(seconds)
                    test = splits["test"]
                else:
                    clf, seg = str(config.classifier), str(config.segmenter)
                    test = sorted(assignment)
                evals, info = triage_held_out(
                    table,
                    test,
                    str(clf),
                    str(seg),
                    fold_dir / "triage",
                    config.threshold,
                    fold,
                    config.triage_options,
                )
                runtimes = info.pop("runtimes")
                extra.update({k: v for k, v in info.items() if k != "threshold_source"})
                m = cascade_metrics(evals, config.n_boot, config.seed)
                tracking.log_metrics(fold_run, {**m, **extra})
                curve = gate_curve(evals, int(info["gate_context"]))
                curve.to_csv(fold_dir / "gate_curve.csv", index=False)
                tracking.log_table(fold_run, curve, "gate_curve")
                tracking.set_tags(fold_run, {"threshold_source": info["threshold_source"]})
                named = {f"runtime_{k}": v for k, v in runtimes.items()}
                tracking.set_tags(fold_run, named)
                rows.append({**_fold_row(fold, m, extra), **named})
                every.extend(evals)
        overall = cascade_metrics(every, config.n_boot, config.seed)
        tracking.log_metrics(parent, overall)
        tracking.log_table(parent, _patient_rows(every, keys=False), "patients")
        tracking.log_table(parent, pd.DataFrame(rows), "folds")
    # The user's own copy, with patient keys, stays in the output folder only.
    patients_csv = out / "patients.csv"
    _patient_rows(every, keys=True).to_csv(patients_csv, index=False)
    result = {
        "folds": rows,
        "overall": overall,
        "run_id": parent,
        "out": str(out),
        "patients_csv": str(patients_csv),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=1, default=str), "utf-8")
    return result


TABLE_COLUMNS = (
    ("classifier_roc_auc", "AUC"),
    ("gate_sensitivity_slice", "gate sens (slice)"),
    ("gate_sensitivity_patient", "gate sens (patient)"),
    ("segmenter_calls_saved", "calls saved"),
    ("tumour_patients_found", "tumours found"),
    ("dice_all_mean", "Dice all (mean)"),
    ("dice_all_median", "Dice all (median)"),
    ("dice_tumour_mean", "Dice tumour sl."),
    ("hd95_median", "HD95 median"),
    ("recall_mean", "recall"),
    ("precision_mean", "precision"),
)


def format_table(result: Mapping[str, Any]) -> str:
    """Markdown table: one row per fold, then the overall row with 95% intervals."""
    head = ["fold", "patients", *[label for _, label in TABLE_COLUMNS], "train s"]
    head.append("threshold (± z context)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["folds"]:
        cells = [_fold_label(row["fold"]), str(int(row["patients"]))]
        cells += [f"{row[k]:.3f}" for k, _ in TABLE_COLUMNS]
        train_s = row.get("classifier_s", 0.0) + row.get("segmenter_s", 0.0)
        reach = int(row.get("gate_context", 0) or 0)
        gate = f"{row['threshold']:.4g}" + (f" ±{reach}" if reach else "")
        reused = any(row.get(f"{stage}_reused") for stage in ("classifier", "segmenter"))
        spent = (f"{train_s:.0f}" + (" (reused)" if reused else "")) if train_s else "-"
        cells += [spent, gate]
        lines.append("| " + " | ".join(cells) + " |")
    o = result["overall"]
    cells = ["all", str(int(o["patients"]))]
    cells += [f"{o[k]:.3f} [{o[k + '_low']:.3f}, {o[k + '_high']:.3f}]" for k, _ in TABLE_COLUMNS]
    lines.append("| " + " | ".join([*cells, "", ""]) + " |")
    return "\n".join(lines)


def cli_evaluate(args: Any) -> int:
    """`mri-triage evaluate ARCHIVE ...`: 0 done, 2 unusable input or options."""
    import sys

    from pipeline.learn.training import TrainingDataError

    def stage_options(size: int | None, epochs: int | None, **more: Any) -> dict[str, Any]:
        given = {"image_size": size, "epochs": epochs, **more}
        return {k: v for k, v in given.items() if v is not None}

    context = getattr(args, "gate_context", None)

    config = EvalConfig(
        archive=str(Path(args.archive).absolute()),
        out=args.out,
        folds=args.folds,
        fold=args.fold,
        preset=args.preset,
        seed=args.seed,
        backbone=args.backbone,
        arch=args.arch,
        weights=args.weights,
        threshold=args.threshold,
        train=not args.no_train,
        classifier=args.classifier,
        segmenter=args.segmenter,
        n_boot=args.n_boot,
        classifier_options=stage_options(
            args.classifier_size,
            args.classifier_epochs,
            gate_context=context,
            min_saved=getattr(args, "min_saved", None),
            pretrain_epochs=getattr(args, "classifier_pretrain_epochs", None),
        ),
        segmenter_options=stage_options(
            args.segmenter_size,
            args.segmenter_epochs,
            ema=getattr(args, "segmenter_ema", None),
            augment=getattr(args, "segmenter_augment", None),
            input_mode=getattr(args, "segmenter_input_mode", None),
            modality_dropout=getattr(args, "segmenter_modality_dropout", None),
            seed=getattr(args, "segmenter_seed", None),
            loss=getattr(args, "segmenter_loss", None),
            batch=getattr(args, "segmenter_batch", None),
            train_on_val=getattr(args, "segmenter_train_on_val", None),
            empty_fraction=getattr(args, "segmenter_empty_fraction", None),
        ),
        triage_options={
            k: v
            for k, v in (
                ("lone_slice_area", args.lone_slice_area),
                ("min_volume", args.min_volume),
                ("fill_holes", getattr(args, "fill_holes", None)),
                ("tta", False if args.no_tta else None),
                ("gate_context", context),
                ("runtime", getattr(args, "runtime", None)),
                ("ov_precision", getattr(args, "ov_precision", None)),
            )
            if v is not None
        },
        resume=bool(getattr(args, "resume", False)),
    )
    if config.fold is not None and not 0 <= config.fold < config.folds:
        print(f"mri-triage evaluate: --fold must be in 0..{config.folds - 1}", file=sys.stderr)
        return 2
    try:
        result = run_evaluation(config)
    except (TrainingDataError, ValueError, FileNotFoundError) as err:
        print(f"mri-triage evaluate: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    for row in result["folds"]:  # what each fold's models ran on (`--runtime`)
        on = ", ".join(f"{k[8:]} on {v}" for k, v in row.items() if k.startswith("runtime_"))
        print(f"{_fold_label(row['fold'], 'fold ')}: {on}")
    print(f"per-patient rows: {result['patients_csv']}\nMLflow run: {result['run_id']}")
    print(
        "held-out gate trade-off per threshold (reading only: the run's threshold was chosen on "
        f"validation patients): {Path(result['out']) / '<fold>' / 'gate_curve.csv'}"
    )
    return 0
