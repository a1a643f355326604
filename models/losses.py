"""Segmentation losses and metrics, registered so saved models load with safe mode on.

All take `y_true` of shape `(N, H, W)` or `(N, H, W, 1)` (0/1 mask, any dtype) and `y_pred` of
shape `(N, H, W, 1)` (sigmoid probabilities), compute in float32, score each slice separately and
average over the batch. The Dice and IoU coefficients are smoothed (`smooth=1`), so a slice whose
mask and prediction are both empty scores exactly 1 (and its loss is 0).

* `dice_loss` = 1 - Dice (the ResUNet++ paper's loss);
* `bce_dice_loss` = binary cross-entropy + Dice loss;
* `bce_batch_dice_loss` = binary cross-entropy + 1 - the Dice of the whole batch taken as one
  volume (nnU-Net's "batch Dice"): pixels are pooled over the batch's slices, so a slice counts by
  its tumour's size, as in a patient's volume Dice, and a few false pixels on a tumour-free slice
  cost little more than elsewhere (per-slice Dice scores such a slice near 0);
* `tversky_loss` = 1 - Tversky index with alpha = 0.7 on false negatives, 0.3 on false positives,
  and `focal_tversky_loss` = (1 - Tversky) ** 0.75 (the public LGG notebooks' choice);
* `bce_loss`: binary cross-entropy that accepts `(N, H, W)` masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

SMOOTH = 1.0
TVERSKY_ALPHA = 0.7
FOCAL_GAMMA = 0.75

register = keras.saving.register_keras_serializable(package="mri_triage")


def _flat(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Both as float32 `(N, H*W)`."""
    t = ops.cast(y_true, "float32")
    p = ops.cast(y_pred, "float32")
    n = ops.shape(p)[0]
    return ops.reshape(t, (n, -1)), ops.reshape(p, (n, -1))


@register
def dice_coef(y_true: Any, y_pred: Any) -> Any:
    """Soft Dice `(2|T∩P| + 1) / (|T| + |P| + 1)` per slice, batch mean (both empty = 1)."""
    t, p = _flat(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    total = ops.sum(t, axis=1) + ops.sum(p, axis=1)
    return ops.mean((2.0 * inter + SMOOTH) / (total + SMOOTH))


@register
def batch_dice_coef(y_true: Any, y_pred: Any) -> Any:
    """Soft Dice of the whole batch as one volume: `(2 sum T*P + 1) / (sum T + sum P + 1)`."""
    t, p = _flat(y_true, y_pred)
    inter = ops.sum(t * p)
    total = ops.sum(t) + ops.sum(p)
    return (2.0 * inter + SMOOTH) / (total + SMOOTH)


@register
def iou_coef(y_true: Any, y_pred: Any) -> Any:
    """Soft IoU (Jaccard) `(|T∩P| + 1) / (|T∪P| + 1)` per slice, batch mean (both empty = 1)."""
    t, p = _flat(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    union = ops.sum(t, axis=1) + ops.sum(p, axis=1) - inter
    return ops.mean((inter + SMOOTH) / (union + SMOOTH))


def _tversky(y_true: Any, y_pred: Any) -> Any:
    """Tversky index per slice, `(N,)`: `(TP + 1) / (TP + a*FN + (1 - a)*FP + 1)`, a = 0.7."""
    t, p = _flat(y_true, y_pred)
    tp = ops.sum(t * p, axis=1)
    fn = ops.sum(t * (1.0 - p), axis=1)
    fp = ops.sum((1.0 - t) * p, axis=1)
    return (tp + SMOOTH) / (tp + TVERSKY_ALPHA * fn + (1.0 - TVERSKY_ALPHA) * fp + SMOOTH)


@register
def tversky_coef(y_true: Any, y_pred: Any) -> Any:
    """Tversky index (alpha = 0.7 on false negatives), batch mean."""
    return ops.mean(_tversky(y_true, y_pred))


@register
def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """1 - `dice_coef`."""
    return 1.0 - dice_coef(y_true, y_pred)


@register
def bce_loss(y_true: Any, y_pred: Any) -> Any:
    """Mean binary cross-entropy over pixels and slices."""
    t, p = _flat(y_true, y_pred)
    return ops.mean(keras.losses.binary_crossentropy(t[..., None], p[..., None]))


@register
def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy + Dice loss."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


@register
def bce_batch_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy + 1 - `batch_dice_coef`."""
    return bce_loss(y_true, y_pred) + 1.0 - batch_dice_coef(y_true, y_pred)


@register
def tversky_loss(y_true: Any, y_pred: Any) -> Any:
    """1 - Tversky index, batch mean."""
    return ops.mean(1.0 - _tversky(y_true, y_pred))


@register
def focal_tversky_loss(y_true: Any, y_pred: Any) -> Any:
    """(1 - Tversky) ** 0.75, batch mean."""
    return ops.mean(ops.power(ops.maximum(1.0 - _tversky(y_true, y_pred), 0.0), FOCAL_GAMMA))


LOSSES: dict[str, Callable[[Any, Any], Any]] = {
    "dice": dice_loss,
    "bce_dice": bce_dice_loss,
    "bce_batch_dice": bce_batch_dice_loss,
    "tversky": tversky_loss,
    "focal_tversky": focal_tversky_loss,
    "bce": bce_loss,
}

SEGMENTATION_METRICS: list[Callable[[Any, Any], Any]] = [dice_coef, iou_coef]


def get_loss(name: str) -> Callable[[Any, Any], Any]:
    """The loss function for `name` ("dice", "bce_dice", "tversky", "focal_tversky", "bce")."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
