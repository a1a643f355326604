"""Training flows: index and split the archive, then train, evaluate, log and register one model.

Thin Prefect layer over `pipeline.learn.training`: a small planning task (index + patient split) and
one training task that owns the MLflow run from start to end in its own thread.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from typing import Any

# Prefect's temporary server needs more than its default 20 s on a busy two-core machine; set
# before Prefect reads its settings (a user's own value wins).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.classifier import WeightsUnavailableError
from pipeline.learn.training import (
    DataPlan,
    TrainConfig,
    TrainingDataError,
    plan_data,
    train_and_log,
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
#: `TrainConfig` fields the CLI may set beyond the flow's named parameters.
RECIPE_OPTIONS = (
    "pretrain_epochs",
    "optimizer",
    "schedule",
    "warmup",
    "input_mode",
    "normalize",
    "select",
    "empty_fraction",
    "precision",
    "patience",
    "min_sensitivity",
    "min_saved",
    "gate_context",
    "ema",
    "augment",
    "modality_dropout",
    "train_on_val",
)


@task(name="index-and-split", cache_policy=NO_CACHE)
def plan_task(archive: str, seed: int, val: float, test: float) -> DataPlan:
    """Index the archive and split its patients (raises `TrainingDataError` on unusable data)."""
    plan = plan_data(archive, seed=seed, val=val, test=test)
    get_run_logger().info(
        "indexed %d labelled slices, %d skipped files; split %s; fingerprint %s",
        len(plan.table),
        plan.skipped_files,
        plan.counts,
        plan.fingerprint[:12],
    )
    return plan


@task(name="train-evaluate-register", cache_policy=NO_CACHE, retries=0)
def train_task(config: TrainConfig, plan: DataPlan) -> dict[str, Any]:
    """Train, evaluate on test patients, log to MLflow and register; a small summary comes back."""
    result = train_and_log(config, plan)
    get_run_logger().info(
        "run %s: %s (champion: %s)", result.run_name, result.version, result.champion
    )
    return asdict(result)


def _run(config: TrainConfig) -> dict[str, Any]:
    plan = plan_task(config.archive, config.seed, config.val_fraction, config.test_fraction)
    return train_task(config, plan)


@flow(name="train-classifier")
def train_classifier_flow(
    archive: str,
    backbone: str = "resnet50",
    weights: str | None = "imagenet",
    trainable: str = "all",
    epochs: int | None = None,
    lr: float | None = None,
    batch: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    promote: bool = False,
    save: str | None = None,
    preset: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a ResNet50/VGG16 slice classifier (defaults: 15 epochs, lr 1e-4, 256x256; a `preset`
    fills what is not given; `options` holds further `TrainConfig` fields, e.g. `input_mode`)."""
    config = TrainConfig.create(
        "classifier",
        archive,
        backbone,
        preset=preset,
        **(options or {}),
        weights=weights,
        trainable=trainable,
        epochs=epochs,
        lr=lr,
        batch=batch,
        image_size=image_size,
        seed=seed,
        promote=promote,
        save=save,
    )
    return _run(config)


@flow(name="train-segmenter")
def train_segmenter_flow(
    archive: str,
    arch: str = "resunet",
    loss: str | None = None,
    include_empty: bool = False,
    epochs: int | None = None,
    lr: float | None = None,
    batch: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    promote: bool = False,
    save: str | None = None,
    preset: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a ResUNet/ResUNet++ (defaults: 30 epochs; ResUNet lr 1e-5 BCE+Dice, ResUNet++ 1e-4
    Dice; tumour slices only unless `include_empty`; a `preset` fills what is not given)."""
    config = TrainConfig.create(
        "segmenter",
        archive,
        arch,
        preset=preset,
        **(options or {}),
        loss=loss,
        include_empty=include_empty,
        epochs=epochs,
        lr=lr,
        batch=batch,
        image_size=image_size,
        seed=seed,
        promote=promote,
        save=save,
    )
    return _run(config)


def _summary(result: dict[str, Any], stage: str) -> str:
    keys = (
        ["accuracy", "sensitivity", "specificity", "roc_auc", "sensitivity_at_triage"]
        if stage == "classifier"
        else ["dice_patient_mean", "iou_patient_mean", "dice_slice_mean"]
    )
    test = ", ".join(f"{k} {result['test'].get(k, float('nan')):.3f}" for k in keys)
    lines = [
        f"run {result['run_name']} ({result['run_id']})",
        f"registered {result['version']}"
        + (" -> champion" if result["champion"] else "")
        + (
            " (not champion: trained on its validation patients too, so its validation figures "
            "are in-sample and compared with no champion's; --promote moves the alias)"
            if result.get("in_sample") and not result["champion"]
            else ""
        ),
        f"test: {test}",
    ]
    if stage == "classifier":
        lines.append(
            "operating point (val, sensitivity >= "
            f"{result['val'].get('operating_point_sensitivity', float('nan')):.3f}): P(normal) >= "
            f"{result['val']['operating_point']:.4g}; temperature "
            f"{result['val'].get('temperature', 1.0):.3g}"
        )
    if result.get("saved"):
        lines.append(f"saved {result['saved']} (+ .json)")
    return "\n".join(lines)


def cli_train(args: argparse.Namespace) -> int:
    """`mri-triage train classifier|segmenter ARCHIVE ...`.

    Returns:
        0 when trained, 1 when training failed (run marked FAILED), 2 on unusable input.
    """
    common = {
        "archive": args.archive,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch": args.batch,
        "image_size": args.image_size,
        "seed": args.seed,
        "promote": args.promote,
        "save": getattr(args, "save", None),
        "preset": args.preset,
        "options": {
            k: getattr(args, k, None) for k in RECIPE_OPTIONS if getattr(args, k, None) is not None
        },
    }
    try:
        if args.stage == "classifier":
            result = train_classifier_flow(
                backbone=args.backbone, weights=args.weights, trainable=args.trainable, **common
            )
        else:
            result = train_segmenter_flow(
                arch=args.arch, loss=args.loss, include_empty=args.include_empty, **common
            )
    except (TrainingDataError, ValueError, FileNotFoundError) as err:
        print(f"mri-triage train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WeightsUnavailableError as err:
        print(
            f"mri-triage train: {err}\n(use --weights none to train from scratch, or --weights "
            "PATH to a local headless-backbone .h5 file)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except Exception as err:  # the MLflow run is already marked FAILED
        print(f"mri-triage train: training failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(_summary(result, args.stage))
    return EXIT_OK
