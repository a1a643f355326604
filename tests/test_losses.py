"""Loss and metric values on hand-made masks; registration; the name lookup."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models import losses as L


def masks(*pixel_sets: list[tuple[int, int]], size: int = 6) -> np.ndarray:
    """`(N, size, size, 1)` float32 masks with the given pixels set to 1."""
    out = np.zeros((len(pixel_sets), size, size, 1), np.float32)
    for i, pixels in enumerate(pixel_sets):
        for r, c in pixels:
            out[i, r, c, 0] = 1.0
    return out


SQUARE = [(1, 1), (1, 2), (2, 1), (2, 2)]  # 4 pixels
SHIFTED = [(1, 2), (2, 2), (1, 3), (2, 3)]  # overlaps SQUARE in 2 pixels
FAR = [(4, 4), (4, 5), (5, 4), (5, 5)]  # disjoint from SQUARE


def value(fn, t: np.ndarray, p: np.ndarray) -> float:
    return float(fn(t, p))


def test_dice_and_iou_on_hand_made_masks() -> None:
    t, same, half, far = masks(SQUARE), masks(SQUARE), masks(SHIFTED), masks(FAR)
    assert value(L.dice_coef, t, same) == pytest.approx(1.0)
    assert value(L.dice_coef, t, half) == pytest.approx((2 * 2 + 1) / (4 + 4 + 1))
    assert value(L.iou_coef, t, half) == pytest.approx((2 + 1) / (6 + 1))
    assert value(L.dice_coef, t, far) == pytest.approx(1 / 9)
    assert value(L.iou_coef, t, far) == pytest.approx(1 / 9)
    assert value(L.dice_loss, t, half) == pytest.approx(1 - 5 / 9)


def test_both_empty_scores_one_and_one_empty_scores_low() -> None:
    empty = masks([])
    assert value(L.dice_coef, empty, empty) == 1.0
    assert value(L.iou_coef, empty, empty) == 1.0
    assert value(L.dice_loss, empty, empty) == 0.0
    assert value(L.tversky_loss, empty, empty) == 0.0
    assert value(L.dice_coef, masks(SQUARE), empty) == pytest.approx(1 / 5)


def test_scores_are_per_slice_then_averaged_and_accept_hw_masks() -> None:
    t = masks(SQUARE, SQUARE)
    p = masks(SQUARE, FAR)
    assert value(L.dice_coef, t, p) == pytest.approx((1 + 1 / 9) / 2)
    assert value(L.dice_coef, t[..., 0], p) == value(L.dice_coef, t, p)
    assert value(L.dice_coef, t.astype(bool)[..., 0], p) == value(L.dice_coef, t, p)


def test_tversky_weights_false_negatives_more() -> None:
    t = masks(SQUARE)
    # TP = 2, FN = 2, FP = 2: (2 + 1) / (2 + 0.7 * 2 + 0.3 * 2 + 1) = 0.6
    half = masks(SHIFTED)
    assert value(L.tversky_coef, t, half) == pytest.approx(0.6)
    assert value(L.tversky_loss, t, half) == pytest.approx(0.4)
    assert value(L.focal_tversky_loss, t, half) == pytest.approx(0.4**0.75)
    # Missing tumour (FN) costs more than the same amount of false alarm (FP).
    missed_loss = value(L.tversky_loss, t, masks(SQUARE[:2]))  # TP 2, FN 2, FP 0
    false_alarm_loss = value(L.tversky_loss, masks(SQUARE[:2]), t)  # TP 2, FN 0, FP 2
    assert missed_loss == pytest.approx(1 - 3 / (2 + 0.7 * 2 + 1))
    assert false_alarm_loss == pytest.approx(1 - 3 / (2 + 0.3 * 2 + 1))
    assert missed_loss > false_alarm_loss


def test_bce_dice_is_the_sum() -> None:
    t = masks(SQUARE)
    p = np.clip(masks(SHIFTED) * 0.8 + 0.1, 0, 1)
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    bce = float(np.mean(-(t * np.log(pc) + (1 - t) * np.log(1 - pc))))
    assert value(L.bce_loss, t, p) == pytest.approx(bce, rel=1e-4)
    assert value(L.bce_dice_loss, t, p) == pytest.approx(bce + value(L.dice_loss, t, p), rel=1e-5)


def test_batch_dice_pools_the_batch_as_one_volume() -> None:
    # Slice 0: a 4-pixel tumour found exactly; slice 1: tumour-free with one false pixel.
    t = np.zeros((2, 4, 4), "float32")
    t[0, :2, :2] = 1
    p = t.copy()[..., None]
    p[1, 3, 3, 0] = 1
    # Per-slice Dice: (1 + 1 / 2) / 2; as one volume: (2*4 + 1) / (4 + 5 + 1).
    assert value(L.dice_coef, t, p) == pytest.approx(0.75)
    assert value(L.batch_dice_coef, t, p) == pytest.approx(0.9)
    assert value(L.bce_batch_dice_loss, t, p) == pytest.approx(
        value(L.bce_loss, t, p) + 0.1, rel=1e-5
    )


def test_cli_offers_every_segmentation_loss() -> None:
    from pipeline.cli.main import SEGMENTER_LOSSES

    assert sorted(SEGMENTER_LOSSES) == sorted(set(L.LOSSES) - {"bce"})


def test_registered_and_looked_up_by_name() -> None:
    for name, fn in L.LOSSES.items():
        assert L.get_loss(name) is fn
        registered = keras.saving.get_registered_name(fn)
        assert registered == f"mri_triage>{fn.__name__}"
        assert keras.saving.get_registered_object(registered) is fn
    for metric in L.SEGMENTATION_METRICS:
        assert keras.saving.get_registered_name(metric).startswith("mri_triage>")
    with pytest.raises(ValueError, match="unknown loss"):
        L.get_loss("hinge")
