"""Encoder pre-training on the masks: transfer from an MRI task when ImageNet weights are absent.

`TrainConfig.pretrain_epochs > 0` (classifier, no `weights`): the backbone is first trained for
that many epochs as the encoder of a U-Net (`models.encoder_unet`) on the training patients'
tumour masks with BCE + Dice, then its weights seed the classifier, which is fine-tuned with the
paper's head as usual. Same slices, same split, same augmentation: nothing leaks from validation
or test. The U-Net's per-epoch loss goes to the run as `pretrain_loss`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from pipeline.learn import recipe_fit


def pretrain_encoder(
    config: Any, train: Any, folder: Path, run_id: str | None = None
) -> tuple[Path, dict[str, float]]:
    """Train `config.model`'s backbone as a U-Net encoder on `train`'s masks and save it.

    Args:
        config: the classifier's `TrainConfig` (`model`, `image_size`, `batch`, `seed`, the
            recipe's optimiser and schedule, run for `pretrain_epochs` at `pretrain_lr`).
        train: the training `SliceArrays` (every slice: the empty ones teach "draw nothing").
        folder: where the backbone's `.weights.h5` is written.
        run_id: MLflow run for the per-epoch `pretrain_loss` (None: not logged).

    Returns:
        The weights file (for `build_classifier(weights=...)`) and
        `{"pretrain_time_s", "pretrain_final_loss"}`.
    """
    from models import get_loss
    from models.classifier import load_backbone
    from models.encoder_unet import build_encoder_unet
    from pipeline.learn.datasets import make_dataset

    shape = (config.image_size, config.image_size, 3)
    base = load_backbone(config.model, shape, None)
    unet = build_encoder_unet(base, config.model)
    schedule = dataclasses.replace(config, epochs=config.pretrain_epochs, lr=config.pretrain_lr)
    steps = recipe_fit.steps_per_epoch(len(train), config.batch)
    unet.compile(optimizer=recipe_fit.make_optimizer(schedule, steps), loss=get_loss("bce_dice"))
    callbacks: list[Any] = []
    if run_id is not None:
        from pipeline import tracking

        callbacks.append(tracking.epoch_logger(run_id, prefix="pretrain_"))
    data = make_dataset(
        train, "segmenter", config.batch, training=True, seed=config.seed, augment=config.augment
    )
    started = time.perf_counter()
    hist = unet.fit(
        data, epochs=config.pretrain_epochs, callbacks=callbacks, verbose=2, shuffle=False
    )
    seconds = time.perf_counter() - started
    path = Path(folder) / f"{config.model}_encoder.weights.h5"
    base.save_weights(str(path))
    return path, {
        "pretrain_time_s": seconds,
        "pretrain_final_loss": float(hist.history["loss"][-1]),
    }
