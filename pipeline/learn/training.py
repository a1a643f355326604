"""Train and evaluate one classifier or segmenter, recorded through `pipeline.tracking`.

`plan_data` indexes the archive and splits it by patient; `train_and_log` loads the slices, fits
with early stopping (best weights restored), LR reduction on plateau and a best checkpoint,
evaluates on the held-out test patients, logs params, per-epoch metrics, the paper's Tables 2-4,
plots and the model, registers it and moves the `champion` alias when it beats the current one on
validation.

Defaults (paper-like, see `TrainConfig.create`): classifier 15 epochs at lr 1e-4; ResUNet 30 epochs
at lr 1e-5 with BCE+Dice; ResUNet++ 30 epochs at 1e-4 with Dice; 256x256; early-stopping patience 5.
A named preset (`pipeline.learn.recipes`) fills what the caller leaves out. The optimiser, schedule
and checkpoint selection live in `pipeline.learn.recipe_fit`; the classifier's temperature and
operating point in `pipeline.triage.calibration` / `pipeline.triage.metrics`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.precision import key_flags, onednn_setting
from pipeline import tracking, tracking_meta
from pipeline.io.index import build_index, check_no_leakage, fingerprint, split_patients
from pipeline.io.preprocess import PreprocessConfig
from pipeline.learn import plots, pretrain, recipe_fit
from pipeline.learn.datasets import (
    SliceArrays,
    class_weights,
    load_slices,
    make_dataset,
    split_hash,
)
from pipeline.learn.recipes import preset_values
from pipeline.triage import calibration, metrics, rule

MODELS = {"classifier": ("resnet50", "vgg16"), "segmenter": ("resunet", "resunet_pp")}
DEFAULT_EPOCHS = {"classifier": 15, "segmenter": 30}
DEFAULT_LR = {"resnet50": 1e-4, "vgg16": 1e-4, "resunet": 1e-5, "resunet_pp": 1e-4}
DEFAULT_LOSS = {
    "resnet50": "sparse_categorical_crossentropy",
    "vgg16": "sparse_categorical_crossentropy",
    "resunet": "bce_dice",
    "resunet_pp": "dice",
}


class TrainingDataError(ValueError):
    """The archive cannot train this stage (no tumour slices, too few patients, ...)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (logged as MLflow params)."""

    stage: str
    archive: str
    model: str
    epochs: int
    lr: float
    batch: int = 16
    image_size: int = 256
    seed: int = 0
    loss: str = "sparse_categorical_crossentropy"
    weights: str | None = None
    trainable: str = "all"
    include_empty: bool = False
    promote: bool = False
    patience: int = 5
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    triage_threshold: float = metrics.TRIAGE_THRESHOLD
    min_sensitivity: float = metrics.MIN_SENSITIVITY
    min_saved: float | None = None
    gate_context: int = 0
    save: str | None = None
    preset: str = "none"
    optimizer: str = "adam"
    schedule: str = "plateau"
    warmup: float = 0.0
    weight_decay: float = 1e-4
    ema: float = 0.0
    augment: str = "standard"
    modality_dropout: float = 0.0
    input_mode: str = "rgb"
    normalize: str = "none"
    empty_fraction: float = 0.0
    select: str = "val_loss"
    train_on_val: bool = False
    calibrate: bool = True
    precision: str = "float32"
    pretrain_epochs: int = 0
    pretrain_lr: float = 1e-3
    register: bool = True
    experiment: str | None = None
    parent_run_id: str | None = None

    @classmethod
    def create(
        cls, stage: str, archive: str, model: str, preset: str | None = None, **kw: Any
    ) -> TrainConfig:
        """Resolve options: explicit `kw` (None = not given) > `preset` > the model's defaults.

        `weights="auto"` (classifier) means ImageNet when Keras' cache holds the file, else none.
        """
        if stage not in MODELS:
            raise ValueError(f"stage must be one of {sorted(MODELS)}, got {stage!r}")
        if model not in MODELS[stage]:
            raise ValueError(f"{stage} model must be one of {MODELS[stage]}, got {model!r}")
        kw = {k: v for k, v in kw.items() if v is not None}
        weights = kw.pop("weights", None)
        if stage == "classifier" and str(weights).lower() == "auto":
            from models.classifier import imagenet_weights_cached

            weights = "imagenet" if imagenet_weights_cached(model) else None
        if stage == "classifier" and str(weights).lower() not in ("none", ""):
            kw["weights"] = str(weights)
        pretrained = "weights" in kw
        explicit = set(kw)
        for key, value in preset_values(preset, stage, pretrained).items():
            kw.setdefault(key, value)
        if kw.get("train_on_val") and "select" not in explicit:
            kw["select"] = "last"  # nothing held out is left to choose a checkpoint on
        kw.setdefault("epochs", DEFAULT_EPOCHS[stage])
        kw.setdefault("lr", DEFAULT_LR[model])
        kw.setdefault("loss", DEFAULT_LOSS[model])
        if stage == "classifier":
            kw["loss"] = DEFAULT_LOSS[model]
        config = cls(
            stage=stage, archive=str(archive), model=model, preset=str(preset or "none"), **kw
        )
        config.check()
        return config

    def check(self) -> None:
        """Raise `ValueError` naming the allowed values for anything out of range."""
        if self.epochs < 1 or self.batch < 1 or self.lr <= 0 or self.image_size < 32:
            raise ValueError("need epochs >= 1, batch >= 1, lr > 0 and image_size >= 32")
        recipe_fit.check_recipe(self)
        self.preprocess  # noqa: B018 - validates input_mode and normalize
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.modality_dropout and self.input_mode not in ("rgb", "adaptive"):
            raise ValueError(
                "modality_dropout replaces the pre- or post-contrast channel by FLAIR: it needs "
                f"input_mode 'rgb' or 'adaptive' (the three sequences), got {self.input_mode!r}"
            )
        if self.train_on_val and (self.stage != "segmenter" or self.select != "last"):
            raise ValueError(
                "train_on_val trains on the validation patients too, so nothing is left to "
                "choose a checkpoint (select must be 'last') or, for a classifier, to calibrate "
                f"it and fix its operating point on; got stage={self.stage!r}, "
                f"select={self.select!r} (--no-train-on-val keeps those patients held out)"
            )
        rule.check_gate_context(self.gate_context)
        if self.gate_context and self.stage != "classifier":
            raise ValueError("gate_context is the classifier's (its operating point's z context)")
        if self.pretrain_epochs < 0 or self.pretrain_lr <= 0:
            raise ValueError(
                f"need pretrain_epochs >= 0 and pretrain_lr > 0, got {self.pretrain_epochs}, "
                f"{self.pretrain_lr}"
            )
        if self.pretrain_epochs and (self.stage != "classifier" or self.weights):
            raise ValueError(
                "pretrain_epochs (encoder pre-training on the masks) is for a classifier that "
                f"starts without weights; got stage={self.stage!r}, weights={self.weights!r}"
            )

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(
            image_size=self.image_size, input_mode=self.input_mode, normalize=self.normalize
        )


@dataclass
class DataPlan:
    """An indexed archive split by patient (small: the table holds paths and counts only)."""

    table: pd.DataFrame
    splits: dict[str, list[str]]
    fingerprint: str
    skipped_files: int
    counts: dict[str, int] = field(default_factory=dict)


def labelled_table(archive: str) -> tuple[pd.DataFrame, int]:
    """The index rows with ground truth and the number of skipped files.

    Raises:
        TrainingDataError: nothing labelled, or no tumour slice.
    """
    index = build_index(archive)
    table = index.table[index.table["has_mask"].astype(bool)].reset_index(drop=True)
    if table.empty:
        raise TrainingDataError(f"{archive}: no slices with ground-truth masks to train on")
    if not (table["tumour_pixels"] > 0).any():
        raise TrainingDataError(f"{archive}: no tumour slices (every mask is empty); cannot train")
    return table, len(index.errors)


def plan_from_splits(
    archive: str, table: pd.DataFrame, splits: dict[str, list[str]], skipped: int = 0
) -> DataPlan:
    """A `DataPlan` for given patient splits (leak-checked; train and val need tumour slices)."""
    check_no_leakage(splits)
    counts: dict[str, int] = {}
    for name, members in splits.items():
        rows = table[table["patient"].isin(members)]
        counts[f"{name}_patients"] = len(members)
        counts[f"{name}_slices"] = len(rows)
        counts[f"{name}_tumour_slices"] = int((rows["tumour_pixels"] > 0).sum())
    for name in ("train", "val"):
        if counts[f"{name}_tumour_slices"] == 0:
            raise TrainingDataError(f"{archive}: the {name} patients have no tumour slice")
    return DataPlan(table, splits, fingerprint(table), skipped, counts)


def plan_data(archive: str, seed: int = 0, val: float = 0.15, test: float = 0.15) -> DataPlan:
    """Index `archive` and split its labelled slices by patient (seeded, stratified, leak-checked).

    Raises:
        TrainingDataError: nothing labelled, no tumour slice, or too few patients to split.
    """
    table, skipped = labelled_table(archive)
    try:
        splits = split_patients(table, val=val, test=test, seed=seed)
    except ValueError as err:
        raise TrainingDataError(f"{archive}: cannot split patients: {err}") from err
    return plan_from_splits(archive, table, splits, skipped)


def build_model(config: TrainConfig, steps_per_epoch: int = 1) -> Any:
    """Build and compile the network named by `config.model` (input `(S, S, 3)` in [0, 1]) with
    the recipe's optimiser and schedule (`steps_per_epoch` sizes a cosine schedule)."""
    import keras

    from models import build_classifier, build_resunet, build_resunet_pp, get_loss
    from models.losses import dice_coef, iou_coef

    shape = (config.image_size, config.image_size, 3)
    optimizer = recipe_fit.make_optimizer(config, steps_per_epoch)
    if config.stage == "classifier":
        model = build_classifier(config.model, shape, config.weights, config.trainable)
        model.compile(
            optimizer=optimizer,
            loss=config.loss,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        return model
    model = (build_resunet if config.model == "resunet" else build_resunet_pp)(shape)
    model.compile(
        optimizer=optimizer,
        loss=get_loss(config.loss),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), dice_coef, iou_coef],
    )
    return model


