"""The triage rule on hand-set probabilities: a table of cases, including exactly-at-threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.triage.rule import (
    MAX_GATE_CONTEXT,
    ROUTE_NORMAL,
    ROUTE_SEGMENTED,
    context_p_normal,
    final_labels,
    resolve_gate_context,
    route_names,
    route_slices,
    uncertainty,
)

CASES = [
    # (P(normal), threshold, flagged?)
    (1.0, 0.99, False),
    (0.995, 0.99, False),
    (0.99, 0.99, False),  # exactly at the threshold: normal
    (np.nextafter(0.99, 0.0), 0.99, True),  # a hair below: goes on
    (0.5, 0.99, True),
    (0.0, 0.99, True),
    (0.5, 0.5, False),
    (0.0, 0.0, False),  # threshold 0: everything normal
    (1.0, 1.0, False),  # threshold 1: only certainty is normal
    (0.999999, 1.0, True),
    (float("nan"), 0.99, True),  # a failed prediction is never trusted as normal
]


@pytest.mark.parametrize(("p_normal", "threshold", "flagged"), CASES)
def test_route_single_slice(p_normal: float, threshold: float, flagged: bool) -> None:
    assert route_slices(np.array([p_normal]), threshold).tolist() == [flagged]


def test_route_vector_matches_table() -> None:
    p = np.array([c[0] for c in CASES if c[1] == 0.99])
    expected = [c[2] for c in CASES if c[1] == 0.99]
    flagged = route_slices(p, 0.99)
    assert flagged.dtype == bool
    assert flagged.tolist() == expected
    names = route_names(flagged)
    assert names == [ROUTE_SEGMENTED if f else ROUTE_NORMAL for f in expected]


@pytest.mark.parametrize("bad", [-0.01, 1.01, 2.0])
def test_threshold_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        route_slices(np.array([0.5]), bad)


def test_probabilities_checked() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        route_slices(np.array([0.2, 1.5]), 0.9)
    with pytest.raises(ValueError, match="1-D"):
        route_slices(np.zeros((2, 2)), 0.9)


def test_final_labels_empty_mask_is_normal() -> None:
    flagged = np.array([True, True, False, False])
    pixels = np.array([30, 0, 0, 0])
    assert final_labels(flagged, pixels).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="shapes"):
        final_labels(flagged, pixels[:3])


def test_uncertainty() -> None:
    assert uncertainty(np.array([1.0, 0.0])) == 0.0
    assert uncertainty(np.array([1.0, 0.5])) == 1.0
    assert uncertainty(np.array([0.9, 0.95])) == pytest.approx(0.2)
    assert uncertainty(np.array([])) == 0.0


def test_context_is_the_least_p_normal_within_reach() -> None:
    p = np.array([0.9, 0.95, 0.2, 0.99, 0.97, 0.98])
    np.testing.assert_array_equal(context_p_normal(p, 0), p)
    np.testing.assert_array_equal(context_p_normal(p, 1), [0.9, 0.2, 0.2, 0.2, 0.97, 0.97])
    np.testing.assert_array_equal(context_p_normal(p, 2), [0.2, 0.2, 0.2, 0.2, 0.2, 0.97])
    assert context_p_normal(p, 8).tolist() == [0.2] * 6  # a reach past the ends is the minimum
    # Routing on it flags the slices next to a flagged slice, and no others.
    flagged = route_slices(context_p_normal(p, 1), 0.96)
    assert flagged.tolist() == [True, True, True, True, False, False]


def test_context_stays_inside_each_patient() -> None:
    p = np.array([0.99, 0.99, 0.1, 0.99, 0.99, 0.99])
    groups = ["a", "a", "a", "b", "b", "b"]
    np.testing.assert_array_equal(
        context_p_normal(p, 1, groups), [0.99, 0.1, 0.1, 0.99, 0.99, 0.99]
    )
    with pytest.raises(ValueError, match="groups"):
        context_p_normal(p, 1, groups[:5])


def test_context_keeps_nan_flagged() -> None:
    p = np.array([0.99, float("nan"), 0.99, 0.99, 0.99])
    flagged = route_slices(context_p_normal(p, 1), 0.5)
    assert flagged.tolist() == [True, True, True, False, False]


@pytest.mark.parametrize("bad", [-1, 1.5, MAX_GATE_CONTEXT + 1, True])
def test_context_reach_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="gate context"):
        context_p_normal(np.array([0.5, 0.5]), bad)  # type: ignore[arg-type]


def test_gate_context_resolution() -> None:
    assert resolve_gate_context(None, None) == (0, "default: none logged with the classifier")
    assert resolve_gate_context(None, {"gate_context": "2"}) == (2, "classifier operating point")
    assert resolve_gate_context(0, {"gate_context": 2}) == (0, "--gate-context")
    with pytest.raises(ValueError):
        resolve_gate_context(None, {"gate_context": 99})
