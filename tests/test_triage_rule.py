"""The triage rule on hand-set probabilities: a table of cases, including exactly-at-threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.triage.rule import (
    ROUTE_NORMAL,
    ROUTE_SEGMENTED,
    final_labels,
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
