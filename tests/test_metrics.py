"""Metrics against hand-computed cases and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from pipeline.triage import metrics


def test_classification_metrics_hand_case() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.1, 0.4, 0.7, 0.05, 0.0])
    m = metrics.classification_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 4)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    # triage: P(normal) = 1 - p >= 0.99 only for p <= 0.01 -> the 0.0 slice (a normal one)
    assert m["sensitivity_at_triage"] == 1.0
    assert m["normal_fraction_at_triage"] == pytest.approx(1 / 8)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=60))
def test_roc_auc_matches_sklearn_with_ties(pairs: list[tuple[bool, int]]) -> None:
    y = np.array([a for a, _ in pairs], dtype=int)
    s = np.array([b / 20 for _, b in pairs])
    if y.min() == y.max():
        assert np.isnan(metrics.roc_auc(y, s))
    else:
        assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_ece_is_zero_when_calibrated_and_large_when_not() -> None:
    y = np.array([0] * 8 + [1] * 2 + [1] * 8 + [0] * 2)
    p = np.array([0.2] * 10 + [0.8] * 10)
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(1 - y, p) == pytest.approx(0.6)
    rel = metrics.reliability(y, p)
    assert sum(rel["count"]) == 20 and len(rel["confidence"]) == 10


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=120),
    st.lists(st.floats(0, 1, width=32), min_size=0, max_size=60),
)
def test_operating_point_keeps_sensitivity(pos: list[float], neg: list[float]) -> None:
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    p_normal = np.r_[pos, neg].astype(np.float32)
    op = metrics.operating_point(y, p_normal, 0.98)
    assert op["sensitivity"] >= 0.98
    assert metrics.triage_sensitivity(y, p_normal, op["threshold"]) == op["sensitivity"]
    # No smaller threshold keeps the sensitivity: one step down loses a tumour slice.
    lower = float(np.nextafter(np.float32(op["threshold"]), np.float32(-np.inf)))
    if op["threshold"] > 0:
        assert metrics.triage_sensitivity(y, p_normal, lower) < 0.98


def test_operating_point_allows_two_percent_misses() -> None:
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 0.5, 100)
    neg = rng.uniform(0.5, 1, 100)
    op = metrics.operating_point(np.r_[np.ones(100), np.zeros(100)], np.r_[pos, neg])
    assert op["sensitivity"] == pytest.approx(0.98)
    assert op["threshold"] == pytest.approx(np.sort(pos)[-3], abs=1e-6)
    assert op["specificity"] == 1.0
    assert np.isnan(metrics.operating_point([0, 0], [0.5, 0.9])["threshold"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=80),
    st.lists(st.floats(0, 1, width=32), min_size=0, max_size=80),
    st.floats(0, 1),
)
def test_min_saved_spends_the_calls_saved_share_on_sensitivity(
    pos: list[float], neg: list[float], share: float
) -> None:
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    p_normal = np.r_[pos, neg].astype(np.float32)
    plain = metrics.operating_point(y, p_normal, 0.98)
    op = metrics.operating_point(y, p_normal, 0.98, min_saved=share)
    assert op["sensitivity_threshold"] == plain["threshold"]
    assert op["threshold"] >= plain["threshold"]  # never less strict than the sensitivity rule
    assert op["sensitivity"] >= plain["sensitivity"]
    if op["threshold"] > plain["threshold"]:  # raised: the share is still called normal ...
        assert op["normal_fraction"] >= share - 1e-9
        # ... and it is the strictest such threshold: one float32 step up calls fewer normal.
        up = float(np.nextafter(np.float32(op["threshold"]), np.float32(np.inf)))
        assert np.mean(p_normal >= up) < share - 1e-9


def test_min_saved_on_a_hand_made_validation_set() -> None:
    # 10 slices: 4 tumour at P(normal) .1 .2 .3 .6, 6 normal at .5 .7 .8 .9 .95 .99.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pn = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99], np.float32)
    plain = metrics.operating_point(y, pn, 0.75)  # one tumour slice may be missed: t* > .3
    assert plain["threshold"] == pytest.approx(0.3, abs=1e-6)
    assert plain["sensitivity"] == 0.75 and plain["normal_fraction"] == 0.7
    # Half the slices still called normal: the 5th highest P(normal), 0.7; the .6 tumour slice
    # is segmented now.
    op = metrics.operating_point(y, pn, 0.75, min_saved=0.5)
    assert op["threshold"] == pytest.approx(0.7, abs=1e-6)
    assert op["normal_fraction"] == 0.5 and op["sensitivity"] == 1.0
    # A share the sensitivity rule already misses: t* stands.
    op = metrics.operating_point(y, pn, 0.75, min_saved=0.9)
    assert op["threshold"] == op["sensitivity_threshold"] == plain["threshold"]
    with pytest.raises(ValueError, match="min_saved"):
        metrics.operating_point(y, pn, 0.75, min_saved=1.5)


def test_dice_iou_per_slice_empty_empty_is_one() -> None:
    t = np.zeros((3, 4, 4), bool)
    p = np.zeros((3, 4, 4), bool)
    t[1, :2, :2] = True
    p[1, :2, :1] = True
    p[2, 0, 0] = True
    assert metrics.dice_per_slice(t, p).tolist() == pytest.approx([1.0, 2 * 2 / 6, 0.0])
    assert metrics.iou_per_slice(t, p).tolist() == pytest.approx([1.0, 2 / 4, 0.0])


def test_per_patient_pools_slices() -> None:
    t = np.zeros((4, 4, 4), bool)
    p = np.zeros((4, 4, 4), bool)
    t[0, :2, :2] = True
    p[1, :2, :2] = True
    t[2, 0, :] = p[2, 0, :] = True
    pp = metrics.per_patient(t, p, ["a", "a", "b", "c"])
    assert list(pp) == ["a", "b", "c"]
    assert pp["a"]["dice"] == 0.0 and pp["b"]["dice"] == 1.0 and pp["c"]["dice"] == 1.0
    seg = metrics.segmentation_metrics(t, p, ["a", "a", "b", "c"])
    assert seg["dice_patient_mean"] == pytest.approx(2 / 3)
    assert seg["dice_tumour_slice_mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="patient keys"):
        metrics.per_patient(t, p, ["a"])


def test_per_patient_recall_and_precision_split_the_dice() -> None:
    """Recall = share of the true tumour drawn, precision = share of the drawing that is tumour:
    one patient under-drawn, one over-drawn, one tumour-free with a false mask, one empty."""
    t = np.zeros((4, 8, 8), bool)
    p = np.zeros((4, 8, 8), bool)
    t[0, :4, :4] = True  # 16 px
    p[0, :2, :4] = True  # 8 of them: under-drawn
    t[1, :2, :2] = True  # 4 px
    p[1, :4, :4] = True  # 16 drawn around them: over-drawn
    p[2, 0, 0] = True  # a false mask on a tumour-free patient
    pp = metrics.per_patient(t, p, ["under", "over", "free", "empty"])
    assert pp["under"]["recall"] == pytest.approx(0.5) and pp["under"]["precision"] == 1.0
    assert pp["over"]["recall"] == 1.0 and pp["over"]["precision"] == pytest.approx(0.25)
    assert np.isnan(pp["free"]["recall"]) and pp["free"]["precision"] == 0.0
    assert np.isnan(pp["empty"]["recall"]) and np.isnan(pp["empty"]["precision"])
    # Dice is their harmonic mean wherever both are defined.
    for key in ("under", "over"):
        r, q = pp[key]["recall"], pp[key]["precision"]
        assert pp[key]["dice"] == pytest.approx(2 * r * q / (r + q))


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.classification_metrics([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="differ"):
        metrics.dice_per_slice(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))