def paper_tables(
    config: TrainConfig, fitted: dict, params: dict[str, int], training_images: int
) -> dict[str, pd.DataFrame]:
    """The run's rows of the paper's Table 2 (best epoch), Table 3 and Table 4."""
    h, e = fitted["history"], fitted["best_epoch"] - 1
    return {
        "table_2": pd.DataFrame(
            [
                {
                    "model": config.model,
                    "epoch": e + 1,
                    "train_accuracy": h["accuracy"][e],
                    "train_loss": h["loss"][e],
                    "val_accuracy": h["val_accuracy"][e],
                    "val_loss": h["val_loss"][e],
                }
            ]
        ),
        "table_3": pd.DataFrame(
            [
                {
                    "model": config.model,
                    "total_params": params["total"],
                    "trainable_params": params["trainable"],
                    "non_trainable_params": params["non_trainable"],
                }
            ]
        ),
        "table_4": pd.DataFrame(
            [
                {
                    "model": config.model,
                    "training_images": training_images,
                    "image_size": f"{config.image_size}x{config.image_size}",
                    "epochs": len(h["loss"]),
                    "learning_rate": config.lr,
                    "parameters": params["total"],
                    "training_time_s": round(fitted["seconds"], 1),
                }
            ]
        ),
    }


def _predict(model: Any, arrays: SliceArrays, config: TrainConfig) -> np.ndarray:
    ds = make_dataset(arrays, config.stage, config.batch, training=False)
    return np.asarray(model.predict(ds, verbose=0))


