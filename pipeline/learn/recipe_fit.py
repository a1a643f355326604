"""The training loop's recipe: optimiser, learning-rate schedule and checkpoint selection.

`fit` trains a compiled-on-the-spot Keras model with early stopping that restores the best
weights, where "best" is validation loss (the paper's habit) or, with `select="auto"`, the figure
triage cares about: validation ROC AUC for a classifier, mean per-patient Dice over every
validation slice for a segmenter (a mask painted on a tumour-free slice costs Dice there).
`select="last"` keeps the weights of the last epoch (no early stopping): for a model trained on
its validation patients too (`train_on_val`), where no held-out figure is left to select on.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# tracking (MLflow) only when fitting: the CLI reads the constants
from pipeline.triage import metrics

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("plateau", "cosine")
SELECTS = ("val_loss", "auto", "last")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
#: Validation figure `select="auto"` keeps the best epoch on, per stage (higher is better).
AUTO_MONITOR = {"classifier": "val_auc", "segmenter": "val_dice_patient"}


def check_recipe(config: Any) -> None:
    """`ValueError` naming the allowed values when a recipe field of `config` is out of range."""
    for name, allowed in (
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("select", SELECTS),
        ("precision", PRECISIONS),
    ):
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(config, name)!r}")
    if not 0.0 <= config.warmup < 1.0:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {config.warmup}")
    if not 0.0 <= config.empty_fraction < 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1), got {config.empty_fraction}")
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {config.weight_decay}")
    ema = getattr(config, "ema", 0.0)
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be a momentum in [0, 1) (0 = off), got {ema}")
    from pipeline.learn.datasets import AUGMENTS

    if getattr(config, "augment", "standard") not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {config.augment!r}")
    min_saved = getattr(config, "min_saved", None)
    if min_saved is not None and not 0.0 <= min_saved <= 1.0:
        raise ValueError(f"min_saved must be a share in [0, 1], got {min_saved}")


def monitor_of(config: Any) -> tuple[str, str]:
    """`(metric name, "min" | "max")` that early stopping and the checkpoint watch (`select="last"`:
    the figure logged each epoch, which nothing selects on)."""
    if config.select in ("auto", "last"):
        return AUTO_MONITOR[config.stage], "max"
    return "val_loss", "min"


def make_optimizer(config: Any, steps_per_epoch: int) -> Any:
    """Adam or AdamW; a constant rate (halved on plateau by `fit`) or linear warm-up then cosine
    decay to 1% over the whole run. With `config.ema` > 0 the optimiser also keeps an exponential
    moving average of the trainable weights (Polyak averaging, that momentum per step), which
    `fit` validates, selects and keeps in place of the raw weights."""
    import keras

    lr: Any = config.lr
    if config.schedule == "cosine":
        total = max(1, steps_per_epoch * config.epochs)
        warm = int(config.warmup * total)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.lr * (0.01 if warm else 1.0),
            decay_steps=max(1, total - warm),
            alpha=0.01,
            warmup_target=config.lr if warm else None,
            warmup_steps=warm,
        )
    ema = float(getattr(config, "ema", 0.0))
    averaging = {"use_ema": True, "ema_momentum": ema} if ema > 0 else {}
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=lr, weight_decay=config.weight_decay, **averaging
        )
    return keras.optimizers.Adam(learning_rate=lr, **averaging)


def _score_callback(stage: str, val: Any, batch: int) -> Any:
    """A callback that adds the validation selection figure to each epoch's logs."""
    import keras

    from pipeline.learn.datasets import make_dataset

    class ValidationScore(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is None or len(val) == 0:
                return
            ds = make_dataset(val, stage, batch, training=False)
            out = np.asarray(self.model.predict(ds, verbose=0))
            if stage == "classifier":
                logs["val_auc"] = metrics.roc_auc(val.labels, out[:, 1])
            else:
                pp = metrics.per_patient(val.masks, out[..., 0] > 0.5, val.patients)
                logs["val_dice_patient"] = float(np.mean([v["dice"] for v in pp.values()]))

    return ValidationScore()


def steps_per_epoch(n_slices: float, batch: int) -> int:
    """Batches in one epoch of `n_slices` (expected count when empty slices are sampled)."""
    return max(1, math.ceil(n_slices / batch))


def fit(
    model: Any,
    train: Any,
    val: Any,
    config: Any,
    run_id: str,
    *,
    score_val: Any = None,
    **kw: Any,
) -> dict:
    """Fit with early stopping on the recipe's monitor (best weights restored), LR halving on
    plateau (constant-rate schedule only), a best checkpoint and the MLflow epoch logger.

    Args:
        model: compiled Keras model.
        train, val: `tf.data` datasets (val gives `val_loss`).
        config: the `TrainConfig`.
        run_id: MLflow run for per-epoch metrics.
        score_val: `SliceArrays` the selection figure is computed on (`select="auto"`).
        **kw: passed to `model.fit` (e.g. `class_weight`).

    Returns:
        `{"history": {...}, "seconds": float, "best_epoch": int (1-based), "monitor": name}`.
    """
    import keras

    monitor, mode = monitor_of(config)
    with tempfile.TemporaryDirectory() as tmp:
        best = Path(tmp) / "best.weights.h5"
        callbacks: list[Any] = []
        if getattr(config, "ema", 0.0) > 0:
            # First, so that every callback after it (the selection score, early stopping's
            # best weights, the checkpoint) sees the averaged weights at each epoch's end;
            # validation loss is computed on them too.
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if config.select in ("auto", "last") and score_val is not None:
            callbacks.append(_score_callback(config.stage, score_val, config.batch))
        else:
            monitor, mode = "val_loss", "min"
        if config.select != "last":
            callbacks += [
                keras.callbacks.EarlyStopping(
                    monitor=monitor, mode=mode, patience=config.patience, restore_best_weights=True
                ),
                keras.callbacks.ModelCheckpoint(
                    str(best),
                    monitor=monitor,
                    mode=mode,
                    save_best_only=True,
                    save_weights_only=True,
                ),
            ]
        callbacks.append(_epoch_logger(run_id))
        if config.schedule == "plateau":
            callbacks.insert(
                -1,
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss",
                    factor=0.5,
                    patience=max(1, config.patience // 2),
                    min_lr=1e-7,
                ),
            )
        started = time.perf_counter()
        hist = model.fit(
            train,
            validation_data=val,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=2,
            shuffle=False,  # the tf.data pipeline shuffles (seeded)
            **kw,
        )
        seconds = time.perf_counter() - started
        if best.exists():
            model.load_weights(best)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    scores = np.asarray(history.get(monitor, history["val_loss"]), dtype=float)
    scores = np.where(np.isfinite(scores), scores, -np.inf if mode == "max" else np.inf)
    best_epoch = int(np.argmax(scores) if mode == "max" else np.argmin(scores)) + 1
    if config.select == "last":
        best_epoch = len(scores)
    return {"history": history, "seconds": seconds, "best_epoch": best_epoch, "monitor": monitor}


def _epoch_logger(run_id: str) -> Any:
    from pipeline import tracking

    return tracking.epoch_logger(run_id)
