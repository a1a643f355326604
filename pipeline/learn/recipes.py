"""Named training recipes (`--preset`): the values a preset gives, below the user's own options.

Precedence, highest first: an option given on the command line (or a keyword given to the flow),
then the preset's value, then `TrainConfig`'s own default. The preset's name and the resolved values
are logged with every run, so a run can be repeated from its MLflow params alone.

- `paper`: the MRI paper's settings (256 px, Adam, lr 1e-4 for the classifiers and 1e-5 for ResUNet,
  15 / 30 epochs, the three stored channels, no extra normalisation, LR halved on plateau).
- `cpu`: what reaches useful accuracy on real LGG patients on 2 CPU cores (v7: both stages trained
  in 42 min on an AVX2-only machine with TensorFlow's oneDNN kernels, which the command turns on;
  the longer v6 schedule took 54 min there, 130-152 min without oneDNN, 40 on an AVX-512 machine;
  README, docs/ACCURACY.md row 42): mask pre-training 5 epochs, classifier 12, segmenter 30; small
  inputs (classifier 64 px, segmenter 128 px), FLAIR with its neighbouring slices as the three
  channels, per-patient intensity normalisation (so TIF and NIfTI sources look alike), AdamW with
  warm-up and cosine decay, the classifier's checkpoint chosen on validation ROC AUC, and (v8,
  docs/ACCURACY.md rows 61-63) a segmenter trained on the validation patients too, its last epoch
  kept (`train_on_val`; `--no-train-on-val` chooses the epoch on them by per-patient Dice instead),
  that also sees a sampled tenth of tumour-free slices so it learns to draw nothing where the gate
  sends it one. Without ImageNet weights the classifier's backbone is first trained for a few epochs
  as a U-Net encoder on the masks (`pipeline.learn.pretrain`), then fine-tuned with the head. The
  gate looks 1 slice either side (`pipeline.triage.rule.context_p_normal`) and its operating point
  keeps validation slice sensitivity >= 0.99, then is raised as far as validation still calls 45% of
  its slices normal (`--min-saved`: the calls-saved target spent on sensitivity; rule B of
  docs/ACCURACY.md, fold 4).
- `gpu`: the `cpu` recipe at 256 px with a longer schedule and mixed precision.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "classifier": {
            "image_size": 256,
            "epochs": 15,
            "batch": 16,
            "optimizer": "adam",
            "schedule": "plateau",
            "input_mode": "rgb",
            "normalize": "none",
            "select": "val_loss",
        },
        "segmenter": {
            "image_size": 256,
            "epochs": 30,
            "batch": 16,
            "optimizer": "adam",
            "schedule": "plateau",
            "input_mode": "rgb",
            "normalize": "none",
            "select": "val_loss",
        },
    },
    "cpu": {
        "classifier": {
            "image_size": 64,
            "pretrain_epochs": 5,
            "pretrain_lr": 1e-3,
            "epochs": 12,
            "batch": 32,
            "lr": 5e-4,
            "optimizer": "adamw",
            "schedule": "cosine",
            "warmup": 0.05,
            "input_mode": "flair25d",
            "normalize": "volume",
            "select": "auto",
            "patience": 8,
            "min_sensitivity": 0.99,
            "min_saved": 0.45,
            "gate_context": 1,
        },
        "segmenter": {
            "image_size": 128,
            "epochs": 30,
            "batch": 16,
            "lr": 1e-3,
            "loss": "bce_dice",
            "optimizer": "adamw",
            "schedule": "cosine",
            "warmup": 0.05,
            "input_mode": "flair25d",
            "normalize": "volume",
            "empty_fraction": 0.1,
            "train_on_val": True,  # with `select` "last" unless training is told otherwise
            "select": "auto",
            "patience": 12,
        },
    },
}

#: `gpu`: the `cpu` recipe at 256 px with a longer schedule and mixed precision.
PRESETS["gpu"] = {
    "classifier": {
        **PRESETS["cpu"]["classifier"],
        "image_size": 256,
        "pretrain_epochs": 15,
        "epochs": 30,
        "patience": 12,
        "precision": "mixed_float16",
    },
    "segmenter": {
        **PRESETS["cpu"]["segmenter"],
        "image_size": 256,
        "epochs": 60,
        "patience": 15,
        "precision": "mixed_float16",
    },
}

#: Learning rate a preset uses for a classifier that starts from ImageNet (or local) weights,
#: where the from-scratch rate of the `cpu`/`gpu` presets would wreck the pretrained features.
PRETRAINED_LR = 1e-4


def preset_values(preset: str | None, stage: str, pretrained: bool = False) -> dict[str, Any]:
    """The values `preset` gives `stage` ("classifier" or "segmenter"); {} for no preset.

    Raises:
        ValueError: unknown preset or stage (naming the allowed values).
    """
    if preset in (None, "", "none"):
        return {}
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if stage not in PRESETS[preset]:
        raise ValueError(f"stage must be one of {sorted(PRESETS[preset])}, got {stage!r}")
    values = dict(PRESETS[preset][stage])
    if stage == "classifier" and pretrained:  # ImageNet (or local) weights: no mask pre-training
        values.pop("pretrain_epochs", None)
        values.pop("pretrain_lr", None)
        if "lr" in values:
            values["lr"] = PRETRAINED_LR
    return values