def evaluate_classifier(
    model: Any, val: SliceArrays, test: SliceArrays, config: TrainConfig, out: Path
) -> tuple[dict[str, float], dict[str, float], list[Path]]:
    """Validation (operating point, selection) and test metrics of a classifier, with plots.

    With `config.calibrate`, a temperature is fitted on the validation slices first and every
    probability below (operating point, test metrics, ECE) is the calibrated one.

    Returns:
        `(val_metrics, test_metrics, plot_paths)`; `val_metrics` holds `operating_point` and its
        sensitivity/specificity on the validation slices, `temperature` and `ece_uncalibrated`.
    """
    raw_val = _predict(model, val, config)[:, 1]
    temperature = calibration.fit_temperature(val.labels, raw_val) if config.calibrate else 1.0
    p_val = calibration.apply_temperature(raw_val, temperature)
    # The gate's own input: each slice's least P(normal) within its z context (same patient).
    gate_val = rule.context_p_normal(1.0 - p_val, config.gate_context, val.patients)
    op = metrics.operating_point(val.labels, gate_val, config.min_sensitivity, config.min_saved)
    val_m = metrics.classification_metrics(
        val.labels, p_val, triage_threshold=config.triage_threshold
    )
    val_m.update({f"operating_point_{k}": v for k, v in op.items() if k != "threshold"})
    val_m["operating_point"] = op["threshold"]
    val_m["temperature"] = temperature
    val_m["ece_uncalibrated"] = metrics.expected_calibration_error(val.labels, raw_val)
    p_test = calibration.apply_temperature(_predict(model, test, config)[:, 1], temperature)
    test_m = metrics.classification_metrics(
        test.labels, p_test, triage_threshold=config.triage_threshold
    )
    gate_test = rule.context_p_normal(1.0 - p_test, config.gate_context, test.patients)
    test_m["sensitivity_at_operating_point"] = metrics.triage_sensitivity(
        test.labels, gate_test, op["threshold"]
    )
    test_m["normal_fraction_at_operating_point"] = (
        float(np.mean(gate_test >= op["threshold"])) if gate_test.size else float("nan")
    )
    fpr, tpr, _ = metrics.roc_curve(test.labels, p_test)
    rel = metrics.reliability(test.labels, p_test)
    paths = [plots.confusion_matrix(test_m, out / "confusion_matrix.png")]
    if fpr.size:
        paths.append(plots.roc(fpr, tpr, test_m["roc_auc"], out / "roc.png"))
    paths.append(plots.reliability(rel, test_m["ece"], out / "reliability.png"))
    return val_m, test_m, paths


def evaluate_segmenter(
    model: Any, val: SliceArrays, test: SliceArrays, config: TrainConfig, out: Path
) -> tuple[dict[str, float], dict[str, float], list[Path]]:
    """Dice/IoU on validation and test slices (per slice and per patient), with a mask grid.

    `test` holds every labelled slice of the test patients: `test_*` metrics cover the slices the
    model trains on (tumour slices unless `include_empty`), `test_all_*` every slice.
    """

    def masks(arrays: SliceArrays) -> np.ndarray:
        return _predict(model, arrays, config)[..., 0] > 0.5

    val_pred = masks(val)
    val_m = metrics.segmentation_metrics(val.masks, val_pred, val.patients)
    pred = masks(test)
    test_m = {
        f"all_{k}": v
        for k, v in metrics.segmentation_metrics(test.masks, pred, test.patients).items()
    }
    focus = np.ones(len(test), bool) if config.include_empty else test.labels.astype(bool)
    sel = test.select(focus)
    test_m.update(metrics.segmentation_metrics(sel.masks, pred[focus], sel.patients))
    show = np.flatnonzero(test.labels)[:8]
    grid = plots.mask_grid(
        test.float_images()[show], test.masks[show], pred[show], out / "test_masks.png"
    )
    return val_m, test_m, [grid]


def _params(config: TrainConfig, plan: DataPlan, train: SliceArrays) -> dict[str, Any]:
    skip = ("archive", "save", "promote", "experiment", "parent_run_id")
    p = {k: v for k, v in asdict(config).items() if k not in skip}
    p["weights"] = config.weights or "none"
    p["architecture"] = config.model
    p["backbone"] = config.model if config.stage == "classifier" else "none"
    p["dataset_fingerprint"] = plan.fingerprint
    p["split_hash"] = split_hash(plan.splits)
    p["skipped_files"] = plan.skipped_files
    p["train_slices_used"] = len(train)
    p.update(plan.counts)
    # What the run's time depends on (the paper table's "time"), never who the patients are.
    p["cpu_flags"] = " ".join(key_flags()) or "none"
    p["tf_onednn_opts"] = onednn_setting()
    return p


@dataclass
class TrainResult:
    """What a training run produced (no arrays, no patient keys)."""

    run_id: str
    run_name: str
    model_uri: str
    version: str
    champion: bool
    val: dict[str, float]
    test: dict[str, float]
    saved: str | None = None
    #: trained on its validation patients too (`train_on_val`): `val` is in-sample
    in_sample: bool = False


def _selection(config: TrainConfig, val_m: dict[str, float]) -> tuple[str, float]:
    """Validation metric that decides the champion: ROC AUC (accuracy if undefined) or Dice."""
    if config.stage == "segmenter":
        return "dice_patient_mean", val_m["dice_patient_mean"]
    if np.isfinite(val_m["roc_auc"]):
        return "roc_auc", val_m["roc_auc"]
    return "accuracy", val_m["accuracy"]


def train_and_log(config: TrainConfig, plan: DataPlan) -> TrainResult:
    """Train, evaluate, log and register one model inside one MLflow run (FAILED on any error)."""
    import keras

    from models.summary import count_params

    keras.utils.set_random_seed(config.seed)
    kind, pre = config.stage, config.preprocess
    name = tracking.run_name(config.model)
    experiment = config.experiment or tracking.EXPERIMENTS[kind]
    with tracking.start_run(
        experiment, name, tags={"stage": kind}, parent_run_id=config.parent_run_id
    ) as run_id:
        # "adaptive" with modality dropout: the training slices keep their FLAIR neighbours.
        both_forms = pre.input_mode == "adaptive" and config.modality_dropout > 0
        # `train_on_val`: the validation patients train too; their figures are then in-sample.
        members = {
            "train": plan.splits["train"] + (plan.splits["val"] if config.train_on_val else []),
            "val": plan.splits["val"],
            "test": plan.splits["test"],
        }
        train, val, test = (
            load_slices(
                plan.table,
                members[s],
                pre,
                exact=s != "train",
                neighbours=both_forms and s == "train",
            )
            for s in ("train", "val", "test")
        )
        all_val, keep_empty, n_train = val, 1.0, float(len(train))
        if kind == "segmenter" and not config.include_empty:
            val = val.select(val.labels == 1)
            pos, neg = int(train.labels.sum()), int((train.labels == 0).sum())
            if config.empty_fraction > 0 and neg:
                # Tumour slices plus empty slices drawn afresh each epoch, `empty_fraction` of all.
                wanted = config.empty_fraction / (1.0 - config.empty_fraction) * pos
                keep_empty = min(1.0, wanted / neg)
                n_train = pos + keep_empty * neg
            else:
                train, keep_empty, n_train = train.select(train.labels == 1), 0.0, float(pos)
        tracking.log_params(run_id, _params(config, plan, train))
        if config.train_on_val:
            tracking.set_tags(run_id, {"validation": "in-sample (trained on, train_on_val)"})
        tracking_meta.log_training_data(run_id, plan, config.archive)  # fingerprint, no keys
        from models.precision import policy_scope

        with policy_scope(config.precision), tempfile.TemporaryDirectory() as tmp:
            built = config
            if config.pretrain_epochs:  # transfer from the masks: the backbone learns as an encoder
                encoder, figures = pretrain.pretrain_encoder(config, train, Path(tmp), run_id)
                tracking.log_metrics(run_id, figures)
                built = dataclasses.replace(config, weights=str(encoder))
            model = build_model(built, recipe_fit.steps_per_epoch(n_train, config.batch))
        fitted = recipe_fit.fit(
            model,
            make_dataset(
                train,
                kind,
                config.batch,
                training=True,
                seed=config.seed,
                keep_empty=keep_empty,
                augment=config.augment,
                modality_dropout=config.modality_dropout,
            ),
            make_dataset(val, kind, config.batch, training=False),
            config,
            run_id,
            score_val=all_val,
            class_weight=class_weights(train.labels) if kind == "classifier" else None,
            steps_per_epoch=(
                recipe_fit.steps_per_epoch(n_train, config.batch) if keep_empty < 1.0 else None
            ),
        )
        for table_name, table in paper_tables(
            config, fitted, count_params(model), len(train)
        ).items():
            tracking.log_table(run_id, table, table_name)
        evaluate = evaluate_classifier if kind == "classifier" else evaluate_segmenter
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            val_m, test_m, paths = evaluate(model, val, test, config, out)
            paths.append(plots.training_curves(fitted["history"], out / "training_curves.png"))
            for path in paths:
                tracking.log_artifact(run_id, path, "plots")
        tracking.log_metrics(run_id, {f"best_val_{k}": v for k, v in val_m.items()})
        tracking.log_metrics(run_id, {f"test_{k}": v for k, v in test_m.items()})
        tracking.log_metrics(
            run_id,
            {
                "training_time_s": fitted["seconds"],
                "best_epoch": fitted["best_epoch"],
                "epochs_run": len(fitted["history"]["loss"]),
            },
        )
        metric, score = _selection(config, val_m)
        info: dict[str, Any] = {
            "architecture": config.model,
            "selection_metric": metric,
            "val_score": score,
        }
        if config.train_on_val:
            info["val_score_in_sample"] = True
        if kind == "classifier":
            tracking.log_metrics(run_id, {"operating_point": val_m["operating_point"]})
            info.update(
                operating_point=val_m["operating_point"],
                triage_threshold=config.triage_threshold,
                min_sensitivity=config.min_sensitivity,
                min_saved=config.min_saved,
                gate_context=config.gate_context,
                temperature=val_m["temperature"],
            )
        info["preset"] = config.preset
        if config.register:
            logged = tracking.log_keras_model(run_id, model, kind, pre, **info)
            data = {"fingerprint": plan.fingerprint, **tracking_meta.dataset_profile(plan)}
            card = tracking_meta.model_card(kind, info, val_m, test_m, data)
            tracking_meta.describe_model_version(kind, logged["version"], card)
            decision = tracking.promote_if_better(
                kind,
                logged["version"],
                metric,
                score,
                force=config.promote,
                in_sample=config.train_on_val,  # its validation figure is not held out
            )
            version = f"{logged['registered_model']}/{logged['version']}"
        else:  # evaluation folds: the model stays out of the registry (and off `champion`)
            logged, decision = {"model_uri": ""}, {"champion": False}
            version = f"run:{run_id}"
        tracking.set_tags(run_id, {"registered_version": version, "champion": decision["champion"]})
        saved = None
        if config.save:
            saved = str(
                tracking.save_local_model(model, config.save, kind, pre, version=version, **info)
            )
    return TrainResult(
        run_id,
        name,
        logged["model_uri"],
        version,
        bool(decision["champion"]),
        val_m,
        test_m,
        saved,
        config.train_on_val,
    )
